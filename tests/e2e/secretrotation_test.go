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
	moved, stranger := split.gatewayWithSecret(t, "gateway-new-secret", newFile), split.gatewayWithSecret(t, "gateway-other-secret", otherFile)

	ep := split.gateways[0].endpoint()
	mustCtl(t, ep, "user", "add", "root", "--new-user-password=rootpw")
	mustCtl(t, ep, "auth", "enable")
	waitHealthy(t, "auth on", split.gateways[0], true)
	waitHealthy(t, "auth on", moved, true)
	waitHealthy(t, "auth on", stranger, false)
}

// gatewayWithSecret starts one more gateway of c, presenting the internal
// secret of secretFile.
func (c *splitCluster) gatewayWithSecret(t *testing.T, name, secretFile string) *proc {
	t.Helper()
	port := freePort(t)
	return startProc(t, name, port, "gateway", "--consensus-endpoints", c.consensus.url(),
		"--watchfanout-endpoints", c.watchfanout.url(), "--leasesvc-endpoints", c.leasesvc.url(),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", port),
		"--internal-secret-file", secretFile)
}

// waitHealthy waits until gateway p's /health says it is healthy, or with
// !healthy that it is refused as a client without credentials: with auth
// on, a gateway's own calls to consensus (its /health) are trusted only if
// consensus accepts the secret it presents.
func waitHealthy(t *testing.T, step string, p *proc, healthy bool) {
	t.Helper()
	code, body := http.StatusOK, `"health":"true"`
	if !healthy {
		code, body = http.StatusServiceUnavailable, rpctypes.ErrUserEmpty.Error()
	}
	waitUntil(t, fmt.Sprintf("%s: %s /health to answer %d with %q", step, p.name, code, body), func() bool {
		c, b := httpGet(t, p.url()+"/health")
		return c == code && strings.Contains(b, body)
	})
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
	rotated := split.gateways[0]
	onNew, onOld := split.gatewayWithSecret(t, "gateway-new-secret", newFile), split.gatewayWithSecret(t, "gateway-old-secret", oldFile)
	ep := rotated.endpoint()
	mustCtl(t, ep, "user", "add", "root", "--new-user-password=rootpw")
	mustCtl(t, ep, "auth", "enable")
	mustCtl(t, ep, "--user=root:rootpw", "put", "k", "v")

	waitHealthy(t, "start", rotated, true)
	waitHealthy(t, "start", onOld, true)
	waitHealthy(t, "start", onNew, false)

	write(acceptFile, newSecret)
	waitHealthy(t, "new secret accepted", onNew, true)
	waitHealthy(t, "new secret accepted", onOld, true)

	write(secretFile, newSecret)
	write(acceptFile, oldSecret)
	waitHealthy(t, "files swapped", rotated, true)
	waitHealthy(t, "files swapped", onOld, true)

	if err := os.Remove(acceptFile); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, "accept file removed", onOld, false)
	waitHealthy(t, "accept file removed", rotated, true)
	waitHealthy(t, "accept file removed", onNew, true)

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
