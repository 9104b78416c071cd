// Package clocktest is a manually advanced clock for the tests of
// components that take a clock with Now and After (the lease service, the
// compactor): time moves only when a test says so, so timing tests are
// deterministic on a loaded machine.
package clocktest

import (
	"sync"
	"time"
)

// Clock is a manual clock. The zero value is not usable; call New.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	// parked is signalled (without blocking) on every After, so a test can
	// wait for the code under test to park on the clock.
	parked chan struct{}
}

type waiter struct {
	at time.Time
	c  chan time.Time
}

// New returns a clock at a fixed, arbitrary time.
func New() *Clock {
	return &Clock{now: time.Unix(1_000_000, 0), parked: make(chan struct{}, 1)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After sends the clock's time on the returned channel once Advance has
// moved the clock d past now (at once if d <= 0).
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), c: ch})
	select {
	case c.parked <- struct{}{}:
	default:
	}
	return ch
}

// Advance moves the clock by d and fires every timer that became due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advanceLocked(c.now.Add(d))
}

// AdvanceToNext moves the clock to the earliest pending timer's deadline
// and fires what is due then; it returns the new time (unchanged if no
// timer is pending).
func (c *Clock) AdvanceToNext() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		return c.now
	}
	next := c.waiters[0].at
	for _, w := range c.waiters[1:] {
		if w.at.Before(next) {
			next = w.at
		}
	}
	c.advanceLocked(next)
	return c.now
}

func (c *Clock) advanceLocked(to time.Time) {
	if to.After(c.now) {
		c.now = to
	}
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.c <- c.now
	}
	c.waiters = kept
}

// Waiters is how many timers are pending (a loop parked on After).
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// AwaitWaiters blocks until at least n timers are pending or timeout
// passes (in real time); it reports whether they are.
func (c *Clock) AwaitWaiters(n int, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for c.Waiters() < n {
		select {
		case <-c.parked:
		case <-deadline.C:
			return c.Waiters() >= n
		}
	}
	return true
}
