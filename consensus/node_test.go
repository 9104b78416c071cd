package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.uber.org/goleak"

	"github.com/concord-kv/concord/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testConfig(t testing.TB) Config {
	t.Helper()
	return Config{
		Name:              "n1",
		DataDir:           t.TempDir(),
		PeerURLs:          []string{"http://127.0.0.1:2380"},
		ClientURLs:        []string{"http://127.0.0.1:2379"},
		HeartbeatInterval: 10 * time.Millisecond,
		ElectionTimeout:   100 * time.Millisecond,
		Logger:            testLogger(),
	}
}

func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func put(t testing.TB, n *Node, k, v string) *pb.PutResponse {
	t.Helper()
	resp, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
	if err != nil {
		t.Fatalf("Put(%q): %v", k, err)
	}
	return resp
}

func get(t testing.TB, n *Node, k string, serializable bool) *pb.RangeResponse {
	t.Helper()
	resp, err := n.Range(ctxT(t), &pb.RangeRequest{Key: []byte(k), Serializable: serializable})
	if err != nil {
		t.Fatalf("Range(%q): %v", k, err)
	}
	return resp
}

// blockLoop parks the raft loop until the returned function is called.
func blockLoop(t testing.TB, n *Node) (release func()) {
	t.Helper()
	entered, rel := make(chan struct{}), make(chan struct{})
	n.execC <- func() { close(entered); <-rel }
	<-entered
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	return release
}

