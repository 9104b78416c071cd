package leasesvc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/internal/clocktest"
	"github.com/concord-kv/concord/storage"
)

// fakeBackend is an in-memory consensus with the same lease authority
// rules (epoch checked at "apply").
type fakeBackend struct {
	mu       sync.Mutex
	leases   map[int64]int64 // id -> granted TTL
	keys     map[int64][]string
	auth     consensus.LeaseAuthority
	index    uint64
	nextID   int64
	rev      int64
	revokes  [][]int64 // each accepted expiry revoke command, in order
	renewErr error     // injected renewal failure
	revokeC  chan struct{}
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{leases: map[int64]int64{}, keys: map[int64][]string{}, nextID: 100, rev: 1}
}

func (f *fakeBackend) hdr() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 1, MemberId: 2, Revision: f.rev}
}

func (f *fakeBackend) Header() *pb.ResponseHeader {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hdr()
}

func (f *fakeBackend) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.GetID()
	if id == 0 {
		f.nextID++
		id = f.nextID
	}
	if _, ok := f.leases[id]; ok {
		return nil, storage.ErrLeaseExists
	}
	f.leases[id] = r.GetTTL()
	return &pb.LeaseGrantResponse{Header: f.hdr(), ID: id, TTL: r.GetTTL()}, nil
}

// attach puts a key on a lease (as a put with a lease would).
func (f *fakeBackend) attach(id int64, key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[id] = append(f.keys[id], key)
	f.rev++
}

func (f *fakeBackend) revokeLocked(id int64) bool {
	if _, ok := f.leases[id]; !ok {
		return false
	}
	delete(f.leases, id)
	if len(f.keys[id]) > 0 {
		f.rev++
	}
	delete(f.keys, id)
	return true
}

func (f *fakeBackend) LeaseRevoke(_ context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.revokeLocked(r.GetID()) {
		return nil, storage.ErrLeaseNotFound
	}
	return &pb.LeaseRevokeResponse{Header: f.hdr()}, nil
}

func (f *fakeBackend) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &pb.LeaseLeasesResponse{Header: f.hdr()}
	for _, id := range f.idsLocked() {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: id})
	}
	return resp, nil
}

func (f *fakeBackend) idsLocked() []int64 {
	ids := make([]int64, 0, len(f.leases))
	for id := range f.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (f *fakeBackend) infoLocked(id int64) storage.LeaseInfo {
	li := storage.LeaseInfo{ID: id, TTL: f.leases[id]}
	ks := slices.Clone(f.keys[id])
	sort.Strings(ks)
	for _, k := range ks {
		li.Keys = append(li.Keys, []byte(k))
	}
	return li
}

func (f *fakeBackend) Leases(context.Context) ([]storage.LeaseInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []storage.LeaseInfo
	for _, id := range f.idsLocked() {
		out = append(out, f.infoLocked(id))
	}
	return out, nil
}

func (f *fakeBackend) Lease(_ context.Context, id int64) (storage.LeaseInfo, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.leases[id]; !ok {
		return storage.LeaseInfo{}, false, nil
	}
	return f.infoLocked(id), true, nil
}

func (f *fakeBackend) RevokeExpiredLeases(_ context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	if epoch != f.auth.Epoch {
		return consensus.RevokeExpiredResult{}, fmt.Errorf("%w: epoch %d, current %d", consensus.ErrStaleEpoch, epoch, f.auth.Epoch)
	}
	var res consensus.RevokeExpiredResult
	for _, id := range ids {
		if f.revokeLocked(id) {
			res.Revoked = append(res.Revoked, id)
		} else {
			res.NotFound = append(res.NotFound, id)
		}
	}
	res.Revision = f.rev
	f.revokes = append(f.revokes, slices.Clone(ids))
	return res, nil
}

func (f *fakeBackend) LeaseAuthority(context.Context) (consensus.LeaseAuthority, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth, nil
}

func (f *fakeBackend) AcquireLeaseAuthority(_ context.Context, holder string, epoch, renewedIndex uint64) (consensus.LeaseAuthority, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	if epoch != f.auth.Epoch+1 || renewedIndex != 0 && renewedIndex != f.auth.RenewedIndex {
		return consensus.LeaseAuthority{}, consensus.ErrStaleEpoch
	}
	f.auth = consensus.LeaseAuthority{Holder: holder, Epoch: epoch, RenewedIndex: f.index}
	return f.auth, nil
}

func (f *fakeBackend) RenewLeaseAuthority(_ context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.renewErr != nil {
		return consensus.LeaseAuthority{}, f.renewErr
	}
	f.index++
	if epoch != f.auth.Epoch || holder != f.auth.Holder {
		return consensus.LeaseAuthority{}, consensus.ErrStaleEpoch
	}
	f.auth.RenewedIndex = f.index
	return f.auth, nil
}

func (f *fakeBackend) setRenewErr(err error) {
	f.mu.Lock()
	f.renewErr = err
	f.mu.Unlock()
}

// revoked returns every lease ID revoked by expiry, in order.
func (f *fakeBackend) revoked() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int64
	for _, b := range f.revokes {
		out = append(out, b...)
	}
	return out
}

func (f *fakeBackend) exists(id int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.leases[id]
	return ok
}

var errInjected = errors.New("injected failure")

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is a Config on a fake clock with round numbers.
func testConfig(holder string, clk Clock) Config {
	return Config{
		Holder:              holder,
		Clock:               clk,
		CheckInterval:       100 * time.Millisecond,
		MaxRevokesPerSecond: 1000,
		RenewInterval:       time.Second,
		TakeoverTimeout:     5 * time.Second,
		RevokeRetryInterval: 3 * time.Second,
		ReconcileInterval:   time.Minute,
		Logger:              discardLogger(),
	}
}

func newService(t *testing.T, cfg Config, b Backend) *Service {
	t.Helper()
	s, err := New(cfg, b)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// activeService returns a Service that acquired the authority (epoch 0 in
// the backend means it takes it at once) and loaded the leases.
func activeService(t *testing.T, cfg Config, b Backend) *Service {
	t.Helper()
	s := newService(t, cfg, b)
	s.authorityStep(context.Background())
	if !s.Active() {
		t.Fatalf("%s did not become active", cfg.Holder)
	}
	return s
}

func grant(t *testing.T, s *Service, ttl int64) int64 {
	t.Helper()
	resp, err := s.LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: ttl})
	if err != nil {
		t.Fatalf("LeaseGrant(%d): %v", ttl, err)
	}
	return resp.ID
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// advance moves the clock by d in steps of at most a second and lets each
// service run an authority round (renewal) after every step, as Run would.
func advance(clk *clocktest.Clock, d time.Duration, ss ...*Service) {
	for d > 0 {
		st := min(d, time.Second)
		clk.Advance(st)
		d -= st
		for _, s := range ss {
			s.authorityStep(context.Background())
		}
	}
}
