package eventbus

import (
	"fmt"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Wire format (NATS payloads on Subject): one protobuf-encoded
// etcdserverpb.WatchResponse per message.
//
//   - A revision: Header.Revision = rev, Events = the revision's events (or a
//     contiguous slice of them), WatchId = the chunk index (0, 1, 2, ...),
//     Fragment = true on every chunk but the last. A revision that fits in
//     the max payload is a single chunk with WatchId 0 and Fragment false.
//   - A progress beat: Header.Revision = rev, WatchId = -1, no events.
//
// The chunk index in WatchId lets the subscriber detect a lost, duplicated
// or foreign chunk even when the loss is the first chunk; without it the
// tail of a revision would look like a complete, shorter revision.

const (
	progressWatchID = -1
	// chunkOverhead bounds the bytes a chunk needs besides its events:
	// header (tag, length, revision varint), watch_id and fragment fields.
	chunkOverhead = 32
	// maxChunks bounds the chunk index accepted by the decoder.
	maxChunks = math.MaxInt32
)

var marshalOpts = proto.MarshalOptions{Deterministic: true}

func progressResponse(rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: progressWatchID}
}

// splitRevision encodes r into one or more payloads of at most maxPayload
// bytes each. It fails with ErrTooLarge when one event alone does not fit.
func splitRevision(r Revision, maxPayload int) ([][]byte, error) {
	whole := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: r.Rev}, Events: r.Events}
	if size := marshalOpts.Size(whole); size <= maxPayload {
		b, err := marshalOpts.Marshal(whole)
		if err != nil {
			return nil, fmt.Errorf("eventbus: encode revision %d: %w", r.Rev, err)
		}
		return [][]byte{b}, nil
	}
	budget := maxPayload - chunkOverhead
	var (
		out   [][]byte
		start int
		used  int
	)
	flush := func(end int, last bool) error {
		chunk := &pb.WatchResponse{
			Header:   &pb.ResponseHeader{Revision: r.Rev},
			WatchId:  int64(len(out)),
			Fragment: !last,
			Events:   r.Events[start:end],
		}
		b, err := marshalOpts.Marshal(chunk)
		if err != nil {
			return fmt.Errorf("eventbus: encode revision %d chunk %d: %w", r.Rev, len(out), err)
		}
		if len(b) > maxPayload { // cannot happen if chunkOverhead is right; never send an oversized chunk
			return fmt.Errorf("%w: revision %d chunk of %d bytes > %d", ErrTooLarge, r.Rev, len(b), maxPayload)
		}
		out = append(out, b)
		start, used = end, 0
		return nil
	}
	for i, ev := range r.Events {
		s := marshalOpts.Size(ev)
		cost := protowire.SizeTag(4) + protowire.SizeBytes(s)
		if cost > budget {
			return nil, fmt.Errorf("%w: revision %d has an event of %d bytes, max payload %d", ErrTooLarge, r.Rev, s, maxPayload)
		}
		if used+cost > budget {
			if err := flush(i, false); err != nil {
				return nil, err
			}
		}
		used += cost
	}
	if err := flush(len(r.Events), true); err != nil {
		return nil, err
	}
	return out, nil
}

// decode parses and validates one payload. It never panics on any input.
func decode(data []byte) (*pb.WatchResponse, error) {
	w := &pb.WatchResponse{}
	if err := proto.Unmarshal(data, w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if w.Header == nil {
		return nil, fmt.Errorf("%w: no header", ErrMalformed)
	}
	rev := w.Header.Revision
	if w.WatchId == progressWatchID {
		if rev < 0 || len(w.Events) != 0 || w.Fragment {
			return nil, fmt.Errorf("%w: bad progress beat (rev %d, %d events, fragment %v)", ErrMalformed, rev, len(w.Events), w.Fragment)
		}
		return w, nil
	}
	if rev <= 0 {
		return nil, fmt.Errorf("%w: revision %d", ErrMalformed, rev)
	}
	if w.WatchId < 0 || w.WatchId > maxChunks {
		return nil, fmt.Errorf("%w: chunk index %d", ErrMalformed, w.WatchId)
	}
	if len(w.Events) == 0 {
		return nil, fmt.Errorf("%w: revision %d without events", ErrMalformed, rev)
	}
	for i, ev := range w.Events {
		if err := validateEvent(ev, rev); err != nil {
			return nil, fmt.Errorf("%w: event %d: %w", ErrMalformed, i, err)
		}
	}
	return w, nil
}

// assembler turns decoded chunks of one subscription back into Messages.
// It is used by one goroutine. A sequence that is not continued exactly
// (same revision, next chunk index) is dropped whole: delivering part of a
// revision would break the bus's atomicity promise, and the consumer repairs
// the missing revision from history.
type assembler struct {
	maxBytes int64 // a sequence growing beyond this is dropped; <= 0 = no limit

	active bool
	rev    int64
	next   int64
	bytes  int64
	events []*mvccpb.Event
}

// push consumes one chunk. It returns the message to deliver, if any, and
// how many sequences or stray chunks it dropped.
func (a *assembler) push(w *pb.WatchResponse, size int) (msg Message, ok bool, dropped int) {
	rev := w.Header.Revision
	if w.WatchId == progressWatchID {
		if a.active {
			a.reset()
			dropped++
		}
		return Message{Rev: rev, Progress: true}, true, dropped
	}
	if a.active && (rev != a.rev || w.WatchId != a.next) {
		a.reset()
		dropped++
	}
	if !a.active {
		if w.WatchId != 0 { // the beginning of this sequence was lost
			return Message{}, false, dropped + 1
		}
		if !w.Fragment {
			return Message{Rev: rev, Events: w.Events}, true, dropped
		}
		a.active, a.rev = true, rev
	}
	a.events = append(a.events, w.Events...)
	a.bytes += int64(size)
	a.next = w.WatchId + 1
	if a.maxBytes > 0 && a.bytes > a.maxBytes {
		a.reset()
		return Message{}, false, dropped + 1
	}
	if w.Fragment {
		return Message{}, false, dropped
	}
	msg = Message{Rev: rev, Events: a.events}
	a.events = nil // handed to the handler; do not reuse
	a.reset()
	return msg, true, dropped
}

func (a *assembler) reset() {
	a.active, a.rev, a.next, a.bytes, a.events = false, 0, 0, 0, nil
}
