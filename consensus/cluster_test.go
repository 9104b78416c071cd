package consensus

// Raft-level cluster tests: real Nodes (raft loop, Pebble store on an
// in-memory filesystem per member) connected by MemNetwork. Outcomes are
// asserted, never timings: waits poll conditions under deadlines.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"

	"github.com/concord-kv/concord/storage"
)

const (
	testHeartbeat = 10 * time.Millisecond
	testElection  = 100 * time.Millisecond
)

type testCluster struct {
	t     *testing.T
	net   *MemNetwork
	cfgs  []Config
	nodes []*Node // nil while stopped
	ids   []uint64
}

// newTestCluster starts size members of a new cluster over a MemNetwork.
func newTestCluster(t *testing.T, size int, mutate func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, net: NewMemNetwork(uint64(size)), nodes: make([]*Node, size)}
	var spec []string
	for i := range size {
		spec = append(spec, fmt.Sprintf("m%d=http://127.0.0.1:%d", i+1, 12380+i))
	}
	for i := range size {
		cfg := Config{
			Name:              fmt.Sprintf("m%d", i+1),
			DataDir:           fmt.Sprintf("m%d", i+1),
			PeerURLs:          []string{fmt.Sprintf("http://127.0.0.1:%d", 12380+i)},
			ClientURLs:        []string{fmt.Sprintf("http://127.0.0.1:%d", 12390+i)},
			InitialCluster:    strings.Join(spec, ","),
			HeartbeatInterval: testHeartbeat,
			ElectionTimeout:   testElection,
			// Elections keep the timing these tests were written for;
			// TestInitialElectionTickAdvance turns the advance on (the
			// e2e clusters run with it, as etcd's default).
			DisableInitialElectionTickAdvance: true,
			Logger:                            testLogger().With("member", fmt.Sprintf("m%d", i+1)),
			storageFS:                         vfs.NewMem(),
		}
		if mutate != nil {
			mutate(&cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, size)
	for i := range size {
		wg.Go(func() { errs[i] = c.startErr(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	for _, n := range c.nodes {
		c.ids = append(c.ids, n.MemberID())
	}
	return c
}

func (c *testCluster) startErr(i int) error {
	cfg := c.cfgs[i]
	cfg.Transport = c.net.Transport()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		return fmt.Errorf("member %d: %w", i+1, err)
	}
	c.nodes[i] = n
	return nil
}

// start restarts a stopped member on its data.
func (c *testCluster) start(i int) {
	c.t.Helper()
	if err := c.startErr(i); err != nil {
		c.t.Fatal(err)
	}
}

func (c *testCluster) stop(i int) {
	if n := c.nodes[i]; n != nil {
		if err := n.Close(); err != nil {
			c.t.Errorf("close member %d: %v", i+1, err)
		}
		c.nodes[i] = nil
	}
}

func (c *testCluster) running() []int {
	var out []int
	for i, n := range c.nodes {
		if n != nil {
			out = append(out, i)
		}
	}
	return out
}

func (c *testCluster) index(id uint64) int { return slices.Index(c.ids, id) }

// leader waits until every running member in among (all running members if
// none given) names the same leader, which is one of them, and returns it.
func (c *testCluster) leader(among ...int) int {
	c.t.Helper()
	if len(among) == 0 {
		among = c.running()
	}
	var lead int
	waitFor(c.t, "an agreed leader", func() bool {
		id := c.nodes[among[0]].Leader()
		for _, i := range among {
			if c.nodes[i].Leader() != id || id == 0 {
				return false
			}
		}
		lead = c.index(id)
		return slices.Contains(among, lead)
	})
	return lead
}

func (c *testCluster) followers(lead int) []int {
	var out []int
	for _, i := range c.running() {
		if i != lead {
			out = append(out, i)
		}
	}
	return out
}

// converged waits until every running member applied the same index and
// holds the same revision, KV hash and store hash (Maintenance.Hash), and
// returns that revision.
func (c *testCluster) converged() int64 {
	c.t.Helper()
	var rev int64
	waitFor(c.t, "members to converge", func() bool {
		run := c.running()
		first := c.nodes[run[0]]
		h0, _, _, err := first.Store().HashKV(0)
		if err != nil {
			return false
		}
		s0, _, err := first.Store().Hash()
		if err != nil {
			return false
		}
		for _, i := range run[1:] {
			n := c.nodes[i]
			if n.applied.Load() != first.applied.Load() || n.Store().Rev() != first.Store().Rev() {
				return false
			}
			if h, _, _, err := n.Store().HashKV(0); err != nil || h != h0 {
				return false
			}
			if h, _, err := n.Store().Hash(); err != nil || h != s0 {
				return false
			}
		}
		rev = first.Store().Rev()
		return true
	})
	return rev
}

func putCtx(ctx context.Context, n *Node, k, v string) (*pb.PutResponse, error) {
	return n.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
}

func TestClusterElectsOneLeaderAndListsEveryMember(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()

	// IDs are etcd's, computed from each member's peer URLs and the token.
	for i, n := range c.nodes {
		if want := computeMemberID(c.cfgs[i].PeerURLs, DefaultClusterToken); n.MemberID() != want {
			t.Errorf("member %d id = %x, want %x", i+1, n.MemberID(), want)
		}
		if n.ClusterID() != c.nodes[0].ClusterID() {
			t.Errorf("member %d cluster id %x differs from %x", i+1, n.ClusterID(), c.nodes[0].ClusterID())
		}
	}
	if want := computeClusterID(c.ids); c.nodes[0].ClusterID() != want {
		t.Errorf("cluster id = %x, want %x", c.nodes[0].ClusterID(), want)
	}

	// Exactly one member is leader, at the term every member reports.
	leaders := 0
	for _, n := range c.nodes {
		st, err := n.Status(ctxT(t), &pb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader != c.ids[lead] {
			t.Errorf("member %x reports leader %x, want %x", n.MemberID(), st.Leader, c.ids[lead])
		}
		onLoop(n, func() {
			if n.rn.BasicStatus().RaftState == raft.StateLeader {
				leaders++
			}
		})
	}
	if leaders != 1 {
		t.Errorf("%d members in state leader", leaders)
	}

	// Every member lists every member with its peer URLs and, once the
	// members published them through raft, its client URLs.
	waitFor(t, "every member's client URLs in every member list", func() bool {
		for _, n := range c.nodes {
			resp, err := n.MemberList(ctxT(t), &pb.MemberListRequest{Linearizable: true})
			if err != nil || len(resp.Members) != 3 {
				return false
			}
			for _, m := range resp.Members {
				i := c.index(m.ID)
				if i < 0 || m.Name != c.cfgs[i].Name || !slices.Equal(m.PeerURLs, c.cfgs[i].PeerURLs) ||
					!slices.Equal(m.ClientURLs, c.cfgs[i].ClientURLs) {
					return false
				}
			}
		}
		return true
	})
}

func TestClusterFollowersForwardProposalsAndReadLinearizably(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	fs := c.followers(lead)

	// Writes through either follower are forwarded to the leader; a write
	// acknowledged by one member is seen by a linearizable read on another.
	for round := range 5 {
		for _, w := range fs {
			key := fmt.Sprintf("k/%d/%d", w, round)
			resp, err := putCtx(ctxT(t), c.nodes[w], key, "v")
			if err != nil {
				t.Fatalf("put through follower %d: %v", w+1, err)
			}
			if resp.Header.MemberId != c.ids[w] {
				t.Errorf("put answered with member id %x, want the follower's %x", resp.Header.MemberId, c.ids[w])
			}
			for _, r := range c.running() {
				got, err := c.nodes[r].Range(ctxT(t), &pb.RangeRequest{Key: []byte(key)})
				if err != nil {
					t.Fatalf("linearizable read on member %d: %v", r+1, err)
				}
				if len(got.Kvs) != 1 || got.Kvs[0].ModRevision != resp.Header.Revision {
					t.Fatalf("member %d read %v after put at revision %d through member %d", r+1, got.Kvs, resp.Header.Revision, w+1)
				}
			}
		}
	}
	// Other requests that go through raft work from a follower too.
	f := c.nodes[fs[0]]
	if _, err := f.DeleteRange(ctxT(t), &pb.DeleteRangeRequest{Key: []byte("k/"), RangeEnd: []byte("k0")}); err != nil {
		t.Fatalf("delete range through a follower: %v", err)
	}
	if _, err := f.LeaseGrant(ctxT(t), &pb.LeaseGrantRequest{ID: 42, TTL: 60}); err != nil {
		t.Fatalf("lease grant through a follower: %v", err)
	}
	txn, err := f.Txn(ctxT(t), &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte("txn"), Value: []byte("v"), Lease: 42}}}}})
	if err != nil || !txn.Succeeded {
		t.Fatalf("txn through a follower: %v %v", txn, err)
	}
	c.converged()

	// A follower that hears nothing from the leader cannot serve a
	// linearizable read of a write it has not seen; a serializable read
	// shows it is stale, the linearizable one waits and then sees the write.
	r := fs[1]
	c.net.Cut(c.ids[lead], c.ids[r])
	resp, err := putCtx(ctxT(t), c.nodes[lead], "fresh", "1")
	if err != nil {
		t.Fatalf("put with one follower cut off: %v", err)
	}
	if got := get(t, c.nodes[r], "fresh", true); len(got.Kvs) != 0 {
		t.Fatalf("cut-off follower already has the write: %v", got.Kvs)
	}
	type readResult struct {
		resp *pb.RangeResponse
		err  error
	}
	readDone := make(chan readResult, 1)
	go func() {
		g, err := c.nodes[r].Range(ctxT(t), &pb.RangeRequest{Key: []byte("fresh")})
		readDone <- readResult{g, err}
	}()
	select {
	case res := <-readDone:
		t.Fatalf("linearizable read on a cut-off follower returned %v, %v before the link healed", res.resp, res.err)
	case <-time.After(3 * testHeartbeat):
	}
	c.net.Heal()
	res := <-readDone
	if res.err != nil {
		t.Fatalf("linearizable read after heal: %v", res.err)
	}
	if len(res.resp.Kvs) != 1 || res.resp.Kvs[0].ModRevision != resp.Header.Revision {
		t.Fatalf("linearizable read after heal = %v, want the put at revision %d", res.resp.Kvs, resp.Header.Revision)
	}
}