// onLoop runs f on the raft loop and waits for it.
func onLoop(n *Node, f func()) {
	done := make(chan struct{})
	n.execC <- func() { f(); close(done) }
	<-done
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMemberAndClusterIDsMatchEtcd(t *testing.T) {
	// etcd's well-known IDs for `etcd` with no flags.
	id := computeMemberID([]string{"http://localhost:2380"}, "etcd-cluster")
	if id != 0x8e9e05c52164694d {
		t.Fatalf("member id = %x, want 8e9e05c52164694d", id)
	}
	if cid := computeClusterID([]uint64{id}); cid != 0xcdf818194e3a8c32 {
		t.Fatalf("cluster id = %x, want cdf818194e3a8c32", cid)
	}
}

func TestConfigValidate(t *testing.T) {
	var def Config
	def.SetDefaults()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if def.PeerURLs[0] != DefaultPeerURL || def.DataDir != "default.concord" || def.QuotaBackendBytes != DefaultQuotaBackendBytes {
		t.Fatalf("unexpected defaults: %+v", def)
	}
	derived := Config{Name: "a", InitialCluster: "a=http://10.0.0.1:2380"}
	derived.SetDefaults()
	if err := derived.Validate(); err != nil || derived.PeerURLs[0] != "http://10.0.0.1:2380" {
		t.Fatalf("peer urls not derived from initial cluster: %v %v", derived.PeerURLs, err)
	}
	bad := map[string]func(c *Config){
		"cluster state":     func(c *Config) { c.ClusterState = "weird" },
		"election too low":  func(c *Config) { c.ElectionTimeout = 4 * c.HeartbeatInterval },
		"name not in list":  func(c *Config) { c.InitialCluster = "other=http://localhost:2380" },
		"multi member":      func(c *Config) { c.InitialCluster = "default=http://localhost:2380,b=http://localhost:2381" },
		"peer url mismatch": func(c *Config) { c.InitialCluster = "default=http://localhost:9999" },
		"bad url":           func(c *Config) { c.PeerURLs = []string{"localhost"} },
		"no port":           func(c *Config) { c.ClientURLs = []string{"http://localhost"} },
	}
	for name, mutate := range bad {
		c := def
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}

// TestInitialClusterResolvesHostNames: as etcd, an initial cluster entry
// that names this member by a host name it advertises by address matches
// (--discovery-srv gives SRV targets), and the member ID comes from the
// initial cluster's URL, which every member computes alike.
func TestInitialClusterResolvesHostNames(t *testing.T) {
	c := Config{Name: "a", PeerURLs: []string{"http://127.0.0.1:2380"}, InitialCluster: "a=http://localhost:2380,b=http://localhost:2381"}
	c.SetDefaults()
	members, err := c.initialMembers()
	if err != nil {
		t.Fatal(err)
	}
	if want := computeMemberID([]string{"http://localhost:2380"}, c.ClusterToken); members[0].ID != want {
		t.Errorf("member id %x, want %x (from the initial cluster's URL)", members[0].ID, want)
	}
	for _, cluster := range []string{"a=http://localhost:2390", "a=https://localhost:2380", "a=http://localhost:2380,a=http://localhost:2381"} {
		c.InitialCluster = cluster
		if _, err := c.initialMembers(); err == nil || !strings.Contains(err.Error(), "do not match the initial cluster entry") {
			t.Errorf("%s with advertised %v: err = %v, want a mismatch", cluster, c.PeerURLs, err)
		}
	}
}

func TestPutGetRoundTripAndHeaders(t *testing.T) {
	n := startNode(t, testConfig(t))
	if n.Leader() != n.MemberID() {
		t.Fatalf("leader = %x, want self %x", n.Leader(), n.MemberID())
	}
	want := computeMemberID([]string{"http://127.0.0.1:2380"}, DefaultClusterToken)
	if n.MemberID() != want || n.ClusterID() != computeClusterID([]uint64{want}) {
		t.Fatalf("ids = %x/%x, want member %x", n.MemberID(), n.ClusterID(), want)
	}
	ctx := ctxT(t)
	checkHeader := func(what string, h *pb.ResponseHeader) {
		t.Helper()
		if h == nil || h.ClusterId != n.ClusterID() || h.MemberId != n.MemberID() || h.RaftTerm == 0 || h.Revision == 0 {
			t.Errorf("%s header incomplete: %v", what, h)
		}
	}

	before := n.Store().Rev()
	p := put(t, n, "foo", "bar")
	checkHeader("put", p.Header)
	if p.Header.Revision != before+1 {
		t.Fatalf("put revision = %d, want %d", p.Header.Revision, before+1)
	}
	for _, serializable := range []bool{false, true} {
		r := get(t, n, "foo", serializable)
		checkHeader("range", r.Header)
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "bar" || r.Kvs[0].ModRevision != p.Header.Revision {
			t.Fatalf("range(serializable=%v) = %v", serializable, r.Kvs)
		}
	}

	d, err := n.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("foo")})
	if err != nil || d.Deleted != 1 {
		t.Fatalf("DeleteRange = %v, %v", d, err)
	}
	checkHeader("delete", d.Header)
	tx, err := n.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte("t"), Value: []byte("v")}}}}})
	if err != nil || !tx.Succeeded {
		t.Fatalf("Txn = %v, %v", tx, err)
	}
	checkHeader("txn", tx.Header)
	c, err := n.Compact(ctx, &pb.CompactionRequest{Revision: tx.Header.Revision})
	if err != nil {
		t.Fatalf("Compact: %v", err)
	}
	checkHeader("compact", c.Header)
	lg, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
	if err != nil {
		t.Fatalf("LeaseGrant: %v", err)
	}
	checkHeader("lease grant", lg.Header)
	ll, err := n.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		t.Fatalf("LeaseLeases: %v", err)
	}
	checkHeader("lease leases", ll.Header)
	lr, err := n.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lg.ID})
	if err != nil {
		t.Fatalf("LeaseRevoke: %v", err)
	}
	checkHeader("lease revoke", lr.Header)
	al, err := n.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	if err != nil || len(al.Alarms) != 0 {
		t.Fatalf("Alarm GET = %v, %v", al, err)
	}
	checkHeader("alarm", al.Header)
	st, err := n.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	checkHeader("status", st.Header)
	if st.Leader != n.MemberID() || st.RaftTerm == 0 || st.RaftIndex == 0 || st.RaftAppliedIndex != st.RaftIndex ||
		st.Version == "" || st.StorageVersion == "" || st.DbSize == 0 || st.DbSizeQuota != DefaultQuotaBackendBytes || len(st.Errors) != 0 {
		t.Fatalf("status = %v", st)
	}
	hk, err := n.HashKV(ctx, &pb.HashKVRequest{})
	if err != nil {
		t.Fatalf("HashKV: %v", err)
	}
	checkHeader("hashkv", hk.Header)
	if hk.HashRevision != n.Store().Rev() || hk.CompactRevision != tx.Header.Revision {
		t.Fatalf("hashkv = %v (rev %d, compacted at %d)", hk, n.Store().Rev(), tx.Header.Revision)
	}
	hs, err := n.Hash(ctx, &pb.HashRequest{})
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	checkHeader("hash", hs.Header)
	if want, _, _ := n.Store().Hash(); hs.Hash != want || hs.Header.Revision != n.Store().Rev() {
		t.Fatalf("hash = %v, store hash %d at %d", hs, want, n.Store().Rev())
	}
	df, err := n.Defragment(ctx, &pb.DefragmentRequest{})
	if err != nil {
		t.Fatalf("Defragment: %v", err)
	}
	checkHeader("defragment", df.Header)
	ml, err := n.MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
	if err != nil {
		t.Fatalf("MemberList: %v", err)
	}
	// etcd's Cluster service answers without a revision.
	if h := ml.Header; h.ClusterId == 0 || h.MemberId == 0 || h.RaftTerm == 0 || h.Revision != 0 {
		t.Fatalf("member list header = %v, want cluster_id, member_id and raft_term without revision", h)
	}
	if len(ml.Members) != 1 || ml.Members[0].ID != n.MemberID() || ml.Members[0].Name != "n1" ||
		!slices.Equal(ml.Members[0].PeerURLs, []string{"http://127.0.0.1:2380"}) ||
		!slices.Equal(ml.Members[0].ClientURLs, []string{"http://127.0.0.1:2379"}) {
		t.Fatalf("members = %v", ml.Members)
	}
}

