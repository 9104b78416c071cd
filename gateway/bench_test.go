package gateway_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
)

// BenchmarkHandlerRange measures the server side of one unary Range
// (Connect protocol, binary) without the network: routing, the leader
// gate, validation, decoding, the backend call and encoding.
func BenchmarkHandlerRange(b *testing.B) {
	f := newFake()
	if _, err := f.Put(context.Background(), &pb.PutRequest{Key: []byte("foo"), Value: []byte("bar")}); err != nil {
		b.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{}, f)
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	h := g.Handler()
	body, err := proto.Marshal(&pb.RangeRequest{Key: []byte("foo")})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/etcdserverpb.KV/Range", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/proto")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkClientGet is one clientv3 Get over loopback gRPC, client and
// server in this process.
func BenchmarkClientGet(b *testing.B) {
	f := newFake()
	cli := newClient(b, startGateway(b, gateway.Config{}, f))
	ctx := context.Background()
	if _, err := cli.Put(ctx, "foo", "bar"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cli.Get(ctx, "foo"); err != nil {
			b.Fatal(err)
		}
	}
}
