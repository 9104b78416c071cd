package consensus

// Membership. The member table (IDs, names, peer and client URLs) is
// replicated state: it lives in the store's metadata, changes only through
// raft (or arrives with a snapshot), and is identical on every member at the
// same applied index. Which member this data dir belongs to is local state:
// it is kept under the raft prefix (keyLocalMember), so a snapshot, which
// never carries raft keys, cannot change it.
//
// At bootstrap every member writes the same table from --initial-cluster,
// with etcd's member and cluster IDs. Client URLs are not known for the
// other members then, so in a multi-member cluster the table starts without
// client URLs and every member publishes its own name and client URLs
// through raft once a leader exists (etcd's publishV3), and again whenever
// they changed since. A single-member cluster writes its own client URLs at
// bootstrap directly: there is no other copy of the table to disagree with.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/storage"
)

// metaClusterKey holds the JSON clusterMeta in the store's metadata.
var metaClusterKey = []byte("consensus/cluster")

// keyLocalMember holds this member's ID (8 bytes, big-endian).
var keyLocalMember = []byte{0x01, 'r', 'i'}

type clusterMeta struct {
	ClusterID uint64 `json:"cluster_id"`
	// MemberID is the local member's ID in data dirs written before
	// keyLocalMember existed; it is read as a fallback and never written.
	MemberID uint64   `json:"member_id,omitempty"`
	Members  []member `json:"members"`
	// Removed lists the IDs of removed members: they may never come back.
	Removed []uint64 `json:"removed,omitempty"`
	// RejectedConfChanges are the raft indexes of the most recent conf
	// changes apply rejected (reconfig.go).
	RejectedConfChanges []uint64 `json:"rejected_conf_changes,omitempty"`
}

