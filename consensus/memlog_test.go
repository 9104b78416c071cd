package consensus

// The in-memory raft log (trimMemoryLog): what a leader keeps of applied
// entries, and that members which need dropped entries still catch up.

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// memLogBounds reads, on n's raft loop, the first index raft's memory
// storage still holds and the raft applied index.
func memLogBounds(n *Node) (first, applied uint64) {
	onLoop(n, func() {
		first, _ = n.ms.FirstIndex()
		applied = n.raftApplied
	})
	return first, applied
}

func TestMemoryLogSingleMemberKeepsNoAppliedEntries(t *testing.T) {
	cfg := testConfig(t) // etcd's defaults: snapshot every 10,000 entries, keep 5,000
	n := startNode(t, cfg)
	var writes []ackedWrite
	for i := range 300 {
		k := fmt.Sprintf("k%03d", i)
		writes = append(writes, ackedWrite{k, "v", put(t, n, k, "v").Header.Revision})
	}
	first, applied := memLogBounds(n)
	if applied < 300 || applied-(first-1) >= memTrimEntries {
		t.Fatalf("memory log starts at %d with %d applied: more than %d applied entries kept", first, applied, memTrimEntries)
	}
	// The disk log is maybeTruncate's: untouched below SnapshotCount.
	if diskFirst, diskLast, _ := raftLogBounds(t, n); diskFirst > 1 || diskLast < applied {
		t.Fatalf("disk log [%d, %d]: truncated below the snapshot count", diskFirst, diskLast)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	checkWrites(t, n, writes)
	put(t, n, "after-restart", "v")
}

func TestMemoryLogLeaderKeepsWhatAFollowerLacks(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	lead := c.leader()
	behind := c.followers(lead)[0]
	put(t, c.nodes[lead], "early", "1")
	c.converged()
	c.stop(behind)
	_, stoppedAt := memLogBounds(c.nodes[lead])

	for i := range 200 {
		put(t, c.nodes[lead], fmt.Sprintf("k/%03d", i), "v")
	}
	if first, _ := memLogBounds(c.nodes[lead]); first > stoppedAt+1 {
		t.Fatalf("leader's memory log starts at %d; the stopped member needs %d", first, stoppedAt+1)
	}

	c.start(behind)
	c.converged()
	if got := c.nodes[behind].snapshotsInstalled.Load(); got != 0 {
		t.Fatalf("stopped member caught up with %d snapshots, want it to replay the leader's log", got)
	}
	// Once every member has everything, the leader drops it.
	for i := range memTrimEntries {
		put(t, c.nodes[lead], fmt.Sprintf("more/%03d", i), "v")
	}
	c.converged()
	waitFor(t, "the leader to drop entries every member has", func() bool {
		first, _ := memLogBounds(c.nodes[lead])
		return first > stoppedAt+200
	})
}

// A one-member cluster grows as etcd's does (`member add` of a voter is
// allowed although the new member is not active yet), and the new member
// starts from a snapshot since the leader kept no entries in memory.
func TestMemoryLogTrimmedLeaderSendsSnapshotToNewMember(t *testing.T) {
	c := newTestCluster(t, 1, nil)
	lead := c.leader()
	for i := range 200 {
		put(t, c.nodes[lead], fmt.Sprintf("before/%03d", i), fmt.Sprint(i))
	}
	if first, _ := memLogBounds(c.nodes[lead]); first <= 2 {
		t.Fatalf("memory log starts at %d: not trimmed, the test would not need a snapshot", first)
	}
	lead = c.settled()

	j := c.addProcess("m2", "http://127.0.0.1:12381")
	if _, err := c.nodes[lead].MemberAdd(ctxT(t), &pb.MemberAddRequest{PeerURLs: []string{"http://127.0.0.1:12381"}}); err != nil {
		t.Fatalf("add a second member: %v", err)
	}
	c.startJoined(j)
	l := c.nodes[j]
	waitFor(t, "the new member to serve data written before it joined", func() bool {
		r, err := l.Range(ctxT(t), &pb.RangeRequest{Key: []byte("before/199"), Serializable: true})
		return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "199"
	})
	waitFor(t, "the new member's snapshot install to be counted", func() bool { return l.snapshotsInstalled.Load() >= 1 })
	// Both members now make the quorum; it follows from the log.
	put(t, c.nodes[lead], "after", "1")
	c.converged()
	put(t, l, "through-the-new-member", "1")
	c.converged()
}
