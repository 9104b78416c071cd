package consensus

// Raft snapshots. The state machine is the store itself, so a raft snapshot
// record (maybeTruncate) is metadata only; what travels to a follower that
// is behind the leader's truncated log is a storage.Snapshot of the whole
// replicated keyspace, taken on the leader's raft loop when raft asks to
// send one. That store snapshot reflects the leader's applied index A, which
// is at or after the raft snapshot's index S (raft snapshots are taken at
// applied indexes, and applying only moves forward).
//
// The follower installs data and raft state in ONE pebble batch (the
// storage.Restore, plus the log reset to a base entry at S, the snapshot
// metadata, the conf state and the hard state), fsynced. Raft then resumes
// at S: the entries S+1..A it receives next are already reflected in the
// store and are skipped by apply (their conf changes still reach raft). The
// raft applied index therefore may lag the store's applied index for a
// while; keyRaftApplied persists it while it does, so a restart in that
// window resumes raft at the right place and never applies an entry twice.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// keyRaftApplied holds the raft applied index while it is below the store's
// applied index (after a snapshot install); absent otherwise.
var keyRaftApplied = []byte{0x01, 'r', 'a'}

// incomingSnap is a received snapshot waiting for the raft loop.
type incomingSnap struct {
	msg     *raftpb.Message
	restore *storage.Restore
	done    chan error
}

// ReceiveSnapshot implements Raft: it decodes the store data into a restore
// batch (on the caller's goroutine: that takes as long as the stream), then
// lets the raft loop step the MsgSnap and install it.
func (n *Node) ReceiveSnapshot(ctx context.Context, m *raftpb.Message, data io.Reader) error {
	if m.GetType() != raftpb.MsgSnap || m.GetTo() != n.memberID {
		return fmt.Errorf("%w: %s to %x", ErrWrongCluster, m.GetType(), m.GetTo())
	}
	meta := m.GetSnapshot().GetMetadata()
	r, err := n.store.NewRestore()
	if err != nil {
		return n.storeErr(err)
	}
	defer r.Close()
	size, err := r.ReadFrom(data)
	if err != nil {
		return fmt.Errorf("consensus: receive snapshot: %w", err)
	}
	if applied, _ := r.Applied(); applied < meta.GetIndex() {
		return fmt.Errorf("consensus: snapshot data reflects index %d, older than the raft snapshot at %d", applied, meta.GetIndex())
	}
	n.lg.Info("received snapshot", "from", fmt.Sprintf("%x", m.GetFrom()), "snapshot-index", meta.GetIndex(),
		"snapshot-term", meta.GetTerm(), "bytes", size)
	in := &incomingSnap{msg: m, restore: r, done: make(chan error, 1)}
	select {
	case n.snapC <- in:
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopC:
		return ErrStopped
	case <-n.done:
		return ErrStopped
	}
	// The loop owns r now and answers before it does anything else, or
	// exits; only then may the deferred Close run.
	select {
	case err := <-in.done:
		return err
	case <-n.done:
		select {
		case err := <-in.done:
			return err
		default:
			return ErrStopped
		}
	}
}

// stepSnapshot runs on the raft loop: raft decides whether it needs the
// snapshot; if so the Ready that follows carries it and handleReady installs
// the pending data.
func (n *Node) stepSnapshot(in *incomingSnap) error {
	n.pendingSnap = in
	if err := n.rn.Step(in.msg); err != nil {
		n.lg.Debug("raft step of a snapshot failed", "error", err)
	}
	err := n.process()
	if p := n.pendingSnap; p != nil {
		// raft did not restore it (stale, or from an old term): nothing to
		// install. raft has answered the leader itself.
		n.pendingSnap = nil
		p.done <- err
		n.lg.Info("received snapshot not needed", "snapshot-index", in.msg.GetSnapshot().GetMetadata().GetIndex())
	}
	return err
}

// installSnapshot persists a Ready that carries a snapshot: the received
// store data, the raft log reset to the snapshot and the Ready's hard state
// and entries, in one fsynced batch.
func (n *Node) installSnapshot(rd raft.Ready) error {
	in := n.pendingSnap
	meta := rd.Snapshot.GetMetadata()
	if in == nil || !proto.Equal(in.msg.GetSnapshot().GetMetadata(), meta) {
		return fmt.Errorf("raft restored snapshot %d/%d without its data", meta.GetIndex(), meta.GetTerm())
	}
	n.pendingSnap = nil
	err := n.persistSnapshot(in.restore, rd)
	in.done <- err
	return err
}

