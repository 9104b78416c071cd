// Package watchtest provides test helpers for anything that serves etcd's
// Watch RPC: a checker of etcd's watch guarantees against a complete MVCC
// history, an in-memory MVCC model that implements watchfanout.History, and
// an in-memory watch stream. Unit tests use all three; end-to-end tests use
// the checker on responses received from real processes.
//
// The guarantees checked (etcd's documented watch guarantees):
//
//   - ordered: events are ordered by revision; within a revision, in store order;
//   - unique: no event is delivered twice;
//   - reliable: no event between the start revision and the last revision
//     the watch is known to have reached is missing;
//   - atomic: every event of a revision is in one response, unless the
//     client asked for fragments (fragments are reassembled first);
//   - resumable: a watch started at any revision r >= compaction delivers
//     exactly the history from r (so a new watch from last+1 continues exactly);
//   - bookmarkable: a progress notification's revision never goes backwards and
//     never exceeds what was delivered;
//   - prev_kv and filters (NOPUT, NODELETE) as requested.
package watchtest

import (
	"bytes"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus/eventbus"
)

// ErrViolation is wrapped by every guarantee violation the checker reports.
var ErrViolation = errors.New("watch guarantee violated")

// Watch is a watch as the client requested it.
type Watch struct {
	Key, RangeEnd []byte
	StartRevision int64
	NoPut         bool
	NoDelete      bool
	PrevKV        bool
	Fragment      bool
	// ProgressNotify is passed on by Request; the checker accepts progress
	// notifications whether or not it was requested.
	ProgressNotify bool
}

// WatchFromRequest returns the Watch a create request asks for.
func WatchFromRequest(r *pb.WatchCreateRequest) Watch {
	w := Watch{Key: r.Key, RangeEnd: r.RangeEnd, StartRevision: r.StartRevision, PrevKV: r.PrevKv, Fragment: r.Fragment, ProgressNotify: r.ProgressNotify}
	for _, f := range r.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.NoPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.NoDelete = true
		}
	}
	return w
}

// Request returns the create request for w.
func (w Watch) Request() *pb.WatchCreateRequest {
	r := &pb.WatchCreateRequest{Key: w.Key, RangeEnd: w.RangeEnd, StartRevision: w.StartRevision, PrevKv: w.PrevKV, Fragment: w.Fragment, ProgressNotify: w.ProgressNotify}
	if w.NoPut {
		r.Filters = append(r.Filters, pb.WatchCreateRequest_NOPUT)
	}
	if w.NoDelete {
		r.Filters = append(r.Filters, pb.WatchCreateRequest_NODELETE)
	}
	return r
}

func (w Watch) matches(ev *mvccpb.Event) bool {
	key := w.Key
	if len(key) == 0 {
		key = []byte{0}
	}
	k := ev.Kv.Key
	switch {
	case len(w.RangeEnd) == 0:
		if !bytes.Equal(k, key) {
			return false
		}
	case len(w.RangeEnd) == 1 && w.RangeEnd[0] == 0:
		if bytes.Compare(k, key) < 0 {
			return false
		}
	default:
		if bytes.Compare(k, key) < 0 || bytes.Compare(k, w.RangeEnd) >= 0 {
			return false
		}
	}
	switch ev.Type {
	case mvccpb.Event_PUT:
		return !w.NoPut
	case mvccpb.Event_DELETE:
		return !w.NoDelete
	}
	return true
}

// Result is what one watch turned out to be.
type Result struct {
	ID              int64 // assigned watch ID (-1: creation failed)
	CreatedRevision int64 // Header.Revision of the created response
	Start           int64 // first revision the watch covers
	// Reached is the highest revision the watch is known to have been given
	// completely (by events or progress notifications); Start-1 if none.
	Reached         int64
	Events          int   // events received
	LastEvent       int64 // revision of the last event received, 0 if none
	Canceled        bool
	CompactRevision int64
	CancelReason    string
}

// Resume returns the watch that continues w after r: same keys and options,
// starting right after the last revision r reached.
func (r Result) Resume(w Watch) Watch {
	w.StartRevision = r.Reached + 1
	return w
}

// History is a complete, ordered MVCC history: every revision with events.
type History []eventbus.Revision

func (h History) find(rev int64) int {
	lo, hi := 0, len(h)
	for lo < hi {
		m := (lo + hi) / 2
		if h[m].Rev < rev {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Last returns the last revision of the history (0 if empty).
func (h History) Last() int64 {
	if len(h) == 0 {
		return 0
	}
	return h[len(h)-1].Rev
}

// watchState tracks one watch while its responses are replayed.
type watchState struct {
	w    Watch
	res  Result
	hist History
	pos  int // index in hist of the next revision the watch may receive
	frag *pb.WatchResponse
	done bool
	// compactRev: events at or below it may lack prev_kv (see CheckStreamCompacted).
	compactRev int64
}

func violation(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrViolation}, args...)...)
}

