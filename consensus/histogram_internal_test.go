package consensus

import (
	"testing"
	"time"
)

func TestDurationHistogram(t *testing.T) {
	h := NewDurationHistogram(diskBuckets)
	for _, d := range []time.Duration{500 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, 20 * time.Second} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if s.Count != 4 {
		t.Fatalf("count %d, want 4", s.Count)
	}
	// Cumulative: 0.5 ms and 1 ms are in the 1 ms bucket; 3 ms first fits
	// the 4 ms one; 20 s only +Inf.
	for ub, want := range map[float64]uint64{0.001: 2, 0.002: 2, 0.004: 3, 8.192: 3} {
		if got := s.Buckets[ub]; got != want {
			t.Errorf("bucket %v: %d, want %d", ub, got, want)
		}
	}
	if want := (500*time.Microsecond + time.Millisecond + 3*time.Millisecond + 20*time.Second).Seconds(); s.Sum != want {
		t.Errorf("sum %v, want %v", s.Sum, want)
	}
}
