package eventbus

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// benchDeliver measures publish+deliver throughput of 1-event revisions with
// 100-byte values (and a 100-byte prev_kv) to one subscriber, batch
// revisions per Publish call. The figure is revisions/s delivered.
func benchDeliver(b *testing.B, bus Bus, batch int) {
	var got atomic.Int64
	done := make(chan struct{})
	total := int64(b.N)
	unsub, err := bus.Subscribe(context.Background(), func(m Message) {
		if got.Add(1) == total {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer unsub()
	// Pre-build the revisions so the benchmark measures the bus.
	revs := make([]Revision, b.N)
	for i := range revs {
		revs[i] = testRevision(int64(i+1), 1, 100)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += batch {
		if err := bus.Publish(ctx, revs[i:min(i+batch, b.N)]); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		b.Fatalf("delivered %d of %d", got.Load(), b.N)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "revs/s")
}

func BenchmarkNATSInProcess(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			n, err := StartNATS(context.Background(), NATSConfig{PendingMsgs: -1, PendingBytes: -1, Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close()
			benchDeliver(b, n, batch)
		})
	}
}

func BenchmarkMemory(b *testing.B) {
	m := NewMemory()
	defer m.Close()
	benchDeliver(b, m, 1)
}