func TestReadsAndReadOnlyTxnDoNotPropose(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	put(t, n, "k", "v1")
	index := func() uint64 {
		st, err := n.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st.RaftIndex
	}
	rounds := n.readRounds.Load()
	i0 := index()

	// Serializable: no ReadIndex round, no entry.
	get(t, n, "k", true)
	if r := n.readRounds.Load(); r != rounds {
		t.Fatalf("serializable read started %d ReadIndex rounds", r-rounds)
	}
	// Linearizable: one ReadIndex round, still no entry.
	get(t, n, "k", false)
	if r := n.readRounds.Load(); r != rounds+1 {
		t.Fatalf("linearizable read started %d ReadIndex rounds, want 1", r-rounds)
	}
	readTxn := &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte("k"), Target: pb.Compare_VALUE, Result: pb.Compare_EQUAL,
			TargetUnion: &pb.Compare_Value{Value: []byte("v1")}}},
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k")}}}},
	}
	tx, err := n.Txn(ctx, readTxn)
	if err != nil || !tx.Succeeded || len(tx.Responses) != 1 ||
		string(tx.Responses[0].GetResponseRange().Kvs[0].Value) != "v1" {
		t.Fatalf("read-only txn = %v, %v", tx, err)
	}
	if r := n.readRounds.Load(); r != rounds+2 {
		t.Fatalf("linearizable read-only txn started %d rounds, want 1", r-rounds-1)
	}
	if i := index(); i != i0 {
		t.Fatalf("reads moved the raft index from %d to %d", i0, i)
	}
	// A write in a nested branch makes the txn a proposal.
	writeTxn := &pb.TxnRequest{Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestTxn{RequestTxn: &pb.TxnRequest{
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("zz")}}}},
	}}}}}
	if _, err := n.Txn(ctx, writeTxn); err != nil {
		t.Fatal(err)
	}
	if i := index(); i != i0+1 {
		t.Fatalf("write txn: raft index %d, want %d", i, i0+1)
	}
}

func TestLinearizableReadsShareReadIndexRound(t *testing.T) {
	n := startNode(t, testConfig(t))
	put(t, n, "k", "v")
	release := blockLoop(t, n)
	rounds := n.readRounds.Load()
	const readers = 50
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			resp, err := n.Range(context.Background(), &pb.RangeRequest{Key: []byte("k")})
			if err == nil && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v") {
				err = fmt.Errorf("read %v", resp.Kvs)
			}
			errs <- err
		})
	}
	waitFor(t, "readers to queue", func() bool { return n.readsWaiting.Load() == readers })
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := n.readRounds.Load() - rounds; got != 1 {
		t.Fatalf("%d concurrent reads used %d ReadIndex rounds, want 1", readers, got)
	}
}

func TestReadSeesWriteCommittedBeforeIt(t *testing.T) {
	n := startNode(t, testConfig(t))
	// Each linearizable read must observe the preceding acknowledged write.
	for i := range 50 {
		v := fmt.Sprint(i)
		put(t, n, "x", v)
		if r := get(t, n, "x", false); string(r.Kvs[0].Value) != v {
			t.Fatalf("read %q after writing %q", r.Kvs[0].Value, v)
		}
	}
}

func TestConcurrentProposalsGetContiguousRevisions(t *testing.T) {
	n := startNode(t, testConfig(t))
	start := n.Store().Rev()
	const workers, each = 50, 20
	revs := make(chan int64, workers*each)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				resp, err := n.Put(context.Background(), &pb.PutRequest{
					Key: fmt.Appendf(nil, "w%02d/%02d", w, i), Value: []byte("v"),
				})
				if err != nil {
					failed.Add(1)
					t.Errorf("put: %v", err)
					return
				}
				revs <- resp.Header.Revision
			}
		})
	}
	wg.Wait()
	close(revs)
	if failed.Load() > 0 {
		t.FailNow()
	}
	got := make([]int64, 0, workers*each)
	for r := range revs {
		got = append(got, r)
	}
	slices.Sort(got)
	for i, r := range got {
		if r != start+1+int64(i) {
			t.Fatalf("revision %d at position %d, want %d (revisions must be unique and contiguous)", r, i, start+1+int64(i))
		}
	}
	resp, err := n.Range(ctxT(t), &pb.RangeRequest{Key: []byte("w"), RangeEnd: []byte("x"), CountOnly: true})
	if err != nil || resp.Count != workers*each {
		t.Fatalf("count = %v, %v", resp, err)
	}
}

