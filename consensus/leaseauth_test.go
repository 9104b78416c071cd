package consensus

import (
	"errors"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
)

func authority(t *testing.T, n *Node) LeaseAuthority {
	t.Helper()
	a, err := n.LeaseAuthority(ctxT(t))
	if err != nil {
		t.Fatalf("LeaseAuthority: %v", err)
	}
	return a
}

func TestLeaseAuthorityAcquireRenewAndRestart(t *testing.T) {
	cfg := testConfig(t)
	n := startNode(t, cfg)
	ctx := ctxT(t)
	if a := authority(t, n); a != (LeaseAuthority{}) {
		t.Fatalf("initial authority = %+v, want zero", a)
	}
	// Epochs are acquired one at a time: skipping one is stale.
	if _, err := n.AcquireLeaseAuthority(ctx, "a", 2, 0); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("acquire epoch 2 first: %v, want ErrStaleEpoch", err)
	}
	a1, err := n.AcquireLeaseAuthority(ctx, "a", 1, 0)
	if err != nil || a1.Holder != "a" || a1.Epoch != 1 || a1.RenewedIndex == 0 {
		t.Fatalf("acquire = %+v, %v", a1, err)
	}
	if got := authority(t, n); got != a1 {
		t.Fatalf("authority after acquire = %+v, want %+v", got, a1)
	}
	// A second candidate racing for the same epoch loses.
	if _, err := n.AcquireLeaseAuthority(ctx, "b", 1, 0); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("second acquire of epoch 1: %v, want ErrStaleEpoch", err)
	}
	r, err := n.RenewLeaseAuthority(ctx, "a", 1)
	if err != nil || r.Epoch != 1 || r.Holder != "a" || r.RenewedIndex <= a1.RenewedIndex {
		t.Fatalf("renew = %+v, %v (acquired at index %d)", r, err, a1.RenewedIndex)
	}
	if _, err := n.RenewLeaseAuthority(ctx, "b", 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("renew by non-holder: %v, want ErrStaleEpoch", err)
	}
	// Takeover: b acquires epoch 2, a's renewals are now stale.
	a2, err := n.AcquireLeaseAuthority(ctx, "b", 2, 0)
	if err != nil || a2.Holder != "b" || a2.Epoch != 2 {
		t.Fatalf("takeover = %+v, %v", a2, err)
	}
	if _, err := n.RenewLeaseAuthority(ctx, "a", 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("renew by deposed holder: %v, want ErrStaleEpoch", err)
	}
	if _, err := n.RenewLeaseAuthority(ctx, "a", 2); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("renew of the new epoch by the old holder: %v, want ErrStaleEpoch", err)
	}
	// Authority commands create no revision.
	if rev := n.Store().Rev(); rev != 1 {
		t.Fatalf("store revision = %d, want 1 (no keyspace change)", rev)
	}

	// The record is replicated state: it survives a restart.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg)
	if got := authority(t, n); got != a2 {
		t.Fatalf("authority after restart = %+v, want %+v", got, a2)
	}
	if _, err := n.AcquireLeaseAuthority(ctxT(t), "c", 2, 0); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("acquire of the current epoch after restart: %v, want ErrStaleEpoch", err)
	}
}

// grantWithKeys grants a lease and attaches keys to it.
func grantWithKeys(t *testing.T, n *Node, ttl int64, keys ...string) int64 {
	t.Helper()
	lg, err := n.LeaseGrant(ctxT(t), &pb.LeaseGrantRequest{TTL: ttl})
	if err != nil {
		t.Fatalf("LeaseGrant: %v", err)
	}
	for _, k := range keys {
		if _, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte(k), Value: []byte("v"), Lease: lg.ID}); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	return lg.ID
}

func TestRevokeExpiredLeasesIsFencedByEpoch(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	l1 := grantWithKeys(t, n, 10, "a1", "a2", "a3")
	l2 := grantWithKeys(t, n, 10, "b1")
	l3 := grantWithKeys(t, n, 10)

	// Nobody holds the authority yet: epoch 0 is current, 1 is not.
	if _, err := n.RevokeExpiredLeases(ctx, 1, []int64{l1}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("revoke with a future epoch: %v, want ErrStaleEpoch", err)
	}
	if _, err := n.AcquireLeaseAuthority(ctx, "a", 1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AcquireLeaseAuthority(ctx, "b", 2, 0); err != nil {
		t.Fatal(err)
	}
	before := n.Store().Rev()
	// The deposed holder of epoch 1 revokes nothing.
	if _, err := n.RevokeExpiredLeases(ctx, 1, []int64{l1, l2}); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("revoke with a stale epoch: %v, want ErrStaleEpoch", err)
	}
	if got := n.Store().Rev(); got != before {
		t.Fatalf("stale revoke changed the revision %d -> %d", before, got)
	}
	if got := len(n.Store().Leases()); got != 3 {
		t.Fatalf("leases after stale revoke = %d, want 3", got)
	}
	if r := get(t, n, "a1", false); len(r.Kvs) != 1 {
		t.Fatalf("key of a stale-revoked lease is gone: %v", r.Kvs)
	}

	// The current holder revokes: one revision per lease that had keys, all
	// of its keys in that revision; missing leases are reported.
	res, err := n.RevokeExpiredLeases(ctx, 2, []int64{l1, 424242, l2, l3})
	if err != nil {
		t.Fatalf("revoke with the current epoch: %v", err)
	}
	if !slices.Equal(res.Revoked, []int64{l1, l2, l3}) || !slices.Equal(res.NotFound, []int64{424242}) {
		t.Fatalf("result = %+v", res)
	}
	if res.Revision != before+2 || n.Store().Rev() != before+2 {
		t.Fatalf("revision after revoke = %d (store %d), want %d", res.Revision, n.Store().Rev(), before+2)
	}
	evs, err := n.Store().RangeEvents(before+1, before+2, []byte{0}, []byte{0})
	if err != nil || len(evs) != 2 || len(evs[0].Events) != 3 || len(evs[1].Events) != 1 {
		t.Fatalf("revoke history = %v, %v; want 3 deletes then 1", evs, err)
	}
	if got := n.Store().Leases(); len(got) != 0 {
		t.Fatalf("leases left: %v", got)
	}
	if r, err := n.Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("keys left: %v, %v", r.GetKvs(), err)
	}
}

