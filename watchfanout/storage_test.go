package watchfanout_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// storeHistory adapts storage.Store to watchfanout.History, as consensus
// does in process.
type storeHistory struct{ s *storage.Store }

func (h storeHistory) RangeEvents(_ context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	revs, err := h.s.RangeEvents(from, to, key, end)
	if errors.Is(err, storage.ErrCompacted) {
		return nil, fmt.Errorf("%w: %w", watchfanout.ErrCompacted, err)
	}
	if err != nil {
		return nil, err
	}
	out := make([]eventbus.Revision, len(revs))
	for i, r := range revs {
		out[i] = eventbus.Revision{Rev: r.Revision, Events: r.Events}
	}
	return out, nil
}

func (h storeHistory) CurrentRevision(context.Context) (int64, int64, error) {
	return h.s.Rev(), h.s.CompactRev(), nil
}

// storageStore applies random writes to a real storage.Store (pebble on an
// in-memory filesystem), one batch per write as consensus applies them,
// and publishes each batch's events.
type storageStore struct {
	t       *testing.T
	s       *storage.Store
	publish func(eventbus.Revision)
	mu      sync.Mutex // one writer at a time, as the apply loop
	hist    watchtest.History
}

func newStorageStore(t *testing.T, publish func(eventbus.Revision)) (randStore, watchfanout.History) {
	s, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &storageStore{t: t, s: s, publish: publish}, storeHistory{s}
}

func (st *storageStore) apply(fn func(b *storage.Batch) error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	b := st.s.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		st.t.Errorf("storage write: %v", err)
		return
	}
	evs := b.Events()
	if err := b.Commit(false); err != nil {
		st.t.Errorf("storage commit: %v", err)
		return
	}
	for _, r := range evs {
		rev := eventbus.Revision{Rev: r.Revision, Events: r.Events}
		st.hist = append(st.hist, rev)
		st.publish(rev)
	}
}

func (st *storageStore) write(rng *rand.Rand) {
	k := func() []byte { return []byte(randomKeys[rng.IntN(len(randomKeys))]) }
	v := func() []byte { return fmt.Appendf(nil, "v%d-%s", rng.IntN(1000), make([]byte, rng.IntN(120))) }
	st.apply(func(b *storage.Batch) error {
		switch p := rng.IntN(20); {
		case p < 13:
			_, err := b.Put(&pb.PutRequest{Key: k(), Value: v()})
			return err
		case p < 15:
			_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: k()})
			return err
		case p < 16:
			_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("k0"), RangeEnd: []byte("k1")})
			return err
		default:
			used := map[string]bool{}
			var ops []*pb.RequestOp
			for range 2 + rng.IntN(4) {
				key := k()
				if used[string(key)] {
					continue
				}
				used[string(key)] = true
				if rng.IntN(4) == 0 {
					ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: key}}})
				} else {
					ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: v()}}})
				}
			}
			_, err := b.Txn(&pb.TxnRequest{Success: ops})
			return err
		}
	})
}

func (st *storageStore) Rev() int64 { return st.s.Rev() }

func (st *storageStore) History() watchtest.History {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append(watchtest.History(nil), st.hist...)
}

func (st *storageStore) Compact(rev int64) error {
	var err error
	st.apply(func(b *storage.Batch) error { _, err = b.Compact(rev); return nil })
	return err
}

// TestRandomTrafficStorage runs the random traffic against the real MVCC
// store: the events consensus would publish (Batch.Events) and the history
// RangeEvents rebuilds must agree, and every stream must pass the checker.
func TestRandomTrafficStorage(t *testing.T) {
	runRandom(t, randomOpts{seed: 5, faulty: true, streams: 8, perStream: 20, ops: 400, newStore: newStorageStore})
}