type ackedWrite struct {
	key, value string
	rev        int64
}

func writeConcurrently(t *testing.T, n *Node, prefix string, workers, each int) []ackedWrite {
	t.Helper()
	var mu sync.Mutex
	var out []ackedWrite
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				k, v := fmt.Sprintf("%s/%02d/%03d", prefix, w, i), fmt.Sprintf("v%d-%d", w, i)
				resp, err := n.Put(context.Background(), &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
				if err != nil {
					t.Errorf("put %s: %v", k, err)
					return
				}
				mu.Lock()
				out = append(out, ackedWrite{k, v, resp.Header.Revision})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

func checkWrites(t *testing.T, n *Node, writes []ackedWrite) {
	t.Helper()
	for _, w := range writes {
		r := get(t, n, w.key, false)
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != w.value || r.Kvs[0].ModRevision != w.rev {
			t.Fatalf("after restart %s = %v, want %q at revision %d", w.key, r.Kvs, w.value, w.rev)
		}
	}
}

func TestRestartPreservesAcknowledgedWrites(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	writes := writeConcurrently(t, n, "a", 10, 20)
	last := n.Store().Rev()
	memberID, clusterID := n.MemberID(), n.ClusterID()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	n = startNode(t, cfg)
	if n.MemberID() != memberID || n.ClusterID() != clusterID {
		t.Fatalf("ids changed across restart: %x/%x -> %x/%x", memberID, clusterID, n.MemberID(), n.ClusterID())
	}
	checkWrites(t, n, writes)
	if n.Store().Rev() != last {
		t.Fatalf("revision after restart = %d, want %d", n.Store().Rev(), last)
	}
	if p := put(t, n, "after", "restart"); p.Header.Revision != last+1 {
		t.Fatalf("first put after restart got revision %d, want %d", p.Header.Revision, last+1)
	}
	st, err := n.Status(ctxT(t), &pb.StatusRequest{})
	if err != nil || st.RaftAppliedIndex != st.RaftIndex {
		t.Fatalf("status after restart = %v, %v", st, err)
	}
}

// raftLogBounds reads the persisted log range and snapshot index directly
// from Pebble.
func raftLogBounds(t *testing.T, n *Node) (first, last, snap uint64) {
	t.Helper()
	st, err := loadRaftState(n.Store().DB())
	if err != nil || st == nil {
		t.Fatalf("load raft state: %v", err)
	}
	return st.ents[0].GetIndex(), st.ents[len(st.ents)-1].GetIndex(), st.snap.GetIndex()
}

func TestLogTruncationAndRestart(t *testing.T) {
	cfg := testConfig(t)
	cfg.SnapshotCount = 50
	cfg.SnapshotCatchUpEntries = 10
	n := startNode(t, cfg)
	var writes []ackedWrite
	for i := range 230 {
		k := fmt.Sprintf("k%03d", i)
		writes = append(writes, ackedWrite{k, "v", put(t, n, k, "v").Header.Revision})
	}
	first, last, snap := raftLogBounds(t, n)
	if snap < 200 || first != snap-cfg.SnapshotCatchUpEntries || last < 230 {
		t.Fatalf("log [%d, %d] with snapshot %d: truncation did not happen as configured", first, last, snap)
	}
	var msFirst uint64
	onLoop(n, func() { msFirst, _ = n.ms.FirstIndex() })
	if msFirst != first+1 {
		t.Fatalf("in-memory log starts at %d, persisted base is %d", msFirst, first)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	for round := range 2 {
		n = startNode(t, cfg)
		checkWrites(t, n, writes)
		for i := range 60 {
			k := fmt.Sprintf("r%d-%03d", round, i)
			writes = append(writes, ackedWrite{k, "w", put(t, n, k, "w").Header.Revision})
		}
		if f, _, _ := raftLogBounds(t, n); f <= first {
			t.Fatalf("round %d: log base did not advance (%d)", round, f)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCrashConsistency(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := testConfig(t)
	cfg.DataDir = "/data"
	cfg.SnapshotCount = 40
	cfg.SnapshotCatchUpEntries = 15
	rng := rand.New(rand.NewPCG(1, 2))
	var writes []ackedWrite
	for round := range 6 {
		cfg.storageFS = fs
		n := startNode(t, cfg)
		// Replay after a crash: the node must reach its commit index again
		// without applying anything twice (revisions of old writes unchanged,
		// new ones continue after them).
		checkWrites(t, n, writes)
		waitFor(t, "apply to catch up", func() bool { return n.applied.Load() == n.committed.Load() })
		if applied, _ := n.Store().Applied(); applied != n.committed.Load() {
			t.Fatalf("round %d: persisted applied index %d, committed %d", round, applied, n.committed.Load())
		}
		ws := writeConcurrently(t, n, fmt.Sprintf("c%d", round), 1+rng.IntN(8), 1+rng.IntN(15))
		rev := n.Store().Rev()
		for _, w := range ws {
			if w.rev > rev {
				t.Fatalf("acknowledged revision %d above store revision %d", w.rev, rev)
			}
		}
		writes = append(writes, ws...)
		// Crash: keep everything synced and a random part of the rest.
		fs = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(100), RNG: rng})
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	cfg.storageFS = fs
	checkAfterCrashes(t, startNode(t, cfg), writes)
}

// checkAfterCrashes checks a member restarted after crashes: every
// acknowledged write is there at its revision, no two share a revision,
// and the next write gets the next revision.
func checkAfterCrashes(t *testing.T, n *Node, acked []ackedWrite) {
	t.Helper()
	checkWrites(t, n, acked)
	before := n.Store().Rev()
	if p := put(t, n, "final", "x"); p.Header.Revision != before+1 {
		t.Fatalf("revision after crashes = %d, want %d", p.Header.Revision, before+1)
	}
	revs := make([]int64, 0, len(acked))
	for _, w := range acked {
		revs = append(revs, w.rev)
	}
	slices.Sort(revs)
	if len(slices.Compact(revs)) != len(acked) {
		t.Fatal("two acknowledged writes share a revision")
	}
}

// TestCrashDuringWritesKeepsAcknowledgedWrites crashes the member while
// writers keep it busy, at the moment a Ready has answered the callers of
// its committed entries but its own fsync (of the entries proposed since)
// is still running (persistWhileApplying): every write acknowledged until
// then must be there after the restart, at the revision it was
// acknowledged with, and revisions continue after them.
func TestCrashDuringWritesKeepsAcknowledgedWrites(t *testing.T) {
	fs := vfs.NewCrashableMem()
	cfg := testConfig(t)
	cfg.DataDir = "/data"
	cfg.SnapshotCount = 100
	cfg.SnapshotCatchUpEntries = 20
	var kept []ackedWrite
	for round := range 6 {
		crashed := make(chan *vfs.MemFS, 1)
		var once sync.Once
		// A disk whose fsync takes a while, as real ones do: proposals
		// queue up meanwhile, so consecutive Readys each carry new entries
		// and the committed entries of the one before.
		cfg.storageFS = slowSyncFS{FS: fs, delay: 300 * time.Microsecond}
		// The last index appended by the previous overlapped Ready (the hook
		// runs on the raft loop).
		var appended uint64
		cfg.afterEarlyDeliver = func(n *Node) {
			// Crash when the entries just acknowledged were appended by an
			// overlapped Ready too, so their durability rests on its fsync.
			fire := n.raftApplied == appended && n.overlappedReadys.Load() >= int64(10+5*round)
			appended = n.log.last
			if !fire {
				return
			}
			once.Do(func() {
				// Only what is synced survives; the member delivers nothing
				// more until it is closed.
				crashed <- fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
				<-n.stopC
			})
		}
		n := startNode(t, cfg)
		checkWrites(t, n, kept)

		var (
			mu    sync.Mutex
			acked []ackedWrite
			wg    sync.WaitGroup
		)
		ctx, cancel := context.WithCancel(context.Background())
		for w := range 16 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					k, v := fmt.Sprintf("r%d/%02d/%05d", round, w, i), fmt.Sprintf("v%d", i)
					resp, err := n.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
					if err != nil {
						return // cancelled after the crash
					}
					mu.Lock()
					acked = append(acked, ackedWrite{k, v, resp.Header.Revision})
					mu.Unlock()
				}
			})
		}
		select {
		case fs = <-crashed:
		case <-time.After(10 * time.Second):
			t.Fatal("no Ready applied committed entries while fsyncing new ones")
		}
		cancel()
		wg.Wait()
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if len(acked) == 0 {
			t.Fatalf("round %d: nothing was acknowledged before the crash", round)
		}
		kept = append(kept, acked...)
	}
	cfg.storageFS = fs
	cfg.afterEarlyDeliver = nil
	checkAfterCrashes(t, startNode(t, cfg), kept)
}

// slowSyncFS delays every fsync of the files it creates by delay.
type slowSyncFS struct {
	vfs.FS
	delay time.Duration
}

func (fs slowSyncFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return slowSyncFile{File: f, delay: fs.delay}, err
}

func (fs slowSyncFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return slowSyncFile{File: f, delay: fs.delay}, err
}

type slowSyncFile struct {
	vfs.File
	delay time.Duration
}

func (f slowSyncFile) Sync() error {
	time.Sleep(f.delay) // the device's latency, not a wait for an event
	return f.File.Sync()
}

func (f slowSyncFile) SyncData() error {
	time.Sleep(f.delay)
	return f.File.SyncData()
}

func (f slowSyncFile) SyncTo(length int64) (bool, error) {
	time.Sleep(f.delay)
	return f.File.SyncTo(length)
}

func TestQuotaNoSpaceAlarmAndDisarm(t *testing.T) {
	var size atomic.Int64
	size.Store(1000)
	cfg := testConfig(t)
	cfg.QuotaBackendBytes = 1 << 20
	cfg.sizeFn = size.Load
	n := startNode(t, cfg)
	ctx := ctxT(t)
	put(t, n, "small", "ok")

	// Over quota at apply (the proposal passed the pre-check): the write is
	// applied as on every member, the caller gets ErrNoSpace and NOSPACE is
	// raised through raft before the answer.
	release := blockLoop(t, n)
	errc := make(chan error, 1)
	go func() {
		_, err := n.Put(context.Background(), &pb.PutRequest{Key: []byte("big"), Value: []byte("x")})
		errc <- err
	}()
	waitFor(t, "proposal to queue", func() bool { return len(n.propC) == 1 })
	size.Store(cfg.QuotaBackendBytes)
	release()
	if err := <-errc; !errors.Is(err, ErrNoSpace) {
		t.Fatalf("put over quota: %v, want ErrNoSpace", err)
	}
	alarms := n.Store().Alarms()
	if len(alarms) != 1 || alarms[0].Alarm != pb.AlarmType_NOSPACE || alarms[0].MemberID != n.MemberID() {
		t.Fatalf("alarms = %v", alarms)
	}
	st, err := n.Status(ctx, &pb.StatusRequest{})
	if err != nil || !slices.Contains(st.Errors, fmt.Sprintf("memberID:%d alarm:NOSPACE ", n.MemberID())) {
		t.Fatalf("status errors = %v, %v", st.GetErrors(), err)
	}

	// With the alarm active, writes needing space fail; deletes and reads work.
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("put with alarm: %v", err)
	}
	if _, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 10}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("lease grant with alarm: %v", err)
	}
	if _, err := n.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("big")}); err != nil {
		t.Fatalf("delete with alarm: %v", err)
	}
	// The capped applier also rejects writes proposed before the alarm.
	onLoop(n, func() {
		if !n.capped() {
			t.Error("loop does not see the NOSPACE alarm")
		}
	})

	// Disarm (etcdctl alarm disarm: list, then deactivate each).
	size.Store(1000)
	list, err := n.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
	if err != nil || len(list.Alarms) != 1 {
		t.Fatalf("alarm list = %v, %v", list, err)
	}
	for _, a := range list.Alarms {
		if _, err := n.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: a.MemberID, Alarm: a.Alarm}); err != nil {
			t.Fatal(err)
		}
	}
	if a := n.Store().Alarms(); len(a) != 0 {
		t.Fatalf("alarms after disarm = %v", a)
	}
	put(t, n, "after-disarm", "ok")

	// Over quota before proposing: refused at once, alarm raised.
	size.Store(cfg.QuotaBackendBytes)
	idx := n.committed.Load()
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k2"), Value: []byte("v")}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("put over quota: %v", err)
	}
	if a := n.Store().Alarms(); len(a) != 1 || a[0].Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarms after pre-check = %v", a)
	}
	if r := get(t, n, "k2", false); len(r.Kvs) != 0 || n.committed.Load() != idx+1 {
		t.Fatalf("refused put reached raft: %v (index %d -> %d)", r.Kvs, idx, n.committed.Load())
	}
}

