package remote_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// switchLease is a lease service that is active or a standby ("no leader")
// and counts the keep-alives it receives.
type switchLease struct {
	gateway.Lease
	active atomic.Bool
	calls  atomic.Int64
}

func (s *switchLease) LeaseKeepAlive(_ context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	s.calls.Add(1)
	if !s.active.Load() {
		return nil, leasesvc.ErrNotActive
	}
	return &pb.LeaseKeepAliveResponse{Header: hdr, ID: r.GetID(), TTL: 30}, nil
}

func (s *switchLease) Header() *pb.ResponseHeader { return hdr }

func serveSwitchLease(t *testing.T, s *switchLease) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	path, h := concordv1connect.NewLeaseKeepAliveServiceHandler(remote.KeepAliveServer{L: s})
	h2cServer(t, path, h, func(s *httptest.Server) { srv = s })
	return srv
}

// The active lease service is killed and the standby takes over a little
// later: keep-alives sent meanwhile are held and answered by the new active
// service as soon as it takes over (the client sees no error), one caller
// probes for it while the others wait, and later calls go straight to it.
func TestLeaseSwitchesToTheActiveService(t *testing.T) {
	defer remote.SetLeaseFailoverForTest(5*time.Second, 20*time.Millisecond)()
	a, b := &switchLease{}, &switchLease{}
	a.active.Store(true)
	srvA, srvB := serveSwitchLease(t, a), serveSwitchLease(t, b)
	// b first: a gateway starting on a standby finds the active at once.
	l, err := remote.NewLease(srvB.URL+","+srvA.URL, func() *pb.ResponseHeader { return hdr })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		if r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 7}); err != nil || r.GetTTL() != 30 {
			t.Fatalf("keep-alive = %v, %v", r, err)
		}
	}
	if a.calls.Load() != 3 || b.calls.Load() != 1 {
		t.Fatalf("calls a=%d b=%d, want 3 and 1 (the standby asked once, then the active one only)", a.calls.Load(), b.calls.Load())
	}

	// Kill a; b takes over 300ms later.
	srvA.CloseClientConnections()
	srvA.Close()
	const takeoverAfter = 300 * time.Millisecond
	killed := time.Now()
	b.calls.Store(0)
	timer := time.AfterFunc(takeoverAfter, func() { b.active.Store(true) })
	defer timer.Stop()
	const clients = 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	took := make(chan time.Duration, clients)
	for i := range clients {
		wg.Go(func() {
			r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: int64(100 + i)})
			if err == nil && r.GetTTL() != 30 {
				err = errors.New("wrong TTL")
			}
			errs <- err
			took <- time.Since(killed)
		})
	}
	wg.Wait()
	close(errs)
	close(took)
	for err := range errs {
		if err != nil {
			t.Fatalf("keep-alive held through the takeover failed: %v", err)
		}
	}
	var slowest time.Duration
	for d := range took {
		slowest = max(slowest, d)
		if d < takeoverAfter {
			t.Fatalf("answered %v after the kill, before the takeover", d)
		}
	}
	// One prober re-sends every 20ms; the waiters retry once it finds b.
	// Without coalescing every caller would probe: 20 x 15 calls.
	if n := b.calls.Load(); n > 3*clients+int64(takeoverAfter/(20*time.Millisecond))*2 {
		t.Fatalf("b received %d keep-alives during a takeover of %v for %d callers", n, takeoverAfter, clients)
	}
	t.Logf("keep-alives answered %v after the kill (takeover after %v); b received %d calls", slowest, takeoverAfter, b.calls.Load())

	b.calls.Store(0)
	if _, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 7}); err != nil || b.calls.Load() != 1 {
		t.Fatalf("after the switch: %v, b calls %d (want straight to b)", err, b.calls.Load())
	}
}

// With a local lease service as first target (NewLeaseWithLocal): calls go
// to the remote active service while the local one is a standby; when the
// remote one dies and the local one takes over, a held call is answered by
// the local one at once, not after the failover wait.
func TestLeaseWithLocalTakesOverLocally(t *testing.T) {
	defer remote.SetLeaseFailoverForTest(5*time.Second, 20*time.Millisecond)()
	local, other := &switchLease{}, &switchLease{}
	other.active.Store(true)
	srv := serveSwitchLease(t, other)
	l, err := remote.NewLeaseWithLocal(local, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 7}); err != nil || r.GetTTL() != 30 {
			t.Fatalf("keep-alive through the remote active service = %v, %v", r, err)
		}
	}
	if local.calls.Load() != 1 || other.calls.Load() != 2 {
		t.Fatalf("calls local=%d other=%d, want 1 and 2", local.calls.Load(), other.calls.Load())
	}

	srv.CloseClientConnections()
	srv.Close()
	const takeoverAfter = 200 * time.Millisecond
	killed := time.Now()
	timer := time.AfterFunc(takeoverAfter, func() { local.active.Store(true) })
	defer timer.Stop()
	if r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 8}); err != nil || r.GetTTL() != 30 {
		t.Fatalf("keep-alive held through the local takeover = %v, %v", r, err)
	}
	if d := time.Since(killed); d < takeoverAfter || d >= 4*time.Second {
		t.Fatalf("answered %v after the kill; the local takeover came after %v", d, takeoverAfter)
	}
}

