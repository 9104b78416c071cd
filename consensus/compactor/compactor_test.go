package compactor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/compactor"
	"github.com/concord-kv/concord/internal/clocktest"
	"github.com/concord-kv/concord/storage"
)

// step moves clk to the compactor's next deadline and fires it, then waits
// until the compactor handled it (it is parked on the clock again, so
// whatever it did for that tick, a compaction included, is over). It
// returns the new time.
func step(t *testing.T, clk *clocktest.Clock) time.Time {
	t.Helper()
	settle(t, clk)
	now := clk.AdvanceToNext()
	settle(t, clk)
	return now
}

// settle waits until the compactor is parked on the clock.
func settle(t *testing.T, clk *clocktest.Clock) {
	t.Helper()
	if !clk.AwaitWaiters(1, 10*time.Second) {
		t.Fatal("the compactor never waited on the clock")
	}
}

// fakeBackend is a member whose revision the test sets; it records the
// compactions asked of it and refuses compacted revisions as the store does.
type fakeBackend struct {
	mu        sync.Mutex
	rev       int64
	leader    bool
	compacted int64
	calls     []int64
	done      chan int64
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{rev: 1, leader: true, done: make(chan int64, 100)}
}

func (b *fakeBackend) Rev() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rev
}

func (b *fakeBackend) IsLeader() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.leader
}

func (b *fakeBackend) set(rev int64, leader bool) {
	b.mu.Lock()
	b.rev, b.leader = rev, leader
	b.mu.Unlock()
}

func (b *fakeBackend) Compact(_ context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	b.mu.Lock()
	defer func() { b.mu.Unlock(); b.done <- r.Revision }()
	b.calls = append(b.calls, r.Revision)
	if r.Revision <= b.compacted {
		return nil, fmt.Errorf("apply: %w", storage.ErrCompacted)
	}
	b.compacted = r.Revision
	return &pb.CompactionResponse{}, nil
}

// compacted1 returns the compaction the runner made since the last call,
// or 0 (call it after step: the runner is idle then).
func (b *fakeBackend) compacted1() int64 {
	select {
	case rev := <-b.done:
		return rev
	default:
		return 0
	}
}

func (b *fakeBackend) compactions() []int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func start(t *testing.T, cfg compactor.Config, b *fakeBackend) *clocktest.Clock {
	t.Helper()
	clk := clocktest.New()
	cfg.Clock = clk
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- compactor.Run(ctx, cfg, b) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	settle(t, clk) // started: the first revision is recorded
	return clk
}

// Periodic, 1h: revisions are recorded every 6 minutes; the first
// compaction comes an hour after start, to the revision of the start; the
// next an hour later, to the oldest revision of the window.
func TestPeriodic(t *testing.T) {
	b := newFakeBackend()
	clk := start(t, compactor.Config{Mode: compactor.ModePeriodic, Retention: time.Hour}, b)
	t0 := clk.Now()
	revAt := map[time.Duration]int64{0: 1}
	var got []string
	for i := 1; i <= 20; i++ {
		// At each tick the runner may compact, then records the current
		// revision.
		rev := int64(100 * i)
		b.set(rev, true)
		elapsed := step(t, clk).Sub(t0)
		if elapsed != time.Duration(i)*6*time.Minute {
			t.Fatalf("step %d at %v, want every 6 minutes", i, elapsed)
		}
		if c := b.compacted1(); c != 0 {
			got = append(got, fmt.Sprintf("%v:%d", elapsed, c))
		}
		revAt[elapsed] = rev
	}
	want := []string{fmt.Sprintf("1h0m0s:%d", revAt[0]), fmt.Sprintf("2h0m0s:%d", revAt[54*time.Minute])}
	if !slices.Equal(got, want) {
		t.Fatalf("compactions %v, want %v", got, want)
	}
}

// A follower records revisions but never compacts; once it leads, it
// compacts the revision of about an hour before.
func TestPeriodicOnlyOnLeader(t *testing.T) {
	b := newFakeBackend()
	b.set(1, false)
	clk := start(t, compactor.Config{Mode: compactor.ModePeriodic, Retention: time.Hour}, b)
	for i := 1; i <= 15; i++ {
		b.set(int64(100*i), false)
		step(t, clk)
	}
	if c := b.compactions(); len(c) != 0 {
		t.Fatalf("a follower compacted %v", c)
	}
	b.set(1600, true)
	step(t, clk) // 96 min: the window holds what was recorded at 30..90 min
	// Recorded at 30 min, when the revision was 500.
	if rev := b.compacted1(); rev != 500 {
		t.Fatalf("new leader compacted to %d, want 500", rev)
	}
}

// Revision mode: every 5 minutes, to the current revision minus the
// retention; never twice to the same revision, never below 1.
func TestRevision(t *testing.T) {
	b := newFakeBackend()
	b.set(50, true)
	clk := start(t, compactor.Config{Mode: compactor.ModeRevision, Revisions: 100}, b)
	step(t, clk) // 5 min: 50-100 is below 1
	b.set(350, true)
	step(t, clk) // 10 min: 350-100
	if rev := b.compacted1(); rev != 250 {
		t.Fatalf("compacted to %d, want 250", rev)
	}
	step(t, clk) // 15 min: unchanged revision, nothing to do
	b.set(400, true)
	step(t, clk) // 20 min
	if rev := b.compacted1(); rev != 300 {
		t.Fatalf("compacted to %d, want 300", rev)
	}
	if c := b.compactions(); !slices.Equal(c, []int64{250, 300}) {
		t.Fatalf("compactions %v, want [250 300]", c)
	}
}

// A revision already compacted (by a client, or a previous leader) counts as
// done: it is not retried.
func TestAlreadyCompactedCountsAsDone(t *testing.T) {
	b := newFakeBackend()
	b.compacted = 1000
	b.set(1200, true)
	clk := start(t, compactor.Config{Mode: compactor.ModeRevision, Revisions: 300}, b)
	step(t, clk)
	if rev := b.compacted1(); rev != 900 {
		t.Fatalf("compacted to %d, want 900", rev)
	}
	step(t, clk)
	if c := b.compactions(); !slices.Equal(c, []int64{900}) {
		t.Fatalf("compactions %v, want one attempt at 900", c)
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg     compactor.Config
		enabled bool
		valid   bool
	}{
		{compactor.Config{Mode: compactor.ModePeriodic}, false, true},
		{compactor.Config{Mode: compactor.ModePeriodic, Retention: time.Hour}, true, true},
		{compactor.Config{Mode: compactor.ModeRevision, Revisions: 10}, true, true},
		{compactor.Config{Mode: compactor.ModeRevision, Revisions: -1}, false, false},
		{compactor.Config{Mode: "hourly", Retention: time.Hour}, false, false},
	} {
		if got := tc.cfg.Enabled(); got != tc.enabled {
			t.Errorf("%+v: Enabled = %v", tc.cfg, got)
		}
		if err := tc.cfg.Validate(); (err == nil) != tc.valid || (err != nil && !errors.Is(err, compactor.ErrInvalidConfig)) {
			t.Errorf("%+v: Validate = %v", tc.cfg, err)
		}
	}
	// A disabled compactor returns at once.
	if err := compactor.Run(context.Background(), compactor.Config{Mode: compactor.ModePeriodic}, newFakeBackend()); err != nil {
		t.Fatal(err)
	}
}
