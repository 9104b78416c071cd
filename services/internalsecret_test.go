package services

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/concord-kv/concord/gateway"
)

func TestReadInternalSecretWarnsAboutLoosePermissions(t *testing.T) {
	secret := strings.Repeat("s", 32)
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o600, false}, {0o400, false}, {0o640, true}, {0o644, true}, {0o604, true}} {
		path := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(path, []byte(secret+"\n"), tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		var logs bytes.Buffer
		f, err := loadSecretFiles(path, "", slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil || string(f.present) != secret {
			t.Fatalf("mode %v: read %+v, %v", tc.mode, f, err)
		}
		if warned := strings.Contains(logs.String(), "level=WARN"); warned != tc.warn {
			t.Errorf("mode %v: warned %v, want %v; log: %s", tc.mode, warned, tc.warn, logs.String())
		}
	}
	// No file given: no secret, no warning.
	var logs bytes.Buffer
	if f, err := loadSecretFiles("", "", slog.New(slog.NewTextHandler(&logs, nil))); err != nil || f.configured() || logs.Len() != 0 {
		t.Fatalf("no file: %+v, %v, log %q", f, err, logs.String())
	}
}

// TestSecretFilesReload walks a rotation without restarts through reload:
// each step's files become the secrets presented and accepted, and a
// change that cannot be used is logged once and leaves them as they were.
func TestSecretFilesReload(t *testing.T) {
	dir := t.TempDir()
	presentPath, acceptPath := filepath.Join(dir, "secret"), filepath.Join(dir, "secret.next")
	oldSecret, newSecret := strings.Repeat("o", 32), strings.Repeat("n", 32)
	write := func(path, content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(presentPath, oldSecret)
	var logs bytes.Buffer
	f, err := loadSecretFiles(presentPath, acceptPath, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	accepts := func(secret string) bool { return f.secrets.Accepts(gateway.InternalSecretProof([]byte(secret))) }
	check := func(step, presented string, accepted ...string) {
		t.Helper()
		f.reload()
		if got := f.secrets.Proof(); got != gateway.InternalSecretProof([]byte(presented)) {
			t.Errorf("%s: presents %q, want the proof of %q...", step, got, presented[:1])
		}
		for _, s := range []string{oldSecret, newSecret} {
			if got, want := accepts(s), slices.Contains(accepted, s); got != want {
				t.Errorf("%s: accepts %q...: %v, want %v", step, s[:1], got, want)
			}
		}
	}
	check("start, no accept file", oldSecret, oldSecret)
	write(acceptPath, newSecret+"\n")
	check("new secret accepted", oldSecret, oldSecret, newSecret)
	write(presentPath, newSecret)
	write(acceptPath, oldSecret)
	check("swapped", newSecret, oldSecret, newSecret)
	write(acceptPath, "")
	check("accept file emptied", newSecret, newSecret)

	logs.Reset()
	write(presentPath, "short")
	check("short secret file", newSecret, newSecret)
	check("short secret file, again", newSecret, newSecret)
	if n := strings.Count(logs.String(), "cannot be used"); n != 1 {
		t.Errorf("an unusable change logged %d times, want once; log:\n%s", n, logs.String())
	}
	if err := os.Remove(acceptPath); err != nil {
		t.Fatal(err)
	}
	write(presentPath, oldSecret)
	check("back to the old secret, accept file removed", oldSecret, oldSecret)
}