// grantLease is a lease process that grants (any one does, through
// consensus) and answers TimeToLive only while active, noting the leases
// it was asked about.
type grantLease struct {
	etcdserverpbconnect.UnimplementedLeaseHandler
	active atomic.Bool
	mu     sync.Mutex
	asked  []int64
}

func (g *grantLease) LeaseGrant(_ context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return &pb.LeaseGrantResponse{Header: hdr, ID: r.GetID(), TTL: r.GetTTL()}, nil
}

func (g *grantLease) LeaseRevoke(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return &pb.LeaseRevokeResponse{Header: hdr}, nil
}

func (g *grantLease) LeaseTimeToLive(_ context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	if !g.active.Load() {
		return nil, gateway.TranslateError(leasesvc.ErrNotActive)
	}
	g.mu.Lock()
	g.asked = append(g.asked, r.GetID())
	g.mu.Unlock()
	return &pb.LeaseTimeToLiveResponse{Header: hdr, ID: r.GetID(), TTL: 5}, nil
}

// A lease granted or revoked through a standby lease service is asked about
// at the active one (which alone expires leases) before the call is
// answered: after a grant the active one learns the lease; after a revoke
// its TimeToLive finds the lease gone in consensus and forgets it, so
// keep-alives fail at once.
func TestStandbyTellsTheActiveService(t *testing.T) {
	for _, c := range []struct {
		name string
		id   int64
		call func(context.Context, *remote.Lease, int64) error
	}{
		{"grant", 42, func(ctx context.Context, l *remote.Lease, id int64) error {
			r, err := l.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: 5})
			if err == nil && r.GetID() != id {
				err = fmt.Errorf("granted %d", r.GetID())
			}
			return err
		}},
		{"revoke", 43, func(ctx context.Context, l *remote.Lease, id int64) error {
			_, err := l.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id})
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			standby, active := &grantLease{}, &grantLease{}
			active.active.Store(true)
			var urls []string
			for _, g := range []*grantLease{standby, active} {
				path, h := etcdserverpbconnect.NewLeaseHandler(g)
				urls = append(urls, h2cServer(t, path, h))
			}
			// The standby first: it answers the call.
			l, err := remote.NewLease(strings.Join(urls, ","), func() *pb.ResponseHeader { return hdr })
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.call(ctx, l, c.id); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			active.mu.Lock()
			defer active.mu.Unlock()
			if !slices.Equal(active.asked, []int64{c.id}) {
				t.Fatalf("the active lease service was asked about %v, want [%d]", active.asked, c.id)
			}
		})
	}
}

// Keep-alive answers carry at least the newest revision the gateway saw:
// the lease service's own may predate a write the gateway acknowledged.
func TestLeaseKeepAliveHeaderNotOlderThanTheGateways(t *testing.T) {
	a := &switchLease{}
	a.active.Store(true)
	srv := serveSwitchLease(t, a)
	newer := &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: hdr.Revision + 5, RaftTerm: 3}
	l, err := remote.NewLease(srv.URL, func() *pb.ResponseHeader { return newer })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 7})
	if err != nil || r.GetHeader().GetRevision() != newer.Revision {
		t.Fatalf("keep-alive = %v, %v, want revision %d", r, err, newer.Revision)
	}
	// Never lowered: not below the lease service's revision, nor below an
	// answer given before.
	newer.Revision = 1
	if r, err = l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 7}); err != nil || r.GetHeader().GetRevision() != hdr.Revision+5 {
		t.Fatalf("keep-alive = %v, %v, want revision %d", r, err, hdr.Revision+5)
	}
}

// revokeLease answers revokes at its header.
type revokeLease struct {
	etcdserverpbconnect.UnimplementedLeaseHandler
	hdr *pb.ResponseHeader
}

func (r revokeLease) LeaseRevoke(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return &pb.LeaseRevokeResponse{Header: r.hdr}, nil
}

// A revoke that deletes keys moves the revision through the lease service,
// which the consensus client does not see: the headers the gateway makes
// up (TTL 0 for a keep-alive of a missing lease) are not older than the
// revoke's answer, as etcd's are not.
func TestLeaseHeaderNotOlderThanARevoke(t *testing.T) {
	revoked := &pb.ResponseHeader{ClusterId: 7, MemberId: 9, Revision: hdr.Revision + 3, RaftTerm: 3}
	path, h := etcdserverpbconnect.NewLeaseHandler(revokeLease{hdr: revoked})
	l, err := remote.NewLease(h2cServer(t, path, h), func() *pb.ResponseHeader { return proto.Clone(hdr).(*pb.ResponseHeader) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if h := l.Header(); h.GetRevision() != hdr.Revision {
		t.Fatalf("header before the revoke: %v", h)
	}
	if _, err := l.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 5}); err != nil {
		t.Fatal(err)
	}
	if h := l.Header(); h.GetRevision() != revoked.Revision || h.GetClusterId() != 7 || h.GetMemberId() != 9 {
		t.Fatalf("header after the revoke: %v, want revision %d", h, revoked.Revision)
	}
}
