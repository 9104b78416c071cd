package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestSplitSecretRotation: a consensus member that presents one internal
// secret and accepts another (--internal-secret-accept-file) trusts, once
// auth is enabled, the processes presenting either, and still no other:
// the middle steps of moving a split deployment to a new secret without
// stopping it.
func TestSplitSecretRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	oldFile, newFile, otherFile := writeInternalSecret(t, dir, "old"), writeInternalSecret(t, dir, "new"), writeInternalSecret(t, dir, "other")
	split := startSplitWith(t, []string{"--bcrypt-cost=4", "--internal-secret-accept-file", newFile}, "--internal-secret-file", oldFile)
	gateway := func(name, secretFile string) *proc {
		port := freePort(t)
		return startProc(t, name, port, "gateway", "--consensus-endpoints", split.consensus.url(),
			"--watchfanout-endpoints", split.watchfanout.url(), "--leasesvc-endpoints", split.leasesvc.url(),
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", port),
			"--internal-secret-file", secretFile)
	}
	moved, stranger := gateway("gateway-new-secret", newFile), gateway("gateway-other-secret", otherFile)

	ep := split.gateways[0].endpoint()
	mustCtl(t, ep, "user", "add", "root", "--new-user-password=rootpw")
	mustCtl(t, ep, "auth", "enable")
	// With auth on, a gateway's own calls to consensus (its /health) are
	// trusted only if consensus accepts the secret it presents.
	for _, c := range []struct {
		p    *proc
		code int
		body string
	}{
		{split.gateways[0], http.StatusOK, `"health":"true"`},
		{moved, http.StatusOK, `"health":"true"`},
		{stranger, http.StatusServiceUnavailable, rpctypes.ErrUserEmpty.Error()},
	} {
		waitUntil(t, fmt.Sprintf("%s /health with auth on to answer %d with %q", c.p.name, c.code, c.body), func() bool {
			code, body := httpGet(t, c.p.url()+"/health")
			return code == c.code && strings.Contains(body, c.body)
		})
	}
}

// TestSplitSecretRotationWithoutRestart moves a running split deployment
// with auth enabled to a new internal secret by rewriting its files only:
// the new secret written to every process's accept file, the two files'
// contents swapped, the accept file removed. Each process reads them again
// (within secretReloadInterval): consensus accepts a gateway presenting the
// new secret once it is in the accept file, the deployment's own gateway
// presents it once it is in the secret file, and a gateway still holding
// the old secret is refused at the end. The fan-out and lease service,
// whose own calls to consensus also need the secret once auth is on, still
// serve a watch from history and a lease keep-alive.
func TestSplitSecretRotationWithoutRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile, acceptFile := writeInternalSecret(t, dir, "secret"), filepath.Join(dir, "secret.next")
	oldFile, newFile := filepath.Join(dir, "old"), writeInternalSecret(t, dir, "new")
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write := func(path string, b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	oldSecret, newSecret := read(secretFile), read(newFile)
	write(oldFile, oldSecret)

	// Only consensus checks the secret of calls that are not claims: the
	// accept file matters there (gateways do not take it).
	split := startSplitWith(t, []string{"--bcrypt-cost=4", "--internal-secret-accept-file", acceptFile}, "--internal-secret-file", secretFile)
	gateway := func(name, secretFile string) *proc {
		port := freePort(t)
		return startProc(t, name, port, "gateway", "--consensus-endpoints", split.consensus.url(),
			"--watchfanout-endpoints", split.watchfanout.url(), "--leasesvc-endpoints", split.leasesvc.url(),
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", port),
			"--internal-secret-file", secretFile)
	}
	rotated, onNew, onOld := split.gateways[0], gateway("gateway-new-secret", newFile), gateway("gateway-old-secret", oldFile)
	ep := rotated.endpoint()
	mustCtl(t, ep, "user", "add", "root", "--new-user-password=rootpw")
	mustCtl(t, ep, "auth", "enable")
	mustCtl(t, ep, "--user=root:rootpw", "put", "k", "v")

	// With auth on, a gateway's own calls to consensus (its /health) are
	// trusted only if consensus accepts the secret it presents.
	healthy := func(step string, p *proc, want bool) {
		t.Helper()
		code, body := http.StatusOK, `"health":"true"`
		if !want {
			code, body = http.StatusServiceUnavailable, rpctypes.ErrUserEmpty.Error()
		}
		waitUntil(t, fmt.Sprintf("%s: %s /health to answer %d with %q", step, p.name, code, body), func() bool {
			c, b := httpGet(t, p.url()+"/health")
			return c == code && strings.Contains(b, body)
		})
	}
	healthy("start", rotated, true)
	healthy("start", onOld, true)
	healthy("start", onNew, false)

	write(acceptFile, newSecret)
	healthy("new secret accepted", onNew, true)
	healthy("new secret accepted", onOld, true)

	write(secretFile, newSecret)
	write(acceptFile, oldSecret)
	healthy("files swapped", rotated, true)
	healthy("files swapped", onOld, true)

	if err := os.Remove(acceptFile); err != nil {
		t.Fatal(err)
	}
	healthy("accept file removed", onOld, false)
	healthy("accept file removed", rotated, true)
	healthy("accept file removed", onNew, true)

	// The fan-out reads history from consensus, the lease service asks it
	// for the lease authority: both as themselves, with the new secret.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, Username: "root", Password: "rootpw",
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	select {
	case resp := <-cli.Watch(ctx, "k", clientv3.WithRev(1)):
		if err := resp.Err(); err != nil || len(resp.Events) == 0 || string(resp.Events[0].Kv.Value) != "v" {
			t.Errorf("watch from revision 1 after the rotation: %+v, %v; want the put of k", resp.Events, err)
		}
	case <-ctx.Done():
		t.Error("watch from revision 1 after the rotation: no response")
	}
	lease := strings.Fields(mustCtl(t, ep, "--user=root:rootpw", "lease", "grant", "60"))[1]
	if out := mustCtl(t, ep, "--user=root:rootpw", "lease", "keep-alive", "--once", lease); !strings.Contains(out, "keepalived with TTL") {
		t.Errorf("lease keep-alive after the rotation: %q", out)
	}
}