// TestCorruptAlarmRefusesWrites: with a CORRUPT alarm of any member active,
// etcd's corrupt applier refuses puts, deletes, write txns, compactions and
// lease grants and revokes with "etcdserver: corrupt cluster"; reads,
// read-only txns and the alarm's own deactivation go on.
func TestCorruptAlarmRefusesWrites(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	rev := put(t, n, "k", "before").Header.Revision
	l, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
	if err != nil {
		t.Fatal(err)
	}
	corrupt := &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 12345, Alarm: pb.AlarmType_CORRUPT}
	if _, err := n.Alarm(ctx, corrupt); err != nil {
		t.Fatal(err)
	}
	putOp := &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k"), Value: []byte("txn")}}}
	refused := []struct {
		name string
		call func() error
	}{
		{"put", func() error { _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); return err }},
		{"delete", func() error { _, err := n.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("k")}); return err }},
		{"txn", func() error { _, err := n.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{putOp}}); return err }},
		{"compact", func() error { _, err := n.Compact(ctx, &pb.CompactionRequest{Revision: rev}); return err }},
		{"lease grant", func() error { _, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60}); return err }},
		{"lease revoke", func() error { _, err := n.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: l.ID}); return err }},
	}
	for _, c := range refused {
		if err := c.call(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s with CORRUPT: %v, want ErrCorrupt", c.name, err)
		}
	}
	if r := get(t, n, "k", false); len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "before" || r.Header.Revision != rev {
		t.Fatalf("range with CORRUPT = %v, want k=before at %d", r, rev)
	}
	rangeOp := &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k")}}}
	if _, err := n.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{rangeOp}}); err != nil {
		t.Fatalf("read-only txn with CORRUPT: %v", err)
	}
	corrupt.Action = pb.AlarmRequest_DEACTIVATE
	if _, err := n.Alarm(ctx, corrupt); err != nil {
		t.Fatal(err)
	}
	if r := put(t, n, "k", "after"); r.Header.Revision != rev+1 {
		t.Fatalf("put after the alarm is cleared at %d, want %d", r.Header.Revision, rev+1)
	}
}

