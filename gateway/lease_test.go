package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/storage"
)

var _ gateway.Lease = (*leasesvc.Service)(nil)

// fakeLease is an in-memory lease service: leases with a granted TTL and
// keys, a fixed remaining TTL, and a switch to play a standby.
type fakeLease struct {
	mu        sync.Mutex
	next      int64
	ttl       map[int64]int64
	keys      map[int64][]string
	notActive bool
	renewals  int
}

func newFakeLease() *fakeLease {
	return &fakeLease{next: 1000, ttl: map[int64]int64{}, keys: map[int64][]string{}}
}

func (f *fakeLease) Header() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 11, MemberId: 22, Revision: 33, RaftTerm: 44}
}

func (f *fakeLease) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.ID
	if id == 0 {
		f.next++
		id = f.next
	}
	if _, ok := f.ttl[id]; ok {
		return nil, storage.ErrLeaseExists
	}
	f.ttl[id] = max(r.TTL, 2) // a minimum TTL, as consensus applies
	return &pb.LeaseGrantResponse{Header: f.Header(), ID: id, TTL: f.ttl[id]}, nil
}

func (f *fakeLease) LeaseRevoke(_ context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ttl[r.ID]; !ok {
		return nil, fmt.Errorf("revoke %x: %w", r.ID, storage.ErrLeaseNotFound)
	}
	delete(f.ttl, r.ID)
	return &pb.LeaseRevokeResponse{Header: f.Header()}, nil
}

func (f *fakeLease) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &pb.LeaseLeasesResponse{Header: f.Header()}
	for id := range f.ttl {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: id})
	}
	sort.Slice(resp.Leases, func(i, j int) bool { return resp.Leases[i].ID < resp.Leases[j].ID })
	return resp, nil
}

func (f *fakeLease) LeaseKeepAlive(_ context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notActive {
		return nil, leasesvc.ErrNotActive
	}
	ttl, ok := f.ttl[r.ID]
	if !ok {
		return nil, storage.ErrLeaseNotFound
	}
	f.renewals++
	return &pb.LeaseKeepAliveResponse{Header: f.Header(), ID: r.ID, TTL: ttl}, nil
}

func (f *fakeLease) LeaseTimeToLive(_ context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.notActive {
		return nil, leasesvc.ErrNotActive
	}
	ttl, ok := f.ttl[r.ID]
	if !ok {
		return nil, fmt.Errorf("lease %x: %w", r.ID, storage.ErrLeaseNotFound)
	}
	resp := &pb.LeaseTimeToLiveResponse{Header: f.Header(), ID: r.ID, TTL: ttl - 1, GrantedTTL: ttl}
	if r.Keys {
		for _, k := range f.keys[r.ID] {
			resp.Keys = append(resp.Keys, []byte(k))
		}
	}
	return resp, nil
}

func (f *fakeLease) setNotActive(v bool) {
	f.mu.Lock()
	f.notActive = v
	f.mu.Unlock()
}

// startLeaseGateway serves a gateway with WithLease(l) until the test ends.
func startLeaseGateway(t *testing.T, b gateway.Backend, l gateway.Lease) *clientv3.Client {
	t.Helper()
	g, err := gateway.New(gateway.Config{}, b, gateway.WithLease(l))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return newClient(t, ln.Addr().String())
}