// expectedNext returns the next revision with events for the watch at or
// after hist[pos], and its matching events.
func (s *watchState) expectedNext() (int64, []*mvccpb.Event, int) {
	for i := s.pos; i < len(s.hist); i++ {
		var evs []*mvccpb.Event
		for _, ev := range s.hist[i].Events {
			if s.w.matches(ev) {
				evs = append(evs, ev)
			}
		}
		if len(evs) > 0 {
			return s.hist[i].Rev, evs, i
		}
	}
	return 0, nil, len(s.hist)
}

// reach checks that every event up to rev was delivered, then records rev.
func (s *watchState) reach(rev int64, what string) error {
	if rev < s.res.Reached {
		return violation("watch %d: %s at revision %d goes back from %d", s.res.ID, what, rev, s.res.Reached)
	}
	if rev > s.hist.Last() {
		return violation("watch %d: %s at revision %d beyond the history (last %d)", s.res.ID, what, rev, s.hist.Last())
	}
	if next, _, _ := s.expectedNext(); next != 0 && next <= rev {
		return violation("watch %d: %s at revision %d but the event(s) of revision %d were never delivered", s.res.ID, what, rev, next)
	}
	s.res.Reached = rev
	return nil
}

func (s *watchState) created(resp *pb.WatchResponse) {
	s.res.ID = resp.WatchId
	s.res.CreatedRevision = resp.GetHeader().GetRevision()
	s.res.Start = s.w.StartRevision
	if s.res.Start == 0 {
		s.res.Start = s.res.CreatedRevision + 1
	}
	s.res.Reached = s.res.Start - 1
	s.pos = s.hist.find(s.res.Start)
	if resp.Canceled {
		s.res.Canceled = true
		s.res.CancelReason = resp.CancelReason
		s.done = true
	}
}

// handle checks one response addressed to this watch (never a created one).
func (s *watchState) handle(resp *pb.WatchResponse) error {
	if s.done {
		return violation("watch %d: response after it was canceled: %v", s.res.ID, resp)
	}
	if resp.Fragment {
		if !s.w.Fragment {
			return violation("watch %d: fragment sent to a watch that did not ask for fragments", s.res.ID)
		}
		if s.frag == nil {
			s.frag = proto.CloneOf(resp)
		} else {
			s.frag.Events = append(s.frag.Events, resp.Events...)
		}
		return nil
	}
	if s.frag != nil {
		merged := s.frag
		merged.Events = append(merged.Events, resp.Events...)
		merged.Fragment = false
		s.frag = nil
		resp = merged
	}
	if resp.Canceled {
		s.res.Canceled = true
		s.res.CancelReason = resp.CancelReason
		s.res.CompactRevision = resp.CompactRevision
		s.done = true
		if resp.CompactRevision != 0 && s.res.Reached+1 >= resp.CompactRevision {
			return violation("watch %d: canceled for compaction at %d but it only needed revisions from %d", s.res.ID, resp.CompactRevision, s.res.Reached+1)
		}
		if len(resp.Events) > 0 {
			return violation("watch %d: events in a cancel response", s.res.ID)
		}
		return nil
	}
	if resp.Created {
		return violation("watch %d: second created response", s.res.ID)
	}
	hdr := resp.GetHeader().GetRevision()
	if len(resp.Events) == 0 {
		return s.reach(hdr, "progress notification")
	}
	// Group the events by revision and compare each group with the history.
	for i := 0; i < len(resp.Events); {
		rev := resp.Events[i].GetKv().GetModRevision()
		j := i
		for j < len(resp.Events) && resp.Events[j].GetKv().GetModRevision() == rev {
			j++
		}
		got := resp.Events[i:j]
		next, want, at := s.expectedNext()
		switch {
		case next == 0 || rev > next:
			if next == 0 {
				return violation("watch %d: event at revision %d not in the history (or duplicated, or out of order)", s.res.ID, rev)
			}
			return violation("watch %d: got revision %d but revision %d was never delivered (gap)", s.res.ID, rev, next)
		case rev < next:
			return violation("watch %d: event at revision %d after revision %d was delivered (duplicate or out of order)", s.res.ID, rev, s.res.Reached)
		}
		if len(got) != len(want) {
			return violation("watch %d: revision %d has %d events, delivered %d in one response (not atomic)", s.res.ID, rev, len(want), len(got))
		}
		for k := range got {
			if err := s.sameEvent(rev, got[k], want[k]); err != nil {
				return err
			}
		}
		s.pos = at + 1
		s.res.Events += len(got)
		s.res.LastEvent = rev
		if rev > s.res.Reached {
			s.res.Reached = rev
		}
		i = j
	}
	if hdr < s.res.LastEvent {
		return violation("watch %d: header revision %d below its events' revision %d", s.res.ID, hdr, s.res.LastEvent)
	}
	return s.reach(hdr, "events response header")
}

