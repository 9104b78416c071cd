package gateway_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
)

// BenchmarkHandlerRange measures the server side of one unary Range
// (Connect protocol, binary) without the network: routing, the leader
// gate, validation, decoding, the backend call and encoding.
func BenchmarkHandlerRange(b *testing.B) {
	// warn-unary is what servers run: etcd's --warning-unary-request-duration
	// times every unary call.
	for _, c := range []struct {
		name string
		cfg  gateway.Config
	}{{"plain", gateway.Config{}}, {"warn-unary", gateway.Config{WarningUnaryRequestDuration: 300 * time.Millisecond}}} {
		b.Run(c.name, func(b *testing.B) { benchHandlerRange(b, c.cfg) })
	}
}

func benchHandlerRange(b *testing.B, cfg gateway.Config) {
	f := newFake()
	if _, err := f.Put(context.Background(), &pb.PutRequest{Key: []byte("foo"), Value: []byte("bar")}); err != nil {
		b.Fatal(err)
	}
	g, err := gateway.New(cfg, f)
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

// BenchmarkClientGetParallel is clientv3 Gets from many goroutines over a
// few connections, client and server in this process: the per-call cost of
// the transport under concurrency (write coalescing, stack growth, GC).
// Sub-benchmarks: HTTP/2 served by net/http or by gateway/h2server.
func BenchmarkClientGetParallel(b *testing.B) {
	b.Run("nethttp", func(b *testing.B) { benchClientGetParallel(b, false) })
	b.Run("lean", func(b *testing.B) { benchClientGetParallel(b, true) })
}

func benchClientGetParallel(b *testing.B, lean bool) {
	f := newFake()
	addr := startGateway(b, gateway.Config{NetHTTP2: !lean}, f)
	clients := make([]*clientv3.Client, 4)
	for i := range clients {
		clients[i] = newClient(b, addr)
	}
	ctx := context.Background()
	if _, err := clients[0].Put(ctx, "foo", "bar"); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(25)
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		cli := clients[next.Add(1)%int64(len(clients))]
		for pb.Next() {
			if _, err := cli.Get(ctx, "foo"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	// CPU time per call (client and server) is steadier than wall time on
	// a shared machine.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the process's user+system CPU time in nanoseconds.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