func TestLeaseServiceForwardsToLease(t *testing.T) {
	f, l := newFake(), newFakeLease()
	cli := startLeaseGateway(t, f, l)
	ctx := testCtx(t)

	lg, err := cli.Grant(ctx, 1)
	if err != nil || lg.TTL != 2 {
		t.Fatalf("Grant = %v, %v; want TTL raised to 2", lg, err)
	}
	if calls := f.calls.Load(); calls != 0 {
		t.Fatalf("grant reached the backend's LeaseStore (%d calls), not the Lease service", calls)
	}
	l.mu.Lock()
	l.keys[int64(lg.ID)] = []string{"a", "b"}
	l.mu.Unlock()

	ka, err := cli.KeepAliveOnce(ctx, lg.ID)
	if err != nil || ka.TTL != 2 || ka.ID != lg.ID || ka.ClusterId != 11 || ka.Revision != 33 {
		t.Fatalf("KeepAliveOnce = %+v, %v", ka, err)
	}
	ttl, err := cli.TimeToLive(ctx, lg.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL != 1 || ttl.GrantedTTL != 2 || len(ttl.Keys) != 2 || string(ttl.Keys[1]) != "b" {
		t.Fatalf("TimeToLive = %+v, %v", ttl, err)
	}
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != 1 || ls.Leases[0].ID != lg.ID {
		t.Fatalf("Leases = %+v, %v", ls, err)
	}
	if _, err := cli.Revoke(ctx, lg.ID); err != nil {
		t.Fatal(err)
	}

	// A missing lease: keep-alive answers TTL 0 (clientv3 turns it into
	// ErrLeaseNotFound), TimeToLive answers TTL -1 without error, revoke
	// fails with "requested lease not found" — all as etcd.
	if _, err := cli.KeepAliveOnce(ctx, lg.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("KeepAliveOnce of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	ttl, err = cli.TimeToLive(ctx, lg.ID)
	if err != nil || ttl.TTL != -1 || ttl.ID != lg.ID || ttl.ClusterId != 11 {
		t.Fatalf("TimeToLive of a revoked lease = %+v, %v; want TTL -1", ttl, err)
	}
	if _, err := cli.Revoke(ctx, lg.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) || err.Error() != "etcdserver: requested lease not found" {
		t.Fatalf("second revoke: %v", err)
	}
}

// The keep-alive stream answers each request in order; an unknown lease is
// TTL 0, and the stream ends cleanly when the client closes its side.
func TestLeaseKeepAliveStream(t *testing.T) {
	l := newFakeLease()
	cli := startLeaseGateway(t, newFake(), l)
	ctx := testCtx(t)
	lg, err := cli.Grant(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []int64{int64(lg.ID), 424242, int64(lg.ID)} {
		if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		want := int64(7)
		if id == 424242 {
			want = 0
		}
		if err != nil || resp.ID != id || resp.TTL != want || resp.Header.GetMemberId() != 22 {
			t.Fatalf("response %d = %v, %v; want ID %d TTL %d", i, resp, err, id, want)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend: %v, want EOF", err)
	}
	l.mu.Lock()
	renewals := l.renewals
	l.mu.Unlock()
	if renewals != 2 {
		t.Fatalf("renewals = %d, want 2", renewals)
	}
}

// Without an active lease authority keep-alives fail with a retryable
// Unavailable ("no leader"), so clientv3 keeps retrying them.
func TestLeaseNotActive(t *testing.T) {
	l := newFakeLease()
	cli := startLeaseGateway(t, newFake(), l)
	ctx := testCtx(t)
	lg, err := cli.Grant(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	l.setNotActive(true)
	stream, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(lg.ID)}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != "etcdserver: no leader" {
		t.Fatalf("keep-alive without an authority: %v", err)
	}
	if _, err := cli.TimeToLive(ctx, lg.ID); !errors.Is(err, rpctypes.ErrNoLeader) {
		t.Fatalf("TimeToLive without an authority: %v", err)
	}

	// clientv3's KeepAlive retries until the authority is back.
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := cli.KeepAlive(kctx, lg.ID)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	l.setNotActive(false)
	select {
	case resp, ok := <-ch:
		if !ok || resp.TTL != 3 {
			t.Fatalf("keep-alive after the authority came back = %v, %v", resp, ok)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("clientv3 gave up keep-alives after Unavailable")
	}
}

func TestLeaseErrorTranslation(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code connect.Code
		msg  string
	}{
		{fmt.Errorf("x: %w", leasesvc.ErrNotActive), connect.CodeUnavailable, "etcdserver: no leader"},
		{fmt.Errorf("x: %w", consensus.ErrStaleEpoch), connect.CodeUnavailable, "etcdserver: leader changed"},
		{leasesvc.ErrClosed, connect.CodeUnavailable, "etcdserver: server stopped"},
		{fmt.Errorf("x: %w", storage.ErrLeaseNotFound), connect.CodeNotFound, "etcdserver: requested lease not found"},
	} {
		var ce *connect.Error
		if err := gateway.TranslateError(tc.err); !errors.As(err, &ce) || ce.Code() != tc.code || ce.Message() != tc.msg {
			t.Errorf("TranslateError(%v) = %v, want %v %q", tc.err, err, tc.code, tc.msg)
		}
	}
}
