package recipes

import (
	"context"
	"fmt"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"

	"github.com/concord-kv/concord/consensus"
)

func lockCall(s *Service, name string, lease int64) func(context.Context) (*v3lockpb.LockResponse, error) {
	return func(ctx context.Context) (*v3lockpb.LockResponse, error) {
		return s.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
	}
}

func mustLock(t *testing.T, s *Service, name string, lease int64) *v3lockpb.LockResponse {
	t.Helper()
	resp, err := s.Lock(context.Background(), &v3lockpb.LockRequest{Name: []byte(name), Lease: lease})
	if err != nil {
		t.Fatalf("Lock(%s, %x): %v", name, lease, err)
	}
	return resp
}

func mustUnlock(t *testing.T, s *Service, key []byte) {
	t.Helper()
	if _, err := s.Unlock(context.Background(), &v3lockpb.UnlockRequest{Key: key}); err != nil {
		t.Fatalf("Unlock(%s): %v", key, err)
	}
}

// The errors the recipes send have exactly the texts of etcd's packages.
func TestErrorTextsAreEtcds(t *testing.T) {
	for _, c := range []struct{ ours, etcds error }{
		{ErrElectionNotLeader, concurrency.ErrElectionNotLeader},
		{ErrElectionNoLeader, concurrency.ErrElectionNoLeader},
		{ErrSessionExpired, concurrency.ErrSessionExpired},
		{ErrMissingLeaderKey, v3election.ErrMissingLeaderKey},
	} {
		if c.ours.Error() != c.etcds.Error() {
			t.Errorf("%q, etcd's is %q", c.ours, c.etcds)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	b := newMemBackend(t)
	for _, cfg := range []Config{
		{SessionTTL: -1},
		{CleanupTimeout: -1},
	} {
		if _, err := New(cfg, b, b, b.fan); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := New(Config{}, nil, b, b.fan); err == nil {
		t.Error("New with a nil KV accepted")
	}
	var c Config
	c.SetDefaults()
	if c.SessionTTL != 60 || c.CleanupTimeout != DefaultCleanupTimeout || c.Logger == nil {
		t.Errorf("defaults: %+v", c)
	}
}

func TestPrefixEndAndWaiterKey(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a/", "a0"},
		{"a\xff", "b"},
		{"\xff\xff", "\x00"},
	} {
		if got := string(prefixEnd(c.in)); got != c.want {
			t.Errorf("prefixEnd(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// concurrency formats the key with %x of the lease ID.
	for _, id := range []int64{1, 0x694d9a5c3b8e2f01, 255} {
		if got, want := waiterKey("p/", id), fmt.Sprintf("p/%x", id); got != want {
			t.Errorf("waiterKey = %q, want %q", got, want)
		}
	}
}

// An uncontended Lock writes "<name>/<lease hex>" attached to the lease and
// answers with the txn's header; Unlock deletes the key; locking again with
// the same lease is the same acquisition.
func TestLockUncontended(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	lease := b.grant(30)
	resp := mustLock(t, s, "lk", lease)
	wantKey := fmt.Sprintf("lk/%x", lease)
	if string(resp.Key) != wantKey {
		t.Fatalf("key %q, want %q", resp.Key, wantKey)
	}
	got, err := b.store.Range(&pb.RangeRequest{Key: resp.Key})
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("lock key: %v %v", got, err)
	}
	kv := got.Kvs[0]
	if kv.Lease != lease || len(kv.Value) != 0 || kv.CreateRevision != resp.Header.Revision {
		t.Fatalf("lock key %+v, header rev %d", kv, resp.Header.Revision)
	}
	again := mustLock(t, s, "lk", lease)
	if string(again.Key) != wantKey || again.Header.Revision != resp.Header.Revision {
		t.Fatalf("second Lock with the same lease: key %q rev %d, want %q rev %d (no write)", again.Key, again.Header.Revision, wantKey, resp.Header.Revision)
	}
	ur, err := s.Unlock(context.Background(), &v3lockpb.UnlockRequest{Key: resp.Key})
	if err != nil {
		t.Fatal(err)
	}
	if ur.Header.Revision != resp.Header.Revision+1 {
		t.Fatalf("unlock header rev %d, want %d", ur.Header.Revision, resp.Header.Revision+1)
	}
	waitKeys(t, b, "lk/")
}

// Waiters queue in create-revision order; each waits for the deletion of
// the newest older key, so removing a middle waiter makes the next one
// wait on the holder instead.
func TestLockQueue(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb, lc := b.grant(30), b.grant(30), b.grant(30)
	ka := fmt.Sprintf("q/%x", la)
	kb := fmt.Sprintf("q/%x", lb)
	kc := fmt.Sprintf("q/%x", lc)

	a := mustLock(t, s, "q", la)
	bc, _ := async(t, lockCall(s, "q", lb))
	waitKeys(t, b, "q/", ka, kb)
	cc, _ := async(t, lockCall(s, "q", lc))
	waitKeys(t, b, "q/", ka, kb, kc)
	pending(t, bc, "B's Lock while A holds")
	pending(t, cc, "C's Lock while A holds")

	// B's lease expires while it waits: C now waits for A, and B learns
	// that its key is gone only when it is its turn.
	b.revoke(lb)
	waitKeys(t, b, "q/", ka, kc)
	pending(t, bc, "B's Lock while A holds")
	pending(t, cc, "C's Lock while A holds")

	mustUnlock(t, s, a.Key)
	r := await(t, bc)
	wantWireErr(t, r.err, connect.CodeUnknown, "mutex: session is expired")
	rc := await(t, cc)
	if rc.err != nil || string(rc.v.Key) != kc {
		t.Fatalf("C's Lock: %v, %v", rc.v, rc.err)
	}
	// The header of a contended Lock is that of the final read of its key.
	if rc.v.Header.Revision != b.store.Rev() {
		t.Fatalf("C's header rev %d, store rev %d", rc.v.Header.Revision, b.store.Rev())
	}
}

// A waiter that gives up removes its key; the others are unaffected.
func TestLockCanceledWaiterRemovesKey(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb := b.grant(30), b.grant(30)
	a := mustLock(t, s, "c", la)
	bc, cancelB := async(t, lockCall(s, "c", lb))
	waitKeys(t, b, "c/", string(a.Key), fmt.Sprintf("c/%x", lb))
	cancelB()
	r := await(t, bc)
	wantWireErr(t, r.err, connect.CodeCanceled, "context canceled")
	waitKeys(t, b, "c/", string(a.Key))
}

// A backend failure while waiting also removes the waiter's key, as
// Mutex.Lock unlocks after any failed wait.
func TestLockFailedWaitRemovesKey(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb := b.grant(30), b.grant(30)
	a := mustLock(t, s, "f", la)
	kb := fmt.Sprintf("f/%x", lb)
	bc, _ := async(t, lockCall(s, "f", lb))
	waitKeys(t, b, "f/", string(a.Key), kb)
	b.setFailRange(fmt.Errorf("injected: %w", consensus.ErrTimeout))
	// The next range of B's wait happens once A's key is gone.
	mustUnlock(t, s, a.Key)
	r := await(t, bc)
	wantWireErr(t, r.err, connect.CodeUnknown, "etcdserver: request timed out")
	waitKeys(t, b, "f/")
}

// A call without a lease gets a fresh lease of 60 s (concurrency's session
// TTL), which holds the key.
func TestLockWithoutLeaseGrantsOne(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	resp := mustLock(t, s, "nl", 0)
	got, err := b.store.Range(&pb.RangeRequest{Key: resp.Key})
	if err != nil || len(got.Kvs) != 1 {
		t.Fatalf("lock key: %v %v", got, err)
	}
	li, ok := b.store.Lease(got.Kvs[0].Lease)
	if !ok || li.TTL != 60 {
		t.Fatalf("lease of the lock key: %+v %v, want TTL 60", li, ok)
	}
	if want := fmt.Sprintf("nl/%x", li.ID); string(resp.Key) != want {
		t.Fatalf("key %q, want %q", resp.Key, want)
	}
}

// etcd's handlers see backend errors through an in-process clientv3, which
// turns the errors etcd knows into plain errors: they reach the client with
// etcd's message and code Unknown.
func TestLockErrors(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	_, err := s.Lock(context.Background(), &v3lockpb.LockRequest{Name: []byte("e"), Lease: 0x7777})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: requested lease not found")
	waitKeys(t, b, "e/")
	_, err = s.Unlock(context.Background(), &v3lockpb.UnlockRequest{})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: key is not provided")
	// Unlocking a key that does not exist succeeds, as a delete does.
	if _, err := s.Unlock(context.Background(), &v3lockpb.UnlockRequest{Key: []byte("e/none")}); err != nil {
		t.Fatal(err)
	}
}

// Writes beyond MaxRequestBytes fail as etcd's proposal of them would.
func TestRequestTooLarge(t *testing.T) {
	b := newMemBackend(t)
	s, err := New(Config{Logger: quietLogger(), MaxRequestBytes: 256}, b, b, b.fan)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lease := b.grant(30)
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'n'
	}
	_, err = s.Lock(context.Background(), &v3lockpb.LockRequest{Name: long, Lease: lease})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: request is too large")
	_, err = s.Unlock(context.Background(), &v3lockpb.UnlockRequest{Key: long})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: request is too large")
	_, err = s.Campaign(context.Background(), &v3electionpb.CampaignRequest{Name: []byte("e"), Lease: lease, Value: long})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: request is too large")
	if _, err := s.Lock(context.Background(), &v3lockpb.LockRequest{Name: long[:20], Lease: lease}); err != nil {
		t.Fatalf("Lock under the limit: %v", err)
	}
}

// Close ends the calls in flight and refuses new ones with etcd's "server
// stopped".
func TestCloseEndsCalls(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb := b.grant(30), b.grant(30)
	mustLock(t, s, "cl", la)
	bc, _ := async(t, lockCall(s, "cl", lb))
	waitKeys(t, b, "cl/", fmt.Sprintf("cl/%x", la), fmt.Sprintf("cl/%x", lb))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := await(t, bc); r.err == nil {
		t.Fatal("Lock in flight succeeded across Close")
	}
	_, err := s.Lock(context.Background(), &v3lockpb.LockRequest{Name: []byte("cl"), Lease: la})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: server stopped")
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A watch service that goes away ends the waits on it with etcd's "server
// stopped", and the waiter's key is removed.
func TestWatcherClosedEndsWait(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb := b.grant(30), b.grant(30)
	a := mustLock(t, s, "wc", la)
	bc, _ := async(t, lockCall(s, "wc", lb))
	waitKeys(t, b, "wc/", string(a.Key), fmt.Sprintf("wc/%x", lb))
	if err := b.fan.Close(); err != nil {
		t.Fatal(err)
	}
	wantWireErr(t, await(t, bc).err, connect.CodeUnknown, "etcdserver: server stopped")
	waitKeys(t, b, "wc/", string(a.Key))
}
