package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
