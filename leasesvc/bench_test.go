package leasesvc_test

// Figures for leases (run with `go test ./leasesvc -run '^$' -bench . -benchtime=...`):
//
//	BenchmarkKeepAlive       keep-alive round trips through the gateway with clientv3's
//	                         connection (one bidi stream per client, as clientv3 keeps) and with
//	                         clientv3.KeepAliveOnce, 1 and 100 clients: throughput and p99.
//	BenchmarkTTLToDeletion   time from a lease's TTL running out to its key's DELETE event on a
//	                         watch (-benchtime=50x: 50 leases).
//	BenchmarkRevokeStorm     N leases expiring together: revoke throughput, and the p99 of puts
//	                         issued meanwhile (the rate limit keeps them flowing).

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/leasesvc"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// stack is consensus + leasesvc + gateway in one process, as services.RunAllInOne wires them
// (without the watch fan-out unless asked).
type stack struct {
	node  *consensus.Node
	svc   *leasesvc.Service
	addr  string
	close func()
}

func startStack(tb testing.TB, ccfg consensus.Config, lcfg leasesvc.Config, opts ...gateway.Option) *stack {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ccfg.DataDir, ccfg.Logger = tb.TempDir(), quiet()
	node, err := consensus.Start(ctx, ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	lcfg.Logger = quiet()
	svc, err := leasesvc.New(lcfg, node)
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return svc.Run(runCtx) })
	if err := svc.WaitActive(ctx); err != nil {
		tb.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Logger: quiet()}, node, append(opts, gateway.WithLease(svc))...)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g.Go(func() error { return gw.Serve(runCtx, ln) })
	s := &stack{node: node, svc: svc, addr: ln.Addr().String()}
	var once sync.Once
	s.close = func() {
		once.Do(func() {
			stop()
			_ = gw.Close()
			if err := g.Wait(); err != nil {
				tb.Error(err)
			}
			_ = svc.Close()
			_ = node.Close()
		})
	}
	tb.Cleanup(s.close)
	return s
}

func (s *stack) client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func BenchmarkKeepAlive(b *testing.B) {
	for _, mode := range []string{"stream", "KeepAliveOnce"} {
		for _, clients := range []int{1, 100} {
			b.Run(fmt.Sprintf("%s/clients=%d", mode, clients), func(b *testing.B) {
				benchKeepAlive(b, mode, clients)
			})
		}
	}
}

