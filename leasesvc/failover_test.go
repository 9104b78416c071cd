package leasesvc

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/internal/clocktest"
)

// The standby wakes at the exact moment the record it watches has gone
// unrenewed for TakeoverTimeout, not at its next poll, and the dead
// holder's last possible answered keep-alive is at least RenewInterval
// before that moment.
func TestStandbyTakesOverAtTheExactMoment(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	ctx := context.Background()
	a := activeService(t, testConfig("a", clk), b) // R 1s, T 5s
	sb := newService(t, testConfig("b", clk), b)
	kept := grant(t, a, 30)

	sb.authorityStep(ctx) // observes the acquisition
	clk.Advance(300 * time.Millisecond)
	a.authorityStep(ctx) // renewal starting at t0+0.3s: a valid until t0+4.3s
	clk.Advance(700 * time.Millisecond)
	sb.authorityStep(ctx) // observes the renewal at t0+1s
	lastChange := clk.Now()
	if d := sb.nextStep(lastChange); d != time.Second {
		t.Fatalf("standby's next look = %v, want RenewInterval", d)
	}
	// a dies here. It answers keep-alives until its validity ends, and not
	// a moment after.
	clk.Advance(3300*time.Millisecond - time.Nanosecond) // t0+4.3s-1ns
	if _, err := a.KeepAlive(ctx, kept); err != nil {
		t.Fatalf("a refused a keep-alive within its validity: %v", err)
	}
	lastAnswered := clk.Now()
	clk.Advance(time.Nanosecond)
	if _, err := a.KeepAlive(ctx, kept); !errors.Is(err, ErrNotActive) {
		t.Fatalf("a answered a keep-alive after its validity: %v", err)
	}

	clk.Advance(1200 * time.Millisecond) // t0+5.5s: 4.5s unrenewed
	start := clk.Now()
	sb.authorityStep(ctx)
	if sb.Epoch() != 0 {
		t.Fatal("standby took over before TakeoverTimeout")
	}
	if d := sb.nextStep(start); d != 500*time.Millisecond {
		t.Fatalf("standby's next look = %v, want 500ms (the takeover moment, before the next poll)", d)
	}
	clk.Advance(500 * time.Millisecond)
	sb.authorityStep(ctx)
	if sb.Epoch() != 2 || !sb.Active() {
		t.Fatalf("standby did not take over at lastChange+TakeoverTimeout (epoch %d)", sb.Epoch())
	}
	if took := clk.Now(); took.Sub(lastChange) != 5*time.Second || took.Sub(lastAnswered) < time.Second {
		t.Fatalf("took over %v after the last renewal seen, %v after a's last answer", took.Sub(lastChange), took.Sub(lastAnswered))
	}
	// No early expiry: kept gets a full TTL from the takeover, which is
	// later than a's last answered keep-alive.
	st, err := sb.TimeToLive(ctx, kept, false)
	if err != nil || st.TTL != 30 {
		t.Fatalf("after the takeover: %+v, %v; want a full TTL", st, err)
	}
}

// laggingBackend serves the authority record from a member that stopped
// applying: the standby sees an old record while the holder renews.
type laggingBackend struct {
	*fakeBackend
	mu     sync.Mutex
	frozen *consensus.LeaseAuthority
}

func (l *laggingBackend) LeaseAuthority(ctx context.Context) (consensus.LeaseAuthority, error) {
	l.mu.Lock()
	f := l.frozen
	l.mu.Unlock()
	if f != nil {
		return *f, nil
	}
	return l.fakeBackend.LeaseAuthority(ctx)
}

func (l *laggingBackend) freeze(a *consensus.LeaseAuthority) {
	l.mu.Lock()
	l.frozen = a
	l.mu.Unlock()
}

// A standby that misses renewals (its member lags) tries to take over a
// live holder: the acquisition names the renewal it saw, so it fails, and
// the holder keeps the authority and keeps answering keep-alives.
func TestTakeoverMissingARenewalFails(t *testing.T) {
	clk, fb := clocktest.New(), newFakeBackend()
	b := &laggingBackend{fakeBackend: fb}
	ctx := context.Background()
	a := activeService(t, testConfig("a", clk), b)
	sb := newService(t, testConfig("b", clk), b)
	id := grant(t, a, 10)
	stale, _ := fb.LeaseAuthority(ctx)
	b.freeze(&stale)
	for range 8 { // 8s: the frozen record looks unrenewed for longer than T
		sb.authorityStep(ctx)
		a.authorityStep(ctx)
		if _, err := a.KeepAlive(ctx, id); err != nil {
			t.Fatalf("holder refused a keep-alive while renewing: %v", err)
		}
		clk.Advance(time.Second)
	}
	if sb.Epoch() != 0 || a.Epoch() != 1 || !a.Active() {
		t.Fatalf("a standby missing renewals deposed a live holder (a epoch %d, b epoch %d)", a.Epoch(), sb.Epoch())
	}
	if got, _ := fb.LeaseAuthority(ctx); got.Holder != "a" || got.Epoch != 1 {
		t.Fatalf("record = %+v", got)
	}
	// Caught up, the standby follows the renewals and stays a standby.
	b.freeze(nil)
	for range 8 {
		sb.authorityStep(ctx)
		a.authorityStep(ctx)
		clk.Advance(time.Second)
	}
	if sb.Epoch() != 0 || a.Epoch() != 1 {
		t.Fatalf("after catching up a epoch %d, b epoch %d", a.Epoch(), sb.Epoch())
	}
	if err := sb.Ready(); err != nil {
		t.Fatalf("following standby not ready: %v", err)
	}
}