// An acquisition and a stale revoke applied in the same batch: the revoke
// must see the epoch the acquisition set, not the committed one.
func TestStaleRevokeInSameBatchAsTakeover(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	l := grantWithKeys(t, n, 10, "k")
	if _, err := n.AcquireLeaseAuthority(ctx, "a", 1, 0); err != nil {
		t.Fatal(err)
	}
	release := blockLoop(t, n)
	acqErr, revErr := make(chan error, 1), make(chan error, 1)
	go func() { _, err := n.AcquireLeaseAuthority(ctx, "b", 2, 0); acqErr <- err }()
	waitFor(t, "acquire queued", func() bool { return len(n.propC) == 1 })
	go func() { _, err := n.RevokeExpiredLeases(ctx, 1, []int64{l}); revErr <- err }()
	waitFor(t, "revoke queued", func() bool { return len(n.propC) == 2 })
	release()
	if err := <-acqErr; err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if err := <-revErr; !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("revoke after takeover: %v, want ErrStaleEpoch", err)
	}
	if _, ok := n.Store().Lease(l); !ok {
		t.Fatal("lease revoked by a deposed holder")
	}
}

func TestLeaseReadsAndHeader(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	l := grantWithKeys(t, n, 30, "x", "y")
	li, ok, err := n.Lease(ctx, l)
	if err != nil || !ok || li.TTL != 30 || len(li.Keys) != 2 || string(li.Keys[0]) != "x" {
		t.Fatalf("Lease = %+v, %v, %v", li, ok, err)
	}
	if _, ok, err := n.Lease(ctx, l+1); err != nil || ok {
		t.Fatalf("Lease(missing) = %v, %v", ok, err)
	}
	ls, err := n.Leases(ctx)
	if err != nil || len(ls) != 1 || ls[0].ID != l {
		t.Fatalf("Leases = %+v, %v", ls, err)
	}
	h := n.Header()
	if h.ClusterId != n.ClusterID() || h.MemberId != n.MemberID() || h.Revision != n.Store().Rev() || h.RaftTerm == 0 {
		t.Fatalf("Header = %v", h)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Leases(ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("Leases after Close: %v", err)
	}
	if _, err := n.RevokeExpiredLeases(ctx, 0, []int64{l}); !errors.Is(err, ErrStopped) {
		t.Fatalf("revoke after Close: %v", err)
	}
}

// An entry that starts with 0x00 but does not decode is skipped by every
// member alike; it must not be taken for an etcd request.
func TestCommandEnvelopeDecoding(t *testing.T) {
	cmd := &concordv1.RaftCommand{Id: 7, Command: &concordv1.RaftCommand_LeaseRevokeExpired{
		LeaseRevokeExpired: &concordv1.LeaseRevokeExpired{Epoch: 3, Ids: []int64{1, 2}},
	}}
	data, err := proto.MarshalOptions{}.MarshalAppend([]byte{commandPrefix}, cmd)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := decodeCommand(data)
	if !ok || err != nil || !proto.Equal(got, cmd) {
		t.Fatalf("decodeCommand = %v, %v, %v", got, ok, err)
	}
	etcdReq, err := proto.Marshal(&pb.InternalRaftRequest{Header: &pb.RequestHeader{ID: 1}, Put: &pb.PutRequest{Key: []byte("k")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := decodeCommand(etcdReq); ok {
		t.Fatal("an etcd InternalRaftRequest was taken for a concord command")
	}
	if _, ok, err := decodeCommand([]byte{commandPrefix, 0xff}); !ok || err == nil {
		t.Fatalf("garbage command: ok=%v err=%v, want a decode error", ok, err)
	}
}

// A standby's acquisition names the renewal it watched go stale: a renewal
// it did not see (its member lagged, or the renewal was in flight) fails
// the takeover, so a holder that is still renewing, and answering
// keep-alives, is never deposed.
func TestConditionalAcquireFailsOnAnUnseenRenewal(t *testing.T) {
	n := startNode(t, testConfig(t))
	ctx := ctxT(t)
	a1, err := n.AcquireLeaseAuthority(ctx, "a", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := n.RenewLeaseAuthority(ctx, "a", 1)
	if err != nil {
		t.Fatal(err)
	}
	// b watched the record as of the acquisition and missed the renewal.
	if _, err := n.AcquireLeaseAuthority(ctx, "b", 2, a1.RenewedIndex); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("acquire expecting an old renewal: %v, want ErrStaleEpoch", err)
	}
	if got := authority(t, n); got != r {
		t.Fatalf("authority after the refused takeover = %+v, want %+v", got, r)
	}
	if _, err := n.RenewLeaseAuthority(ctx, "a", 1); err != nil {
		t.Fatalf("holder deposed by a refused takeover: %v", err)
	}
	cur := authority(t, n)
	b, err := n.AcquireLeaseAuthority(ctx, "b", 2, cur.RenewedIndex)
	if err != nil || b.Holder != "b" || b.Epoch != 2 {
		t.Fatalf("acquire expecting the current renewal = %+v, %v", b, err)
	}
	if _, err := n.RenewLeaseAuthority(ctx, "a", 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("renewal after the takeover: %v, want ErrStaleEpoch", err)
	}
}
