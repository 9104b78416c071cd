package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// metaClusterKey holds the JSON clusterMeta in the store's metadata, written
// once at bootstrap in the same batch as the initial raft state.
var metaClusterKey = []byte("consensus/cluster")

type clusterMeta struct {
	ClusterID uint64   `json:"cluster_id"`
	MemberID  uint64   `json:"member_id"`
	Members   []member `json:"members"`
}

// bootstrap creates the initial raft state of a new cluster and persists it
// atomically with the cluster metadata: a log base at index 1 (term 1) whose
// ConfState lists the initial voters, so raft starts with the membership
// already applied and no conf-change entries to replay.
func (n *Node) bootstrap() (*raftState, error) {
	members, err := n.cfg.initialMembers()
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(members))
	for _, m := range members {
		ids = append(ids, m.ID)
		if m.Name == n.cfg.Name {
			n.memberID = m.ID
		}
	}
	slices.Sort(ids)
	n.members = members
	n.clusterID = computeClusterID(ids)

	one := uint64(1)
	st := &raftState{
		hs:   &raftpb.HardState{Term: new(one), Commit: new(one)},
		cs:   &raftpb.ConfState{Voters: ids},
		snap: &raftpb.SnapshotMetadata{Index: new(one), Term: new(one)},
		ents: []*raftpb.Entry{{Index: new(one), Term: new(one), Type: raftpb.EntryNormal.Enum()}},
	}
	meta, err := json.Marshal(clusterMeta{ClusterID: n.clusterID, MemberID: n.memberID, Members: members})
	if err != nil {
		return nil, err
	}
	entry, err := proto.Marshal(st.ents[0])
	if err != nil {
		return nil, err
	}
	b := n.store.NewBatch()
	defer b.Close()
	w := b.Pebble()
	for _, kv := range []struct {
		key []byte
		m   proto.Message
	}{{keyHardState, st.hs}, {keyConfState, st.cs}, {keySnapshot, st.snap}} {
		if err := setProto(w, kv.key, kv.m); err != nil {
			return nil, err
		}
	}
	if err := w.Set(entryKey(1), entry, nil); err != nil {
		return nil, err
	}
	b.SetMeta(metaClusterKey, meta)
	b.SetApplied(1, 1)
	if err := b.Commit(true); err != nil {
		return nil, fmt.Errorf("consensus: persist bootstrap state: %w", err)
	}
	n.lg.Info("bootstrapped new cluster",
		"name", n.cfg.Name, "member-id", fmt.Sprintf("%x", n.memberID), "cluster-id", fmt.Sprintf("%x", n.clusterID),
		"members", len(members))
	return st, nil
}

// loadMembership restores the IDs and members persisted at bootstrap. The
// local member's client URLs come from the current configuration.
func (n *Node) loadMembership() error {
	raw, err := n.store.Meta(metaClusterKey)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("consensus: read cluster metadata: %w", err)
	}
	if len(raw) == 0 {
		return errors.New("consensus: raft state present but cluster metadata missing")
	}
	var meta clusterMeta
	if err := json.Unmarshal(raw, &meta); err != nil {
		return fmt.Errorf("consensus: decode cluster metadata: %w", err)
	}
	n.clusterID, n.memberID, n.members = meta.ClusterID, meta.MemberID, meta.Members
	found := false
	for i := range n.members {
		if n.members[i].ID == n.memberID {
			found = true
			if n.members[i].Name != n.cfg.Name {
				n.lg.Warn("configured name differs from the name this member was created with; keeping the stored name",
					"configured", n.cfg.Name, "stored", n.members[i].Name)
			}
			n.members[i].ClientURLs = slices.Clone(n.cfg.ClientURLs)
		}
	}
	if !found {
		return fmt.Errorf("consensus: member %x missing from stored membership", n.memberID)
	}
	return nil
}

// isNotFound tolerates a Meta implementation that reports a missing key as
// pebble's ErrNotFound rather than (nil, nil).
func isNotFound(err error) bool { return errors.Is(err, pebble.ErrNotFound) }
