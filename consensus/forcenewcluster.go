package consensus

// Forcing a new one-member cluster (etcd's --force-new-cluster), the
// disaster-recovery tool for a cluster that lost its quorum for good: one
// surviving member restarts with Config.ForceNewCluster on its data dir,
// keeps every committed entry and all its data, and becomes the only member
// of the same cluster (same cluster ID, same member ID, name and URLs); the
// operator grows it again with `member add`.
//
// As etcd does (bootstrapWALFromSnapshot), the raft log is rewritten before
// raft starts:
//
//   - entries after the commit index are dropped: nobody can tell whether
//     the cluster committed them, and no client was told it did;
//   - one conf change entry per other voter and learner is appended at the
//     next indexes, in the current term, removing it (etcd's
//     createConfigChangeEnts and getEffectiveNodeIDsFromEntries);
//   - the hard state's commit index becomes the last of them.
//
// The removals then go through the ordinary apply path: raft's ConfState
// and the replicated member table (with the removed IDs, so an old member
// that comes back is told it was removed) change in the same batch as the
// applied index, exactly as for `member remove`. The term, vote and every
// index continue where they were. The rewrite is ONE fsynced Pebble batch,
// so a crash during it leaves either the old log or the new one; a crash
// after it restarts on the new log, whose removals are committed, with or
// without the flag.
//
// etcd's commit index is max(HardState.Commit, consistent index); concord's
// store applied index can likewise be above the hard state's commit in the
// window after a snapshot install (snapshot.go), when the entries it
// reflects may not be in the log yet. Then the log restarts at the store's
// applied index, as after a snapshot, with the membership the store holds.

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// ErrForceNewClusterNotVoter refuses --force-new-cluster on a member that is
// not a voter in its own committed configuration (a learner, or a member
// that joined and has no data yet): it cannot be the one member of a
// cluster (etcd's raft would panic removing every voter).
var ErrForceNewClusterNotVoter = errors.New("consensus: --force-new-cluster needs a member that is a voter of its cluster")

