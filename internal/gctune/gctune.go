// Package gctune trades a bounded amount of memory for less garbage
// collection while the process is busy.
//
// concord's live Go heap is small under most loads (the data lives in
// Pebble, outside the Go heap), so with Go's default GOGC=100 a busy server
// collects many times a second and spends a tenth of its CPU in the
// collector and its write barriers. A Tuner raises GOGC while the process
// allocates quickly, as far as a memory budget allows, and returns it to the
// default when the process is idle, so an idle server keeps the small heap
// of GOGC=100 (docs/benchmarks.md has the measurements). When a busy period
// ends it also returns the heap's free memory to the operating system at
// once (debug.FreeOSMemory) instead of leaving it to the runtime's slow
// background scavenger: the memory a higher GOGC costs is only held while
// it buys something.
//
// Invariants:
//   - GOGC stays within [MinPercent, MaxPercent].
//   - Above MinPercent, the heap may outgrow the live heap by at most
//     Headroom bytes: GOGC is never set above Headroom/live*100. With a
//     large live heap the Tuner therefore keeps MinPercent and costs no
//     memory at all.
//   - Idle means allocating less than BusyRate for IdleSamples samples in a
//     row; free memory is released once per busy period, never while busy.
//   - Run restores the GOGC it found when it returns.
package gctune

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Defaults of Config.
const (
	DefaultMinPercent = 100
	DefaultMaxPercent = 400
	DefaultHeadroom   = 64 << 20
	DefaultInterval   = 500 * time.Millisecond
	// DefaultBusyRate is the allocation rate from which the process counts
	// as busy: at GOGC=100 and a small heap, about two collections a second.
	DefaultBusyRate = 8 << 20
	// DefaultIdleSamples is Config.IdleSamples's default.
	DefaultIdleSamples = 2
)

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("gctune: invalid config")