// bootstrap creates the initial raft state of a new cluster and persists it
// atomically with the cluster metadata: a log base at index 1 (term 1) whose
// ConfState lists the initial voters, so raft starts with the membership
// already applied and no conf-change entries to replay. Every member of a
// new cluster writes exactly the same replicated state.
func (n *Node) bootstrap(ctx context.Context) (*raftState, error) {
	members, err := n.cfg.initialMembers()
	if err != nil {
		return nil, err
	}
	if n.cfg.DiscoverCluster != nil {
		if members, err = n.discover(ctx, members); err != nil {
			return nil, err
		}
	}
	ids := make([]uint64, 0, len(members))
	for i, m := range members {
		ids = append(ids, m.ID)
		if m.Name == n.cfg.Name {
			n.memberID = m.ID
		}
		if len(members) > 1 {
			members[i].ClientURLs = nil // published through raft
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
	if err := n.persistInitial(st, members); err != nil {
		return nil, err
	}
	n.membersPub.Store(new(slices.Clone(members)))
	n.lg.Info("bootstrapped new cluster",
		"name", n.cfg.Name, "member-id", fmt.Sprintf("%x", n.memberID), "cluster-id", fmt.Sprintf("%x", n.clusterID),
		"members", len(members))
	return st, nil
}

// discover asks DiscoverCluster for the initial cluster, given self (this
// member alone), and returns its members.
func (n *Node) discover(ctx context.Context, self []member) ([]member, error) {
	var own member
	for _, m := range self {
		if m.Name == n.cfg.Name {
			own = m
		}
	}
	entries := make([]string, len(own.PeerURLs))
	for i, u := range own.PeerURLs {
		entries[i] = own.Name + "=" + u
	}
	spec, err := n.cfg.DiscoverCluster(ctx, own.ID, strings.Join(entries, ","))
	if err != nil {
		return nil, err
	}
	n.cfg.InitialCluster = spec
	members, err := n.cfg.initialMembers()
	if err != nil {
		return nil, fmt.Errorf("consensus: discovered cluster %q: %w", spec, err)
	}
	return members, nil
}

// persistInitial writes a member's first raft state, its identity and the
// member table in one fsynced batch.
func (n *Node) persistInitial(st *raftState, members []member) error {
	entry, err := proto.Marshal(st.ents[0])
	if err != nil {
		return err
	}
	b := n.store.NewBatch()
	defer b.Close()
	w := b.Pebble()
	for _, kv := range []struct {
		key []byte
		m   proto.Message
	}{{keyHardState, st.hs}, {keyConfState, st.cs}, {keySnapshot, st.snap}} {
		if err := setProto(w, kv.key, kv.m); err != nil {
			return err
		}
	}
	if err := w.Set(entryKey(st.ents[0].GetIndex()), entry, nil); err != nil {
		return err
	}
	if err := w.Set(keyLocalMember, binary.BigEndian.AppendUint64(nil, n.memberID), nil); err != nil {
		return err
	}
	if err := n.writeClusterMeta(b, members); err != nil {
		return err
	}
	if i := st.ents[0].GetIndex(); i > 0 {
		b.SetApplied(i, st.ents[0].GetTerm())
	}
	if err := b.Commit(true); err != nil {
		return fmt.Errorf("consensus: persist initial raft state: %w", err)
	}
	n.membersPub.Store(new(slices.Clone(members)))
	n.publishRemoved()
	return nil
}

// loadMembership restores this member's identity and the member table.
func (n *Node) loadMembership() error {
	meta, err := n.readClusterMeta()
	if err != nil {
		return err
	}
	id, err := loadLocalMember(n.store.DB())
	if err != nil {
		return err
	}
	if id == 0 {
		// A data dir from before keyLocalMember: the ID is in the table's
		// metadata, which the next table change rewrites without it, so
		// record it where it belongs now.
		if id = meta.MemberID; id == 0 {
			return errors.New("consensus: this member's ID is not recorded in the data dir")
		}
		if err := n.store.DB().Set(keyLocalMember, binary.BigEndian.AppendUint64(nil, id), pebble.Sync); err != nil {
			return fmt.Errorf("consensus: record local member id: %w", err)
		}
	}
	n.clusterID, n.memberID = meta.ClusterID, id
	n.loadRemoved(meta)
	if n.removed[id] {
		return ErrMemberRemoved
	}
	self, ok := findMember(meta.Members, n.memberID)
	if !ok {
		return fmt.Errorf("consensus: member %x missing from stored membership", n.memberID)
	}
	if self.Name != n.cfg.Name {
		n.lg.Warn("configured name differs from the name this member was created with; publishing the new one",
			"configured", n.cfg.Name, "stored", self.Name)
	}
	n.members = meta.Members
	n.membersPub.Store(new(slices.Clone(meta.Members)))
	return nil
}

func (n *Node) loadRemoved(meta clusterMeta) {
	n.removed = map[uint64]bool{}
	for _, id := range meta.Removed {
		n.removed[id] = true
	}
	n.rejectedCC = slices.Clone(meta.RejectedConfChanges)
	n.publishRemoved()
}

func (n *Node) readClusterMeta() (clusterMeta, error) {
	var meta clusterMeta
	raw, err := n.store.Meta(metaClusterKey)
	if err != nil && !isNotFound(err) {
		return meta, fmt.Errorf("consensus: read cluster metadata: %w", err)
	}
	if len(raw) == 0 {
		return meta, errors.New("consensus: raft state present but cluster metadata missing")
	}
	if err := json.Unmarshal(raw, &meta); err != nil {
		return meta, fmt.Errorf("consensus: decode cluster metadata: %w", err)
	}
	return meta, nil
}

func loadLocalMember(db *pebble.DB) (uint64, error) {
	v, closer, err := db.Get(keyLocalMember)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("consensus: read local member id: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("consensus: local member id has %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func findMember(ms []member, id uint64) (member, bool) {
	for _, m := range ms {
		if m.ID == id {
			return m, true
		}
	}
	return member{}, false
}

// reloadReplicatedState re-reads what the loop caches of the replicated
// state after a snapshot replaced the store: member table, lease authority
// and alarms.
func (n *Node) reloadReplicatedState() error {
	meta, err := n.readClusterMeta()
	if err != nil {
		return err
	}
	if meta.ClusterID != n.clusterID {
		return fmt.Errorf("consensus: snapshot of cluster %x installed into cluster %x", meta.ClusterID, n.clusterID)
	}
	n.loadRemoved(meta)
	if n.removed[n.memberID] && n.removedAt.IsZero() {
		n.removedAt = time.Now()
	}
	n.setMembers(meta.Members)
	if n.leaseAuth, err = loadLeaseAuthority(n.store); err != nil {
		return err
	}
	auth := n.leaseAuth
	n.leaseAuthPub.Store(&auth)
	if n.auth, err = loadAuth(n.store); err != nil {
		return err
	}
	n.authPub.Store(n.auth)
	n.alarms = map[alarmKey]bool{}
	for _, a := range n.store.Alarms() {
		n.alarms[alarmKey{a.MemberID, a.Alarm}] = true
	}
	n.publishAlarms()
	return nil
}

// setMembers makes ms the loop's member table, publishes it and tells the
// transport about the peers.
func (n *Node) setMembers(ms []member) {
	n.members = ms
	n.membersPub.Store(new(slices.Clone(ms)))
	n.syncPeers()
}

// syncPeers makes the transport's peers the table's other members.
func (n *Node) syncPeers() {
	known := map[uint64]bool{}
	for _, m := range n.members {
		if m.ID == n.memberID {
			continue
		}
		known[m.ID] = true
		n.transport.AddPeer(m.ID, m.PeerURLs)
	}
	for id := range n.peers {
		if !known[id] {
			n.transport.RemovePeer(id)
		}
	}
	n.peers = known
}

// applyMemberAttributes records a member's published name and client URLs.
func (n *Node) applyMemberAttributes(b *storage.Batch, a *concordv1.MemberAttributes, out *applyOutput) result {
	ms := make([]member, len(n.members))
	copy(ms, n.members)
	i := slices.IndexFunc(ms, func(m member) bool { return m.ID == a.GetMemberId() })
	if i < 0 {
		return result{err: fmt.Errorf("%w: %x", ErrMemberNotFound, a.GetMemberId())}
	}
	ms[i].Name = a.GetName()
	ms[i].ClientURLs = slices.Clone(a.GetClientUrls())
	if err := n.writeClusterMeta(b, ms); err != nil {
		return result{err: err}
	}
	n.members = ms
	out.members = ms
	return result{resp: a}
}

// publishAttributes makes the replicated table show this member's
// configured name and client URLs, proposing them until that is so.
func (n *Node) publishAttributes() {
	defer n.bg.Done()
	select {
	case <-n.leaderC:
	case <-n.busCtx.Done():
		return
	}
	for {
		if n.attributesPublished() {
			return
		}
		ctx, cancel := context.WithTimeout(n.busCtx, n.reqTimeout)
		_, err := n.proposeCommand(ctx, &concordv1.RaftCommand{Command: &concordv1.RaftCommand_MemberAttributes{
			MemberAttributes: &concordv1.MemberAttributes{
				MemberId: n.memberID, Name: n.cfg.Name, ClientUrls: slices.Clone(n.cfg.ClientURLs),
			},
		}})
		cancel()
		if n.busCtx.Err() != nil || errors.Is(err, ErrStopped) {
			return
		}
		if err == nil {
			n.lg.Info("published local member attributes to the cluster", "name", n.cfg.Name, "client-urls", n.cfg.ClientURLs)
			continue
		}
		n.lg.Warn("publishing member attributes failed; retrying", "error", err)
		if !sleepCtx(n.busCtx, n.cfg.ElectionTimeout) {
			return
		}
	}
}

func (n *Node) attributesPublished() bool {
	self, ok := findMember(*n.membersPub.Load(), n.memberID)
	return ok && self.Name == n.cfg.Name && slices.Equal(self.ClientURLs, n.cfg.ClientURLs)
}

// isNotFound tolerates a Meta implementation that reports a missing key as
// pebble's ErrNotFound rather than (nil, nil).
func isNotFound(err error) bool { return errors.Is(err, pebble.ErrNotFound) }
