package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	clusterSize = 3
	// clusterResumeLimit bounds how long writes may stop after the leader is killed: a few
	// election timeouts (1 s, the default, randomized up to 2 s) plus the client's own retry,
	// with room for a loaded CI machine.
	clusterResumeLimit = 10 * time.Second
	// clusterAttempt bounds one write attempt of the writers and of the convergence checks.
	clusterAttempt = 2 * time.Second
	// resumeProbe bounds one attempt of the probe that measures when writes resume: short, so
	// the measurement is not dominated by an attempt that went to the dead leader.
	resumeProbe = 250 * time.Millisecond
)

// cluster is a multi-member cluster of one implementation, started the etcd way: every member
// gets the same --initial-cluster and its own name, data dir and ports.
type cluster struct {
	t       *testing.T
	members []*Server
}

// startCluster starts size members concurrently (none is ready before a quorum is up) and waits
// until every one answers /health.
func startCluster(t *testing.T, im *impl, size int) *cluster {
	t.Helper()
	return startClusterWith(t, im, size, serverOptions{})
}

// startClusterWith is startCluster with every member started with opts (its name and
// --initial-cluster are the member's own).
func startClusterWith(t *testing.T, im *impl, size int, opts serverOptions) *cluster {
	t.Helper()
	requireBinary(t, im)
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var c *cluster
		if c, err = tryStartCluster(t, im, size, opts); err == nil {
			return c
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("start %d-member %s cluster: %v", size, im.name, err)
	return nil
}

func tryStartCluster(t *testing.T, im *impl, size int, opts serverOptions) (*cluster, error) {
	c := &cluster{t: t}
	var spec []string
	for i := range size {
		s := &Server{t: t, impl: im, opts: opts, dataDir: t.TempDir(), log: &syncBuffer{}}
		var err error
		if s.clientPort, s.peerPort, err = freePorts(); err != nil {
			return nil, err
		}
		s.opts.name = fmt.Sprintf("m%d", i+1)
		spec = append(spec, s.opts.name+"="+s.peerURL())
		c.members = append(c.members, s)
	}
	for _, s := range c.members {
		s.opts.initialCluster = strings.Join(spec, ",")
		t.Cleanup(func() {
			s.Kill()
			if t.Failed() {
				t.Logf("%s %s output (last %d bytes):\n%s", s.impl.name, s.opts.name, logTail, s.log.Tail(logTail))
			}
		})
	}
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i, s := range c.members {
		wg.Go(func() { errs[i] = s.start() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range c.members {
			s.Kill()
			if strings.Contains(s.log.String(), "address already in use") {
				err = fmt.Errorf("%w (address already in use)", err)
			}
		}
		return nil, err
	}
	return c, nil
}

func (c *cluster) endpoints() string {
	eps := make([]string, len(c.members))
	for i, s := range c.members {
		eps[i] = s.Endpoint()
	}
	return strings.Join(eps, ",")
}

// ctlMember is the JSON etcdctl prints for a member.
type ctlMember struct {
	ID         uint64   `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

// ctlStatus is the JSON etcdctl prints for one endpoint's status.
type ctlStatus struct {
	Endpoint string `json:"Endpoint"`
	Status   struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
			MemberID  uint64 `json:"member_id"`
		} `json:"header"`
		Leader    uint64 `json:"leader"`
		RaftIndex uint64 `json:"raftIndex"`
		RaftTerm  uint64 `json:"raftTerm"`
	} `json:"Status"`
}

// waitMembers polls `etcdctl member list` until it lists every member with its peer and client
// URLs (concord members publish their client URLs through raft once a leader exists).
func (c *cluster) waitMembers(via *Server) []ctlMember {
	c.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		var resp struct {
			Members []ctlMember `json:"members"`
		}
		out := mustCtl(c.t, via.Endpoint(), "member", "list", "-w", "json")
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			c.t.Fatalf("member list output %q: %v", out, err)
		}
		if c.membersMatch(resp.Members) {
			return resp.Members
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("member list through %s never showed the %d members: %s", via.opts.name, len(c.members), out)
		}
		time.Sleep(pollInterval)
	}
}

func (c *cluster) membersMatch(ms []ctlMember) bool {
	if len(ms) != len(c.members) {
		return false
	}
	for _, s := range c.members {
		i := slices.IndexFunc(ms, func(m ctlMember) bool { return m.Name == s.opts.name })
		if i < 0 || !slices.Equal(ms[i].PeerURLs, []string{s.peerURL()}) || !slices.Equal(ms[i].ClientURLs, []string{s.clientURL()}) {
			return false
		}
	}
	return true
}

// clusterStatus runs `etcdctl endpoint status --cluster`, which reaches every member through
// the client URLs of the member list.
func (c *cluster) clusterStatus(via *Server) []ctlStatus {
	c.t.Helper()
	out := mustCtl(c.t, via.Endpoint(), "endpoint", "status", "--cluster", "-w", "json")
	var st []ctlStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("endpoint status output %q: %v", out, err)
	}
	return st
}

// checkStatus asserts that status --cluster reports every member, one cluster, one leader.
// A member may not know the leader for a moment after an election or a leader transfer (a
// raft voter forgets the old leader when it votes and learns the winner from its first
// append), so a disagreement is asked again until readyTimeout; one that lasts fails.
func (c *cluster) checkStatus(via *Server) (leader uint64) {
	c.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		leader, err := c.statusAgrees(via)
		if err == nil {
			return leader
		}
		if time.Now().After(deadline) {
			c.t.Fatal(err)
		}
		time.Sleep(pollInterval)
	}
}

// statusAgrees is one round of checkStatus.
func (c *cluster) statusAgrees(via *Server) (uint64, error) {
	c.t.Helper()
	st := c.clusterStatus(via)
	if len(st) != len(c.members) {
		return 0, fmt.Errorf("endpoint status --cluster reported %d endpoints, want %d: %+v", len(st), len(c.members), st)
	}
	ids := map[uint64]bool{}
	for _, e := range st {
		ids[e.Status.Header.MemberID] = true
		if e.Status.Header.ClusterID != st[0].Status.Header.ClusterID || e.Status.Leader != st[0].Status.Leader || e.Status.Leader == 0 {
			return 0, fmt.Errorf("endpoint status --cluster disagrees on cluster or leader: %+v", st)
		}
	}
	if len(ids) != len(c.members) || !ids[st[0].Status.Leader] {
		return 0, fmt.Errorf("endpoint status --cluster: member ids %v, leader %x", ids, st[0].Status.Leader)
	}
	return st[0].Status.Leader, nil
}

// memberByID finds the member whose status reports id.
func (c *cluster) memberByID(ctx context.Context, id uint64) *Server {
	c.t.Helper()
	for _, s := range c.members {
		cl := newClient(c.t, s)
		st, err := cl.Status(ctx, s.Endpoint())
		if err == nil && st.Header.MemberId == id {
			return s
		}
	}
	c.t.Fatalf("no member with id %x", id)
	return nil
}

// TestCluster starts three members the etcd way, writes through one and reads linearizably
// through another, SIGKILLs the leader while writers run, checks that writes resume through a
// survivor within a few election timeouts, restarts the killed member and checks that it
// converges and that no acknowledged write is lost anywhere.
func TestCluster(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) { testCluster(t, im) })
	}
}

func testCluster(t *testing.T, im *impl) {
	ctx := testCtx(t)
	c := startCluster(t, im, clusterSize)
	a, b := c.members[0], c.members[1]

	// Every member lists every member, with its peer and client URLs, and status --cluster
	// reaches all of them.
	for _, s := range c.members {
		c.waitMembers(s)
	}
	c.checkStatus(a)

	// A write through one member is visible to a linearizable read through another, and to a
	// watcher on a third.
	ca, cb := newClient(t, a), newClient(t, b)
	wch := newClient(t, c.members[2]).Watch(ctx, "watched")
	put := must(ca.Put(ctx, "k", "v1"))(t)
	got := must(cb.Get(ctx, "k"))(t)
	if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v1" || got.Kvs[0].ModRevision != put.Header.Revision {
		t.Fatalf("linearizable read through %s after a put through %s: %v", b.opts.name, a.opts.name, got.Kvs)
	}
	wput := must(ca.Put(ctx, "watched", "x"))(t)
	select {
	case wr := <-wch:
		if len(wr.Events) != 1 || wr.Events[0].Kv.ModRevision != wput.Header.Revision {
			t.Fatalf("watch on a member that did not take the write: %+v", wr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no watch event on a member that did not take the write")
	}

	// Writers on every member; then the leader is killed.
	var (
		mu     sync.Mutex
		acked  = map[string]int64{}
		wctx   context.Context
		cancel context.CancelFunc
		wg     sync.WaitGroup
		count  atomic.Int64
	)
	wctx, cancel = context.WithCancel(ctx)
	defer cancel()
	for i, s := range c.members {
		cl := newClient(t, s)
		wg.Go(func() {
			for j := 0; wctx.Err() == nil; j++ {
				key := fmt.Sprintf("w/%d/%05d", i, j)
				actx, acancel := context.WithTimeout(wctx, clusterAttempt)
				resp, err := cl.Put(actx, key, key)
				acancel()
				if err == nil {
					mu.Lock()
					acked[key] = resp.Header.Revision
					mu.Unlock()
					count.Add(1)
				}
			}
		})
	}
	for count.Load() < 300 && ctx.Err() == nil {
		time.Sleep(pollInterval)
	}
	// The leader now: leadership may have moved since the status check above.
	leader := c.memberByID(ctx, c.checkStatus(a))
	var survivors []*Server
	for _, s := range c.members {
		if s != leader {
			survivors = append(survivors, s)
		}
	}
	leader.Kill()
	killed := time.Now()

	// Writes resume through a survivor: fresh requests, each with its own deadline.
	cs := newClient(t, survivors[0])
	var resumed time.Duration
	for {
		actx, acancel := context.WithTimeout(ctx, resumeProbe)
		_, err := cs.Put(actx, "resumed", "yes")
		acancel()
		if err == nil {
			resumed = time.Since(killed)
			break
		}
		if time.Since(killed) > clusterResumeLimit {
			t.Fatalf("%s: no write through a survivor within %v of killing the leader: %v", im.name, clusterResumeLimit, err)
		}
	}
	t.Logf("%s: writes resumed through a survivor %v after SIGKILL of the leader", im.name, resumed.Round(time.Millisecond))
	// Writers through the survivors keep going for a moment.
	after := count.Load()
	for count.Load() < after+100 && ctx.Err() == nil {
		time.Sleep(pollInterval)
	}
	cancel()
	wg.Wait()

	// The killed member comes back, catches up, and the cluster is whole again.
	leader.Restart()
	waitConverged(ctx, t, c)
	for _, s := range c.members {
		c.waitMembers(s)
	}
	c.checkStatus(leader)

	// No acknowledged write is lost, on any member: serializable reads see each member's own
	// store, after it caught up.
	mu.Lock()
	defer mu.Unlock()
	for _, s := range c.members {
		cl := newClient(t, s)
		resp := must(cl.Get(ctx, "w/", clientv3.WithPrefix(), clientv3.WithSerializable()))(t)
		have := make(map[string]int64, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			have[string(kv.Key)] = kv.ModRevision
		}
		lost := 0
		for k, rev := range acked {
			if have[k] != rev {
				lost++
				if lost <= 5 {
					t.Errorf("%s: acknowledged put %s at revision %d reads as revision %d", s.opts.name, k, rev, have[k])
				}
			}
		}
		if lost > 0 {
			t.Fatalf("%s lost %d of %d acknowledged writes", s.opts.name, lost, len(acked))
		}
	}
	t.Logf("%s: %d acknowledged writes present on all %d members", im.name, len(acked), len(c.members))
}

// waitConverged waits until every member reports the same revision and KV hash.
func waitConverged(ctx context.Context, t *testing.T, c *cluster) {
	t.Helper()
	clients := make([]*clientv3.Client, len(c.members))
	for i, s := range c.members {
		clients[i] = newClient(t, s)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		var hashes []uint32
		var revs []int64
		for i, cl := range clients {
			actx, cancel := context.WithTimeout(ctx, clusterAttempt)
			h, err := cl.HashKV(actx, c.members[i].Endpoint(), 0)
			cancel()
			if err != nil {
				break
			}
			hashes, revs = append(hashes, h.Hash), append(revs, h.Header.Revision)
		}
		if len(hashes) == len(clients) && !slices.ContainsFunc(hashes, func(h uint32) bool { return h != hashes[0] }) &&
			!slices.ContainsFunc(revs, func(r int64) bool { return r != revs[0] }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members did not converge: revisions %v, hashes %v", revs, hashes)
		}
		time.Sleep(pollInterval)
	}
}
