package consensus

import (
	"context"

	"go.etcd.io/raft/v3"

	"github.com/concord-kv/concord/storage"
)

// Stats is a snapshot of a member's state for monitoring (/metrics). Every
// field is read without waiting for the raft loop.
type Stats struct {
	MemberID, ClusterID uint64
	// Leader is the known leader's ID, 0 while there is none.
	Leader    uint64
	IsLeader  bool
	IsLearner bool
	// LeaderChanges counts changes to a new known leader since start.
	LeaderChanges uint64
	Term          uint64
	// CommittedIndex and AppliedIndex are the raft log's commit and apply
	// positions (etcd reports them as proposals committed and applied).
	CommittedIndex, AppliedIndex uint64
	Revision, CompactRevision    int64
	// DBSize and DBSizeInUse are the store's size on disk and its live
	// part, as Status reports them; QuotaBytes is --quota-backend-bytes.
	DBSize, DBSizeInUse, QuotaBytes int64
	// ReadIndexRounds counts ReadIndex rounds started (each serves every
	// linearizable read waiting when it starts).
	ReadIndexRounds int64
	// SnapshotsSent and SnapshotsInstalled count store snapshots sent to
	// followers and received from a leader.
	SnapshotsSent, SnapshotsInstalled int64
	// WALFsync times the commits of raft Readys that fsync; BackendCommit
	// every Ready's commit (etcd's etcd_disk_wal_fsync_duration_seconds and
	// etcd_disk_backend_commit_duration_seconds).
	WALFsync, BackendCommit Histogram
	// ProposalsPending counts this member's proposals handed to raft and
	// not yet answered; ProposalsFailed those that raft refused or that
	// were not applied in time (etcd_server_proposals_pending and
	// etcd_server_proposals_failed_total).
	ProposalsPending int64
	ProposalsFailed  uint64
	// SlowApplies counts applies of a batch of entries that took longer
	// than --warning-apply-duration (etcd_server_slow_apply_total).
	SlowApplies uint64
	// Ops are the store's operation counters (etcd_mvcc_put_total and
	// friends).
	Ops storage.OpCounts
	// Peers are the peer transport's counters, by peer, when it keeps
	// them (PeerStatser).
	Peers []PeerStats
}

// Stats returns the member's current Stats.
func (n *Node) Stats() Stats {
	total, inUse := n.store.Size()
	leader := n.leader.Load()
	var peers []PeerStats
	if ps, ok := n.transport.(PeerStatser); ok {
		peers = ps.PeerStats()
	}
	return Stats{
		MemberID:           n.memberID,
		ClusterID:          n.clusterID,
		Leader:             leader,
		IsLeader:           leader != 0 && leader == n.memberID,
		IsLearner:          n.IsLearner(),
		LeaderChanges:      n.leaderChanges.Load(),
		Term:               n.term.Load(),
		CommittedIndex:     n.committed.Load(),
		AppliedIndex:       n.applied.Load(),
		Revision:           n.store.Rev(),
		CompactRevision:    n.store.CompactRev(),
		DBSize:             total,
		DBSizeInUse:        inUse,
		QuotaBytes:         n.quota,
		ReadIndexRounds:    n.readRounds.Load(),
		SnapshotsSent:      n.snapshotsSent.Load(),
		SnapshotsInstalled: n.snapshotsInstalled.Load(),
		WALFsync:           n.walFsync.Snapshot(),
		BackendCommit:      n.backendCommit.Snapshot(),
		ProposalsPending:   n.proposalsPending.Load(),
		ProposalsFailed:    n.proposalsFailed.Load(),
		SlowApplies:        n.slowApplies.Load(),
		Ops:                n.store.OpCounts(),
		Peers:              peers,
	}
}

// RaftStatus returns the raft node's status (etcd's raft.status in
// /debug/vars), read on the raft loop.
func (n *Node) RaftStatus(ctx context.Context) (raft.Status, error) {
	var st raft.Status
	err := n.onLoopErr(ctx, func() error {
		st = n.rn.Status()
		return nil
	})
	return st, err
}
