package consensus

// Membership changes over MemNetwork: learners joining an existing cluster
// with an empty data dir, promotion, removal (of the leader too), peer URL
// updates, leadership transfer and etcd's refusals.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// addProcess prepares (without starting) a member that joins the cluster
// with ClusterState existing, an empty data dir and --initial-cluster
// listing the running members and itself, as `etcdctl member add` prints.
func (c *testCluster) addProcess(name, peerURL string) int {
	var spec []string
	for i, cfg := range c.cfgs {
		if c.nodes[i] != nil {
			spec = append(spec, cfg.Name+"="+cfg.PeerURLs[0])
		}
	}
	spec = append(spec, name+"="+peerURL)
	cfg := c.cfgs[0]
	cfg.Name, cfg.DataDir = name, name
	cfg.PeerURLs = []string{peerURL}
	cfg.ClientURLs = []string{strings.Replace(peerURL, "123", "124", 1)}
	cfg.InitialCluster = strings.Join(spec, ",")
	cfg.ClusterState = ClusterStateExisting
	cfg.Logger = testLogger().With("member", name)
	cfg.storageFS = vfs.NewMem()
	c.cfgs = append(c.cfgs, cfg)
	c.nodes = append(c.nodes, nil)
	c.ids = append(c.ids, 0)
	return len(c.cfgs) - 1
}

func (c *testCluster) startJoined(i int) {
	c.t.Helper()
	c.start(i)
	c.ids[i] = c.nodes[i].MemberID()
}

// settled waits until the leader heard from every running member recently
// and every one of them has replicated the leader's whole log (etcd's
// strict reconfiguration checks and promotion readiness look at both), and
// returns the leader.
func (c *testCluster) settled() int {
	c.t.Helper()
	lead := c.leader()
	n := c.nodes[lead]
	waitFor(c.t, "every member active and caught up", func() bool {
		ok := true
		onLoop(n, func() {
			st := n.rn.Status()
			since := time.Now().Add(-n.healthWindow())
			for _, i := range c.running() {
				pr, found := st.Progress[c.ids[i]]
				if !found || pr.Match != st.Progress[st.ID].Match || !n.activeSince(c.ids[i], since) {
					ok = false
				}
			}
		})
		return ok
	})
	return lead
}

func memberIDs(ms []*pb.Member) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.ID)
	}
	slices.Sort(out)
	return out
}

// waitStopped waits until member i stopped on its own with ErrMemberRemoved.
func (c *testCluster) waitRemovedStop(i int) {
	c.t.Helper()
	n := c.nodes[i]
	select {
	case <-n.Done():
	case <-time.After(10 * time.Second):
		c.t.Fatalf("member %d still running after its removal", i+1)
	}
	if err := n.Err(); !errors.Is(err, ErrMemberRemoved) {
		c.t.Fatalf("member %d stopped with %v, want %v", i+1, err, ErrMemberRemoved)
	}
	c.stop(i)
}