func TestCompactionAndLeasesThroughRaft(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	r1 := put(t, n, "k", "1").Header.Revision
	r2 := put(t, n, "k", "2").Header.Revision
	if _, err := n.Compact(ctx, &pb.CompactionRequest{Revision: r2}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Range(ctx, &pb.RangeRequest{Key: []byte("k"), Revision: r1}); !errors.Is(err, storage.ErrCompacted) {
		t.Fatalf("range at compacted revision: %v", err)
	}
	if _, err := n.Compact(ctx, &pb.CompactionRequest{Revision: r1}); !errors.Is(err, storage.ErrCompacted) {
		t.Fatalf("compact below compaction: %v", err)
	}
	if _, err := n.Compact(ctx, &pb.CompactionRequest{Revision: r2 + 100}); !errors.Is(err, storage.ErrFutureRev) {
		t.Fatalf("compact future revision: %v", err)
	}
	if got := n.Store().CompactRev(); got != r2 {
		t.Fatalf("compact revision = %d, want %d", got, r2)
	}

	// TTL below the minimum is raised (etcd: 1.5 election timeouts, >= 1s).
	lg, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 0})
	if err != nil || lg.ID <= 0 || lg.TTL != n.minLeaseTTL || lg.TTL < 1 {
		t.Fatalf("LeaseGrant = %v, %v (min ttl %d)", lg, err, n.minLeaseTTL)
	}
	if _, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: lg.ID, TTL: 10}); !errors.Is(err, storage.ErrLeaseExists) {
		t.Fatalf("duplicate lease: %v", err)
	}
	if _, err := n.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: maxLeaseTTL + 1}); !errors.Is(err, ErrLeaseTTLTooLarge) {
		t.Fatalf("huge ttl: %v", err)
	}
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("l1"), Value: []byte("v"), Lease: lg.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("l2"), Value: []byte("v"), Lease: lg.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("nolease"), Value: []byte("v"), Lease: 12345}); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("put with unknown lease: %v", err)
	}
	ll, err := n.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil || len(ll.Leases) != 1 || ll.Leases[0].ID != lg.ID {
		t.Fatalf("leases = %v, %v", ll, err)
	}
	before := n.Store().Rev()
	rv, err := n.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lg.ID})
	if err != nil {
		t.Fatal(err)
	}
	if rv.Header.Revision != before+1 || n.Store().Rev() != before+1 {
		t.Fatalf("revoke revision %d (store %d), want one new revision %d", rv.Header.Revision, n.Store().Rev(), before+1)
	}
	resp, err := n.Range(ctx, &pb.RangeRequest{Key: []byte("l"), RangeEnd: []byte("m")})
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("keys of revoked lease: %v, %v", resp.GetKvs(), err)
	}
	if _, err := n.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lg.ID}); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v", err)
	}
}