func (s *watchState) sameEvent(rev int64, got, want *mvccpb.Event) error {
	if got.Type != want.Type || !proto.Equal(got.Kv, want.Kv) {
		return violation("watch %d: revision %d: got event %v, want %v", s.res.ID, rev, got, want)
	}
	switch {
	case s.w.PrevKV && got.PrevKv == nil && rev <= s.compactRev:
		// etcd reads it at rev-1 when it sends the event: compacted.
	case s.w.PrevKV && !proto.Equal(got.PrevKv, want.PrevKv):
		return violation("watch %d: revision %d key %q: prev_kv %v, want %v", s.res.ID, rev, got.Kv.Key, got.PrevKv, want.PrevKv)
	case !s.w.PrevKV && got.PrevKv != nil:
		return violation("watch %d: revision %d key %q: prev_kv sent without being requested", s.res.ID, rev, got.Kv.Key)
	}
	return nil
}

// Check verifies the responses of one watch: resps starts with its created
// response and holds, in order, every response addressed to it (WatchId -1
// progress responses included).
func Check(hist History, w Watch, resps []*pb.WatchResponse) (Result, error) {
	if len(resps) == 0 || !resps[0].Created {
		return Result{}, violation("first response is not a created response")
	}
	rs, err := CheckStream(hist, []Watch{w}, resps)
	if len(rs) == 0 {
		return Result{}, err
	}
	return rs[0], err
}

// CheckStream verifies every watch of one stream. creates are the watches in
// the order their create requests were sent; resps are all responses the
// stream received, in order. Created responses are matched to creates in
// order; a WatchId -1 progress response is a bookmark for every open watch.
// It returns one Result per created response received.
func CheckStream(hist History, creates []Watch, resps []*pb.WatchResponse) ([]Result, error) {
	return CheckStreamCompacted(hist, 0, creates, resps)
}

// CheckStreamCompacted is CheckStream for a store compacted, at most, up to
// compactRev while the stream ran: etcd reads an event's previous value at
// revision-1 when it sends the event, which fails once a compaction at or
// above the event's revision happened, so such an event may come without
// prev_kv (if it has one, it must be right).
func CheckStreamCompacted(hist History, compactRev int64, creates []Watch, resps []*pb.WatchResponse) ([]Result, error) {
	var (
		states    []*watchState
		open      = map[int64]*watchState{}
		compacted = map[int64]bool{} // canceled by compaction, ID still held
		created   = 0
	)
	results := func() []Result {
		out := make([]Result, len(states))
		for i, s := range states {
			out[i] = s.res
		}
		return out
	}
	for n, resp := range resps {
		switch {
		case resp.Created:
			if created >= len(creates) {
				return results(), violation("response %d: more created responses than create requests", n)
			}
			s := &watchState{w: creates[created], hist: hist, compactRev: compactRev}
			created++
			s.created(resp)
			states = append(states, s)
			if s.done {
				if resp.WatchId != -1 {
					return results(), violation("response %d: failed creation with watch id %d, want -1", n, resp.WatchId)
				}
				continue
			}
			if open[resp.WatchId] != nil || compacted[resp.WatchId] {
				return results(), violation("response %d: watch id %d created while still in use", n, resp.WatchId)
			}
			open[resp.WatchId] = s
		case resp.WatchId == -1:
			if len(resp.Events) > 0 || resp.Canceled || resp.Fragment {
				return results(), violation("response %d: watch id -1 on a non-progress response", n)
			}
			for _, s := range open {
				if err := s.reach(resp.GetHeader().GetRevision(), "progress response (-1)"); err != nil {
					return results(), fmt.Errorf("response %d: %w", n, err)
				}
			}
		default:
			s := open[resp.WatchId]
			if s == nil && compacted[resp.WatchId] && resp.Canceled && len(resp.Events) == 0 && resp.CompactRevision == 0 {
				// etcd keeps a watch canceled by compaction until the client
				// cancels it, and answers that cancel.
				delete(compacted, resp.WatchId)
				continue
			}
			if s == nil {
				return results(), violation("response %d: for unknown or closed watch id %d: %v", n, resp.WatchId, resp)
			}
			if err := s.handle(resp); err != nil {
				return results(), fmt.Errorf("response %d: %w", n, err)
			}
			if s.done {
				delete(open, resp.WatchId)
				if s.res.CompactRevision != 0 {
					compacted[resp.WatchId] = true
				}
			}
		}
	}
	return results(), nil
}
