package recipes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

// memBackend is the unit tests' backend: the real MVCC store on an
// in-memory filesystem, written one batch per request as consensus applies
// them, publishing every batch's events on an in-memory bus that feeds a
// real watch fan-out. So the recipes run against etcd's exact KV and watch
// semantics without raft or a network.
type memBackend struct {
	t     testing.TB
	store *storage.Store
	bus   *eventbus.Memory
	fan   *watchfanout.Fanout

	mu        sync.Mutex // one writer at a time, as the apply loop
	nextLease int64
	// failRange, when set, fails every Range with this error.
	failRange error
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func newMemBackend(t testing.TB) *memBackend {
	t.Helper()
	st, err := storage.Open("/db", storage.Options{FS: vfs.NewMem(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	bus := eventbus.NewMemory()
	fan, err := watchfanout.New(watchfanout.Config{Logger: quietLogger()}, bus, storeHistory{st})
	if err != nil {
		t.Fatal(err)
	}
	b := &memBackend{t: t, store: st, bus: bus, fan: fan, nextLease: 0x1000}
	t.Cleanup(func() {
		_ = fan.Close()
		_ = bus.Close()
		_ = st.Close()
	})
	return b
}

// apply runs fn in one batch, commits it and publishes its events.
func (b *memBackend) apply(ctx context.Context, fn func(*storage.Batch) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	batch := b.store.NewBatch()
	defer batch.Close()
	if err := fn(batch); err != nil {
		return err
	}
	evs := batch.Events()
	if err := batch.Commit(false); err != nil {
		return err
	}
	revs := make([]eventbus.Revision, len(evs))
	for i, r := range evs {
		revs[i] = eventbus.Revision{Rev: r.Revision, Events: r.Events}
	}
	if len(revs) > 0 {
		return b.bus.Publish(context.Background(), revs)
	}
	return nil
}

func (b *memBackend) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	ferr := b.failRange
	b.mu.Unlock()
	if ferr != nil {
		return nil, ferr
	}
	return b.store.Range(r)
}

func (b *memBackend) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (resp *pb.DeleteRangeResponse, err error) {
	err = b.apply(ctx, func(batch *storage.Batch) error { resp, err = batch.DeleteRange(r); return err })
	return resp, err
}

func (b *memBackend) Txn(ctx context.Context, r *pb.TxnRequest) (resp *pb.TxnResponse, err error) {
	err = b.apply(ctx, func(batch *storage.Batch) error { resp, err = batch.Txn(r); return err })
	return resp, err
}

func (b *memBackend) Put(ctx context.Context, r *pb.PutRequest) (resp *pb.PutResponse, err error) {
	err = b.apply(ctx, func(batch *storage.Batch) error { resp, err = batch.Put(r); return err })
	return resp, err
}

func (b *memBackend) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	b.mu.Lock()
	b.nextLease++
	id := b.nextLease
	b.mu.Unlock()
	if err := b.apply(ctx, func(batch *storage.Batch) error { return batch.LeaseGrant(id, r.GetTTL()) }); err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: b.store.Rev()}, ID: id, TTL: r.GetTTL()}, nil
}

// grant grants a lease or fails the test.
func (b *memBackend) grant(ttl int64) int64 {
	b.t.Helper()
	resp, err := b.LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: ttl})
	if err != nil {
		b.t.Fatalf("grant: %v", err)
	}
	return resp.ID
}

// revoke revokes a lease (its expiry) or fails the test.
func (b *memBackend) revoke(id int64) {
	b.t.Helper()
	if err := b.apply(context.Background(), func(batch *storage.Batch) error { return batch.LeaseRevoke(id) }); err != nil {
		b.t.Fatalf("revoke %x: %v", id, err)
	}
}

// keys returns the keys of a prefix in create-revision order.
func (b *memBackend) keys(pfx string) []string {
	b.t.Helper()
	r := firstCreate(pfx)
	r.Limit = 0
	resp, err := b.store.Range(r)
	if err != nil {
		b.t.Fatalf("range %q: %v", pfx, err)
	}
	out := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = string(kv.Key)
	}
	return out
}

func (b *memBackend) setFailRange(err error) {
	b.mu.Lock()
	b.failRange = err
	b.mu.Unlock()
}

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
