package consensus

import (
	"math"
	"sync/atomic"
	"time"
)

// diskBuckets are the upper bounds, in seconds, of etcd's disk latency
// histograms (etcd_disk_wal_fsync_duration_seconds and
// etcd_disk_backend_commit_duration_seconds): 1 ms doubling to 8.192 s.
var diskBuckets = func() []float64 {
	b := make([]float64, 14)
	for i := range b {
		b[i] = 0.001 * math.Pow(2, float64(i))
	}
	return b
}()

// durationHistogram counts durations in diskBuckets without locks: the
// raft loop observes, /metrics reads.
type durationHistogram struct {
	counts   [15]atomic.Uint64 // per bucket; the last is +Inf
	sumNanos atomic.Uint64
}

func (h *durationHistogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(diskBuckets) && s > diskBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNanos.Add(uint64(max(d, 0)))
}

// Histogram is a snapshot of a latency histogram in Prometheus' shape.
type Histogram struct {
	// Buckets maps each upper bound (seconds) to the cumulative count of
	// observations at or below it.
	Buckets map[float64]uint64
	Count   uint64
	// Sum is the total of the observations, in seconds.
	Sum float64
}

func (h *durationHistogram) snapshot() Histogram {
	out := Histogram{Buckets: make(map[float64]uint64, len(diskBuckets))}
	for i, ub := range diskBuckets {
		out.Count += h.counts[i].Load()
		out.Buckets[ub] = out.Count
	}
	out.Count += h.counts[len(diskBuckets)].Load()
	out.Sum = time.Duration(h.sumNanos.Load()).Seconds()
	return out
}
