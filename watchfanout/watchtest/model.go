package watchtest

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/watchfanout"
)

// Model is a small in-memory MVCC store with etcd's revision semantics
// (revisions start at 1, every write that changes something gets one new
// revision, tombstones carry the deleted key and the delete revision) that
// keeps its complete history. It implements watchfanout.History.
//
// Writes are serialized; commit, if set, is called with each new revision
// while the model's lock is held, so a publisher sees revisions in order.
type Model struct {
	mu         sync.Mutex
	rev        int64
	compactRev int64
	kvs        map[string]*mvccpb.KeyValue
	hist       History
	commit     func(eventbus.Revision)
}

var _ watchfanout.History = (*Model)(nil)

// NewModel returns an empty model at revision 1. commit may be nil.
func NewModel(commit func(eventbus.Revision)) *Model {
	return &Model{rev: 1, kvs: make(map[string]*mvccpb.KeyValue), commit: commit}
}

// Op is one write of a transaction: a put (Delete false) of Key=Value, or a
// delete of [Key, End) (End nil: only Key; "\x00": every key >= Key).
type Op struct {
	Key, Value, End []byte
	Delete          bool
}

// Put writes one key and returns its revision.
func (m *Model) Put(key, value string) int64 {
	rev, _ := m.Txn([]Op{{Key: []byte(key), Value: []byte(value)}})
	return rev
}

// Delete deletes [key, end) and returns the new revision, or false if
// nothing was deleted (no new revision, as in etcd).
func (m *Model) Delete(key, end string) (int64, bool) {
	op := Op{Key: []byte(key), Delete: true}
	if end != "" {
		op.End = []byte(end)
	}
	return m.Txn([]Op{op})
}

// Txn applies ops as one revision (keys written by puts must be distinct,
// and must not be deleted by the same transaction, as etcd requires). It
// returns the new revision, or false if nothing changed.
func (m *Model) Txn(ops []Op) (int64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rev := m.rev + 1
	var evs []*mvccpb.Event
	for _, op := range ops {
		if !op.Delete {
			k := string(op.Key)
			prev := m.kvs[k]
			kv := &mvccpb.KeyValue{Key: bytes.Clone(op.Key), Value: bytes.Clone(op.Value), ModRevision: rev, CreateRevision: rev, Version: 1}
			if prev != nil {
				kv.CreateRevision = prev.CreateRevision
				kv.Version = prev.Version + 1
			}
			m.kvs[k] = kv
			evs = append(evs, &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: kv, PrevKv: prev})
			continue
		}
		var keys []string
		for k := range m.kvs {
			if inRange([]byte(k), op.Key, op.End) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			prev := m.kvs[k]
			delete(m.kvs, k)
			evs = append(evs, &mvccpb.Event{Type: mvccpb.Event_DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev}, PrevKv: prev})
		}
	}
	if len(evs) == 0 {
		return m.rev, false
	}
	m.rev = rev
	r := eventbus.Revision{Rev: rev, Events: evs}
	m.hist = append(m.hist, r)
	if m.commit != nil {
		m.commit(r)
	}
	return rev, true
}

func inRange(k, key, end []byte) bool {
	switch {
	case end == nil:
		return bytes.Equal(k, key)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(k, key) >= 0
	default:
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
}

// Compact discards history below rev (etcd: revisions < rev can no longer
// be read; rev itself can).
func (m *Model) Compact(rev int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev <= m.compactRev {
		return fmt.Errorf("%w: %d <= %d", watchfanout.ErrCompacted, rev, m.compactRev)
	}
	if rev > m.rev {
		return fmt.Errorf("compact revision %d is in the future (current %d)", rev, m.rev)
	}
	m.compactRev = rev
	return nil
}

// Rev returns the current revision.
func (m *Model) Rev() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// History returns the complete history (compacted revisions included),
// for the checker.
func (m *Model) History() History {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append(History(nil), m.hist...)
}

// RangeEvents implements watchfanout.History.
func (m *Model) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if from < m.compactRev {
		return nil, fmt.Errorf("range events from %d: %w (compacted at %d)", from, watchfanout.ErrCompacted, m.compactRev)
	}
	if to > m.rev {
		return nil, fmt.Errorf("range events to %d: future revision (current %d)", to, m.rev)
	}
	var out []eventbus.Revision
	for i := m.hist.find(from); i < len(m.hist) && m.hist[i].Rev <= to; i++ {
		var evs []*mvccpb.Event
		for _, ev := range m.hist[i].Events {
			if inRange(ev.Kv.Key, key, end) {
				evs = append(evs, ev)
			}
		}
		if len(evs) > 0 {
			out = append(out, eventbus.Revision{Rev: m.hist[i].Rev, Events: evs})
		}
	}
	return out, nil
}

// CurrentRevision implements watchfanout.History.
func (m *Model) CurrentRevision(ctx context.Context) (int64, int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev, m.compactRev, nil
}
