package consensus

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
)

// result is what applying one command produced.
type result struct {
	resp proto.Message
	err  error
	// failed marks a proposal that was never applied (raft refused it, or
	// the leader that had it failed), which etcd counts in
	// etcd_server_proposals_failed_total; an apply error is not a failure.
	failed bool
}

// waitRegistry maps request IDs to the callers waiting for their apply
// result. Callers register before proposing; the raft loop triggers after the
// batch holding the result committed.
type waitRegistry struct {
	mu sync.Mutex
	m  map[uint64]chan result
}

func newWaitRegistry() *waitRegistry { return &waitRegistry{m: map[uint64]chan result{}} }

func (w *waitRegistry) register(id uint64) <-chan result {
	ch := make(chan result, 1)
	w.mu.Lock()
	w.m[id] = ch
	w.mu.Unlock()
	return ch
}

// trigger delivers r to the waiter of id, if any; it never blocks.
func (w *waitRegistry) trigger(id uint64, r result) {
	w.mu.Lock()
	ch, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	if ok {
		ch <- r
	}
}

// cancel forgets a waiter that gave up.
func (w *waitRegistry) cancel(id uint64) {
	w.mu.Lock()
	delete(w.m, id)
	w.mu.Unlock()
}

func (w *waitRegistry) has(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.m[id]
	return ok
}

// ids returns the IDs waited for now.
func (w *waitRegistry) ids() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]uint64, 0, len(w.m))
	for id := range w.m {
		out = append(out, id)
	}
	return out
}

// failAll delivers err to every waiter.
func (w *waitRegistry) failAll(err error) {
	w.mu.Lock()
	m := w.m
	w.m = map[uint64]chan result{}
	w.mu.Unlock()
	for _, ch := range m {
		ch <- result{err: err}
	}
}

// idGenerator produces request IDs unique across members and restarts, the
// way etcd's idutil does: the low 16 bits of the member ID, then a 40-bit
// millisecond timestamp taken at start, then an 8-bit counter that carries
// into the timestamp.
type idGenerator struct {
	prefix uint64
	suffix atomic.Uint64
}

const (
	idTimeBits  = 40
	idCountBits = 8
	idSuffixLen = idTimeBits + idCountBits
)

func newIDGenerator(memberID uint64, now time.Time) *idGenerator {
	g := &idGenerator{prefix: memberID << idSuffixLen}
	ms := uint64(now.UnixMilli()) & (1<<idTimeBits - 1)
	g.suffix.Store(ms << idCountBits)
	return g
}

func (g *idGenerator) next() uint64 {
	s := g.suffix.Add(1)
	return g.prefix | (s & (1<<idSuffixLen - 1))
}