func benchKeepAlive(b *testing.B, mode string, clients int) {
	s := startStack(b, consensus.Config{Name: "bench"}, leasesvc.Config{Holder: "bench"})
	ctx := context.Background()
	// Up to 10 connections, as many clients as asked; every client has its own lease.
	conns := make([]*clientv3.Client, min(clients, 10))
	for i := range conns {
		conns[i] = s.client(b)
	}
	ids := make([]clientv3.LeaseID, clients)
	for i := range ids {
		g, err := conns[0].Grant(ctx, 60)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = g.ID
	}
	lat := make([][]time.Duration, clients)
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var eg errgroup.Group
	for i := range clients {
		eg.Go(func() error {
			c := conns[i%len(conns)]
			var stream pb.Lease_LeaseKeepAliveClient
			if mode == "stream" {
				var err error
				if stream, err = pb.NewLeaseClient(c.ActiveConnection()).LeaseKeepAlive(ctx); err != nil {
					return err
				}
				defer func() { _ = stream.CloseSend() }()
			}
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				var ttl int64
				if mode == "stream" {
					if err := stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(ids[i])}); err != nil {
						return err
					}
					resp, err := stream.Recv()
					if err != nil {
						return err
					}
					ttl = resp.TTL
				} else {
					resp, err := c.KeepAliveOnce(ctx, ids[i])
					if err != nil {
						return err
					}
					ttl = resp.TTL
				}
				if ttl != 60 {
					return fmt.Errorf("keep-alive TTL %d", ttl)
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	all := slices.Concat(lat...)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "keepalives/s")
	b.ReportMetric(float64(percentile(all, 0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds()), "p99-µs")
}

// deletions records when each key's DELETE was committed, from the events consensus publishes.
type deletions struct {
	mu   sync.Mutex
	at   map[string]time.Time
	wake chan struct{}
}

func watchDeletes(tb testing.TB, bus *eventbus.Memory) *deletions {
	tb.Helper()
	d := &deletions{at: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	unsubscribe, err := bus.Subscribe(context.Background(), func(m eventbus.Message) {
		now := time.Now()
		d.mu.Lock()
		for _, ev := range m.Events {
			if ev.Type == mvccpb.DELETE {
				d.at[string(ev.Kv.Key)] = now
			}
		}
		d.mu.Unlock()
		select {
		case d.wake <- struct{}{}:
		default:
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(unsubscribe)
	return d
}

// wait returns once n keys were deleted, or fails after timeout.
func (d *deletions) wait(tb testing.TB, n int, timeout time.Duration) map[string]time.Time {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		got := len(d.at)
		d.mu.Unlock()
		if got >= n {
			d.mu.Lock()
			defer d.mu.Unlock()
			return maps.Clone(d.at)
		}
		select {
		case <-d.wake:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			tb.Fatalf("%d of %d keys deleted within %v", got, n, timeout)
		}
	}
}

// BenchmarkTTLToDeletion: each iteration grants one lease (the minimum TTL, 2s with default raft
// timing) with one key, staggered by 13ms; the figure is when the key's DELETE was committed
// relative to the TTL counted from the grant's reply. Run with -benchtime=50x.
func BenchmarkTTLToDeletion(b *testing.B) {
	bus := eventbus.NewMemory()
	defer bus.Close()
	d := watchDeletes(b, bus)
	s := startStack(b, consensus.Config{Name: "bench", Events: bus}, leasesvc.Config{Holder: "bench"})
	c := s.client(b)
	ctx := context.Background()
	due := map[string]time.Time{}
	b.ResetTimer()
	for i := range b.N {
		g, err := c.Grant(ctx, 1)
		if err != nil {
			b.Fatal(err)
		}
		key := fmt.Sprintf("ttl/%d", i)
		due[key] = time.Now().Add(time.Duration(g.TTL) * time.Second)
		if _, err := c.Put(ctx, key, "v", clientv3.WithLease(g.ID)); err != nil {
			b.Fatal(err)
		}
		time.Sleep(13 * time.Millisecond)
	}
	at := d.wait(b, b.N, 30*time.Second)
	b.StopTimer()
	var late []time.Duration
	for k, t := range due {
		late = append(late, at[k].Sub(t))
	}
	b.ReportMetric(float64(percentile(late, 0).Milliseconds()), "min-ms")
	b.ReportMetric(float64(percentile(late, 0.5).Milliseconds()), "p50-ms")
	b.ReportMetric(float64(percentile(late, 0.99).Milliseconds()), "p99-ms")
	b.ReportMetric(float64(percentile(late, 1).Milliseconds()), "max-ms")
}

// BenchmarkRevokeStorm: N leases, one key each, granted before the lease service starts, so its
// load gives them all the same deadline. The figures: revokes per second from that deadline to
// the last DELETE, and the p99 latency of puts issued by 4 writers meanwhile (before the storm
// as a baseline). Run with -benchtime=1x.
func BenchmarkRevokeStorm(b *testing.B) {
	for _, tc := range []struct {
		name   string
		leases int
		rate   int
	}{
		{"unlimited/leases=100000", 100000, 1 << 30},
		{"default-rate/leases=10000", 10000, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				revokeStorm(b, tc.leases, tc.rate)
			}
		})
	}
}

func revokeStorm(b *testing.B, n, rate int) {
	b.StopTimer()
	ctx := context.Background()
	bus := eventbus.NewMemory()
	defer bus.Close()
	d := watchDeletes(b, bus)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	node, err := consensus.Start(cctx, consensus.Config{Name: "bench", DataDir: b.TempDir(), Events: bus, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	setup := time.Now()
	var eg errgroup.Group
	eg.SetLimit(64)
	for i := range n {
		eg.Go(func() error {
			g, err := node.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 3})
			if err != nil {
				return err
			}
			_, err = node.Put(ctx, &pb.PutRequest{Key: fmt.Appendf(nil, "storm/%06d", i), Value: []byte("v"), Lease: g.ID})
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		b.Fatal(err)
	}
	b.Logf("granted %d leases with a key each in %v", n, time.Since(setup).Round(time.Millisecond))

	svc, err := leasesvc.New(leasesvc.Config{Holder: "bench", MaxRevokesPerSecond: rate, Logger: quiet()}, node)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var run errgroup.Group
	run.Go(func() error { return svc.Run(runCtx) })
	defer func() {
		stop()
		_ = run.Wait()
		_ = svc.Close()
	}()
	if err := svc.WaitActive(cctx); err != nil {
		b.Fatal(err)
	}
	expiry := time.Now().Add(3 * time.Second) // every lease: loaded just now with TTL 3s

	// Writers measure put latency until the storm is over.
	var mu sync.Mutex
	var before, during []time.Duration
	done := make(chan struct{})
	var writers errgroup.Group
	for w := range 4 {
		writers.Go(func() error {
			for i := 0; ; i++ {
				select {
				case <-done:
					return nil
				default:
				}
				t0 := time.Now()
				if _, err := node.Put(ctx, &pb.PutRequest{Key: fmt.Appendf(nil, "writer/%d/%d", w, i%100), Value: []byte("v")}); err != nil {
					return err
				}
				l := time.Since(t0)
				mu.Lock()
				if t0.Before(expiry) {
					before = append(before, l)
				} else {
					during = append(during, l)
				}
				mu.Unlock()
			}
		})
	}
	b.StartTimer()
	at := d.wait(b, n, 10*time.Minute)
	b.StopTimer()
	close(done)
	if err := writers.Wait(); err != nil {
		b.Fatal(err)
	}
	var first, last time.Time
	for _, t := range at {
		if first.IsZero() || t.Before(first) {
			first = t
		}
		if t.After(last) {
			last = t
		}
	}
	// expiry is an estimate taken after the load (which holds the lock while it builds the
	// heap), so the first revoke may appear slightly "early"; the rate is first to last.
	b.ReportMetric(float64(n-1)/last.Sub(first).Seconds(), "revokes/s")
	b.ReportMetric(last.Sub(expiry).Seconds(), "storm-s")
	b.ReportMetric(float64(first.Sub(expiry).Milliseconds()), "first-ms")
	mu.Lock()
	b.ReportMetric(float64(percentile(before, 0.99).Microseconds()), "put-p99-before-µs")
	b.ReportMetric(float64(percentile(during, 0.99).Microseconds()), "put-p99-during-µs")
	b.ReportMetric(float64(percentile(during, 1).Microseconds()), "put-max-during-µs")
	mu.Unlock()
}