func TestTooManyRequests(t *testing.T) {
	n := startNode(t, testConfig(t))
	// Pretend apply fell far behind commit (the loop is idle, so nothing
	// overwrites this until the next Ready).
	onLoop(n, func() { n.committed.Store(n.applied.Load() + maxGapBetweenApplyAndCommitIndex + 1) })
	if _, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte("k")}); !errors.Is(err, ErrTooManyRequests) {
		t.Fatalf("put with apply lag: %v", err)
	}
	onLoop(n, func() { n.committed.Store(n.applied.Load()) })
	put(t, n, "k", "v")
}

func TestRequestTimeoutAndCancel(t *testing.T) {
	cfg := testConfig(t)
	cfg.reqTimeout = 50 * time.Millisecond
	n := startNode(t, cfg)
	put(t, n, "k", "v")
	// A write applied is neither failed nor pending (etcd's
	// etcd_server_proposals_failed_total and etcd_server_proposals_pending);
	// one that timed out failed.
	if s := n.Stats(); s.ProposalsFailed != 0 || s.ProposalsPending != 0 {
		t.Fatalf("after an applied put: %d proposals failed, %d pending; want 0, 0", s.ProposalsFailed, s.ProposalsPending)
	}
	release := blockLoop(t, n)
	if _, err := n.Put(context.Background(), &pb.PutRequest{Key: []byte("k")}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("put with stuck loop: %v, want ErrTimeout", err)
	}
	if s := n.Stats(); s.ProposalsFailed != 1 || s.ProposalsPending != 0 {
		t.Fatalf("after a timed-out put: %d proposals failed, %d pending; want 1, 0", s.ProposalsFailed, s.ProposalsPending)
	}
	if _, err := n.Range(context.Background(), &pb.RangeRequest{Key: []byte("k")}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("read with stuck loop: %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with canceled ctx: %v", err)
	}
	release()
}

