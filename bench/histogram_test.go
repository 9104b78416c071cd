package bench

import (
	"encoding/json"
	"math"
	"sync"
	"testing"
	"time"
)

// within reports whether got is within rel of want.
func within(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got-want)) <= rel*float64(want)
}

func TestHistogramPercentiles(t *testing.T) {
	h := NewHistogram(4)
	// 1..1000 ms, recorded by four writers: pN is N% of the way up.
	for i := 1; i <= 1000; i++ {
		h.Record(i%4, time.Duration(i)*time.Millisecond)
	}
	if got := h.Count(); got != 1000 {
		t.Fatalf("Count = %d, want 1000", got)
	}
	s := h.Summary()
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"min", s.Min, time.Millisecond},
		{"p50", s.P50, 500 * time.Millisecond},
		{"p90", s.P90, 900 * time.Millisecond},
		{"p99", s.P99, 990 * time.Millisecond},
		{"p99.9", s.P999, 999 * time.Millisecond},
		{"max", s.Max, 1000 * time.Millisecond},
		{"mean", s.Mean, 500500 * time.Microsecond},
	} {
		// Three significant digits: at most 0.1% off.
		if !within(c.got, c.want, 0.001) {
			t.Errorf("%s = %v, want %v ±0.1%%", c.name, c.got, c.want)
		}
	}
	if want := 288.67 * float64(time.Millisecond); math.Abs(float64(s.StdDev)-want) > 0.01*want {
		t.Errorf("stddev = %v, want ~288.7ms", s.StdDev)
	}
	for _, p := range []float64{50, 90, 99, 99.9} {
		if s.Percentile(p) == 0 {
			t.Errorf("Percentile(%v) = 0", p)
		}
	}
	if s.Percentile(75) != 0 {
		t.Errorf("Percentile(75) = %v, want 0 (not tracked)", s.Percentile(75))
	}
}

func TestHistogramClampsAndEmpty(t *testing.T) {
	h := NewHistogram(1)
	if s := h.Summary(); s != (Latency{}) {
		t.Fatalf("empty summary = %+v, want zero", s)
	}
	h.Record(0, 0)
	h.Record(0, time.Hour)
	s := h.Summary()
	if s.Min != time.Microsecond {
		t.Errorf("min = %v, want clamped to 1µs", s.Min)
	}
	if !within(s.Max, 10*time.Minute, 0.001) {
		t.Errorf("max = %v, want clamped to 10m", s.Max)
	}
	if h.Count() != 2 {
		t.Errorf("count = %d, want 2", h.Count())
	}
}

func TestHistogramConcurrent(t *testing.T) {
	h := NewHistogram(100) // more writers than shards
	if len(h.shards) != maxShards {
		t.Fatalf("shards = %d, want %d", len(h.shards), maxShards)
	}
	var wg sync.WaitGroup
	for w := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				h.Record(w, time.Millisecond)
			}
		}()
	}
	wg.Wait()
	if got := h.Count(); got != 10000 {
		t.Fatalf("count = %d, want 10000", got)
	}
	if s := h.Summary(); !within(s.P99, time.Millisecond, 0.001) {
		t.Fatalf("p99 = %v, want 1ms", s.P99)
	}
}

func TestLatencyJSON(t *testing.T) {
	l := Latency{Min: 100 * time.Microsecond, Mean: 1500 * time.Microsecond, StdDev: 2 * time.Millisecond,
		P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 12345 * time.Microsecond, P999: 20 * time.Millisecond, Max: time.Second}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]float64
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"min_ms": 0.1, "mean_ms": 1.5, "stddev_ms": 2, "p50_ms": 1, "p90_ms": 2, "p99_ms": 12.345, "p99_9_ms": 20, "max_ms": 1000}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v (json %s)", k, m[k], v, b)
		}
	}
	var back Latency
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != l {
		t.Fatalf("round trip = %+v, want %+v", back, l)
	}
}
