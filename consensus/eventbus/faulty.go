package eventbus

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// FaultyMaxDelay is the most messages a delayed message is held back for.
const FaultyMaxDelay = 4

// Faulty wraps a Bus for tests (never production): on the subscriber side it
// drops, duplicates and delays messages, so consumers can be tested against
// the bus's real non-guarantees (DESIGN.md invariant 3) deterministically.
//
// Each subscription draws from its own PRNG seeded with (seed, subscription
// number), so for the same sequence of published messages the faults are the
// same in every run. For each message received from the inner bus:
//   - with probability dropP it is dropped;
//   - else with probability delayP it is held back and delivered right after
//     the next k messages (k uniform in 1..FaultyMaxDelay), i.e. out of order;
//     a held message is lost if no further message arrives;
//   - else it is delivered, and with probability dupP delivered a second time.
//
// Publishing is passed through unchanged. Handlers still run on one goroutine
// per subscription (the inner bus's).
type Faulty struct {
	inner               Bus
	seed                int64
	dropP, dupP, delayP float64
	nsubs               atomic.Uint64

	dropped, duplicated, delayed atomic.Uint64
}

// FaultyStats counts injected faults.
type FaultyStats struct{ Dropped, Duplicated, Delayed uint64 }

// NewFaulty wraps inner (see Faulty). Probabilities are clamped to [0, 1].
// Close closes inner.
func NewFaulty(inner Bus, seed int64, dropP, dupP, delayP float64) Bus {
	return &Faulty{inner: inner, seed: seed, dropP: clamp01(dropP), dupP: clamp01(dupP), delayP: clamp01(delayP)}
}

func clamp01(p float64) float64 { return min(max(p, 0), 1) }

// Publish implements Publisher.
func (f *Faulty) Publish(ctx context.Context, revs []Revision) error {
	return f.inner.Publish(ctx, revs)
}

// PublishProgress implements Publisher.
func (f *Faulty) PublishProgress(ctx context.Context, rev int64) error {
	return f.inner.PublishProgress(ctx, rev)
}

// Close implements Bus.
func (f *Faulty) Close() error { return f.inner.Close() }

// Stats returns the faults injected so far, over all subscriptions.
func (f *Faulty) Stats() FaultyStats {
	return FaultyStats{Dropped: f.dropped.Load(), Duplicated: f.duplicated.Load(), Delayed: f.delayed.Load()}
}

type heldMsg struct {
	msg   Message
	after int // deliver after this many more messages
}

// Subscribe implements Subscriber.
func (f *Faulty) Subscribe(ctx context.Context, handle func(Message)) (func(), error) {
	idx := f.nsubs.Add(1) - 1
	rng := rand.New(rand.NewPCG(uint64(f.seed), idx))
	var (
		mu   sync.Mutex // the inner bus calls from one goroutine; the lock only documents that state is not shared
		held []heldMsg
	)
	wrapped := func(m Message) {
		mu.Lock()
		defer mu.Unlock()
		// Draw the same number of values for every message, so that one
		// decision does not shift the randomness of the following ones.
		uDrop, uDelay, uDup := rng.Float64(), rng.Float64(), rng.Float64()
		k := 1 + rng.IntN(FaultyMaxDelay)

		switch {
		case uDrop < f.dropP:
			f.dropped.Add(1)
		case uDelay < f.delayP:
			// Added after the countdown below, so it waits for k later messages.
			defer func() { held = append(held, heldMsg{msg: m, after: k}) }()
			f.delayed.Add(1)
		default:
			handle(m)
			if uDup < f.dupP {
				f.duplicated.Add(1)
				handle(m)
			}
		}
		kept := held[:0]
		var release []Message
		for _, h := range held {
			h.after--
			if h.after <= 0 {
				release = append(release, h.msg)
			} else {
				kept = append(kept, h)
			}
		}
		held = kept
		for _, r := range release {
			handle(r)
		}
	}
	return f.inner.Subscribe(ctx, wrapped)
}
