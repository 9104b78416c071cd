package gctune

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercent(t *testing.T) {
	cfg := Config{}
	cfg.SetDefaults() // 100..400, 64 MiB headroom
	for _, tc := range []struct {
		name string
		live uint64
		busy bool
		want int
	}{
		{"idle keeps the default", 1 << 20, false, 100},
		{"idle with a big heap", 1 << 30, false, 100},
		{"busy, small heap: the cap", 4 << 20, true, 400},
		{"busy, no heap reading yet", 0, true, 400},
		{"busy, headroom binds", 32 << 20, true, 200},
		{"busy, heap as large as the headroom", 64 << 20, true, 100},
		{"busy, heap larger than the headroom: the floor", 256 << 20, true, 100},
	} {
		if got := Percent(cfg, tc.live, tc.busy); got != tc.want {
			t.Errorf("%s: Percent(live=%d, busy=%v) = %d, want %d", tc.name, tc.live, tc.busy, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, cfg := range []Config{
		{MinPercent: -1},
		{MinPercent: 200, MaxPercent: 100},
		{Headroom: -1},
		{Interval: -time.Second},
		{BusyRate: -1},
		{IdleSamples: -1},
	} {
		if _, err := newTuner(cfg, &fakeRuntime{}); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

type fakeRuntime struct {
	mu        sync.Mutex
	allocated uint64
	live      uint64
	percent   int
	sets      []int
	releases  int
}

func (f *fakeRuntime) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.releases++
}

func (f *fakeRuntime) sample() (uint64, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allocated, f.live
}

func (f *fakeRuntime) setPercent(p int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.percent
	f.percent = p
	f.sets = append(f.sets, p)
	return prev
}

func (f *fakeRuntime) get() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.percent
}

// step drives the tuner through idle, busy and idle phases with a fake
// clock and runtime.
func TestStep(t *testing.T) {
	rt := &fakeRuntime{percent: 100}
	tu, err := newTuner(Config{Headroom: 64 << 20, BusyRate: 8 << 20}, rt)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1000, 0)
	tu.current, tu.lastAt = 100, start
	now := start
	advance := func(allocated, live uint64) int {
		now = now.Add(time.Second)
		rt.allocated += allocated
		rt.live = live
		tu.step(now)
		return rt.get()
	}
	if p := advance(1<<20, 4<<20); p != 100 {
		t.Fatalf("idle (1 MiB/s): GOGC %d, want 100", p)
	}
	if p := advance(100<<20, 4<<20); p != 400 {
		t.Fatalf("busy, live 4 MiB: GOGC %d, want 400", p)
	}
	if p := advance(100<<20, 33<<20); p != 193 {
		t.Fatalf("busy, live 33 MiB: GOGC %d, want 193 (64 MiB headroom)", p)
	}
	n := len(rt.sets)
	if p := advance(100<<20, 34<<20); p != 193 || len(rt.sets) != n {
		t.Fatalf("a change under 10%% must be skipped: GOGC %d after %d sets (had %d)", p, len(rt.sets), n)
	}
	if p := advance(0, 34<<20); p != 193 || rt.releases != 0 {
		t.Fatalf("one idle sample: GOGC %d, %d releases; want the busy GOGC kept, no release", p, rt.releases)
	}
	if p := advance(0, 34<<20); p != 100 || rt.releases != 1 {
		t.Fatalf("idle again: GOGC %d, %d releases; want 100 and one release", p, rt.releases)
	}
	if p := advance(0, 34<<20); p != 100 || rt.releases != 1 {
		t.Fatalf("still idle: GOGC %d, %d releases; want 100 and no new release", p, rt.releases)
	}
}

// Run restores the GOGC it found when its context ends.
func TestRunRestores(t *testing.T) {
	rt := &fakeRuntime{percent: 250}
	tu, err := newTuner(Config{Interval: time.Millisecond}, rt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tu.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rt.mu.Lock()
		n := len(rt.sets)
		rt.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never set GOGC")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := rt.get(); p != 250 {
		t.Fatalf("GOGC after Run = %d, want the original 250", p)
	}
}

// The process runtime reports allocation and a live heap, and Run on it
// leaves GOGC as it was.
func TestProcessRuntime(t *testing.T) {
	rt := newRuntime()
	runtime.GC() // the live heap is measured by collections
	a0, _ := rt.sample()
	sink = make([]byte, 1<<20)
	a1, live := rt.sample()
	if a1 < a0+1<<20 {
		t.Fatalf("allocated %d -> %d after a 1 MiB allocation", a0, a1)
	}
	if live == 0 {
		t.Fatal("live heap reads 0")
	}
	orig := debug.SetGCPercent(123)
	defer debug.SetGCPercent(orig)
	tu, err := New(Config{Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := tu.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if p := debug.SetGCPercent(orig); p != 123 {
		t.Fatalf("GOGC after Run = %d, want 123", p)
	}
}

var sink []byte