// With the default timing, a takeover happens between TakeoverTimeout -
// RenewInterval and TakeoverTimeout after the holder dies (plus a poll at
// most), and no lease expires earlier than its TTL after the last answered
// keep-alive.
func TestDefaultTimingTakeoverAndNoEarlyExpiry(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	ctx := context.Background()
	cfg := func(h string) Config {
		return Config{Holder: h, Clock: clk, Logger: discardLogger()}
	}
	a := activeService(t, cfg("a"), b)
	sb := newService(t, cfg("b"), b)
	const ttl = 2
	id := grant(t, a, ttl)
	abandoned := grant(t, a, ttl)

	// Both loops run on the fake clock in steps of 10ms: a renews every
	// 250ms and keeps id alive every 100ms; the standby follows nextStep.
	const step = 10 * time.Millisecond
	var aNext, sbNext, lastAnswered time.Time
	loops := func(aAlive bool) {
		now := clk.Now()
		if aAlive && !now.Before(aNext) {
			a.authorityStep(ctx)
			aNext = now.Add(a.nextStep(now))
		}
		if !now.Before(sbNext) {
			sb.authorityStep(ctx)
			sbNext = now.Add(sb.nextStep(now))
		}
		if aAlive && now.Sub(lastAnswered) >= 100*time.Millisecond {
			if _, err := a.KeepAlive(ctx, id); err == nil {
				lastAnswered = now
			}
		}
	}
	for range 200 { // 2s of normal operation
		loops(true)
		clk.Advance(step)
	}
	if sb.Epoch() != 0 {
		t.Fatal("standby took over a renewing holder")
	}
	killed := clk.Now()
	var tookOver time.Time
	for clk.Now().Sub(killed) < 5*time.Second {
		loops(false)
		// A keep-alive of the dying holder still answered counts.
		if _, err := a.KeepAlive(ctx, id); err == nil {
			lastAnswered = clk.Now()
		}
		if tookOver.IsZero() && sb.Active() {
			tookOver = clk.Now()
		}
		if !tookOver.IsZero() && clk.Now().Sub(tookOver) >= 100*time.Millisecond {
			if _, err := sb.KeepAlive(ctx, id); err != nil {
				t.Fatalf("keep-alive through the new holder: %v", err)
			}
			lastAnswered = clk.Now()
		}
		sb.expireStep(ctx)
		if !b.exists(id) {
			t.Fatalf("kept lease expired %v after its last answered keep-alive (TTL %ds)", clk.Now().Sub(lastAnswered), ttl)
		}
		if !b.exists(abandoned) && clk.Now().Sub(tookOver) < ttl*time.Second {
			t.Fatalf("abandoned lease expired %v after the takeover, before its refreshed TTL", clk.Now().Sub(tookOver))
		}
		clk.Advance(step)
	}
	d := tookOver.Sub(killed)
	if tookOver.IsZero() || d < DefaultTakeoverTimeout-DefaultRenewInterval || d > DefaultTakeoverTimeout+2*step {
		t.Fatalf("took over %v after the holder died, want within [%v, %v]", d,
			DefaultTakeoverTimeout-DefaultRenewInterval, DefaultTakeoverTimeout)
	}
	if b.exists(abandoned) {
		t.Fatal("abandoned lease not expired by the new holder")
	}
	t.Logf("takeover %v after the holder died (fake clock)", d)
}

// /readyz's lease_authority check: a standby is ready as soon as it follows
// the record, the holder while it answers keep-alives, not while its
// renewals fail.
func TestReady(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	ctx := context.Background()
	a := activeService(t, testConfig("a", clk), b)
	if err := a.Ready(); err != nil {
		t.Fatalf("active: %v", err)
	}
	sb := newService(t, testConfig("b", clk), b)
	if err := sb.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("standby before reading the record: %v, want ErrNotReady", err)
	}
	sb.authorityStep(ctx)
	if err := sb.Ready(); err != nil || sb.Active() {
		t.Fatalf("standby following the record: %v (active %v)", err, sb.Active())
	}
	b.setRenewErr(errInjected)
	clk.Advance(4 * time.Second) // a's validity ends; the standby has not looked since
	a.authorityStep(ctx)
	if err := a.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("holder whose renewals fail: %v, want ErrNotReady", err)
	}
	clk.Advance(2 * time.Second)
	if err := sb.Ready(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("standby that stopped reading the record: %v, want ErrNotReady", err)
	}
	_ = sb.Close()
	if err := sb.Ready(); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v, want ErrClosed", err)
	}
}