func TestCloseFailsPendingAndIsIdempotent(t *testing.T) {
	n := startNode(t, testConfig(t))
	put(t, n, "k", "v")
	release := blockLoop(t, n)
	const pending = 10
	errs := make(chan error, 2*pending)
	for i := range pending {
		go func() {
			_, err := n.Put(context.Background(), &pb.PutRequest{Key: fmt.Appendf(nil, "p%d", i)})
			errs <- err
		}()
		go func() {
			_, err := n.Range(context.Background(), &pb.RangeRequest{Key: []byte("k")})
			errs <- err
		}()
	}
	waitFor(t, "requests to queue", func() bool {
		return len(n.propC) == pending && n.readsWaiting.Load() == pending
	})
	closed := make(chan error, 1)
	go func() { closed <- n.Close() }()
	waitFor(t, "close to begin", n.stopped)
	release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 * pending {
		if err := <-errs; !errors.Is(err, ErrStopped) {
			t.Fatalf("pending request after Close: %v, want ErrStopped", err)
		}
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := n.Put(context.Background(), &pb.PutRequest{Key: []byte("k")}); !errors.Is(err, ErrStopped) {
		t.Fatalf("put after Close: %v", err)
	}
	if _, err := n.Range(context.Background(), &pb.RangeRequest{Key: []byte("k"), Serializable: true}); !errors.Is(err, ErrStopped) {
		t.Fatalf("serializable range after Close: %v", err)
	}
	goleak.VerifyNone(t)
}

func TestSingleVoterBecomesLeaderWithoutElectionTimeout(t *testing.T) {
	cfg := testConfig(t)
	cfg.HeartbeatInterval, cfg.ElectionTimeout = 0, 0 // etcd defaults: 100ms / 1s
	// Fresh start, then restart.
	for range 2 {
		began := time.Now()
		n := startNode(t, cfg)
		// Waiting for an election timeout would take 1-2s; campaigning at
		// start takes a few Ready cycles.
		if took := time.Since(began); took > 800*time.Millisecond {
			t.Fatalf("start-up to leader took %v", took)
		}
		if n.Leader() != n.MemberID() {
			t.Fatalf("leader = %x", n.Leader())
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStartExistingClusterStateOnEmptyDirFails(t *testing.T) {
	cfg := testConfig(t)
	cfg.ClusterState = ClusterStateExisting
	if _, err := Start(ctxT(t), cfg); err == nil {
		t.Fatal("Start joined a nonexistent cluster")
	}
	// The data dir is not locked afterwards: a new cluster can start there.
	cfg.ClusterState = ClusterStateNew
	startNode(t, cfg)
}

func BenchmarkPut(b *testing.B) {
	value := make([]byte, 256)
	b.Run("serial", func(b *testing.B) {
		n := startNode(b, testConfig(b))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := n.Put(context.Background(), &pb.PutRequest{Key: fmt.Appendf(nil, "k%08d", i), Value: value}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		benchParallelPuts(b, startNode(b, testConfig(b)), value)
	})
}

// benchParallelPuts puts distinct keys from many goroutines, as a server
// with many concurrent clients sees them.
func benchParallelPuts(b *testing.B, n *Node, value []byte) {
	b.ReportAllocs()
	b.SetParallelism(32)
	var ctr atomic.Int64
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			k := fmt.Appendf(nil, "k%08d", ctr.Add(1))
			if _, err := n.Put(context.Background(), &pb.PutRequest{Key: k, Value: value}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPutSlowDisk runs concurrent puts on an in-memory disk whose
// fsync takes 500µs, so the figure shows how many fsyncs a put waits for
// rather than this machine's disk and CPU load.
func BenchmarkPutSlowDisk(b *testing.B) {
	value := make([]byte, 256)
	cfg := testConfig(b)
	cfg.DataDir = "/data"
	cfg.storageFS = slowSyncFS{FS: vfs.NewMem(), delay: 500 * time.Microsecond}
	benchParallelPuts(b, startNode(b, cfg), value)
}

func testLogger() *slog.Logger {
	if os.Getenv("CONSENSUS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}
