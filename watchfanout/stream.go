package watchfanout

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Cancel reasons, as etcd's mvcc package words them.
const (
	reasonEmptyRange  = "mvcc: watcher range is empty"
	reasonDuplicateID = "mvcc: duplicate watch ID provided on the WatchStream"
)

// stream is the server side of one client watch stream.
type stream struct {
	f  *Fanout
	st Stream

	// Guarded by f.mu.
	watchers        map[int64]*watcher // every watcher the client may still cancel
	nextID          int64              // next automatic watch ID
	nLive           int                // synced + unsynced watchers
	nProgress       int                // watchers with progress_notify
	maxNext         int64              // max next of synced watchers created with a future start
	pendingProgress bool               // a progress request waits for every watcher to be synced
	nCompacted      int                // watchers canceled by compaction that the client has not canceled
	// future holds the start revisions of the watchers created with a start
	// beyond the hub's revision, until the store is seen past them: etcd
	// answers no progress (request or notification) for such a watcher
	// before its start revision.
	future         map[*watcher]int64
	progressTarget int64 // ... and for the hub to reach the store revision it was made at
	detached       bool  // Serve is over

	// The send queue; guarded by qmu.
	qmu    sync.Mutex
	q      []item
	data   int // event items queued or being sent
	ctrl   int // other items queued or being sent
	limit  int
	closed bool

	nUnsynced atomic.Int32 // unsynced watchers (written under f.mu)

	wake    chan struct{} // to the sender: the queue may be non-empty
	drained chan struct{} // to the receiver: the sender released budget
}

func newStream(f *Fanout, st Stream) *stream {
	return &stream{
		f:        f,
		st:       st,
		watchers: make(map[int64]*watcher),
		limit:    f.cfg.SendBuffer,
		wake:     make(chan struct{}, 1),
		drained:  make(chan struct{}, 1),
	}
}

// Serve serves one client watch stream with etcd's Watch RPC semantics until
// ctx ends, the stream fails or the Fanout is closed. It returns the error
// that ended it (ctx.Err() when ctx ended, ErrClosed after Close).
func (f *Fanout) Serve(ctx context.Context, st Stream) error {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-f.done:
		return ErrClosed
	}
	s := newStream(f, st)
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	f.streams[s] = struct{}{}
	f.wg.Add(1)
	f.mu.Unlock()
	defer f.wg.Done()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The receive goroutine is not waited for: Recv cannot be interrupted
	// and returns once the transport ends the stream, which happens when
	// ctx ends or when the handler calling Serve returns.
	recvc := make(chan error, 1)
	go func() { recvc <- s.recvLoop(sctx) }()
	sendc := make(chan error, 1)
	go func() { sendc <- s.sendLoop(sctx) }()

	var err error
	sendDone := false
	select {
	case err = <-recvc:
	case err = <-sendc:
		sendDone = true
	case <-ctx.Done():
	case <-f.done:
		err = ErrClosed
	}
	cancel()
	f.removeStream(s)
	if !sendDone {
		<-sendc
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}

func (f *Fanout) removeStream(s *stream) {
	f.mu.Lock()
	s.detached = true
	for _, w := range s.watchers {
		f.detachLocked(w)
		w.state = stCanceled
	}
	s.watchers = nil
	s.nLive = 0
	delete(f.streams, s)
	delete(f.pending, s)
	f.mu.Unlock()
	s.qmu.Lock()
	s.closed = true
	s.q = nil
	s.qmu.Unlock()
}

func (s *stream) recvLoop(ctx context.Context) error {
	for {
		req, err := s.st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The client closed its sending side: keep serving its
				// watches until the stream ends, as etcd does.
				<-ctx.Done()
				return nil
			}
			return err
		}
		for s.ctrlBacklog() {
			select {
			case <-s.drained:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if r.CreateRequest != nil {
				s.create(ctx, r.CreateRequest)
			}
		case *pb.WatchRequest_CancelRequest:
			if r.CancelRequest != nil {
				s.cancel(r.CancelRequest.WatchId)
			}
		case *pb.WatchRequest_ProgressRequest:
			if r.ProgressRequest != nil {
				s.progressRequest(ctx)
			}
		default:
			// etcd ignores unknown requests rather than failing the stream.
			s.f.log.Debug("ignoring unknown watch request", "type", r)
		}
	}
}

