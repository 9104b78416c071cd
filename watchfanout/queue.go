package watchfanout

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Item kinds.
const (
	kEvents   uint8 = iota // events of one revision for w
	kProgress              // progress notification for w (or -1 when w == nil)
	kCtrl                  // prebuilt control response (created, canceled, compacted)
)

// item is one queued response. Responses are built by the stream's sender
// goroutine, so the hub only does matching and queueing.
type item struct {
	w      *watcher
	hdr    *pb.ResponseHeader // shared, read-only
	events []*mvccpb.Event    // shared, read-only
	resp   *pb.WatchResponse  // kCtrl
	kind   uint8
}

type enqueueResult uint8

const (
	enqOK   enqueueResult = iota
	enqFull               // event budget exhausted: the watcher must fall back to catch-up
	enqGone               // watcher or stream is gone: the item is dropped, nothing to do
)

// ctrlLimit bounds queued control responses; beyond it the receive loop
// stops reading requests until the sender catches up (etcd blocks on a
// 16-entry channel the same way).
const ctrlLimit = 1024

// enqueueEvents queues the events of revision hdr.Revision for w.
func (s *stream) enqueueEvents(w *watcher, hdr *pb.ResponseHeader, evs []*mvccpb.Event) enqueueResult {
	s.qmu.Lock()
	if w.gone || s.closed {
		s.qmu.Unlock()
		return enqGone
	}
	if s.data >= s.limit {
		s.qmu.Unlock()
		return enqFull
	}
	s.q = append(s.q, item{w: w, hdr: hdr, events: evs, kind: kEvents})
	s.data++
	w.evSinceTick = true
	s.qmu.Unlock()
	s.wakeSender()
	return enqOK
}

// enqueueProgress queues a progress notification for w (nil: WatchId -1).
// force ignores the event budget (a progress request must be answered).
func (s *stream) enqueueProgress(w *watcher, hdr *pb.ResponseHeader, force bool) enqueueResult {
	s.qmu.Lock()
	if s.closed || (w != nil && w.gone) {
		s.qmu.Unlock()
		return enqGone
	}
	if !force && s.data >= s.limit {
		s.qmu.Unlock()
		return enqFull
	}
	s.q = append(s.q, item{w: w, hdr: hdr, kind: kProgress})
	s.ctrl++
	s.qmu.Unlock()
	s.wakeSender()
	return enqOK
}

// enqueueCtrl queues a control response; it is never refused for lack of
// space. If last is set, w is marked gone in the same critical section, so
// nothing can be queued for it after this response.
func (s *stream) enqueueCtrl(w *watcher, resp *pb.WatchResponse, last bool) {
	s.qmu.Lock()
	if s.closed {
		s.qmu.Unlock()
		return
	}
	if w != nil && last {
		w.gone = true
	}
	s.q = append(s.q, item{w: w, resp: resp, kind: kCtrl})
	s.ctrl++
	s.qmu.Unlock()
	s.wakeSender()
}

// markGone stops any further queueing for w.
func (s *stream) markGone(w *watcher) {
	s.qmu.Lock()
	w.gone = true
	s.qmu.Unlock()
}

// hasRoom reports whether at least half of the event budget is free, the
// threshold at which catch-up resumes for this stream (hysteresis, so a
// slow stream is not flipped between synced and unsynced on every event).
func (s *stream) hasRoom() bool {
	s.qmu.Lock()
	ok := !s.closed && s.data <= s.limit/2
	s.qmu.Unlock()
	return ok
}

func (s *stream) wakeSender() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// take hands every queued item to the sender, giving the queue the
// sender's previous (emptied) buffer in exchange, so nothing is copied. The
// items still count against the budget until release.
func (s *stream) take(buf []item) []item {
	s.qmu.Lock()
	out := s.q
	s.q = buf[:0]
	s.qmu.Unlock()
	return out
}

// release returns the budget of sent items.
func (s *stream) release(data, ctrl int) {
	s.qmu.Lock()
	s.data -= data
	s.ctrl -= ctrl
	roomNow := s.data <= s.limit/2
	s.qmu.Unlock()
	if roomNow && s.nUnsynced.Load() > 0 {
		s.f.wakeCatchUp()
	}
	select {
	case s.drained <- struct{}{}:
	default:
	}
}

// ctrlBacklog reports whether the receive loop should wait for the sender.
func (s *stream) ctrlBacklog() bool {
	s.qmu.Lock()
	b := s.ctrl >= ctrlLimit
	s.qmu.Unlock()
	return b
}
