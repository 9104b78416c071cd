package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClusterProbes probes a 3-member cluster as monitoring does, with the
// same expectations of etcd and concord. Each member exports its peer
// traffic by peer (etcd_network_peer_sent_bytes_total{To},
// _received_bytes_total{From}: etcd's dashboards' peer traffic panels) and
// the round-trip time to each peer it probes
// (etcd_network_peer_round_trip_time_seconds{To}); its peer URLs answer
// GET /version and /members as etcd's; a write txn with a range op moves
// the mvcc counters of the member that answers it and of the others as on
// etcd.
// Then two members are killed: the survivor fails /health with "RAFT NO
// LEADER", but /health?serializable=true (kubeadm's liveness probe), /livez
// and /readyz's data_corruption check still pass, since they read the
// member's own state; probes must not restart every member of a cluster
// that only lost quorum.
func TestClusterProbes(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		peers = map[string]string{} // impl -> its peer URLs' answers, normalized
	)
	t.Cleanup(func() { // after both parallel subtests
		t.Logf("etcd's answers:\n%s", peers[etcdImpl.name])
		if want, got := peers[etcdImpl.name], peers[concordImpl.name]; want != "" && got != "" && got != want {
			t.Errorf("peer URLs' /version and /members, mvcc counts by member:\nconcord:\n%s\netcd:\n%s", got, want)
		}
	})
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, im, clusterSize)
			for _, s := range c.members {
				c.waitMembers(s)
			}
			answers := peerHTTPAnswers(t, c) + txnCountsByMember(t, c)
			mu.Lock()
			peers[im.name] = answers
			mu.Unlock()
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

// peerHTTPAnswers GETs /version and /members on every member's peer URL, as
// an HTTP client of etcd's peer handler would, and returns the answers with
// the member IDs and URLs, which differ between two clusters, replaced by
// the members' names; it checks what that replacement hides: the members
// are sorted by ID and the X-Etcd-Cluster-ID header is the cluster's ID.
func peerHTTPAnswers(t *testing.T, c *cluster) string {
	t.Helper()
	var list struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
		} `json:"header"`
		Members []ctlMember `json:"members"`
	}
	out := mustCtl(t, c.endpoints(), "member", "list", "-w", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("member list output %q: %v", out, err)
	}
	names := map[uint64]string{}
	var repl []string
	for _, m := range list.Members {
		names[m.ID] = m.Name
		for _, u := range m.PeerURLs {
			repl = append(repl, u, "<peer:"+m.Name+">")
		}
		for _, u := range m.ClientURLs {
			repl = append(repl, u, "<client:"+m.Name+">")
		}
	}
	norm := strings.NewReplacer(repl...)
	var b strings.Builder
	for _, s := range c.members {
		deadline := time.Now().Add(readyTimeout)
		for {
			// etcd reports the cluster version once the members agreed on
			// it, and moves the storage version up to it a few seconds
			// later (its version monitor), each member on its own.
			code, body := httpGet(t, s.peerURL()+"/version")
			var v struct {
				Cluster string `json:"etcdcluster"`
				Storage string `json:"storage"`
			}
			settled := json.Unmarshal([]byte(body), &v) == nil && v.Cluster != "not_decided" && v.Storage == v.Cluster
			if settled || time.Now().After(deadline) {
				fmt.Fprintf(&b, "%s /version: %d %s\n", s.opts.name, code, body)
				break
			}
			time.Sleep(pollInterval)
		}
		resp, err := http.Get(s.peerURL() + "/members")
		if err != nil {
			t.Fatalf("GET /members on %s's peer URL: %v", s.opts.name, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resp.Header.Get("X-Etcd-Cluster-ID"), strconv.FormatUint(list.Header.ClusterID, 16); got != want {
			t.Errorf("%s: /members X-Etcd-Cluster-ID %q, want %q", s.opts.name, got, want)
		}
		var raw []json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil || !strings.HasSuffix(string(body), "]\n") {
			t.Fatalf("%s: /members %q: %v", s.opts.name, body, err)
		}
		// The IDs, hence the order, differ between the two clusters: the
		// order is checked here, the members compared in name order.
		var prev uint64
		var entries []string
		for i, r := range raw {
			var m struct {
				ID uint64 `json:"id"`
			}
			if err := json.Unmarshal(r, &m); err != nil {
				t.Fatal(err)
			}
			if i > 0 && prev >= m.ID {
				t.Errorf("%s: /members not sorted by ID: %s", s.opts.name, body)
			}
			prev = m.ID
			entries = append(entries, norm.Replace(strings.Replace(string(r), fmt.Sprintf(`"id":%d,`, m.ID), `"id":<`+names[m.ID]+`>,`, 1)))
		}
		slices.Sort(entries)
		fmt.Fprintf(&b, "%s /members: %d %s %s\n", s.opts.name, resp.StatusCode, resp.Header.Get("Content-Type"), strings.Join(entries, ","))
	}
	return b.String()
}

// txnCountsByMember runs a write txn with a range op through one member and
// returns how each member's mvcc counters moved: every member applies the
// compare and the put, but only the one that answers the client runs the
// range op (etcd's skipRangeExecution), which shows in
// etcd_mvcc_range_total and etcd_mvcc_txn_total.
func txnCountsByMember(t *testing.T, c *cluster) string {
	t.Helper()
	before := make([][]int64, len(c.members))
	for i, s := range c.members {
		before[i] = mvccOpValues(t, s)
	}
	via := c.members[0]
	if r := runCtl(t, via.Endpoint(), "version(\"rt\") = \"0\"\n\nput rt v\nget rt\n\n\n", "txn"); r.exit != 0 {
		t.Fatalf("etcdctl txn: %+v", r)
	}
	var b strings.Builder
	for i, s := range c.members {
		deadline := time.Now().Add(readyTimeout)
		var cur []int64
		for {
			cur = mvccOpValues(t, s)
			if cur[1] > before[i][1] || time.Now().After(deadline) { // the put is applied
				break
			}
			time.Sleep(pollInterval)
		}
		fmt.Fprintf(&b, "%s after a txn through %s:", s.opts.name, via.opts.name)
		for j, name := range mvccOpMetrics {
			fmt.Fprintf(&b, " %s%+d", strings.TrimPrefix(name, "etcd_"), cur[j]-before[i][j])
		}
		b.WriteString("\n")
	}
	return b.String()
}
