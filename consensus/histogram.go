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

// DurationHistogram counts durations in fixed buckets without locks: its
// owner observes (the raft loop, a peer's prober), /metrics reads.
type DurationHistogram struct {
	bounds   []float64       // upper bounds in seconds, ascending
	counts   []atomic.Uint64 // per bucket; the last is +Inf
	sumNanos atomic.Uint64
}

// NewDurationHistogram returns an empty histogram with the upper bounds
// bounds (seconds, ascending).
func NewDurationHistogram(bounds []float64) *DurationHistogram {
	return &DurationHistogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Observe counts d.
func (h *DurationHistogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(h.bounds) && s > h.bounds[i] {
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

// Snapshot returns the counts so far.
func (h *DurationHistogram) Snapshot() Histogram {
	out := Histogram{Buckets: make(map[float64]uint64, len(h.bounds))}
	for i, ub := range h.bounds {
		out.Count += h.counts[i].Load()
		out.Buckets[ub] = out.Count
	}
	out.Count += h.counts[len(h.bounds)].Load()
	out.Sum = time.Duration(h.sumNanos.Load()).Seconds()
	return out
}