func TestClusterLeaderKillWritesResumeAndNothingIsLost(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	var acked []*pb.PutResponse
	for i := range 20 {
		resp, err := putCtx(ctxT(t), c.nodes[i%3], fmt.Sprintf("before/%02d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, resp)
	}

	c.stop(lead)
	killed := time.Now()
	survivor := c.followers(lead)[0]
	var resumed time.Duration
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*testElection)
		_, err := putCtx(ctx, c.nodes[survivor], "after/first", "v")
		cancel()
		if err == nil {
			resumed = time.Since(killed)
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("no write succeeded within 10s of the leader's death: %v", err)
		}
	}
	newLead := c.leader()
	if newLead == lead {
		t.Fatalf("stopped member still leader")
	}
	t.Logf("writes resumed %v after the leader stopped (election timeout %v)", resumed, testElection)

	for i := range 20 {
		if _, err := putCtx(ctxT(t), c.nodes[c.followers(lead)[i%2]], fmt.Sprintf("after/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	c.start(lead)
	c.leader()
	c.converged()
	for _, n := range c.nodes {
		for i, a := range acked {
			got := get(t, n, fmt.Sprintf("before/%02d", i), true)
			if len(got.Kvs) != 1 || got.Kvs[0].ModRevision != a.Header.Revision {
				t.Fatalf("member %x lost acknowledged write before/%02d: %v", n.MemberID(), i, got.Kvs)
			}
		}
		if got := get(t, n, "after/first", false); len(got.Kvs) != 1 {
			t.Fatalf("member %x: %v", n.MemberID(), got.Kvs)
		}
	}
}

func TestClusterPartitionedLeaderCannotCommitAndHealConverges(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	old := c.leader()
	put(t, c.nodes[old], "base", "1")
	c.converged()

	c.net.Isolate(c.ids[old], c.ids...)
	// The minority side cannot commit a write or serve a linearizable read.
	ctx, cancel := context.WithTimeout(context.Background(), 5*testElection)
	_, err := putCtx(ctx, c.nodes[old], "minority", "lost")
	cancel()
	if err == nil {
		t.Fatalf("isolated leader committed a write")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*testElection)
	_, err = c.nodes[old].Range(ctx, &pb.RangeRequest{Key: []byte("base")})
	cancel()
	if err == nil {
		t.Fatalf("isolated leader served a linearizable read")
	}

	// The majority elects a new leader and commits.
	majority := c.followers(old)
	newLead := c.leader(majority...)
	if newLead == old {
		t.Fatalf("majority kept the isolated leader")
	}
	var acked []int64
	for i := range 10 {
		resp, err := putCtx(ctxT(t), c.nodes[majority[i%2]], fmt.Sprintf("majority/%d", i), "v")
		if err != nil {
			t.Fatalf("majority write: %v", err)
		}
		acked = append(acked, resp.Header.Revision)
	}
	// The old leader stepped down (check quorum) and knows of no leader it
	// can reach.
	waitFor(t, "isolated leader to step down", func() bool {
		return c.nodes[old].Leader() != c.ids[old]
	})

	c.net.Heal()
	c.leader()
	c.converged()
	for _, n := range c.nodes {
		if got := get(t, n, "minority", false); len(got.Kvs) != 0 {
			t.Fatalf("member %x applied the write proposed on the minority side: %v", n.MemberID(), got.Kvs)
		}
		for i, rev := range acked {
			g := get(t, n, fmt.Sprintf("majority/%d", i), true)
			if len(g.Kvs) != 1 || g.Kvs[0].ModRevision != rev {
				t.Fatalf("member %x: majority/%d = %v, want revision %d", n.MemberID(), i, g.Kvs, rev)
			}
		}
	}
	// The healed cluster takes writes through the former leader.
	if _, err := putCtx(ctxT(t), c.nodes[old], "healed", "1"); err != nil {
		t.Fatalf("write through the healed former leader: %v", err)
	}
}

func TestClusterSnapshotCatchUpAfterLogTruncation(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotCount = 20
		cfg.SnapshotCatchUpEntries = 5
	})
	lead := c.leader()
	behind := c.followers(lead)[0]
	put(t, c.nodes[lead], "early", "1")
	c.converged()
	c.stop(behind)
	stoppedAt := c.nodes[lead].applied.Load()

	for i := range 150 {
		if _, err := putCtx(ctxT(t), c.nodes[lead], fmt.Sprintf("k/%03d", i%40), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.nodes[lead].Compact(ctxT(t), &pb.CompactionRequest{Revision: 60}); err != nil {
		t.Fatal(err)
	}
	var logFirst uint64
	onLoop(c.nodes[lead], func() { logFirst = c.nodes[lead].log.first })
	if logFirst <= stoppedAt+1 {
		t.Fatalf("leader's log starts at %d; the stopped member needs %d: not truncated", logFirst, stoppedAt+1)
	}

	c.start(behind)
	rev := c.converged()
	if got := c.nodes[behind].snapshotsInstalled.Load(); got < 1 {
		t.Fatalf("member caught up without a snapshot (%d installed)", got)
	}
	waitFor(t, "the network to count the snapshot", func() bool { return c.net.SnapshotsDelivered() >= 1 })
	if got := c.nodes[lead].snapshotsSent.Load(); got < 1 {
		t.Fatalf("leader sent %d snapshots", got)
	}
	b := c.nodes[behind]
	if b.Store().CompactRev() != 60 {
		t.Errorf("caught-up member compact revision %d, want 60", b.Store().CompactRev())
	}
	if got := get(t, b, "k/", true); got.Header.Revision != rev {
		t.Errorf("caught-up member at revision %d, want %d", got.Header.Revision, rev)
	}

	// It keeps following, and restarts on the installed state.
	for i := range 30 {
		if _, err := putCtx(ctxT(t), c.nodes[i%3], fmt.Sprintf("after/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	c.converged()
	c.stop(behind)
	c.start(behind)
	put(t, c.nodes[behind], "after-restart", "1")
	c.converged()
	if _, err := c.nodes[behind].RangeEvents(ctxT(t), 61, 0, []byte("k/"), []byte("k0")); err != nil {
		t.Errorf("history on the caught-up member: %v", err)
	}
}

func TestClusterSurvivesLossyNetwork(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.reqTimeout = 10 * testElection })
	lead := c.leader()
	c.net.SetDropRate(0.3)
	// Proposals made on the leader are never lost to the network: raft
	// retransmits appends until a quorum has them.
	for i := range 30 {
		if _, err := putCtx(ctxT(t), c.nodes[lead], fmt.Sprintf("lossy/%02d", i), "v"); err != nil {
			if errors.Is(err, ErrNoLeader) || errors.Is(err, ErrTimeout) {
				// Leadership may move under heavy loss; that write's fate is
				// unknown, which the converge check below tolerates.
				lead = c.leader()
				continue
			}
			t.Fatal(err)
		}
	}
	c.net.Heal()
	c.leader()
	c.converged()
}

func TestClusterProposalLostWithItsLeaderFailsFast(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	f := c.followers(lead)[0]
	// The follower's forwarded proposal never reaches the leader, which then
	// dies: nobody will ever apply it.
	c.net.Cut(c.ids[f], c.ids[lead])
	type res struct {
		err  error
		took time.Duration
	}
	done := make(chan res, 1)
	go func() {
		start := time.Now()
		_, err := putCtx(context.Background(), c.nodes[f], "orphan", "v")
		done <- res{err, time.Since(start)}
	}()
	waitFor(t, "the proposal to be in flight", func() bool { return len(c.nodes[f].wait.ids()) > 0 })
	c.stop(lead)
	c.net.Heal()
	r := <-done
	if !errors.Is(r.err, ErrTimeout) || !errors.Is(r.err, ErrTimeoutLeaderFail) {
		t.Fatalf("orphaned proposal returned %v, want ErrTimeoutLeaderFail", r.err)
	}
	if r.took >= c.nodes[f].reqTimeout {
		t.Fatalf("orphaned proposal failed after %v, no sooner than the request timeout %v", r.took, c.nodes[f].reqTimeout)
	}
	t.Logf("orphaned proposal failed after %v (request timeout %v)", r.took, c.nodes[f].reqTimeout)
	// Other proposals of this member that were in flight may have been
	// lost with the leader too (under -race two failures were counted):
	// at least this one failed.
	if s := c.nodes[f].Stats(); s.ProposalsFailed < 1 {
		t.Fatalf("after the orphaned proposal: %d proposals failed, want at least 1", s.ProposalsFailed)
	}
	waitFor(t, "no proposal pending", func() bool { return c.nodes[f].Stats().ProposalsPending == 0 })
	// The cluster takes the write when asked again (a client retries a
	// timeout; under load the new leadership may still be settling).
	waitFor(t, "a write after the leader change", func() bool {
		_, err := putCtx(ctxT(t), c.nodes[f], "orphan", "v")
		return err == nil
	})
}

// TestMemberAttributesArePublishedAndLegacyIdentityKept: a data dir written
// before the local member ID had its own key still starts, keeps its ID
// across the table rewrite that publishing new client URLs causes, and the
// replicated table ends up with the new URLs.
func TestMemberAttributesArePublishedAndLegacyIdentityKept(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	id := n.MemberID()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	// Make it look like an old data dir: no local ID key, the ID in the
	// table's metadata.
	s, err := storage.Open(cfg.DataDir, storage.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Meta(metaClusterKey)
	if err != nil {
		t.Fatal(err)
	}
	var meta clusterMeta
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatal(err)
	}
	meta.MemberID = id
	legacy, _ := json.Marshal(meta)
	b := s.NewBatch()
	b.SetMeta(metaClusterKey, legacy)
	if err := b.Pebble().Delete(keyLocalMember, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cfg.ClientURLs = []string{"http://127.0.0.1:4001"}
	n = startNode(t, cfg)
	if n.MemberID() != id {
		t.Fatalf("member id %x after restart, want %x", n.MemberID(), id)
	}
	waitFor(t, "the new client URL in the replicated table", func() bool {
		raw, err := n.Store().Meta(metaClusterKey)
		if err != nil {
			return false
		}
		var m clusterMeta
		return json.Unmarshal(raw, &m) == nil && len(m.Members) == 1 &&
			slices.Equal(m.Members[0].ClientURLs, cfg.ClientURLs) && m.MemberID == 0
	})
	ml, err := n.MemberList(ctxT(t), &pb.MemberListRequest{})
	if err != nil || len(ml.Members) != 1 || !slices.Equal(ml.Members[0].ClientURLs, cfg.ClientURLs) {
		t.Fatalf("member list = %v, %v", ml, err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	if n.MemberID() != id {
		t.Fatalf("member id %x after the table was rewritten, want %x", n.MemberID(), id)
	}
}

func TestConfigMultiMemberNeedsTransport(t *testing.T) {
	cfg := Config{Name: "a", InitialCluster: "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381"}
	cfg.SetDefaults()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "transport") {
		t.Fatalf("multi-member config without a transport: %v", err)
	}
	cfg.Transport = NewMemNetwork(1).Transport()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("multi-member config with a transport: %v", err)
	}
}

// TestClusterCrashRightAfterSnapshotInstall: a member that crashes after
// installing a snapshot whose store is ahead of the raft snapshot index,
// before raft caught up to the store, restarts from that state (raft resumes
// at the snapshot index, the store is not rewound) and converges without
// applying anything twice.
func TestClusterCrashRightAfterSnapshotInstall(t *testing.T) {
	c, lead, behind := newLaggingCluster(t)
	clone := c.crashAfterSnapshotInstall(t, behind)

	// The member comes back with the state of the moment right after the
	// install: its store is ahead of raft.
	st, err := storage.Open(c.cfgs[behind].DataDir, storage.Options{FS: clone, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := st.Applied()
	raftApplied, err := loadRaftApplied(st.DB(), stored)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if raftApplied >= stored {
		t.Fatalf("crashed with raft applied %d, store applied %d: the crash missed the window it tests", raftApplied, stored)
	}
	t.Logf("crashed with raft applied %d, store applied %d", raftApplied, stored)
	c.cfgs[behind].storageFS = clone
	c.cfgs[behind].afterSnapshotInstall = nil
	c.start(behind)
	put(t, c.nodes[lead], "after-crash", "1")
	c.converged()
	// And once more from the caught-up state.
	c.stop(behind)
	c.start(behind)
	c.converged()
}

// newLaggingCluster returns three members that take a raft snapshot every
// 20 entries on crashable in-memory storage, and the follower behind,
// stopped while the leader lead took 95 puts (k/000 to k/094): started
// again, it needs a snapshot. The writes end between two raft snapshot
// records, so the store the leader sends is ahead of the snapshot's index.
func newLaggingCluster(t *testing.T) (c *testCluster, lead, behind int) {
	t.Helper()
	c = newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotCount = 20
		cfg.SnapshotCatchUpEntries = 5
		cfg.storageFS = vfs.NewCrashableMem()
	})
	lead = c.leader()
	behind = c.followers(lead)[0]
	c.stop(behind)
	for i := range 95 {
		put(t, c.nodes[lead], fmt.Sprintf("k/%03d", i), "v")
	}
	return c, lead, behind
}

// crashAfterSnapshotInstall starts the stopped member i, whose storage is a
// vfs.MemFS, lets it install the snapshot the leader sends, and returns its
// file system as a crash right after the install leaves it (only what was
// synced survives); the member does nothing more and is stopped.
func (c *testCluster) crashAfterSnapshotInstall(t *testing.T, i int) *vfs.MemFS {
	t.Helper()
	fs := c.cfgs[i].storageFS.(*vfs.MemFS)
	crashed := make(chan *vfs.MemFS, 1)
	c.cfgs[i].afterSnapshotInstall = func(n *Node) {
		crashed <- fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		<-n.stopC
	}
	c.start(i)
	var clone *vfs.MemFS
	select {
	case clone = <-crashed:
	case <-time.After(10 * time.Second):
		t.Fatal("the member did not install a snapshot")
	}
	c.stop(i)
	return clone
}