func (n *Node) persistSnapshot(r *storage.Restore, rd raft.Ready) error {
	if len(rd.CommittedEntries) > 0 {
		return errors.New("raft ready carries committed entries together with a snapshot")
	}
	meta := rd.Snapshot.GetMetadata()
	index, term := meta.GetIndex(), meta.GetTerm()
	applied, _ := r.Applied()
	w := r.Pebble()
	if err := w.DeleteRange(entryPrefix, entryPrefixEnd, nil); err != nil {
		return err
	}
	base, err := proto.Marshal(&raftpb.Entry{Index: new(index), Term: new(term), Type: raftpb.EntryNormal.Enum()})
	if err != nil {
		return err
	}
	if err := w.Set(entryKey(index), base, nil); err != nil {
		return err
	}
	log := raftLog{first: index, last: index}
	if err := log.append(w, rd.Entries); err != nil {
		return err
	}
	hs := rd.HardState
	if hs == nil {
		cur, _, err := n.ms.InitialState()
		if err != nil {
			return err
		}
		hs = proto.CloneOf(cur)
	}
	if hs.GetCommit() < index {
		hs.Commit = new(index)
	}
	for _, kv := range []struct {
		key []byte
		m   proto.Message
	}{{keyHardState, hs}, {keySnapshot, meta}, {keyConfState, meta.GetConfState()}} {
		if err := setProto(w, kv.key, kv.m); err != nil {
			return err
		}
	}
	if err := setRaftApplied(w, index, applied); err != nil {
		return err
	}
	if err := r.Commit(); err != nil {
		return fmt.Errorf("commit snapshot install: %w", err)
	}
	n.snapshotsInstalled.Add(1)
	if n.cfg.afterSnapshotInstall != nil {
		n.cfg.afterSnapshotInstall(n)
	}

	// Durable: switch raft and the loop's state over.
	if err := n.ms.ApplySnapshot(rd.Snapshot); err != nil {
		return fmt.Errorf("raft memory storage apply snapshot: %w", err)
	}
	n.log = log
	n.snapIndex = index
	n.confState = meta.GetConfState()
	n.raftApplied = index
	n.applied.Store(applied)
	if err := n.reloadReplicatedState(); err != nil {
		return err
	}
	n.lg.Info("installed snapshot", "snapshot-index", index, "snapshot-term", term, "applied-index", applied,
		"revision", n.store.Rev())
	// Watchers of this member learn the new revision from the next beat
	// and repair what they missed from history.
	n.lastBeat = time.Time{}
	return nil
}

// setRaftApplied records the raft applied index when it lags the store's.
func setRaftApplied(w *pebble.Batch, raftApplied, storeApplied uint64) error {
	if raftApplied >= storeApplied {
		return w.Delete(keyRaftApplied, nil)
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], raftApplied)
	return w.Set(keyRaftApplied, v[:], nil)
}

// loadRaftApplied returns the persisted raft applied index, or storeApplied
// when raft is not lagging.
func loadRaftApplied(db *pebble.DB, storeApplied uint64) (uint64, error) {
	v, closer, err := db.Get(keyRaftApplied)
	if errors.Is(err, pebble.ErrNotFound) {
		return storeApplied, nil
	}
	if err != nil {
		return 0, fmt.Errorf("consensus: read raft applied index: %w", err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("consensus: raft applied index has %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// sendSnapshot answers raft's request to send a snapshot to a follower
// (a MsgSnap in a Ready): the store as of now goes with the message.
func (n *Node) sendSnapshot(m *raftpb.Message) {
	sn, err := n.store.NewSnapshot()
	if err != nil {
		n.lg.Warn("cannot snapshot the store for a follower", "to", fmt.Sprintf("%x", m.GetTo()), "error", err)
		n.rn.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
		return
	}
	applied, _ := sn.Applied()
	n.lg.Info("sending snapshot", "to", fmt.Sprintf("%x", m.GetTo()),
		"snapshot-index", m.GetSnapshot().GetMetadata().GetIndex(), "applied-index", applied, "revision", sn.Rev())
	n.snapshotsSent.Add(1)
	n.transport.SendSnapshot(m, sn)
}