// forceNewCluster rewrites st (and the data dir) as described above. It
// runs in newNode, after loadMembership and before raft is created.
func (n *Node) forceNewCluster(st *raftState) error {
	db := n.store.DB()
	storeApplied, storeAppliedTerm := n.store.Applied()
	raftApplied, err := loadRaftApplied(db, storeApplied)
	if err != nil {
		return err
	}
	oldCommit := st.hs.GetCommit()
	commit := max(oldCommit, storeApplied)
	base, last := st.ents[0].GetIndex(), st.ents[len(st.ents)-1].GetIndex()
	if base == 0 {
		return fmt.Errorf("%w: this member joined a cluster and has received none of its data", ErrForceNewClusterNotVoter)
	}

	w := db.NewBatch()
	defer w.Close()
	cs := st.cs
	replayFrom := raftApplied
	if commit > last {
		// The store is ahead of the log (a snapshot was installed and the
		// entries it reflects have not arrived): restart the log at the
		// store's applied index, with the configuration the store's member
		// table holds, as a snapshot install would.
		n.lg.Warn("the store is ahead of the raft log; restarting the log at the store's applied index",
			"applied-index", storeApplied, "log-last", last)
		if err := w.DeleteRange(entryPrefix, entryPrefixEnd, nil); err != nil {
			return err
		}
		baseEnt := &raftpb.Entry{Index: new(storeApplied), Term: new(storeAppliedTerm), Type: raftpb.EntryNormal.Enum()}
		if err := setProto(w, entryKey(storeApplied), baseEnt); err != nil {
			return err
		}
		cs = &raftpb.ConfState{}
		for _, m := range n.members {
			if m.IsLearner {
				cs.Learners = append(cs.Learners, m.ID)
			} else {
				cs.Voters = append(cs.Voters, m.ID)
			}
		}
		snap := &raftpb.SnapshotMetadata{Index: new(storeApplied), Term: new(storeAppliedTerm)}
		for _, kv := range []struct {
			key []byte
			m   proto.Message
		}{{keySnapshot, snap}, {keyConfState, cs}} {
			if err := setProto(w, kv.key, kv.m); err != nil {
				return err
			}
		}
		if err := w.Delete(keyRaftApplied, nil); err != nil {
			return err
		}
		st.ents = []*raftpb.Entry{baseEnt}
		st.cs, st.snap = cs, snap
		replayFrom = storeApplied
	} else {
		if dropped := last - commit; dropped > 0 {
			n.lg.Info("discarding uncommitted raft entries", "first-index", commit+1, "commit-index", commit,
				"number-of-discarded-entries", dropped)
			if err := w.DeleteRange(entryKey(commit+1), entryKey(last+1), nil); err != nil {
				return err
			}
		}
		st.ents = st.ents[:commit-base+1]
	}

	voters, learners, err := effectiveMembers(cs, st.ents, replayFrom, n.rejectedCC)
	if err != nil {
		return err
	}
	if !voters[n.memberID] {
		return fmt.Errorf("%w: member %x is not a voter in its committed configuration", ErrForceNewClusterNotVoter, n.memberID)
	}
	var others []uint64
	for id := range voters {
		if id != n.memberID {
			others = append(others, id)
		}
	}
	for id := range learners {
		others = append(others, id)
	}
	slices.Sort(others)

	term := st.hs.GetTerm()
	next := commit + 1
	for _, id := range others {
		ctx, err := json.Marshal(confChangeContext{Member: member{ID: id}})
		if err != nil {
			return err
		}
		cc, err := proto.Marshal(&raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(id), Context: ctx})
		if err != nil {
			return err
		}
		e := &raftpb.Entry{Type: raftpb.EntryConfChange.Enum(), Term: new(term), Index: new(next), Data: cc}
		if err := setProto(w, entryKey(next), e); err != nil {
			return err
		}
		st.ents = append(st.ents, e)
		next++
	}
	hs := proto.CloneOf(st.hs)
	hs.Commit = new(next - 1)
	if err := setProto(w, keyHardState, hs); err != nil {
		return err
	}
	if err := w.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("consensus: force new cluster: commit the rewritten raft log: %w", err)
	}
	st.hs = hs
	n.campaignAlone = true
	removed := make([]string, len(others))
	for i, id := range others {
		removed[i] = fmt.Sprintf("%x", id)
	}
	n.lg.Warn("forcing restart member as a new one-member cluster",
		"cluster-id", fmt.Sprintf("%x", n.clusterID), "local-member-id", fmt.Sprintf("%x", n.memberID),
		"wal-commit-index", oldCommit, "commit-index", hs.GetCommit(), "removing", removed)
	return nil
}

// effectiveMembers is etcd's getEffectiveNodeIDsFromEntries, keeping voters
// and learners apart: the configuration cs (as of index from), changed by
// the conf change entries of ents above from, but for those at the indexes
// rejected (applied as no-ops, reconfig.go).
func effectiveMembers(cs *raftpb.ConfState, ents []*raftpb.Entry, from uint64, rejected []uint64) (voters, learners map[uint64]bool, err error) {
	voters, learners = map[uint64]bool{}, map[uint64]bool{}
	for _, id := range cs.GetVoters() {
		voters[id] = true
	}
	for _, id := range cs.GetLearners() {
		learners[id] = true
	}
	change := func(typ raftpb.ConfChangeType, id uint64) {
		switch typ {
		case raftpb.ConfChangeAddNode:
			voters[id] = true
			delete(learners, id)
		case raftpb.ConfChangeAddLearnerNode:
			learners[id] = true
			delete(voters, id)
		case raftpb.ConfChangeRemoveNode:
			delete(voters, id)
			delete(learners, id)
		}
	}
	for _, e := range ents {
		if e.GetIndex() <= from || slices.Contains(rejected, e.GetIndex()) {
			continue
		}
		switch e.GetType() {
		case raftpb.EntryConfChange:
			cc := &raftpb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return nil, nil, fmt.Errorf("consensus: decode conf change %d: %w", e.GetIndex(), err)
			}
			change(cc.GetType(), cc.GetNodeId())
		case raftpb.EntryConfChangeV2:
			cc := &raftpb.ConfChangeV2{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return nil, nil, fmt.Errorf("consensus: decode conf change %d: %w", e.GetIndex(), err)
			}
			for _, c := range cc.GetChanges() {
				change(c.GetType(), c.GetNodeId())
			}
		}
	}
	// An ID 0 is a rejected change applied as a no-op (reconfig.go).
	delete(voters, 0)
	delete(learners, 0)
	return voters, learners, nil
}
