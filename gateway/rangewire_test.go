package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/net/http2"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// storeBackend serves ranges from a real store, as consensus.Node does,
// through Range and RangeWire, and counts the RangeWire calls.
type storeBackend struct {
	*fakeBackend
	s         *storage.Store
	wireCalls atomic.Int64
}

func (b *storeBackend) Range(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return b.s.Range(r)
}

func (b *storeBackend) RangeWire(_ context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	b.wireCalls.Add(1)
	return b.s.RangeWire(r)
}

// A range is answered with its KeyValues encoded by the store when the
// reply is protobuf (gRPC, gRPC-Web, Connect), and through Range for JSON;
// every protocol decodes the same KeyValues, also with many ranges of
// different sizes at once, whose encoded buffers the codec hands back to
// the store for the next.
func TestRangeWireByProtocol(t *testing.T) {
	s, err := storage.Open("db", storage.Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	batch := s.NewBatch()
	for p := range 8 {
		for i := range 100 * (p + 1) {
			if _, err := batch.Put(&pb.PutRequest{Key: fmt.Appendf(nil, "p%d/%04d", p, i), Value: fmt.Appendf(nil, "value %d of prefix %d", i, p)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := batch.Commit(false); err != nil {
		t.Fatal(err)
	}
	b := &storeBackend{fakeBackend: newFake(), s: s}
	addr := startGateway(t, gateway.Config{}, b)
	h2c := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	defer h2c.CloseIdleConnections()
	h1 := &http.Transport{}
	defer h1.CloseIdleConnections()
	ctx := testCtx(t)

	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		opts []connect.ClientOption
		wire bool
	}{
		{"grpc", h2c, []connect.ClientOption{connect.WithGRPC()}, true},
		{"grpc-gzip", h2c, []connect.ClientOption{connect.WithGRPC(), connect.WithSendGzip()}, true},
		{"grpc-web", h1, []connect.ClientOption{connect.WithGRPCWeb()}, true},
		{"connect-proto", h1, nil, true},
		{"connect-json", h1, []connect.ClientOption{connect.WithProtoJSON()}, false},
		{"grpc-json", h2c, []connect.ClientOption{connect.WithGRPC(), connect.WithProtoJSON()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := etcdserverpbconnect.NewKVClient(&http.Client{Transport: tc.rt}, "http://"+addr, tc.opts...)
			before := b.wireCalls.Load()
			var g errgroup.Group
			for i := range 64 {
				g.Go(func() error {
					p := i % 8
					r := &pb.RangeRequest{Key: fmt.Appendf(nil, "p%d/", p), RangeEnd: fmt.Appendf(nil, "p%d0", p)}
					if i%3 == 0 {
						r.Limit = int64(10 * (p + 1))
					}
					got, err := kv.Range(ctx, r)
					if err != nil {
						return err
					}
					want, err := s.Range(r)
					if err != nil {
						return err
					}
					if !proto.Equal(got, want) {
						return fmt.Errorf("range %d of prefix p%d: got %d kvs (count %d), want %d (count %d)", i, p, len(got.Kvs), got.Count, len(want.Kvs), want.Count)
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			want := int64(0)
			if tc.wire {
				want = 64
			}
			if calls := b.wireCalls.Load() - before; calls != want {
				t.Fatalf("%d of 64 ranges through RangeWire, want %d", calls, want)
			}
		})
	}
}
