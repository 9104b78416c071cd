package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// TestClusterLeasesThroughEveryMember keeps leases alive and reads their
// TTLs through every member of a three-member cluster, as etcd allows (its
// followers forward lease renewals to the leader): etcdctl's outputs are
// compared, and a lock session held through each member outlives its TTL.
func TestClusterLeasesThroughEveryMember(t *testing.T) {
	// Short, so that the test waits past it, with room for a loaded
	// machine: clientv3 gives a session up when nothing answered its
	// keep-alives (sent every third of it) for a whole TTL.
	const sessionTTL = 5
	t.Parallel()
	idRe := regexp.MustCompile(`lease [0-9a-f]+ `)
	remainingRe := regexp.MustCompile(`remaining\(\d+s\)`)
	outputs := map[string]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			c := startCluster(t, im, clusterSize)
			for _, s := range c.members {
				c.waitMembers(s)
			}
			id := strings.Fields(mustCtl(t, c.members[0].Endpoint(), "lease", "grant", "100"))[1]
			var out strings.Builder
			for i, s := range c.members {
				for _, args := range [][]string{
					{"lease", "keep-alive", "--once", id},
					{"lease", "timetolive", "--keys", id},
					{"lease", "timetolive", "1234"},
					{"lease", "keep-alive", "--once", "1234"},
				} {
					r := runCtl(t, s.Endpoint(), "", args...)
					line := idRe.ReplaceAllString(strings.TrimSpace(r.stdout+r.stderr), "lease ID ")
					fmt.Fprintf(&out, "m%d %s: exit %d %s\n", i+1, strings.Join(args[:2], " "), r.exit, remainingRe.ReplaceAllString(line, "remaining(N)"))
				}
			}
			outputs[im.name] = out.String()

			// A lease granted through any member expires on time: its key
			// is deleted within a few seconds of its TTL.
			ctx := testCtx(t)
			const grantTTL = 3
			granted := time.Now()
			for i, s := range c.members {
				cl := newClient(t, s)
				g := must(cl.Grant(ctx, grantTTL))(t)
				must(cl.Put(ctx, fmt.Sprintf("expiring/m%d", i+1), "v", clientv3.WithLease(g.ID)))(t)
			}
			watcher := newClient(t, c.members[0])
			for {
				resp := must(watcher.Get(ctx, "expiring/", clientv3.WithPrefix(), clientv3.WithCountOnly()))(t)
				if resp.Count == 0 {
					break
				}
				if since := time.Since(granted); since > (grantTTL+4)*time.Second {
					t.Fatalf("%d keys of leases with a %d s TTL still there %v after the grants", resp.Count, grantTTL, since.Round(time.Second))
				}
				time.Sleep(pollInterval)
			}

			// A session (what locks and elections hold) through each
			// member stays alive past its TTL: its keep-alives reach the
			// member that renews leases.
			var sessions []*concurrency.Session
			for _, s := range c.members {
				sess, err := concurrency.NewSession(newClient(t, s), concurrency.WithTTL(sessionTTL))
				if err != nil {
					t.Fatalf("session through %s: %v", s.opts.name, err)
				}
				t.Cleanup(func() { sess.Close() })
				sessions = append(sessions, sess)
			}
			mu := concurrency.NewMutex(sessions[2], "/lock")
			if err := mu.Lock(ctx); err != nil {
				t.Fatalf("lock through %s: %v", c.members[2].opts.name, err)
			}
			deadline := time.Now().Add(2*sessionTTL*time.Second + time.Second)
			cl := newClient(t, c.members[0])
			for time.Now().Before(deadline) {
				for i, sess := range sessions {
					select {
					case <-sess.Done():
						t.Fatalf("session through m%d ended: its lease was not kept alive", i+1)
					default:
					}
					ttl, err := cl.TimeToLive(ctx, sess.Lease())
					if err != nil || ttl.TTL <= 0 {
						t.Fatalf("session lease through m%d: TTL %v, %v", i+1, ttl, err)
					}
				}
				time.Sleep(pollInterval)
			}
			if resp, err := cl.Get(ctx, "/lock", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("lock key after the sessions' TTL: %v, %v", resp, err)
			}

			// The member that renews leases dies (etcd's raft leader,
			// concord's lease authority holder): the sessions through the
			// others survive, as the lock they hold.
			renewer := c.memberByID(ctx, c.checkStatus(c.members[0]))
			if im.name == "concord" {
				renewer = authorityHolder(t, c)
			}
			renewer.Kill()
			var survivors []int
			for i, s := range c.members {
				if s != renewer {
					survivors = append(survivors, i)
				}
			}
			cl = newClient(t, c.members[survivors[0]])
			deadline = time.Now().Add(2*sessionTTL*time.Second + 3*time.Second) // a takeover, then twice the TTL
			for time.Now().Before(deadline) {
				for _, i := range survivors {
					select {
					case <-sessions[i].Done():
						t.Fatalf("session through m%d ended after %s died", i+1, renewer.opts.name)
					default:
					}
				}
				time.Sleep(pollInterval)
			}
			for _, i := range survivors {
				if ttl, err := cl.TimeToLive(ctx, sessions[i].Lease()); err != nil || ttl.TTL <= 0 {
					t.Fatalf("session lease through m%d after %s died: TTL %v, %v", i+1, renewer.opts.name, ttl, err)
				}
			}
		})
	}
	// Both ran unless -run picked one (a failed one failed the test).
	if len(outputs) == 2 && outputs["etcd"] != outputs["concord"] {
		t.Errorf("etcdctl outputs differ:\netcd:\n%s\nconcord:\n%s", outputs["etcd"], outputs["concord"])
	}
}

// checkKeepAliveEverywhere grants a lease through the first member and
// keeps it alive once through each: in concord, members other than the one
// holding the lease authority forward the keep-alive over the peer URLs,
// so this also exercises peer TLS.
func checkKeepAliveEverywhere(t *testing.T, c *cluster) {
	t.Helper()
	id := strings.Fields(mustCtl(t, c.members[0].Endpoint(), "lease", "grant", "100"))[1]
	for _, s := range c.members {
		if out := mustCtl(t, s.Endpoint(), "lease", "keep-alive", "--once", id); out != fmt.Sprintf("lease %s keepalived with TTL(100)\n", id) {
			t.Fatalf("keep-alive through %s: %q", s.opts.name, out)
		}
	}
}

// authorityHolder is the concord member whose lease service last logged
// that it acquired the lease authority.
func authorityHolder(t *testing.T, c *cluster) *Server {
	t.Helper()
	var holder *Server
	var at string
	for _, s := range c.members {
		for line := range strings.SplitSeq(s.log.String(), "\n") {
			if !strings.Contains(line, `"msg":"lease authority acquired","component":"leasesvc"`) {
				continue
			}
			ts := line[strings.Index(line, `"time":"`)+len(`"time":"`):]
			if ts = ts[:strings.IndexByte(ts, '"')]; ts > at { // RFC 3339, one zone: sorts as text
				holder, at = s, ts
			}
		}
	}
	if holder == nil {
		t.Fatal("no member logged that it acquired the lease authority")
	}
	return holder
}