func TestMembershipLearnerJoinsBySnapshotIsPromotedAndReplacesAMember(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotCount = 20
		cfg.SnapshotCatchUpEntries = 5
	})
	lead := c.leader()
	for i := range 60 {
		put(t, c.nodes[lead], fmt.Sprintf("before/%02d", i), fmt.Sprint(i))
	}
	lead = c.settled()

	j := c.addProcess("m4", "http://127.0.0.1:12383")
	add, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12383"}, IsLearner: true})
	if err != nil {
		t.Fatalf("add learner: %v", err)
	}
	if !add.Member.IsLearner || len(add.Members) != 4 || add.Header.ClusterId != c.nodes[0].ClusterID() {
		t.Fatalf("MemberAdd answered %v", add)
	}
	// etcd's ID for a runtime add: peer URLs and the time, not the token.
	if add.Member.ID == computeMemberID(add.Member.PeerURLs, DefaultClusterToken) {
		t.Fatalf("added member got the bootstrap ID %x", add.Member.ID)
	}
	// A member nobody started yet cannot be promoted: it has no progress.
	if _, err := c.nodes[lead].MemberPromote(ctxT(t), &pb.MemberPromoteRequest{ID: add.Member.ID}); !errors.Is(err, ErrLearnerNotReady) {
		t.Fatalf("promote of a learner with no progress: %v, want %v", err, ErrLearnerNotReady)
	}
	// etcd allows one learner by default.
	if _, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12399"}, IsLearner: true}); !errors.Is(err, ErrTooManyLearners) {
		t.Fatalf("second learner: %v, want %v", err, ErrTooManyLearners)
	}

	sentBefore := c.nodes[lead].snapshotsSent.Load()
	c.startJoined(j)
	l := c.nodes[j]
	if l.MemberID() != add.Member.ID || l.ClusterID() != c.nodes[0].ClusterID() {
		t.Fatalf("joined as %x of cluster %x, want %x of %x", l.MemberID(), l.ClusterID(), add.Member.ID, c.nodes[0].ClusterID())
	}
	waitFor(t, "the learner to serve data written before it joined", func() bool {
		r, err := l.Range(ctxT(t), &pb.RangeRequest{Key: []byte("before/59"), Serializable: true})
		return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "59"
	})
	// The install is counted once Restore.Commit returns, after its data
	// became readable.
	waitFor(t, "the learner's snapshot install to be counted", func() bool { return l.snapshotsInstalled.Load() >= 1 })
	if c.nodes[lead].snapshotsSent.Load() <= sentBefore {
		t.Fatalf("learner caught up without a snapshot (sent %d before, %d now)", sentBefore, c.nodes[lead].snapshotsSent.Load())
	}
	st, err := l.Status(ctxT(t), &pb.StatusRequest{})
	if err != nil || !st.IsLearner {
		t.Fatalf("learner status %v, %v: want IsLearner", st, err)
	}
	// Learners serve linearizable reads at this layer (the client API
	// refuses them, gateway/learner.go); writes get etcd's learner error.
	put(t, c.nodes[lead], "after", "1")
	if r := get(t, l, "after", false); len(r.Kvs) != 1 {
		t.Fatalf("linearizable read on the learner missed a committed write: %v", r.Kvs)
	}
	if _, err := putCtx(ctxT(t), l, "x", "y"); !errors.Is(err, ErrNotSupportedForLearner) {
		t.Fatalf("put on a learner: %v, want %v", err, ErrNotSupportedForLearner)
	}
	if _, err := l.MemberList(ctxT(t), &pb.MemberListRequest{}); !errors.Is(err, ErrNotSupportedForLearner) {
		t.Fatalf("member list on a learner: %v, want %v", err, ErrNotSupportedForLearner)
	}
	// Its process's lease service may not decide expiries.
	if a, err := l.LeaseAuthority(ctxT(t)); err != nil {
		t.Fatal(err)
	} else if _, err := l.AcquireLeaseAuthority(ctxT(t), "on-learner", a.Epoch+1, 0); !errors.Is(err, ErrNotSupportedForLearner) {
		t.Fatalf("lease authority acquired on a learner: %v, want %v", err, ErrNotSupportedForLearner)
	}
	// It publishes its name like any member.
	waitFor(t, "the learner's name in the member table", func() bool {
		m, ok := findMember(*c.nodes[lead].membersPub.Load(), l.MemberID())
		return ok && m.Name == "m4"
	})

	// Only the leader knows the learner's progress: a follower forwards
	// the promotion to it (and answers with its own header).
	if _, err := c.nodes[c.followers(lead)[0]].PromoteMember(ctxT(t), &pb.MemberPromoteRequest{ID: l.MemberID()}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("local promote on a follower: %v, want %v", err, ErrNotLeader)
	}
	f := c.followers(lead)[0]
	var prom *pb.MemberPromoteResponse
	waitFor(t, "the promotion", func() bool {
		prom, err = c.nodes[f].MemberPromote(ctxT(t), &pb.MemberPromoteRequest{ID: l.MemberID()})
		if err != nil && !errors.Is(err, ErrLearnerNotReady) {
			t.Fatalf("promote: %v", err)
		}
		return err == nil
	})
	if prom.Header.MemberId != c.ids[f] {
		t.Fatalf("forwarded promotion answered by %x, want the follower %x", prom.Header.MemberId, c.ids[f])
	}
	for _, m := range prom.Members {
		if m.IsLearner {
			t.Fatalf("member %x still a learner after promotion", m.ID)
		}
	}
	if _, err := c.nodes[lead].MemberPromote(ctxT(t), &pb.MemberPromoteRequest{ID: l.MemberID()}); !errors.Is(err, ErrMemberNotLearner) {
		t.Fatalf("second promotion: %v, want %v", err, ErrMemberNotLearner)
	}
	waitFor(t, "the promoted member to see itself as a voter", func() bool { return !l.IsLearner() })
	put(t, l, "by-new-voter", "1")

	// Replace an original follower with it.
	lead = c.settled()
	old := c.followers(lead)[0]
	if old == j {
		old = c.followers(lead)[1]
	}
	rm, err := c.nodes[lead].MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: c.ids[old]})
	if err != nil {
		t.Fatalf("remove: %v", err)
	}
	if len(rm.Members) != 3 || slices.Contains(memberIDs(rm.Members), c.ids[old]) {
		t.Fatalf("members after remove: %v", memberIDs(rm.Members))
	}
	c.waitRemovedStop(old)
	// A removed ID can never come back.
	if _, err := c.nodes[lead].MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: c.ids[old]}); !errors.Is(err, ErrIDRemoved) || !errors.Is(err, ErrMemberNotFound) {
		t.Fatalf("second remove: %v, want %v", err, ErrIDRemoved)
	}
	// The member itself refuses to start on its data.
	if err := c.startErr(old); !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("restart of a removed member: %v, want %v", err, ErrMemberRemoved)
	}
	put(t, c.nodes[j], "after-remove", "1")
	c.converged()

	// The joined member restarts from its own data dir.
	c.stop(j)
	put(t, c.nodes[lead], "while-down", "1")
	c.start(j)
	c.converged()
	if r := get(t, c.nodes[j], "while-down", true); len(r.Kvs) != 1 {
		t.Fatal("restarted joined member misses a write")
	}
}

func TestMembershipRemoveLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	put(t, c.nodes[lead], "k", "1")
	lead = c.settled()
	resp, err := c.nodes[lead].MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: c.ids[lead]})
	if err != nil {
		t.Fatalf("remove the leader: %v", err)
	}
	if len(resp.Members) != 2 {
		t.Fatalf("members after removing the leader: %v", memberIDs(resp.Members))
	}
	c.waitRemovedStop(lead)
	newLead := c.leader()
	if newLead == lead {
		t.Fatal("removed leader still leads")
	}
	for _, i := range c.running() {
		if _, err := putCtx(ctxT(t), c.nodes[i], fmt.Sprintf("after/%d", i), "v"); err != nil {
			t.Fatalf("write after the leader's removal: %v", err)
		}
		ml, err := c.nodes[i].MemberList(ctxT(t), &pb.MemberListRequest{Linearizable: true})
		if err != nil || len(ml.Members) != 2 {
			t.Fatalf("member list on %d: %v %v", i+1, ml, err)
		}
	}
	c.converged()
}

func TestMembershipUpdatePeerURLsAndErrors(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	f := c.followers(lead)[0]
	up, err := c.nodes[f].MemberUpdate(ctxT(t), &pb.MemberUpdateRequest{ID: c.ids[f], PeerURLs: []string{"http://127.0.0.1:22380"}})
	if err != nil {
		t.Fatalf("update through a follower: %v", err)
	}
	i := slices.IndexFunc(up.Members, func(m *pb.Member) bool { return m.ID == c.ids[f] })
	if i < 0 || !slices.Equal(up.Members[i].PeerURLs, []string{"http://127.0.0.1:22380"}) {
		t.Fatalf("members after update: %v", up.Members)
	}
	waitFor(t, "every member to see the new URLs", func() bool {
		for _, n := range c.nodes {
			m, ok := findMember(*n.membersPub.Load(), c.ids[f])
			if !ok || m.PeerURLs[0] != "http://127.0.0.1:22380" {
				return false
			}
		}
		return true
	})
	// The table survives a restart (it is in the store).
	c.stop(f)
	c.start(f)
	if m, _ := findMember(*c.nodes[f].membersPub.Load(), c.ids[f]); m.PeerURLs[0] != "http://127.0.0.1:22380" {
		t.Fatalf("peer URLs after restart: %v", m.PeerURLs)
	}

	lead = c.settled()
	other := c.followers(lead)[1]
	for _, tc := range []struct {
		name string
		err  error
		call func(n *Node) error
	}{
		{"update to another member's URL", ErrPeerURLExists, func(n *Node) error {
			_, err := n.MemberUpdate(ctxT(t), &pb.MemberUpdateRequest{ID: c.ids[f], PeerURLs: c.cfgs[other].PeerURLs})
			return err
		}},
		{"update of an unknown member", ErrMemberNotFound, func(n *Node) error {
			_, err := n.MemberUpdate(ctxT(t), &pb.MemberUpdateRequest{ID: 42, PeerURLs: []string{"http://127.0.0.1:1"}})
			return err
		}},
		{"update with a bad URL", ErrBadPeerURLs, func(n *Node) error {
			_, err := n.MemberUpdate(ctxT(t), &pb.MemberUpdateRequest{ID: c.ids[f], PeerURLs: []string{"127.0.0.1:1"}})
			return err
		}},
		{"update of an unknown member with a bad URL", ErrMemberNotFound, func(n *Node) error {
			_, err := n.MemberUpdate(ctxT(t), &pb.MemberUpdateRequest{ID: 42})
			return err
		}},
		{"add with no URL", ErrBadPeerURLs, func(n *Node) error {
			_, err := n.MemberAdd(ctxT(t), &pb.MemberAddRequest{})
			return err
		}},
		{"add with an existing URL", ErrPeerURLExists, func(n *Node) error {
			_, err := n.MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: c.cfgs[other].PeerURLs, IsLearner: true})
			return err
		}},
		{"remove of an unknown member", ErrMemberNotFound, func(n *Node) error {
			_, err := n.MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: 42})
			return err
		}},
		{"promote of a voter", ErrMemberNotLearner, func(n *Node) error {
			_, err := n.MemberPromote(ctxT(t), &pb.MemberPromoteRequest{ID: c.ids[other]})
			return err
		}},
		{"promote of an unknown member", ErrMemberNotFound, func(n *Node) error {
			_, err := n.MemberPromote(ctxT(t), &pb.MemberPromoteRequest{ID: 42})
			return err
		}},
		{"move leader to an unknown member", ErrBadLeaderTransferee, func(n *Node) error {
			_, err := n.MoveLeader(ctxT(t), &pb.MoveLeaderRequest{TargetID: 42})
			return err
		}},
	} {
		if err := tc.call(c.nodes[c.settled()]); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
	}
	lead = c.leader()
	if _, err := c.nodes[c.followers(lead)[0]].MoveLeader(ctxT(t), &pb.MoveLeaderRequest{TargetID: c.ids[lead]}); !errors.Is(err, ErrNotLeader) {
		t.Errorf("move leader on a follower: %v, want %v", err, ErrNotLeader)
	}
	c.converged()
}

