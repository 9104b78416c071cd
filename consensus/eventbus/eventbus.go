// Package eventbus carries committed MVCC events out of consensus to the
// services that serve watches (watchfanout), as a fast path.
//
// Invariants and non-guarantees (DESIGN.md invariant 3):
//
//   - The bus is never the source of truth. Any implementation may lose,
//     duplicate or reorder messages (a slow subscriber, a reconnect, a leader
//     change, two publishers for a moment). Consumers detect gaps from the
//     contiguity of revisions and from progress beats, and repair them from
//     consensus history (storage.Store.RangeEvents). Nothing here retries.
//   - What is delivered is never partial: all events of one revision travel
//     together as one Message. A revision that had to be split on the wire is
//     reassembled before delivery, and an incomplete one is dropped whole.
//   - There is no replay: a subscriber receives only what is published after
//     Subscribe returned.
//   - Handlers run on one goroutine per subscription, in the order received;
//     unsubscribe waits until the handler has returned for the last time.
//   - With TLS configured (NATSConfig.TLS, WithTLS) nothing crosses the
//     network in cleartext: the server refuses clients and routes that do not
//     handshake, and a configured client refuses a server that offers no TLS.
//
// Implementations: Memory (in-process, for unit tests), NATS (an embedded
// nats-server or a client of one; the production transport), and Faulty (a
// test wrapper that injects loss, duplication and reordering).
package eventbus

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Subject is the NATS subject every revision and progress beat is published on.
const Subject = "concord.events"

var (
	// ErrClosed is returned by every operation on a closed bus.
	ErrClosed = errors.New("eventbus: closed")
	// ErrInvalidRevision is returned by Publish/PublishProgress for input
	// that breaks the contract (non-positive or non-contiguous revisions, a
	// revision without events, an event whose ModRevision differs).
	ErrInvalidRevision = errors.New("eventbus: invalid revision")
	// ErrMalformed marks a wire payload that is not a valid bus message.
	ErrMalformed = errors.New("eventbus: malformed message")
	// ErrTooLarge marks a revision that cannot be carried by the transport
	// (a single event larger than the max payload, or a revision larger than
	// MaxRevisionBytes). Such a revision is replaced by a progress beat.
	ErrTooLarge = errors.New("eventbus: revision too large for the transport")
)

// Revision is every event of one main revision; events of one revision always
// travel together. Events[i].Kv.ModRevision == Rev; PrevKv is set when the key
// existed.
type Revision struct {
	Rev    int64
	Events []*mvccpb.Event
}

// Message is what subscribers receive: either one whole revision, or a
// progress beat (Progress == true, Events empty) saying "the store's current
// revision is Rev".
//
// Messages are read-only for handlers: an implementation may hand the same
// Message to a handler twice (Faulty duplicates) and the events must not be
// modified.
type Message struct {
	Rev      int64
	Events   []*mvccpb.Event
	Progress bool
}

// Publisher sends committed revisions and progress beats.
type Publisher interface {
	// Publish sends revisions that are in order and contiguous. The caller
	// may reuse or modify the events once Publish returns.
	Publish(ctx context.Context, revs []Revision) error
	// PublishProgress sends a progress beat: the store's current revision.
	PublishProgress(ctx context.Context, rev int64) error
}

// Subscriber delivers messages to a handler.
type Subscriber interface {
	// Subscribe calls handle for each message, from one goroutine, in the
	// order received; the returned func unsubscribes (idempotent) and waits
	// until handle is no longer running.
	//
	// ctx bounds only the setup (registering interest with the transport);
	// the subscription lasts until unsubscribe or Close. unsubscribe must
	// not be called from inside handle (it would wait for itself).
	Subscribe(ctx context.Context, handle func(Message)) (unsubscribe func(), err error)
}

// Bus is a Publisher and a Subscriber that owns its resources.
type Bus interface {
	Publisher
	Subscriber
	// Close stops every subscription (waiting for handlers), releases the
	// transport and is idempotent.
	Close() error
}

// Stats are cumulative counters of a bus; they exist so that loss on the
// fast path is visible (metrics, tests) even though it is tolerated.
type Stats struct {
	PublishedRevisions uint64 // revisions handed to the transport
	PublishedProgress  uint64 // progress beats handed to the transport (including those replacing too-large revisions)
	PublishedChunks    uint64 // wire messages (NATS: > PublishedRevisions when revisions were fragmented)
	TooLarge           uint64 // revisions replaced by a progress beat (ErrTooLarge)
	Delivered          uint64 // messages passed to handlers, summed over subscriptions
	Malformed          uint64 // payloads that failed to decode, skipped
	Incomplete         uint64 // fragment sequences (or stray fragments) dropped because a piece was missing
	SlowConsumer       uint64 // slow-consumer events: a subscriber's queue overflowed
	Dropped            uint64 // messages dropped because a subscriber's queue overflowed (NATS: as counted by nats.go)
}

// validateRevisions checks the Publish contract before anything is sent, so
// a bad batch is rejected whole.
func validateRevisions(revs []Revision) error {
	for i, r := range revs {
		if r.Rev <= 0 {
			return fmt.Errorf("%w: revision %d is not positive", ErrInvalidRevision, r.Rev)
		}
		if i > 0 && r.Rev != revs[i-1].Rev+1 {
			return fmt.Errorf("%w: revision %d follows %d (not contiguous)", ErrInvalidRevision, r.Rev, revs[i-1].Rev)
		}
		if len(r.Events) == 0 {
			return fmt.Errorf("%w: revision %d has no events", ErrInvalidRevision, r.Rev)
		}
		for j, ev := range r.Events {
			if err := validateEvent(ev, r.Rev); err != nil {
				return fmt.Errorf("%w: revision %d event %d: %w", ErrInvalidRevision, r.Rev, j, err)
			}
		}
	}
	return nil
}

var errBadEvent = errors.New("bad event")

// validateEvent is shared by the publisher and the wire decoder so that both
// ends agree on what a well-formed event is.
func validateEvent(ev *mvccpb.Event, rev int64) error {
	switch {
	case ev == nil:
		return fmt.Errorf("%w: nil", errBadEvent)
	case ev.Kv == nil:
		return fmt.Errorf("%w: nil kv", errBadEvent)
	case ev.Kv.ModRevision != rev:
		return fmt.Errorf("%w: mod_revision %d != %d", errBadEvent, ev.Kv.ModRevision, rev)
	case ev.Type != mvccpb.Event_PUT && ev.Type != mvccpb.Event_DELETE:
		return fmt.Errorf("%w: type %d", errBadEvent, ev.Type)
	}
	return nil
}

func validateProgress(rev int64) error {
	if rev < 0 {
		return fmt.Errorf("%w: progress revision %d is negative", ErrInvalidRevision, rev)
	}
	return nil
}
