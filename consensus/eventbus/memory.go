package eventbus

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// DefaultMemoryQueueLimit is the default number of undelivered messages a
// Memory subscriber may hold before new messages to it are dropped.
const DefaultMemoryQueueLimit = 1 << 20

// MemoryOption configures a Memory bus.
type MemoryOption func(*Memory)

// WithQueueLimit sets how many undelivered messages each subscriber may hold
// (n <= 0 keeps the default). Beyond it, new messages to that subscriber are
// dropped and counted (Stats.SlowConsumer/Dropped), like a NATS slow consumer.
func WithQueueLimit(n int) MemoryOption {
	return func(m *Memory) {
		if n > 0 {
			m.queueLimit = n
		}
	}
}

// Memory is an in-process Bus for unit tests and the conformance suite.
//
// Every subscriber has its own goroutine and its own queue, so a slow
// handler never blocks Publish nor other subscribers. The queue is large but
// bounded (DefaultMemoryQueueLimit): an unbounded queue would let one stuck
// handler grow memory without limit, and dropping is allowed by the bus
// contract (consumers repair gaps from history). Each subscriber receives its
// own deep copy of the events, as it would from a network transport, so the
// publisher may reuse its buffers and subscribers cannot affect each other.
type Memory struct {
	queueLimit int

	mu     sync.Mutex // serializes Publish so every subscriber sees one order; guards subs, closed
	subs   map[*memSub]struct{}
	closed bool

	publishedRevs, publishedProgress atomic.Uint64
	delivered, slow, dropped         atomic.Uint64
}

var _ Bus = (*Memory)(nil)

// NewMemory returns an empty in-memory bus.
func NewMemory(opts ...MemoryOption) *Memory {
	m := &Memory{queueLimit: DefaultMemoryQueueLimit, subs: make(map[*memSub]struct{})}
	for _, o := range opts {
		o(m)
	}
	return m
}

type memSub struct {
	bus    *Memory
	handle func(Message)

	mu       sync.Mutex
	queue    []Message
	overflow bool // currently dropping; counts one slow-consumer event per episode

	wake chan struct{} // capacity 1: "the queue may be non-empty"
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Publish implements Publisher.
func (m *Memory) Publish(ctx context.Context, revs []Revision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validateRevisions(revs); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for _, r := range revs {
		for s := range m.subs {
			s.enqueue(Message{Rev: r.Rev, Events: cloneEvents(r.Events)})
		}
	}
	m.publishedRevs.Add(uint64(len(revs)))
	return nil
}

// PublishProgress implements Publisher.
func (m *Memory) PublishProgress(ctx context.Context, rev int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validateProgress(rev); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for s := range m.subs {
		s.enqueue(Message{Rev: rev, Progress: true})
	}
	m.publishedProgress.Add(1)
	return nil
}

// Subscribe implements Subscriber.
func (m *Memory) Subscribe(ctx context.Context, handle func(Message)) (func(), error) {
	if handle == nil {
		return nil, fmt.Errorf("eventbus: nil handler")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &memSub{
		bus:    m,
		handle: handle,
		wake:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	m.subs[s] = struct{}{}
	m.mu.Unlock()
	go s.run()
	return s.unsubscribe, nil
}

// Close implements Bus: it stops every subscription and waits for handlers.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.closed = true
	subs := m.subs
	m.subs = make(map[*memSub]struct{})
	m.mu.Unlock()
	for s := range subs {
		s.unsubscribe()
	}
	return nil
}

// Stats returns cumulative counters.
func (m *Memory) Stats() Stats {
	return Stats{
		PublishedRevisions: m.publishedRevs.Load(),
		PublishedProgress:  m.publishedProgress.Load(),
		PublishedChunks:    m.publishedRevs.Load() + m.publishedProgress.Load(),
		Delivered:          m.delivered.Load(),
		SlowConsumer:       m.slow.Load(),
		Dropped:            m.dropped.Load(),
	}
}

func (s *memSub) enqueue(msg Message) {
	s.mu.Lock()
	if len(s.queue) >= s.bus.queueLimit {
		if !s.overflow {
			s.overflow = true
			s.bus.slow.Add(1)
		}
		s.bus.dropped.Add(1)
		s.mu.Unlock()
		return
	}
	s.overflow = false
	s.queue = append(s.queue, msg)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

func (s *memSub) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		}
		for {
			s.mu.Lock()
			batch := s.queue
			s.queue = nil
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i := range batch {
				select {
				case <-s.stop:
					return
				default:
				}
				s.handle(batch[i])
				s.bus.delivered.Add(1)
				batch[i] = Message{} // release events early
			}
		}
	}
}

func (s *memSub) unsubscribe() {
	s.once.Do(func() {
		s.bus.mu.Lock()
		delete(s.bus.subs, s)
		s.bus.mu.Unlock()
		close(s.stop)
		<-s.done
		s.mu.Lock()
		s.queue = nil
		s.mu.Unlock()
	})
}

func cloneEvents(evs []*mvccpb.Event) []*mvccpb.Event {
	out := make([]*mvccpb.Event, len(evs))
	for i, ev := range evs {
		out[i] = proto.Clone(ev).(*mvccpb.Event)
	}
	return out
}
