package bench

import (
	"encoding/json"
	"math"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histograms count microseconds: 1 µs is far below any round trip through a
// network stack, and a µs unit keeps the histograms small.
const (
	// histLowest is the smallest latency a histogram tells apart: 1 µs.
	histLowest = int64(time.Microsecond)
	// histHighest is the largest latency a histogram tracks; larger values are
	// clamped to it (a request that takes ten minutes is a failure anyway).
	histHighest = int64(10 * time.Minute)
	// histDigits keeps three significant digits: p99.9 is accurate to 0.1%.
	histDigits = 3
	// maxShards bounds the memory of a Histogram (~160 KiB per shard).
	maxShards = 8
)

// Histogram records latencies from many goroutines. It is sharded so that
// hundreds of clients do not contend on one lock: a caller records into the
// shard of its own index.
type Histogram struct {
	shards []histShard
}

type histShard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [40]byte // keep shards on separate cache lines
}

// NewHistogram returns a histogram for up to writers concurrent recorders.
func NewHistogram(writers int) *Histogram {
	n := min(max(writers, 1), maxShards)
	h := &Histogram{shards: make([]histShard, n)}
	for i := range h.shards {
		h.shards[i].h = newHDR()
	}
	return h
}

func newHDR() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, histHighest/histLowest, histDigits)
}

// Record adds one latency observed by the recorder with index writer.
func (h *Histogram) Record(writer int, d time.Duration) {
	v := int64(d)
	if v < histLowest {
		v = histLowest
	} else if v > histHighest {
		v = histHighest
	}
	s := &h.shards[uint(writer)%uint(len(h.shards))]
	s.mu.Lock()
	_ = s.h.RecordValue(v / histLowest) // cannot fail: v is clamped to the trackable range
	s.mu.Unlock()
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 {
	var n int64
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += s.h.TotalCount()
		s.mu.Unlock()
	}
	return n
}

// Summary merges the shards and summarises them.
func (h *Histogram) Summary() Latency {
	all := newHDR()
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		all.Merge(s.h)
		s.mu.Unlock()
	}
	return summarize(all)
}

func summarize(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	us := func(v int64) time.Duration { return time.Duration(v * histLowest) }
	usf := func(v float64) time.Duration { return time.Duration(math.Round(v * float64(histLowest))) }
	return Latency{
		Min:    us(h.Min()),
		Mean:   usf(h.Mean()),
		StdDev: usf(h.StdDev()),
		P50:    us(h.ValueAtPercentile(50)),
		P90:    us(h.ValueAtPercentile(90)),
		P99:    us(h.ValueAtPercentile(99)),
		P999:   us(h.ValueAtPercentile(99.9)),
		Max:    us(h.Max()),
	}
}

// Latency summarises a latency distribution. In JSON every field is a number
// of milliseconds.
type Latency struct {
	Min, Mean, StdDev, P50, P90, P99, P999, Max time.Duration
}

// Percentile returns the named percentile: 50, 90, 99 or 99.9; any other
// value returns 0.
func (l Latency) Percentile(p float64) time.Duration {
	switch p {
	case 50:
		return l.P50
	case 90:
		return l.P90
	case 99:
		return l.P99
	case 99.9:
		return l.P999
	}
	return 0
}

type latencyJSON struct {
	Min    float64 `json:"min_ms"`
	Mean   float64 `json:"mean_ms"`
	StdDev float64 `json:"stddev_ms"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
	P999   float64 `json:"p99_9_ms"`
	Max    float64 `json:"max_ms"`
}

// Millis converts d to fractional milliseconds, rounded to the microsecond.
func Millis(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

func fromMillis(ms float64) time.Duration {
	return time.Duration(math.Round(ms * float64(time.Millisecond)))
}

// MarshalJSON writes milliseconds.
func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(latencyJSON{
		Min: Millis(l.Min), Mean: Millis(l.Mean), StdDev: Millis(l.StdDev),
		P50: Millis(l.P50), P90: Millis(l.P90), P99: Millis(l.P99), P999: Millis(l.P999), Max: Millis(l.Max),
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (l *Latency) UnmarshalJSON(b []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = Latency{
		Min: fromMillis(j.Min), Mean: fromMillis(j.Mean), StdDev: fromMillis(j.StdDev),
		P50: fromMillis(j.P50), P90: fromMillis(j.P90), P99: fromMillis(j.P99), P999: fromMillis(j.P999), Max: fromMillis(j.Max),
	}
	return nil
}
