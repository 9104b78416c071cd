package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/services/config"
)

// --internal-secret-file is read and checked by Validate on consensus and
// on the split processes: a missing or short file is refused at start,
// not found out when auth is enabled.
func TestInternalSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", strings.Repeat("a", 32)+"\n")
	short := write("short", strings.Repeat("a", 31)+"\r\n")
	missing := filepath.Join(dir, "missing")

	secret, err := config.ReadInternalSecret(good)
	if err != nil || string(secret) != strings.Repeat("a", 32) {
		t.Fatalf("ReadInternalSecret(good) = %q, %v; want 32 bytes without the newline", secret, err)
	}
	if secret, err := config.ReadInternalSecret(""); err != nil || secret != nil {
		t.Fatalf("ReadInternalSecret(\"\") = %q, %v; want none", secret, err)
	}

	base := func(role config.Role) []string {
		switch role {
		case config.RoleGateway:
			return []string{"--watchfanout-endpoints", "http://w", "--leasesvc-endpoints", "http://l"}
		}
		return nil
	}
	for _, role := range []config.Role{config.RoleGateway, config.RoleWatchfanout, config.RoleLeasesvc} {
		c, err := loadSplit(t, role, append(base(role), "--internal-secret-file", good)...)
		if err != nil || c.InternalSecretFile != good {
			t.Errorf("%s with a good file: %+v, %v", role, c.InternalSecretFile, err)
		}
		for _, bad := range []string{short, missing} {
			if _, err := loadSplit(t, role, append(base(role), "--internal-secret-file", bad)...); !errors.Is(err, config.ErrInvalid) {
				t.Errorf("%s with %s: %v, want ErrInvalid", role, filepath.Base(bad), err)
			}
		}
	}
	c, err := loadConsensus(t, "--internal-secret-file", good)
	if err != nil || c.InternalSecretFile != good {
		t.Errorf("consensus with a good file: %+v, %v", c.InternalSecretFile, err)
	}
	for _, bad := range []string{short, missing} {
		_, err := loadConsensus(t, "--internal-secret-file", bad)
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("consensus with %s: %v, want ErrInvalid", filepath.Base(bad), err)
		}
		if bad == short && (err == nil || !strings.Contains(err.Error(), "holds 31 bytes")) {
			t.Errorf("consensus with a short file: %v, want its length named", err)
		}
		// Validate itself refuses it, whoever built the struct.
		c.InternalSecretFile = bad
		if err := c.Validate(); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("Validate with %s: %v, want ErrInvalid", filepath.Base(bad), err)
		}
	}

	// --internal-secret-accept-file: read and checked the same way, and
	// only beside a secret of the process's own to present.
	other := write("other", strings.Repeat("b", 32))
	if c, err := loadConsensus(t, "--internal-secret-file", good, "--internal-secret-accept-file", other); err != nil || c.InternalSecretAcceptFile != other {
		t.Errorf("consensus with an accepted secret: %+v, %v", c.InternalSecretAcceptFile, err)
	}
	if c, err := loadSplit(t, config.RoleLeasesvc, "--internal-secret-file", good, "--internal-secret-accept-file", other); err != nil || c.InternalSecretAcceptFile != other {
		t.Errorf("leasesvc with an accepted secret: %+v, %v", c.InternalSecretAcceptFile, err)
	}
	for _, args := range [][]string{
		{"--internal-secret-file", good, "--internal-secret-accept-file", short},
		{"--internal-secret-accept-file", other},
	} {
		if _, err := loadConsensus(t, args...); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "--internal-secret-accept-file") {
			t.Errorf("consensus with %v: %v, want ErrInvalid naming --internal-secret-accept-file", args, err)
		}
	}
	if secret, err := config.ReadAcceptedInternalSecret(other); err != nil || string(secret) != strings.Repeat("b", 32) {
		t.Errorf("ReadAcceptedInternalSecret = %q, %v", secret, err)
	}
	// Between rotations the accept file may be missing or empty: none.
	for _, none := range []string{missing, write("empty", "\n")} {
		if secret, err := config.ReadAcceptedInternalSecret(none); secret != nil || err != nil {
			t.Errorf("ReadAcceptedInternalSecret(%s) = %q, %v, want nothing", filepath.Base(none), secret, err)
		}
		if _, err := loadConsensus(t, "--internal-secret-file", good, "--internal-secret-accept-file", none); err != nil {
			t.Errorf("consensus with the accept file %s: %v", filepath.Base(none), err)
		}
	}

	// concord cluster hands the file to every process it starts.
	cl := func(args ...string) (config.Cluster, error) {
		fs := pflag.NewFlagSet("cluster", pflag.ContinueOnError)
		config.ClusterFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return config.LoadCluster(fs)
	}
	if cc, err := cl("--internal-secret-file", good); err != nil || cc.InternalSecretFile != good {
		t.Errorf("cluster with a good file: %+v, %v", cc, err)
	}
	if _, err := cl("--internal-secret-file", short); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("cluster with a short file: %v, want ErrInvalid", err)
	}

	// As every flag: from the environment too.
	t.Setenv("CONCORD_INTERNAL_SECRET_FILE", short)
	if _, err := loadConsensus(t); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("CONCORD_INTERNAL_SECRET_FILE naming a short file: %v, want ErrInvalid", err)
	}
}
