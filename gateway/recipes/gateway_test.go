package recipes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/v3electionpbconnect"
	"github.com/concord-kv/concord/proto/gen/v3lockpbconnect"
)

// gwBackend is a memBackend as a gateway.Backend. The embedded interface is
// nil: these tests reach only the methods defined here.
type gwBackend struct {
	gateway.Backend
	m *memBackend
}

func (g gwBackend) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return g.m.Range(ctx, r)
}

func (g gwBackend) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return g.m.Put(ctx, r)
}

func (g gwBackend) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return g.m.DeleteRange(ctx, r)
}

func (g gwBackend) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	return g.m.Txn(ctx, r)
}

func (g gwBackend) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return g.m.LeaseGrant(ctx, r)
}

func (gwBackend) Leader() uint64 { return 1 }

// serveGateway serves the recipes through a real gateway (WithLock,
// WithElection) on a loopback port and returns its base URL and an HTTP
// client for it.
func serveGateway(t *testing.T, b *memBackend, s *Service) (string, *http.Client) {
	t.Helper()
	g, err := gateway.New(gateway.Config{Logger: quietLogger()}, gwBackend{m: b},
		gateway.WithWatch(gateway.NewWatchService(b.fan)), gateway.WithLock(s), gateway.WithElection(s))
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
	hc := &http.Client{}
	t.Cleanup(func() {
		hc.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = g.Close()
	})
	return "http://" + ln.Addr().String(), hc
}

// The services answer through the gateway over the Connect protocol (as a
// browser would), unary and server-streaming, with etcd's errors.
func TestThroughGateway(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	url, hc := serveGateway(t, b, s)
	lc := v3lockpbconnect.NewLockClient(hc, url)
	ec := v3electionpbconnect.NewElectionClient(hc, url)
	ctx := context.Background()

	la, lb := b.grant(30), b.grant(30)
	first, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("gw"), Lease: la})
	if err != nil {
		t.Fatal(err)
	}
	second, _ := async(t, func(ctx context.Context) (*v3lockpb.LockResponse, error) {
		return lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("gw"), Lease: lb})
	})
	waitKeys(t, b, "gw/", string(first.Key), fmt.Sprintf("gw/%x", lb))
	pending(t, second, "second Lock while the first holds")
	if _, err := lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: first.Key}); err != nil {
		t.Fatal(err)
	}
	if r := await(t, second); r.err != nil || string(r.v.Key) != fmt.Sprintf("gw/%x", lb) {
		t.Fatalf("second Lock: %v %v", r.v, r.err)
	}

	_, err = ec.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("gwe")})
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnknown || ce.Message() != "election: no leader" {
		t.Fatalf("Leader without candidates: %v", err)
	}

	cr, err := ec.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("gwe"), Lease: la, Value: []byte("v1")})
	if err != nil {
		t.Fatal(err)
	}
	// Over HTTP/1.1 the Connect client returns from Observe only once the
	// server sends its first message (headers go with it, as in gRPC), so
	// the stream starts after there is a leader.
	octx, ocancel := context.WithTimeout(ctx, testTimeout)
	defer ocancel()
	stream, err := ec.Observe(octx, &v3electionpb.LeaderRequest{Name: []byte("gwe")})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for i, want := range []string{"v1", "v2"} {
		if i == 1 {
			if _, err := ec.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: cr.Leader, Value: []byte("v2")}); err != nil {
				t.Fatal(err)
			}
		}
		if !stream.Receive() {
			t.Fatalf("observe stream ended: %v", stream.Err())
		}
		if got := stream.Msg(); string(got.Kv.Value) != want || string(got.Kv.Key) != string(cr.Leader.Key) {
			t.Fatalf("observed %v, want %s", got.Kv, want)
		}
	}
	ocancel()
	if stream.Receive() {
		t.Fatalf("observation after cancel: %v", stream.Msg())
	}
}
