package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestClusterProbes probes a 3-member cluster as monitoring does, with the
// same expectations of etcd and concord. Each member exports its peer
// traffic by peer (etcd_network_peer_sent_bytes_total{To},
// _received_bytes_total{From}: etcd's dashboards' peer traffic panels) and
// the round-trip time to each peer it probes
// (etcd_network_peer_round_trip_time_seconds{To}).
// Then two members are killed: the survivor fails /health with "RAFT NO
// LEADER", but /health?serializable=true (kubeadm's liveness probe), /livez
// and /readyz's data_corruption check still pass, since they read the
// member's own state; probes must not restart every member of a cluster
// that only lost quorum.
func TestClusterProbes(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, im, clusterSize)
			for _, s := range c.members {
				c.waitMembers(s)
			}
			// The leader, which sends to every peer (a follower sends only
			// to the leader, on concord's streams; etcd's also carry link
			// heartbeats), survives.
			survivor := c.memberByID(testCtx(t), c.checkStatus(c.members[0]))
			var others []*Server
			for _, s := range c.members {
				if s != survivor {
					others = append(others, s)
				}
			}
			mustCtl(t, c.endpoints(), "put", "k", "v")
			deadline := time.Now().Add(readyTimeout)
			local := memberID(t, c, survivor)
			for _, s := range others {
				// etcd counts what it receives on some streams only (not
				// every peer has a From series): sent bytes are per peer.
				id := memberID(t, c, s)
				for _, series := range []string{`etcd_network_peer_sent_bytes_total{To="` + id + `"}`,
					`etcd_network_active_peers{Local="` + local + `",Remote="` + id + `"}`} {
					for {
						v, ok := seriesValue(scrapeMetrics(t, survivor), series)
						if ok && v != "0" {
							break
						}
						if time.Now().After(deadline) {
							t.Fatalf("%s on %s: %q, %v; want it counted", series, survivor.opts.name, v, ok)
						}
						time.Sleep(pollInterval)
					}
				}
			}
			if body := scrapeMetrics(t, survivor); !strings.Contains(body, "\netcd_network_peer_received_bytes_total{From=") {
				t.Errorf("no etcd_network_peer_received_bytes_total on %s", survivor.opts.name)
			}
			// Every member probes every peer and records the round trip
			// (the first record 5 s after it learned of the peer), in
			// etcd's buckets, with etcd's help text.
			for _, s := range c.members {
				for _, p := range c.members {
					if p == s {
						continue
					}
					id := memberID(t, c, p)
					series := `etcd_network_peer_round_trip_time_seconds_count{To="` + id + `"}`
					for {
						body := scrapeMetrics(t, s)
						v, ok := seriesValue(body, series)
						if ok && v != "0" {
							if _, ok := seriesValue(body, `etcd_network_peer_round_trip_time_seconds_bucket{To="`+id+`",le="3.2768"}`); !ok {
								t.Errorf("%s: no 3.2768 s bucket for %s: not etcd's buckets", s.opts.name, id)
							}
							for _, meta := range []string{"# HELP etcd_network_peer_round_trip_time_seconds Round-Trip-Time histogram between peers",
								"# TYPE etcd_network_peer_round_trip_time_seconds histogram"} {
								if !strings.Contains(body, "\n"+meta+"\n") {
									t.Errorf("%s: no %q", s.opts.name, meta)
								}
							}
							break
						}
						if time.Now().After(deadline) {
							t.Fatalf("%s on %s: %q, %v; want round trips recorded", series, s.opts.name, v, ok)
						}
						time.Sleep(pollInterval)
					}
				}
			}
			for _, s := range others {
				s.Kill()
			}
			base := survivor.clientURL()
			want := `{"health":"false","reason":"RAFT NO LEADER"}` + "\n"
			deadline = time.Now().Add(readyTimeout)
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
