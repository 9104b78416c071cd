package consensus

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The raft log lives in the same Pebble instance as the state machine, under
// keys that start with 0x01 (reserved for consensus by the storage contract).
// Writes always go through the storage.Batch of the Ready they belong to, so
// log, hard state and applied state commit atomically.
//
// On disk:
//
//	0x01 'r' 'h'            HardState
//	0x01 'r' 'c'            ConfState as of the applied index
//	0x01 'r' 's'            SnapshotMetadata of the latest snapshot record (index, term)
//	0x01 'r' 'e' <be64 i>   Entry i, for i in [first, last]
//
// Entry `first` is the log's base: its index and term are kept for raft's
// log-matching check but it is never handed to raft as an entry (it plays the
// role of MemoryStorage's dummy entry). Invariant: first <= snapshot index <=
// applied index <= commit index <= last.
var (
	keyHardState   = []byte{0x01, 'r', 'h'}
	keyConfState   = []byte{0x01, 'r', 'c'}
	keySnapshot    = []byte{0x01, 'r', 's'}
	entryPrefix    = []byte{0x01, 'r', 'e'}
	entryPrefixEnd = []byte{0x01, 'r', 'f'}
)

func entryKey(i uint64) []byte {
	k := make([]byte, len(entryPrefix)+8)
	copy(k, entryPrefix)
	binary.BigEndian.PutUint64(k[len(entryPrefix):], i)
	return k
}

// raftLog tracks the on-disk index range of the log so appends that overwrite
// a suffix and truncations know what to delete. It is owned by the raft loop.
type raftLog struct {
	first, last uint64
}

// raftState is what was persisted, as loaded at start.
type raftState struct {
	hs   *raftpb.HardState
	cs   *raftpb.ConfState
	snap *raftpb.SnapshotMetadata
	ents []*raftpb.Entry // ents[0] is the base entry
}

// loadRaftState reads the persisted raft state. It returns (nil, nil) for a
// store that was never bootstrapped.
func loadRaftState(db *pebble.DB) (*raftState, error) {
	hs := &raftpb.HardState{}
	found, err := getProto(db, keyHardState, hs)
	if err != nil || !found {
		return nil, err
	}
	st := &raftState{hs: hs, cs: &raftpb.ConfState{}, snap: &raftpb.SnapshotMetadata{}}
	if _, err := getProto(db, keyConfState, st.cs); err != nil {
		return nil, err
	}
	if _, err := getProto(db, keySnapshot, st.snap); err != nil {
		return nil, err
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: entryPrefix, UpperBound: entryPrefixEnd})
	if err != nil {
		return nil, fmt.Errorf("consensus: raft log iterator: %w", err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		e := &raftpb.Entry{}
		if err := proto.Unmarshal(it.Value(), e); err != nil {
			_ = it.Close()
			return nil, fmt.Errorf("consensus: decode raft entry %x: %w", it.Key(), err)
		}
		if want := binary.BigEndian.Uint64(it.Key()[len(entryPrefix):]); e.GetIndex() != want {
			_ = it.Close()
			return nil, fmt.Errorf("consensus: raft entry under key index %d has index %d", want, e.GetIndex())
		}
		if n := len(st.ents); n > 0 && st.ents[n-1].GetIndex()+1 != e.GetIndex() {
			_ = it.Close()
			return nil, fmt.Errorf("consensus: raft log gap between %d and %d", st.ents[n-1].GetIndex(), e.GetIndex())
		}
		st.ents = append(st.ents, e)
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("consensus: read raft log: %w", err)
	}
	if len(st.ents) == 0 {
		return nil, errors.New("consensus: raft hard state present but log is empty")
	}
	first, last := st.ents[0].GetIndex(), st.ents[len(st.ents)-1].GetIndex()
	if s := st.snap.GetIndex(); s < first || s > last {
		return nil, fmt.Errorf("consensus: snapshot index %d outside raft log [%d, %d]", s, first, last)
	}
	if c := hs.GetCommit(); c < st.snap.GetIndex() || c > last {
		return nil, fmt.Errorf("consensus: commit index %d outside raft log [%d, %d]", c, st.snap.GetIndex(), last)
	}
	return st, nil
}

// memoryStorage rebuilds raft's in-memory log from the persisted state.
func (st *raftState) memoryStorage() (*raft.MemoryStorage, error) {
	ms := raft.NewMemoryStorage()
	base := st.ents[0]
	if base.GetIndex() == 0 {
		// A member that joined and has received nothing yet: raft's own
		// empty log is the right start.
		if err := ms.SetHardState(st.hs); err != nil {
			return nil, err
		}
		return ms, nil
	}
	err := ms.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: new(base.GetIndex()), Term: new(base.GetTerm()), ConfState: st.cs,
	}})
	if err != nil {
		return nil, fmt.Errorf("consensus: restore raft log base: %w", err)
	}
	if err := ms.Append(st.ents[1:]); err != nil {
		return nil, fmt.Errorf("consensus: restore raft log: %w", err)
	}
	if s := st.snap.GetIndex(); s > base.GetIndex() {
		if _, err := ms.CreateSnapshot(s, st.cs, nil); err != nil {
			return nil, fmt.Errorf("consensus: restore snapshot record: %w", err)
		}
	}
	if err := ms.SetHardState(st.hs); err != nil {
		return nil, err
	}
	return ms, nil
}

// append writes entries, deleting any old suffix they replace.
func (l *raftLog) append(w *pebble.Batch, ents []*raftpb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	for _, e := range ents {
		data, err := proto.Marshal(e)
		if err != nil {
			return fmt.Errorf("consensus: encode raft entry %d: %w", e.GetIndex(), err)
		}
		if err := w.Set(entryKey(e.GetIndex()), data, nil); err != nil {
			return err
		}
	}
	newLast := ents[len(ents)-1].GetIndex()
	if newLast < l.last {
		// A new leader overwrote our uncommitted tail: drop what follows.
		if err := w.DeleteRange(entryKey(newLast+1), entryKey(l.last+1), nil); err != nil {
			return err
		}
	}
	l.last = newLast
	return nil
}

// truncate deletes entries below index (exclusive); entry index becomes the
// log base.
func (l *raftLog) truncate(w *pebble.Batch, index uint64) error {
	if index <= l.first {
		return nil
	}
	if err := w.DeleteRange(entryKey(l.first), entryKey(index), nil); err != nil {
		return err
	}
	l.first = index
	return nil
}

func setProto(w *pebble.Batch, key []byte, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("consensus: encode %x: %w", key, err)
	}
	return w.Set(key, data, nil)
}

func getProto(db *pebble.DB, key []byte, m proto.Message) (bool, error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("consensus: read %x: %w", key, err)
	}
	defer closer.Close()
	if err := proto.Unmarshal(v, m); err != nil {
		return false, fmt.Errorf("consensus: decode %x: %w", key, err)
	}
	return true, nil
}
