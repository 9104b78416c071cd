package watchfanout_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// countStream discards responses, counting them.
type countStream struct {
	ctx     context.Context
	reqs    chan *pb.WatchRequest
	created atomic.Int64
	events  atomic.Int64
}

func (s *countStream) Recv() (*pb.WatchRequest, error) {
	select {
	case r := <-s.reqs:
		return r, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

func (s *countStream) Send(r *pb.WatchResponse) error {
	if r.Created {
		s.created.Add(1)
	}
	s.events.Add(int64(len(r.Events)))
	return nil
}

type benchEnv struct {
	model   *watchtest.Model
	bus     *eventbus.Memory
	f       *watchfanout.Fanout
	streams []*countStream
	cancel  context.CancelFunc
	served  chan struct{}
}

func newBenchEnv(b *testing.B, nStreams int) *benchEnv {
	be := &benchEnv{bus: eventbus.NewMemory(), served: make(chan struct{}, nStreams)}
	be.model = watchtest.NewModel(func(r eventbus.Revision) {
		_ = be.bus.Publish(context.Background(), []eventbus.Revision{r})
	})
	f, err := watchfanout.New(watchfanout.Config{Logger: quietLogger()}, be.bus, be.model)
	if err != nil {
		b.Fatal(err)
	}
	be.f = f
	ctx, cancel := context.WithCancel(context.Background())
	be.cancel = cancel
	for range nStreams {
		s := &countStream{ctx: ctx, reqs: make(chan *pb.WatchRequest, 64)}
		be.streams = append(be.streams, s)
		go func() { _ = f.Serve(ctx, s); be.served <- struct{}{} }()
	}
	return be
}

func (be *benchEnv) close() {
	be.cancel()
	for range be.streams {
		<-be.served
	}
	_ = be.f.Close()
	_ = be.bus.Close()
}

func (be *benchEnv) createAll(b *testing.B, perStream int, watch func(s, i int) watchtest.Watch) {
	for si, s := range be.streams {
		for i := range perStream {
			s.reqs <- &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: watch(si, i).Request()}}
		}
	}
	deadline := time.Now().Add(time.Minute)
	for _, s := range be.streams {
		for s.created.Load() < int64(perStream) {
			if time.Now().After(deadline) {
				b.Fatalf("watchers not created in time")
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func (be *benchEnv) delivered() int64 {
	var n int64
	for _, s := range be.streams {
		n += s.events.Load()
	}
	return n
}

// BenchmarkDelivery measures the cost of one revision delivered to every
// watcher (all watch the written key; half through a range): ns/op is per
// revision. The writer keeps at most `window` revisions undelivered, as a
// store that applies at the fanout's pace would; window=0 is saturation (the
// writer never waits, slow streams fall back to catch-up).
func BenchmarkDelivery(b *testing.B) {
	for _, tc := range []struct{ streams, perStream, window int }{
		{10, 10, 4}, {100, 100, 4}, {10, 10, 0}, {100, 100, 0},
	} {
		n := tc.streams * tc.perStream
		b.Run(fmt.Sprintf("watchers=%d/window=%d", n, tc.window), func(b *testing.B) {
			be := newBenchEnv(b, tc.streams)
			defer be.close()
			be.createAll(b, tc.perStream, func(s, i int) watchtest.Watch {
				if i%2 == 0 {
					return watchtest.Watch{Key: []byte("k")}
				}
				return watchtest.Watch{Key: []byte("j"), RangeEnd: []byte("l")}
			})
			want := int64(n) * int64(b.N)
			deadline := time.Now().Add(5 * time.Minute)
			wait := func(target int64) {
				for be.delivered() < target {
					if time.Now().After(deadline) {
						b.Fatalf("delivered %d of %d", be.delivered(), target)
					}
					runtime.Gosched()
				}
			}
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				if tc.window > 0 && i >= tc.window {
					wait(int64(n) * int64(i-tc.window))
				}
				be.model.Put("k", "value-of-some-length")
			}
			wait(want)
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(want)/el.Seconds(), "events/s")
			st := be.f.Stats()
			b.ReportMetric(float64(st.Victims)/float64(b.N), "victims/op")
		})
	}
}

// BenchmarkMemoryPerWatcher reports the heap used per watcher with 100,000
// watchers (100 streams x 1,000; 80% single keys, 20% ranges).
func BenchmarkMemoryPerWatcher(b *testing.B) {
	const streams, perStream = 100, 1000
	for range b.N {
		be := newBenchEnv(b, streams)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		be.createAll(b, perStream, func(s, i int) watchtest.Watch {
			k := fmt.Sprintf("/registry/pods/ns-%03d/pod-%05d", s, i)
			if i%5 == 0 {
				return watchtest.Watch{Key: []byte(k), RangeEnd: []byte(k + "0")}
			}
			return watchtest.Watch{Key: []byte(k)}
		})
		runtime.GC()
		runtime.ReadMemStats(&after)
		if st := be.f.Stats(); st.Synced != streams*perStream {
			b.Fatalf("synced %d", st.Synced)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(streams*perStream), "bytes/watcher")
		be.close()
	}
}