// create handles a WatchCreateRequest like etcd's recvLoop + watchStream.Watch.
func (s *stream) create(ctx context.Context, creq *pb.WatchCreateRequest) {
	f := s.f
	key := creq.Key
	if len(key) == 0 {
		key = []byte{0} // "\x00" is the smallest key
	}
	w := &watcher{s: s, key: string(key)}
	failed := ""
	switch {
	case creq.StartRevision < 0:
		failed = rpctypes.ErrCompacted.Error()
	case len(creq.RangeEnd) == 0:
	case len(creq.RangeEnd) == 1 && creq.RangeEnd[0] == 0:
		w.flags |= fRange // every key >= key
	default:
		w.flags |= fRange
		w.end = string(creq.RangeEnd)
		if w.key >= w.end {
			failed = reasonEmptyRange
		}
	}
	for _, ft := range creq.Filters {
		switch ft {
		case pb.WatchCreateRequest_NOPUT:
			w.flags |= fNoPut
		case pb.WatchCreateRequest_NODELETE:
			w.flags |= fNoDelete
		}
	}
	if creq.PrevKv {
		w.flags |= fPrevKV
	}
	if creq.ProgressNotify {
		w.flags |= fProgress
	}
	if creq.Fragment {
		w.flags |= fFragment
	}

	// The store's revision: a watch from "now" starts after it (as etcd),
	// even if the bus has not brought it to the hub yet, and a start
	// revision must be checked against a fresh compaction revision.
	storeRev, crev, err := f.hist.CurrentRevision(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		f.log.Debug("current revision unavailable for watch create; using the hub's", "err", err)
	} else {
		f.noteStore(storeRev, crev)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if s.detached {
		return
	}
	cur := max(f.rev, storeRev)
	if cur > f.rev {
		f.observe(cur)
	}
	fail := func(reason string) {
		s.enqueueCtrl(nil, &pb.WatchResponse{
			Header:       f.newHeader(cur),
			WatchId:      -1, // clientv3.InvalidWatchID
			Created:      true,
			Canceled:     true,
			CancelReason: reason,
		}, false)
	}
	if failed != "" {
		fail(failed)
		return
	}
	id := creq.WatchId
	if id == 0 { // clientv3.AutoWatchID
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		id = s.nextID
		s.nextID++
	} else if s.watchers[id] != nil {
		fail(reasonDuplicateID)
		return
	}
	w.id = id
	s.watchers[id] = w
	if w.flags&fProgress != 0 {
		s.nProgress++
	}
	s.enqueueCtrl(w, &pb.WatchResponse{Header: f.newHeader(cur), WatchId: id, Created: true}, false)

	start := creq.StartRevision
	s.nLive++
	s.resize()
	switch {
	case start == 0:
		w.next = cur + 1
		f.addSyncedLocked(w)
	case start < f.compactRev:
		// Like etcd: created, then canceled with the compaction revision.
		// (etcd accepts start == compact revision, so do we.)
		w.next = start
		f.compactLocked(w, f.compactRev) // stNew: in no group
	case start > f.rev:
		w.next = start
		f.addSyncedLocked(w)
		if s.future == nil {
			s.future = make(map[*watcher]int64)
		}
		s.waitsForStartLocked(cur) // keeps the map to the watchers still waiting
		s.future[w] = start
	default:
		w.next = start
		f.addUnsyncedLocked(w)
		f.wakeCatchUp()
	}
}

// resize sets the event budget of the queue from the number of live
// watchers (caller holds f.mu): a stream whose watchers all match a
// revision queues one response per watcher, so a fixed budget would make
// every busy stream with many watchers fall back to catch-up.
func (s *stream) resize() {
	n := s.f.cfg.SendBuffer + s.f.cfg.SendBufferPerWatcher*s.nLive
	s.qmu.Lock()
	s.limit = n
	s.qmu.Unlock()
}

// addSyncedLocked adds a new watcher whose next revision is >= f.rev+1.
func (f *Fanout) addSyncedLocked(w *watcher) {
	w.state = stSynced
	f.synced.add(w)
	w.s.maxNext = max(w.s.maxNext, w.next)
}

func (s *stream) recomputeMaxNext() {
	s.maxNext = 0
	for _, w := range s.watchers {
		if w.state == stSynced {
			s.maxNext = max(s.maxNext, w.next)
		}
	}
}

// cancel handles a WatchCancelRequest; an unknown ID gets no response, as in etcd.
func (s *stream) cancel(id int64) {
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	w := s.watchers[id]
	if w == nil || s.detached {
		return
	}
	delete(s.watchers, id)
	delete(s.future, w)
	switch w.state {
	case stSynced, stUnsynced:
		s.nLive--
		s.resize()
	case stCompacted:
		s.nCompacted--
	}
	f.detachLocked(w)
	w.state = stCanceled
	if w.flags&fProgress != 0 {
		s.nProgress--
	}
	if w.next >= s.maxNext {
		s.recomputeMaxNext()
	}
	s.enqueueCtrl(w, &pb.WatchResponse{Header: f.newHeader(f.rev), WatchId: id, Canceled: true}, true)
	if s.pendingProgress {
		f.checkProgressLocked(s)
	}
}

// progressRequest answers a WatchProgressRequest with WatchId -1 and the
// hub revision once every watcher of the stream has reached it, and the hub
// has reached the store's revision at the time of the request: as in etcd,
// whose answer carries the store's current revision, a client that wrote
// revision r and then asks for progress gets a bookmark at r or later
// (Kubernetes' consistent reads from its watch cache rely on it). A stream
// without watchers gets nothing, as in etcd.
func (s *stream) progressRequest(ctx context.Context) {
	f := s.f
	storeRev, crev, err := f.hist.CurrentRevision(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		f.log.Debug("current revision unavailable for a progress request; using the hub's", "err", err)
	} else {
		f.noteStore(storeRev, crev)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.detached || s.nLive == 0 {
		return
	}
	// etcd (watchableStore.progressIfSync) answers only if every watcher
	// the client may still cancel is synced and the store has reached its
	// start revision, and drops the request otherwise. A watcher canceled by
	// compaction is never synced again, and one waiting for a future start
	// revision is not synced at the store's revision of the request: both
	// make etcd drop the request for good, so they do here. (Watchers still
	// catching up make the answer wait instead: here the hub's catching up
	// lags the store, so etcd's timing cannot be reproduced.)
	if s.nCompacted > 0 || s.waitsForStartLocked(max(storeRev, f.rev)) {
		return
	}
	// The hub is not hurried to storeRev (no History read per request):
	// the bus brings it there, or its progress beats and polls repair it.
	// One answer covers every request made before it.
	s.progressTarget = max(s.progressTarget, storeRev)
	if s.pendingProgress {
		return
	}
	s.pendingProgress = true
	f.pending[s] = struct{}{}
	f.checkProgressLocked(s)
}

// waitsForStartLocked reports whether a watcher of s has a start revision
// beyond rev, a store revision; it forgets the start revisions at or below
// rev, which the store will never go back under.
func (s *stream) waitsForStartLocked(rev int64) bool {
	waits := false
	for w, start := range s.future {
		if start > rev {
			waits = true
		} else {
			delete(s.future, w)
		}
	}
	return waits
}

// progressTick sends progress notifications to the progress_notify
// watchers of s that are synced and got no events since the last tick.
func (f *Fanout) progressTick(s *stream) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.detached || s.nProgress == 0 {
		return
	}
	hdr := f.newHeader(f.rev)
	for _, w := range s.watchers {
		if w.flags&fProgress == 0 {
			continue
		}
		// As etcd: only once the revision reached the watch's start.
		start, future := s.future[w]
		eligible := w.state == stSynced && w.next <= f.rev+1 && (!future || start <= f.rev)
		s.qmu.Lock()
		had := w.evSinceTick
		w.evSinceTick = false
		if !had && eligible && !w.gone && !s.closed && s.data < s.limit {
			s.q = append(s.q, item{w: w, hdr: hdr, kind: kProgress})
			s.ctrl++
		}
		s.qmu.Unlock()
	}
	s.wakeSender()
}

func (f *Fanout) progressInterval() time.Duration {
	d := f.cfg.ProgressNotifyInterval
	if j := int64(d) / 10; j > 0 {
		d += time.Duration(rand.Int64N(j)) // etcd's jitter: clients created together do not tick together
	}
	return d
}

func (s *stream) sendLoop(ctx context.Context) error {
	t := time.NewTicker(s.f.progressInterval())
	defer t.Stop()
	var buf []item
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.f.progressTick(s)
			continue
		case <-s.wake:
		}
		buf = s.take(buf)
		data, ctrl := 0, 0
		for i := range buf {
			if err := s.send(&buf[i]); err != nil {
				return err
			}
			if buf[i].kind == kEvents {
				data++
			} else {
				ctrl++
			}
			buf[i] = item{}
		}
		if len(buf) > 0 {
			s.release(data, ctrl)
		}
		if cap(buf) > 1024 && len(buf) < cap(buf)/8 {
			buf = nil // a burst is over: do not keep its buffer
		}
	}
}