// Config configures a Tuner. Zero values mean the defaults.
type Config struct {
	// MinPercent is GOGC while idle, and the floor while busy.
	MinPercent int
	// MaxPercent caps GOGC while busy.
	MaxPercent int
	// Headroom bounds how far the heap may outgrow the live heap because
	// of a GOGC above MinPercent.
	Headroom int64
	// Interval is how often the Tuner samples the runtime.
	Interval time.Duration
	// BusyRate is the allocation rate, in bytes per second, from which the
	// process counts as busy.
	BusyRate int64
	// IdleSamples is how many samples in a row below BusyRate end a busy
	// period, so that a short pause does not cost a release.
	IdleSamples int
	// Logger receives changes of GOGC at debug level; nil means
	// slog.Default().
	Logger *slog.Logger
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.MinPercent == 0 {
		c.MinPercent = DefaultMinPercent
	}
	if c.MaxPercent == 0 {
		c.MaxPercent = DefaultMaxPercent
	}
	if c.Headroom == 0 {
		c.Headroom = DefaultHeadroom
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.BusyRate == 0 {
		c.BusyRate = DefaultBusyRate
	}
	if c.IdleSamples == 0 {
		c.IdleSamples = DefaultIdleSamples
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the config (after SetDefaults) is usable.
func (c Config) Validate() error {
	switch {
	case c.MinPercent <= 0:
		return fmt.Errorf("%w: MinPercent must be positive, got %d", ErrInvalidConfig, c.MinPercent)
	case c.MaxPercent < c.MinPercent:
		return fmt.Errorf("%w: MaxPercent %d is below MinPercent %d", ErrInvalidConfig, c.MaxPercent, c.MinPercent)
	case c.Headroom < 0:
		return fmt.Errorf("%w: Headroom must not be negative", ErrInvalidConfig)
	case c.Interval <= 0:
		return fmt.Errorf("%w: Interval must be positive", ErrInvalidConfig)
	case c.BusyRate <= 0:
		return fmt.Errorf("%w: BusyRate must be positive", ErrInvalidConfig)
	case c.IdleSamples <= 0:
		return fmt.Errorf("%w: IdleSamples must be positive", ErrInvalidConfig)
	}
	return nil
}

// gcRuntime is what the Tuner reads and sets; tests substitute a fake.
type gcRuntime interface {
	// sample returns the bytes allocated since the process started and
	// the live heap as of the last collection.
	sample() (allocated, live uint64)
	// setPercent sets GOGC and returns the previous value.
	setPercent(p int) int
	// release returns free heap memory to the operating system.
	release()
}

// Tuner adjusts GOGC; see the package documentation.
type Tuner struct {
	cfg Config
	rt  gcRuntime

	// State of the sampling loop (one goroutine: Run's).
	current       int
	lastAllocated uint64
	lastAt        time.Time
	busy          bool // in a busy period
	idleRun       int  // consecutive samples below BusyRate
}

// New returns a Tuner for this process. cfg is defaulted and validated.
func New(cfg Config) (*Tuner, error) {
	return newTuner(cfg, newRuntime())
}

func newTuner(cfg Config, rt gcRuntime) (*Tuner, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Tuner{cfg: cfg, rt: rt}, nil
}

// Run tunes GOGC every Interval until ctx is done, then restores the GOGC
// it found and returns nil.
func (t *Tuner) Run(ctx context.Context) error {
	orig := t.rt.setPercent(t.cfg.MinPercent)
	t.current = t.cfg.MinPercent
	defer t.rt.setPercent(orig)
	t.lastAllocated, _ = t.rt.sample()
	t.lastAt = time.Now()
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-tick.C:
			t.step(now)
		}
	}
}

// step samples the runtime once and sets GOGC for what it saw.
func (t *Tuner) step(now time.Time) {
	allocated, live := t.rt.sample()
	elapsed := now.Sub(t.lastAt)
	rate := int64(0)
	if elapsed > 0 && allocated >= t.lastAllocated {
		rate = int64(float64(allocated-t.lastAllocated) / elapsed.Seconds())
	}
	t.lastAllocated, t.lastAt = allocated, now
	if rate >= t.cfg.BusyRate {
		t.busy, t.idleRun = true, 0
	} else if t.busy {
		if t.idleRun++; t.idleRun >= t.cfg.IdleSamples {
			t.busy = false
			t.set(t.cfg.MinPercent, live, rate)
			// The busy period is over: give back what the higher GOGC
			// let the heap grow to.
			t.rt.release()
			t.cfg.Logger.Debug("busy period over; released free heap memory", "live-heap-bytes", live)
		}
		return // keep the busy period's GOGC through a short pause
	}
	p := Percent(t.cfg, live, t.busy)
	// Small changes are not worth making: the goal moves with the live
	// heap at every collection anyway.
	if p == t.current || (p != t.cfg.MinPercent && abs(p-t.current)*10 < t.current) {
		return
	}
	t.set(p, live, rate)
}

func (t *Tuner) set(p int, live uint64, rate int64) {
	if p == t.current {
		return
	}
	t.rt.setPercent(p)
	t.cfg.Logger.Debug("GOGC changed", "gogc", p, "previous", t.current, "live-heap-bytes", live, "alloc-bytes-per-second", rate)
	t.current = p
}

// Percent is the GOGC for a live heap of live bytes: MinPercent when idle,
// else as high as MaxPercent and Headroom allow.
func Percent(cfg Config, live uint64, busy bool) int {
	if !busy {
		return cfg.MinPercent
	}
	if live == 0 {
		return cfg.MaxPercent
	}
	p := float64(cfg.Headroom) / float64(live) * 100
	return int(max(float64(cfg.MinPercent), min(float64(cfg.MaxPercent), p)))
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// processRuntime reads runtime/metrics and sets debug.SetGCPercent.
type processRuntime struct {
	samples []metrics.Sample
}

const (
	metricAllocated = "/gc/heap/allocs:bytes"
	metricLive      = "/gc/heap/live:bytes"
)

func newRuntime() *processRuntime {
	return &processRuntime{samples: []metrics.Sample{{Name: metricAllocated}, {Name: metricLive}}}
}

func (r *processRuntime) sample() (allocated, live uint64) {
	metrics.Read(r.samples)
	for _, s := range r.samples {
		if s.Value.Kind() != metrics.KindUint64 {
			continue // not supported by this runtime: treated as 0
		}
		switch s.Name {
		case metricAllocated:
			allocated = s.Value.Uint64()
		case metricLive:
			live = s.Value.Uint64()
		}
	}
	return allocated, live
}

func (r *processRuntime) setPercent(p int) int { return debug.SetGCPercent(p) }

func (r *processRuntime) release() { debug.FreeOSMemory() }
