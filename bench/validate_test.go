package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDefaultsAreValid(t *testing.T) {
	for _, w := range []Workload{&Put{}, &Range{Key: "k"}, &TxnPut{}, &TxnMixed{}, &Watch{}, &WatchLatency{},
		&LeaseKeepalive{}, &K8s{}} {
		w.SetDefaults()
		if err := w.Validate(); err != nil {
			t.Errorf("%s with defaults: %v", w.Name(), err)
		}
		if len(w.Params()) == 0 {
			t.Errorf("%s: no params", w.Name())
		}
	}
	var c ClientConfig
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("client defaults: %v", err)
	}
	if c.Endpoints[0] != "127.0.0.1:2379" || c.Conns != 1 || c.Clients != 1 {
		t.Fatalf("client defaults = %+v", c)
	}
}

// TestEtcdDefaults pins the defaults that come from etcd's benchmark tool.
func TestEtcdDefaults(t *testing.T) {
	p := &Put{}
	p.SetDefaults()
	if p.KeySize != 8 || p.ValSize != 8 || p.Total != 10000 || p.KeySpaceSize != 1 {
		t.Errorf("put defaults = %+v", p)
	}
	r := &Range{Key: "k"}
	r.SetDefaults()
	if r.Consistency != "l" || r.Total != 10000 {
		t.Errorf("range defaults = %+v", r)
	}
	m := &TxnMixed{}
	m.SetDefaults()
	if m.Limit != 1000 || m.RWRatio != 1 || m.Consistency != "l" {
		t.Errorf("txn-mixed defaults = %+v", m)
	}
	w := &Watch{}
	w.SetDefaults()
	if w.Streams != 10 || w.WatchPerStream != 100 || w.WatchedKeyTotal != 1 || w.PutTotal != 1000 || w.KeySize != 32 {
		t.Errorf("watch defaults = %+v", w)
	}
	wl := &WatchLatency{}
	wl.SetDefaults()
	if wl.PutRate != 100 || wl.Total != 10000 || wl.KeySize != 32 || wl.ValSize != 32 {
		t.Errorf("watch-latency defaults = %+v", wl)
	}
	l := &LeaseKeepalive{}
	l.SetDefaults()
	if l.Total != 10000 || l.TTL != 100 {
		t.Errorf("lease-keepalive defaults = %+v", l)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := []struct {
		name string
		w    Workload
	}{
		{"put negative total", &Put{Total: -1}},
		{"put negative rate", &Put{Rate: -1}},
		{"put NaN rate", &Put{Rate: math.NaN()}},
		{"put negative val size", &Put{ValSize: -1}},
		{"put key space too big for key size", &Put{KeySize: 1, KeySpaceSize: 65}},
		{"put negative key space", &Put{KeySpaceSize: -5}},
		{"range no key", &Range{}},
		{"range bad consistency", &Range{Key: "k", Consistency: "x"}},
		{"range end and prefix", &Range{Key: "k", End: "z", Prefix: true}},
		{"range negative limit", &Range{Key: "k", Limit: -1}},
		{"range preload many on one key", &Range{Key: "k", Preload: 2}},
		{"txn-put ops beyond key space", &TxnPut{TxnOps: 3, KeySpaceSize: 2}},
		{"txn-put negative ops", &TxnPut{TxnOps: -1}},
		{"txn-mixed bad consistency", &TxnMixed{Consistency: "linear"}},
		{"txn-mixed negative ratio", &TxnMixed{RWRatio: -1}},
		{"txn-mixed negative limit", &TxnMixed{Limit: -3}},
		{"watch negative streams", &Watch{Streams: -1}},
		{"watch negative put total", &Watch{PutTotal: -1}},
		{"watch key space vs key size", &Watch{KeySize: 1, KeySpaceSize: 1000}},
		{"watch-latency streams beyond watchers", &WatchLatency{Watchers: 2, Streams: 3}},
		{"watch-latency value too small", &WatchLatency{ValSize: 4}},
		{"watch-latency negative rate", &WatchLatency{PutRate: -1}},
		{"lease negative ttl", &LeaseKeepalive{TTL: -1}},
		{"lease negative total", &LeaseKeepalive{Total: -1}},
		{"k8s bad mix", &K8s{Mix: "get=1,explode=2"}},
		{"k8s zero mix", &K8s{Mix: "get=0"}},
		{"k8s small value", &K8s{ValSize: 4}},
		{"k8s negative watchers", &K8s{Watchers: -1}},
		{"k8s negative objects", &K8s{Objects: -1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.w.SetDefaults()
			err := c.w.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestClientConfigRejects(t *testing.T) {
	for _, c := range []ClientConfig{
		{Endpoints: []string{" "}},
		{Conns: -1},
		{Clients: -2},
		{DialTimeout: -time.Second},
	} {
		c.SetDefaults()
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: Validate = %v, want ErrInvalid", c, err)
		}
	}
}

func TestRunRejectsBeforeDialling(t *testing.T) {
	// An invalid workload must fail without touching the (unreachable) endpoint.
	_, err := Run(context.Background(), &Put{Total: -1}, Env{Client: ClientConfig{Endpoints: []string{"127.0.0.1:1"}}})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("Run = %v, want ErrInvalid", err)
	}
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix(" get=1, update=2 ,list=0")
	if err != nil {
		t.Fatal(err)
	}
	if m["get"] != 1 || m["update"] != 2 || m["list"] != 0 || len(m) != 3 {
		t.Fatalf("mix = %v", m)
	}
	for _, bad := range []string{"", "get", "get=-1", "get=x", "get=1,get=2", "put=3"} {
		if _, err := ParseMix(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMix(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := ParseMix(DefaultK8sMix); err != nil {
		t.Fatalf("default mix: %v", err)
	}
}

func TestK8sChooser(t *testing.T) {
	w := &K8s{Mix: "get=1,update=3,delete=0"}
	w.SetDefaults()
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	choose := (&k8sState{w: w}).chooser()
	rng := rand.New(rand.NewPCG(1, 2))
	counts := map[string]int{}
	for range 40000 {
		counts[choose(rng)]++
	}
	if counts["delete"] != 0 || counts["list"] != 0 || len(counts) != 2 {
		t.Fatalf("zero-weight ops chosen: %v", counts)
	}
	// update is three times as likely as get.
	if r := float64(counts["update"]) / float64(counts["get"]); r < 2.8 || r > 3.2 {
		t.Fatalf("update/get = %.2f, want ~3 (%v)", r, counts)
	}
}

func TestKeyGen(t *testing.T) {
	g := keyGen{prefix: "/p/", size: 8}
	seen := map[string]bool{}
	for i := range int64(1000) {
		k := g.key(i)
		if len(k) != 11 || k[:3] != "/p/" {
			t.Fatalf("key(%d) = %q: want /p/ and 8 bytes", i, k)
		}
		if seen[k] {
			t.Fatalf("key(%d) repeats", i)
		}
		seen[k] = true
	}
	// One byte holds zig-zag varints of 0..63.
	if err := validateKeySpace(1, 64); err != nil {
		t.Fatalf("64 keys in 1 byte: %v", err)
	}
	if err := validateKeySpace(1, 65); !errors.Is(err, ErrInvalid) {
		t.Fatalf("65 keys in 1 byte: %v, want ErrInvalid", err)
	}
	if got := len(keyGen{size: 1}.key(63)); got != 1 {
		t.Fatalf("key(63) length %d", got)
	}
}

func TestSeqValue(t *testing.T) {
	pad := []byte("abcdefgh")
	for _, seq := range []int64{0, 1, 1 << 40} {
		v := seqValue(seq, 12, pad)
		if len(v) != 12 || v[8:] != "abcd" {
			t.Fatalf("seqValue = %q", v)
		}
		got, ok := valueSeq([]byte(v))
		if !ok || got != seq {
			t.Fatalf("valueSeq = %d, %v, want %d", got, ok, seq)
		}
	}
	if _, ok := valueSeq([]byte("short")); ok {
		t.Fatal("valueSeq accepted a short value")
	}
	if _, ok := valueSeq([]byte{0xff, 0, 0, 0, 0, 0, 0, 0}); ok {
		t.Fatal("valueSeq accepted a negative sequence")
	}
}

func TestTimeline(t *testing.T) {
	tl := newTimeline(3)
	if _, ok := tl.issued(1); ok {
		t.Fatal("not issued yet, but issued")
	}
	before := time.Now()
	tl.markIssued(1)
	at, ok := tl.issued(1)
	if !ok || at.Before(before.Add(-time.Millisecond)) || at.After(time.Now()) {
		t.Fatalf("issued = %v, %v", at, ok)
	}
	for _, seq := range []int64{-1, 3} {
		if _, ok := tl.issued(seq); ok {
			t.Fatalf("issued(%d) out of range reported ok", seq)
		}
	}
}

func TestClosedLoopRunsEverySeqOnce(t *testing.T) {
	const total = 1000
	var mu sync.Mutex
	seen := map[int64]int{}
	clients := map[int]bool{}
	elapsed, err := closedLoop(context.Background(), 7, total, nil, noBar{}, func(_ context.Context, c int, seq int64) error {
		mu.Lock()
		seen[seq]++
		clients[c] = true
		mu.Unlock()
		return nil
	})
	if err != nil || elapsed <= 0 {
		t.Fatalf("closedLoop = %v, %v", elapsed, err)
	}
	if len(seen) != total {
		t.Fatalf("%d distinct seqs, want %d", len(seen), total)
	}
	for s, n := range seen {
		if n != 1 || s < 0 || s >= total {
			t.Fatalf("seq %d ran %d times", s, n)
		}
	}
	for c := range clients {
		if c < 0 || c >= 7 {
			t.Fatalf("client index %d out of range", c)
		}
	}
}

func TestClosedLoopStopsOnError(t *testing.T) {
	boom := errors.New("boom")
	var ran atomic.Int64
	_, err := closedLoop(context.Background(), 4, 1_000_000, nil, noBar{}, func(_ context.Context, _ int, seq int64) error {
		ran.Add(1)
		if seq == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("closedLoop = %v, want boom", err)
	}
	if ran.Load() > 1000 {
		t.Fatalf("%d ops ran after the error", ran.Load())
	}
}

func TestClosedLoopHonoursCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Int64
	_, err := closedLoop(ctx, 2, 1_000_000, nil, noBar{}, func(_ context.Context, _ int, seq int64) error {
		if ran.Add(1) == 100 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("closedLoop = %v, want Canceled", err)
	}
}

func TestClosedLoopRateLimit(t *testing.T) {
	// 20 ops at 200/s with a burst of 1 take at least ~95 ms.
	st := time.Now()
	_, err := closedLoop(context.Background(), 4, 20, newLimiter(200), noBar{}, func(context.Context, int, int64) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(st); d < 90*time.Millisecond {
		t.Fatalf("20 ops at 200/s took %v", d)
	}
	if newLimiter(0) != nil {
		t.Fatal("rate 0 must mean no limiter")
	}
}

func TestUnsupported(t *testing.T) {
	if err := unsupported("Watch", nil); err != nil {
		t.Fatalf("nil error: %v", err)
	}
	if err := unsupported("Watch", status.Error(codes.Unavailable, "down")); err != nil {
		t.Fatalf("Unavailable: %v", err)
	}
	err := unsupported("LeaseKeepAlive", status.Error(codes.Unimplemented, "not here"))
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Unimplemented: %v, want ErrUnsupported", err)
	}
	wrapped := fmt.Errorf("stream: %w", status.Error(codes.Unimplemented, "x"))
	if err := unsupported("Watch", wrapped); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("wrapped Unimplemented: %v", err)
	}
}

func TestRecorder(t *testing.T) {
	r := newRecorder("put", "req", 2)
	r.observe(0, time.Millisecond, nil)
	r.observe(1, 3*time.Millisecond, nil)
	r.observe(1, time.Hour, errors.New("first"))
	r.observe(0, time.Hour, errors.New("second"))
	r.countOnly()
	o := r.result(time.Second)
	if o.Count != 3 || o.Errors != 2 || o.FirstError != "first" || o.Name != "put" || o.Unit != "req" {
		t.Fatalf("result = %+v", o)
	}
	// Failed requests never enter the latency histogram.
	if o.Latency.Max > 4*time.Millisecond {
		t.Fatalf("max latency %v includes a failed request", o.Latency.Max)
	}
}
