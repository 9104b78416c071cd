package e2e

import (
	"testing"
	"time"
)

// TestHealthWithoutQuorum: a member whose cluster lost quorum fails /health
// with "RAFT NO LEADER", but /health?serializable=true (kubeadm's liveness
// probe), /livez and /readyz's data_corruption check still pass, since they
// read the member's own state; probes must not restart every member of a
// cluster that only lost quorum. Same answers from etcd and concord.
func TestHealthWithoutQuorum(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, im, clusterSize)
			for _, s := range c.members {
				c.waitMembers(s)
			}
			survivor := c.members[0]
			for _, s := range c.members[1:] {
				s.Kill()
			}
			base := survivor.clientURL()
			want := `{"health":"false","reason":"RAFT NO LEADER"}` + "\n"
			deadline := time.Now().Add(readyTimeout)
			for {
				code, body := httpGet(t, base+"/health")
				if code == 503 && body == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/health after losing quorum: %d %q, want 503 %q", code, body, want)
				}
				time.Sleep(pollInterval)
			}
			for _, p := range []struct{ path, body string }{
				{"/health?serializable=true", `{"health":"true","reason":""}`},
				{"/health?exclude=NOSPACE&serializable=true", `{"health":"true","reason":""}`},
				{"/livez", "ok\n"},
				{"/readyz/data_corruption", "ok\n"},
				{"/readyz/serializable_read", "ok\n"},
				{"/readyz/non_learner", "ok\n"},
			} {
				if code, body := httpGet(t, base+p.path); code != 200 || body != p.body {
					t.Errorf("%s without quorum: %d %q, want 200 %q", p.path, code, body, p.body)
				}
			}
		})
	}
}