func TestMembershipMoveLeader(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	target := c.followers(lead)[1]
	if _, err := c.nodes[lead].MoveLeader(ctxT(t), &pb.MoveLeaderRequest{TargetID: c.ids[target]}); err != nil {
		t.Fatalf("move leader: %v", err)
	}
	if got := c.leader(); got != target {
		t.Fatalf("leader is member %d after the transfer, want %d", got+1, target+1)
	}
	put(t, c.nodes[lead], "after-move", "1")
	// A transfer that cannot finish (the target is cut off) ends with
	// etcd's timeout error when the request's context expires.
	lead = target
	other := c.followers(lead)[0]
	c.net.Isolate(c.ids[other], c.ids...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*testElection)
	defer cancel()
	if _, err := c.nodes[lead].MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: c.ids[other]}); !errors.Is(err, ErrTimeoutLeaderTransfer) {
		t.Fatalf("move leader to an isolated member: %v, want %v", err, ErrTimeoutLeaderTransfer)
	}
	c.net.Heal()
	c.leader()
	c.converged()
}

func TestMembershipStrictReconfigCheck(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.settled()
	fs := c.followers(lead)
	c.stop(fs[1])
	// Let the leader notice the member is gone.
	waitFor(t, "the stopped member to count as inactive", func() bool {
		var active bool
		onLoop(c.nodes[lead], func() {
			active = c.nodes[lead].activeSince(c.ids[fs[1]], time.Now().Add(-c.nodes[lead].healthWindow()))
		})
		return !active
	})
	// Removing a live member would leave 1 of 2 voters running.
	if _, err := c.nodes[lead].MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: c.ids[fs[0]]}); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("remove of a live member with one down: %v, want %v", err, ErrUnhealthy)
	}
	// Adding a voter would need 3 of 4 active.
	if _, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12383"}}); !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("add of a voter with one down: %v, want %v", err, ErrUnhealthy)
	}
	// The member that is down can be removed.
	if _, err := c.nodes[lead].MemberRemove(ctxT(t), &pb.MemberRemoveRequest{ID: c.ids[fs[1]]}); err != nil {
		t.Fatalf("remove of the member that is down: %v", err)
	}
	// Restarted on its old data it never applied its removal: the others
	// refuse its messages and tell it, and it stops.
	err := c.startErr(fs[1])
	if err == nil {
		c.waitRemovedStop(fs[1])
	} else if !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("restart of a member removed while down: %v, want %v", err, ErrMemberRemoved)
	}
	put(t, c.nodes[lead], "still-writable", "1")
	c.converged()
}
