package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// TestForceNewClusterRecoversFromLostQuorum is the operator's procedure on
// an in-process cluster: two of three members are lost for good while the
// third holds an entry the cluster never committed; the third restarts
// with ForceNewCluster and must be a working one-member cluster with all
// the committed data, the uncommitted entry gone, raft's term and indexes
// continuing, the removed members refused, the same state after a restart
// without the flag, and `member add` growing it again.
func TestForceNewClusterRecoversFromLostQuorum(t *testing.T) {
	// A long election timeout keeps the leader a leader (CheckQuorum) for
	// the moment it takes to stop its followers and append a proposal.
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatInterval = 50 * time.Millisecond
		cfg.ElectionTimeout = 2 * time.Second
	})
	s := c.leader()
	n := c.nodes[s]
	for i := range 10 {
		put(t, n, fmt.Sprintf("k%d", i), fmt.Sprint(i))
	}
	lease, err := n.LeaseGrant(ctxT(t), &pb.LeaseGrantRequest{ID: 7, TTL: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte("leased"), Value: []byte("v"), Lease: lease.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "alice", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	rev := c.converged()
	clusterID := n.ClusterID()

	// Lose the other two, then propose: the entry is appended to the
	// survivor's log and never committed.
	for _, f := range c.followers(s) {
		c.stop(f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = putCtx(ctx, n, "uncommitted", "x")
	cancel()
	if err == nil {
		t.Fatal("a put without quorum succeeded")
	}
	var commit, last, term uint64
	onLoop(n, func() {
		hs, _, _ := n.ms.InitialState()
		commit, last, term = hs.GetCommit(), n.log.last, hs.GetTerm()
	})
	if last <= commit {
		t.Fatalf("no uncommitted entry in the survivor's log (commit %d, last %d)", commit, last)
	}
	c.stop(s)

	c.cfgs[s].ForceNewCluster = true
	c.start(s)
	n = c.nodes[s]
	if n.Leader() != n.MemberID() {
		t.Fatalf("forced member is not leader: leader %x", n.Leader())
	}
	checkAlone := func(n *Node) {
		t.Helper()
		ml, err := n.MemberList(ctxT(t), &pb.MemberListRequest{Linearizable: true})
		if err != nil {
			t.Fatal(err)
		}
		cfg := c.cfgs[s]
		if len(ml.Members) != 1 || ml.Members[0].ID != c.ids[s] || ml.Members[0].Name != cfg.Name ||
			!slices.Equal(ml.Members[0].PeerURLs, cfg.PeerURLs) || !slices.Equal(ml.Members[0].ClientURLs, cfg.ClientURLs) {
			t.Fatalf("member list after force-new-cluster: %v", ml.Members)
		}
		if ml.Header.ClusterId != clusterID {
			t.Fatalf("cluster id changed: %x", ml.Header.ClusterId)
		}
		var cs *raftpb.ConfState
		onLoop(n, func() { cs = n.confState })
		if !slices.Equal(cs.GetVoters(), []uint64{c.ids[s]}) || len(cs.GetLearners()) != 0 {
			t.Fatalf("raft configuration after force-new-cluster: %v", cs)
		}
	}
	checkAlone(n)

	// Every committed key, lease and user is there; the uncommitted put
	// is not; raft's term and index went on from where they were.
	for i := range 10 {
		if r := get(t, n, fmt.Sprintf("k%d", i), false); len(r.Kvs) != 1 || string(r.Kvs[0].Value) != fmt.Sprint(i) {
			t.Fatalf("k%d after force-new-cluster: %v", i, r.Kvs)
		}
	}
	if r := get(t, n, "uncommitted", false); len(r.Kvs) != 0 || r.Header.Revision != rev {
		t.Fatalf("uncommitted entry applied: %v at revision %d (was %d)", r.Kvs, r.Header.Revision, rev)
	}
	ls, err := n.LeaseLeases(ctxT(t), &pb.LeaseLeasesRequest{})
	if err != nil || len(ls.Leases) != 1 || ls.Leases[0].ID != 7 {
		t.Fatalf("leases after force-new-cluster: %v, %v", ls, err)
	}
	if r := get(t, n, "leased", true); len(r.Kvs) != 1 || r.Kvs[0].Lease != 7 {
		t.Fatalf("leased key: %v", r.Kvs)
	}
	users, err := n.UserList(ctxT(t), &pb.AuthUserListRequest{})
	if err != nil || !slices.Equal(users.Users, []string{"alice"}) {
		t.Fatalf("users after force-new-cluster: %v, %v", users, err)
	}
	if got := n.term.Load(); got <= term {
		t.Fatalf("term %d after force-new-cluster, was %d: want it to go on", got, term)
	}
	// The uncommitted entry's index now holds the first forced removal.
	onLoop(n, func() {
		ents, err := n.ms.Entries(commit+1, commit+2, 1<<20)
		if err != nil {
			// Trimmed from memory: read the disk log.
			st, lerr := loadRaftState(n.store.DB())
			if lerr != nil {
				t.Error(lerr)
				return
			}
			ents = st.ents[commit+1-st.ents[0].GetIndex():][:1]
		}
		if ents[0].GetType() != raftpb.EntryConfChange || ents[0].GetTerm() != term {
			t.Errorf("entry %d after force-new-cluster: %v", commit+1, ents[0])
		}
	})
	if applied := n.applied.Load(); applied < commit+2 {
		t.Fatalf("applied index %d, want past the two removals after %d", applied, commit)
	}
	p := put(t, n, "after", "1")
	if p.Header.Revision != rev+1 {
		t.Fatalf("put after force-new-cluster at revision %d, want %d", p.Header.Revision, rev+1)
	}
	if r := get(t, n, "after", false); len(r.Kvs) != 1 {
		t.Fatalf("linearizable get after force-new-cluster: %v", r.Kvs)
	}

	// A restart without the flag keeps it a one-member cluster.
	c.stop(s)
	c.cfgs[s].ForceNewCluster = false
	c.start(s)
	n = c.nodes[s]
	checkAlone(n)
	put(t, n, "after-restart", "1")

	// A removed member that comes back is told so and stops.
	old := slices.DeleteFunc([]int{0, 1, 2}, func(i int) bool { return i == s })
	if err := c.startErr(old[0]); !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("an old member restarted: %v, want %v", err, ErrMemberRemoved)
	}

	// member add grows it again.
	j := c.addProcess("m4", "http://127.0.0.1:12383")
	if _, err := n.MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12383"}}); err != nil {
		t.Fatalf("member add: %v", err)
	}
	c.startJoined(j)
	c.converged()
	ml, err := c.nodes[j].MemberList(ctxT(t), &pb.MemberListRequest{})
	if err != nil || !slices.Equal(memberIDs(ml.Members), memberIDs([]*pb.Member{{ID: c.ids[s]}, {ID: c.ids[j]}})) {
		t.Fatalf("member list after member add: %v, %v", ml, err)
	}
	if r := get(t, c.nodes[j], "k3", true); len(r.Kvs) != 1 {
		t.Fatalf("joined member misses k3: %v", r.Kvs)
	}
	put(t, c.nodes[j], "through-new-member", "1")
}

// TestForceNewClusterCrashAfterRewrite: a member that crashes after the
// log rewrite (one batch) and before applying it is forced again on
// restart; the second pass finds the removals committed, adds none, and
// the member comes up alone with its data.
func TestForceNewClusterCrashAfterRewrite(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	put(t, c.nodes[lead], "a", "1")
	rev := c.converged()
	for i := range c.nodes {
		c.stop(i)
	}

	// The rewrite alone: newNode forces, nothing runs raft, the store is
	// closed as a crash would leave it.
	cfg := c.cfgs[0]
	cfg.ForceNewCluster = true
	cfg.SetDefaults()
	store, err := storage.Open(cfg.DataDir, storage.Options{FS: storageFS(cfg), Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	before, err := loadRaftState(store.DB())
	if err != nil {
		t.Fatal(err)
	}
	commit := before.hs.GetCommit()
	n, err := newNode(ctxT(t), cfg, store)
	if err != nil {
		t.Fatal(err)
	}
	n.busCancel()
	after, err := loadRaftState(store.DB())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if got := after.hs.GetCommit(); got != commit+2 || after.ents[len(after.ents)-1].GetIndex() != commit+2 {
		t.Fatalf("after the rewrite: commit %d, last %d; want both %d", got, after.ents[len(after.ents)-1].GetIndex(), commit+2)
	}

	c.cfgs[0].ForceNewCluster = true
	c.start(0)
	n = c.nodes[0]
	if ml, err := n.MemberList(ctxT(t), &pb.MemberListRequest{}); err != nil || len(ml.Members) != 1 || ml.Members[0].ID != c.ids[0] {
		t.Fatalf("member list: %v, %v", ml, err)
	}
	if r := get(t, n, "a", false); len(r.Kvs) != 1 || r.Header.Revision != rev {
		t.Fatalf("get a: %v", r)
	}
	// The second pass appended no removals: the entry after the two is
	// the new leader's empty one.
	st, err := loadRaftState(n.store.DB())
	if err != nil {
		t.Fatal(err)
	}
	var types []raftpb.EntryType
	for _, e := range st.ents {
		if e.GetIndex() > commit {
			types = append(types, e.GetType())
		}
	}
	if len(types) < 3 || types[0] != raftpb.EntryConfChange || types[1] != raftpb.EntryConfChange || types[2] != raftpb.EntryNormal {
		t.Fatalf("entries after %d: %v", commit, types)
	}
}

func TestEffectiveMembers(t *testing.T) {
	cc := func(index uint64, typ raftpb.ConfChangeType, id uint64) *raftpb.Entry {
		data, _ := proto.Marshal(&raftpb.ConfChange{Type: typ.Enum(), NodeId: new(id)})
		return &raftpb.Entry{Index: new(index), Type: raftpb.EntryConfChange.Enum(), Data: data}
	}
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}
	ents := []*raftpb.Entry{
		cc(5, raftpb.ConfChangeRemoveNode, 1), // at or below from: already in cs
		cc(6, raftpb.ConfChangeRemoveNode, 2),
		cc(7, raftpb.ConfChangeAddNode, 4),        // promotion
		cc(8, raftpb.ConfChangeAddLearnerNode, 9), // rejected at apply
		cc(9, raftpb.ConfChangeAddLearnerNode, 5),
	}
	v, l, err := effectiveMembers(cs, ents, 5, []uint64{8})
	if err != nil {
		t.Fatal(err)
	}
	keys := func(m map[uint64]bool) []uint64 {
		var out []uint64
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	if !slices.Equal(keys(v), []uint64{1, 3, 4}) || !slices.Equal(keys(l), []uint64{5}) {
		t.Fatalf("voters %v learners %v", keys(v), keys(l))
	}
}

// TestForceNewClusterStoreAheadOfLog: a member that crashed right after
// installing a snapshot whose store is ahead of its raft log is forced: the
// log restarts at the store's applied index, and every key of the store is
// kept.
func TestForceNewClusterStoreAheadOfLog(t *testing.T) {
	c, lead, behind := newLaggingCluster(t)
	rev := c.nodes[lead].Store().Rev()
	// The member first (crashAfterSnapshotInstall stops it): the leader's
	// snapshot send waits for its install.
	clone := c.crashAfterSnapshotInstall(t, behind)
	for i := range c.nodes {
		c.stop(i)
	}

	st, err := storage.Open(c.cfgs[behind].DataDir, storage.Options{FS: clone, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := st.Applied()
	rs, err := loadRaftState(st.DB())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if last := rs.ents[len(rs.ents)-1].GetIndex(); last >= stored {
		t.Fatalf("raft log reaches %d, the store's applied index %d: the crash missed the state it tests", last, stored)
	}

	c.cfgs[behind].storageFS = clone
	c.cfgs[behind].afterSnapshotInstall = nil
	c.cfgs[behind].ForceNewCluster = true
	c.start(behind)
	n := c.nodes[behind]
	ml, err := n.MemberList(ctxT(t), &pb.MemberListRequest{})
	if err != nil || len(ml.Members) != 1 || ml.Members[0].ID != c.ids[behind] {
		t.Fatalf("member list: %v, %v", ml, err)
	}
	r := get(t, n, "k/", false)
	if r.Header.Revision != rev {
		t.Fatalf("revision %d after force-new-cluster, want %d", r.Header.Revision, rev)
	}
	if r, err := n.Range(ctxT(t), &pb.RangeRequest{Key: []byte("k/"), RangeEnd: []byte("k0"), CountOnly: true}); err != nil || r.Count != 95 {
		t.Fatalf("keys after force-new-cluster: %v, %v; want 95", r, err)
	}
	if p := put(t, n, "after", "1"); p.Header.Revision != rev+1 {
		t.Fatalf("put at revision %d, want %d", p.Header.Revision, rev+1)
	}
	if applied := n.applied.Load(); applied <= stored {
		t.Fatalf("applied index %d, want past %d", applied, stored)
	}
}

// TestForceNewClusterRefusesALearner: a learner cannot be the one member.
func TestForceNewClusterRefusesALearner(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	put(t, c.nodes[lead], "a", "1")
	lead = c.settled()
	j := c.addProcess("m4", "http://127.0.0.1:12383")
	if _, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12383"}, IsLearner: true}); err != nil {
		t.Fatal(err)
	}
	c.startJoined(j)
	c.converged()
	for i := range c.nodes {
		c.stop(i)
	}
	c.cfgs[j].ForceNewCluster = true
	if err := c.startErr(j); !errors.Is(err, ErrForceNewClusterNotVoter) {
		t.Fatalf("forcing a learner: %v, want %v", err, ErrForceNewClusterNotVoter)
	}
}