func (s *stream) send(it *item) error {
	switch it.kind {
	case kEvents:
		resp := &pb.WatchResponse{Header: it.hdr, WatchId: it.w.id, Events: it.events}
		if it.w.flags&fFragment != 0 {
			return sendFragments(resp, s.f.cfg.MaxResponseBytes, s.st.Send)
		}
		return s.st.Send(resp)
	case kProgress:
		id := int64(-1)
		if it.w != nil {
			id = it.w.id
		}
		return s.st.Send(&pb.WatchResponse{Header: it.hdr, WatchId: id})
	default:
		return s.st.Send(it.resp)
	}
}

// sendFragments splits resp the way etcd's v3rpc sendFragments does: only
// when it has at least two events and is at least maxBytes; each fragment
// but the last has Fragment set, and holds as many events as fit (at least one).
func sendFragments(resp *pb.WatchResponse, maxBytes int, send func(*pb.WatchResponse) error) error {
	if len(resp.Events) < 2 || proto.Size(resp) < maxBytes {
		return send(resp)
	}
	evs := resp.Events
	for len(evs) > 0 {
		cur := &pb.WatchResponse{
			Header:          resp.Header,
			WatchId:         resp.WatchId,
			Created:         resp.Created,
			Canceled:        resp.Canceled,
			CompactRevision: resp.CompactRevision,
			CancelReason:    resp.CancelReason,
			Fragment:        true,
		}
		size := proto.Size(cur)
		n := 0
		for n < len(evs) {
			add := eventFieldSize(evs[n])
			if n > 0 && size+add >= maxBytes {
				break
			}
			size += add
			n++
		}
		cur.Events = evs[:n:n]
		evs = evs[n:]
		if len(evs) == 0 {
			cur.Fragment = false
		}
		if err := send(cur); err != nil {
			return err
		}
	}
	return nil
}

// eventFieldSize is the encoded size of one event as field 11 of WatchResponse.
func eventFieldSize(ev *mvccpb.Event) int {
	return protowire.SizeTag(11) + protowire.SizeBytes(proto.Size(ev))
}
