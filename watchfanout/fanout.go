package watchfanout

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/consensus/eventbus"
)

// allKeys selects every key in History reads (Range semantics: from "\x00").
var allKeys, allEnd = []byte{0}, []byte{0}

// Fanout serves watch streams. Create it with New, serve each client stream
// with Serve, stop it with Close.
type Fanout struct {
	cfg  Config
	log  *slog.Logger
	sub  eventbus.Subscriber
	hist History

	ctx       context.Context // canceled by Close; bounds every History call
	cancel    context.CancelFunc
	done      chan struct{}
	ready     chan struct{} // closed once the hub knows the current revision
	wg        sync.WaitGroup
	closeOnce sync.Once

	// Bus -> hub. The bus handler only appends here, so a slow hub never
	// blocks the bus; beyond InboxLimit messages are dropped and only their
	// revision is remembered (inTarget), to be repaired from History.
	inMu     sync.Mutex
	inbox    []eventbus.Message
	inTarget int64
	inWake   chan struct{}

	catchWake chan struct{}

	mu         sync.Mutex
	closed     bool
	rev        int64 // last revision applied by the hub; written only by the hub goroutine, under mu
	storeRev   int64 // highest store revision observed
	compactRev int64 // highest compaction revision observed
	synced     *group
	unsynced   []*watcher
	streams    map[*stream]struct{}
	pending    map[*stream]struct{} // streams with a deferred progress request
	cache      revCache
	rr         int // catch-up round-robin offset
	// hub scratch, reused across revisions
	scratch []*watcher
	mpos    map[*watcher]int
	ms      []match

	stats struct {
		duplicates, dropped, repairs, repairedRevs, victims, historyReads, compactCancels atomic.Uint64
	}
}

type match struct {
	w   *watcher
	idx []int32
}

// New starts a Fanout that consumes sub and repairs from hist. It returns at
// once; Serve waits until the current revision is known.
func New(cfg Config, sub eventbus.Subscriber, hist History) (*Fanout, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sub == nil || hist == nil {
		return nil, fmt.Errorf("%w: nil subscriber or history", ErrInvalidConfig)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fanout{
		cfg:       cfg,
		log:       cfg.Logger,
		sub:       sub,
		hist:      hist,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		ready:     make(chan struct{}),
		inWake:    make(chan struct{}, 1),
		catchWake: make(chan struct{}, 1),
		synced:    newGroup(),
		streams:   make(map[*stream]struct{}),
		pending:   make(map[*stream]struct{}),
		mpos:      make(map[*watcher]int),
		cache:     revCache{maxRevs: cfg.CacheRevisions, maxBytes: cfg.CacheBytes},
	}
	f.wg.Add(2)
	go f.run()
	go f.catchUpLoop()
	return f, nil
}

// Close stops the hub, the catch-up and every Serve, and waits for them.
// It is idempotent.
func (f *Fanout) Close() error {
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()
		close(f.done)
		f.cancel()
	})
	f.wg.Wait()
	return nil
}

// Stats is a snapshot of the fanout's state and cumulative counters.
type Stats struct {
	Revision          int64 // last revision applied by the hub
	Streams           int
	Synced, Unsynced  int    // live watchers by state
	Duplicates        uint64 // bus messages dropped as already applied
	DroppedMessages   uint64 // bus messages dropped because the inbox was full
	Repairs           uint64 // gap repairs from History
	RepairedRevisions uint64 // revisions read from History by repairs
	Victims           uint64 // watchers moved to catch-up because their stream was full
	HistoryReads      uint64 // History.RangeEvents calls (repair and catch-up)
	CompactCancels    uint64 // watchers canceled because of compaction
}

// Stats returns a snapshot.
func (f *Fanout) Stats() Stats {
	f.mu.Lock()
	st := Stats{Revision: f.rev, Streams: len(f.streams), Synced: f.synced.size, Unsynced: len(f.unsynced)}
	f.mu.Unlock()
	st.Duplicates = f.stats.duplicates.Load()
	st.DroppedMessages = f.stats.dropped.Load()
	st.Repairs = f.stats.repairs.Load()
	st.RepairedRevisions = f.stats.repairedRevs.Load()
	st.Victims = f.stats.victims.Load()
	st.HistoryReads = f.stats.historyReads.Load()
	st.CompactCancels = f.stats.compactCancels.Load()
	return st
}

func (f *Fanout) newHeader(rev int64) *pb.ResponseHeader {
	h := &pb.ResponseHeader{ClusterId: f.cfg.ClusterID, MemberId: f.cfg.MemberID, Revision: rev}
	if f.cfg.RaftTerm != nil {
		h.RaftTerm = f.cfg.RaftTerm()
	}
	return h
}

func (f *Fanout) isDone() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// sleep waits d or until Close; false when closed.
func (f *Fanout) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-f.done:
		return false
	}
}

func (f *Fanout) wakeCatchUp() {
	select {
	case f.catchWake <- struct{}{}:
	default:
	}
}

// handle is the bus handler: it must not block.
func (f *Fanout) handle(m eventbus.Message) {
	f.inMu.Lock()
	if len(f.inbox) >= f.cfg.InboxLimit {
		if m.Rev > f.inTarget {
			f.inTarget = m.Rev
		}
		f.inMu.Unlock()
		f.stats.dropped.Add(1)
	} else {
		f.inbox = append(f.inbox, m)
		f.inMu.Unlock()
	}
	select {
	case f.inWake <- struct{}{}:
	default:
	}
}

// observe tells the hub that revision rev exists in the store.
func (f *Fanout) observe(rev int64) {
	f.inMu.Lock()
	if rev > f.inTarget {
		f.inTarget = rev
	}
	f.inMu.Unlock()
	select {
	case f.inWake <- struct{}{}:
	default:
	}
}

func (f *Fanout) takeInbox(buf []eventbus.Message) ([]eventbus.Message, int64) {
	f.inMu.Lock()
	buf = append(buf[:0], f.inbox...)
	clear(f.inbox)
	f.inbox = f.inbox[:0]
	if cap(f.inbox) > 4*f.cfg.InboxLimit {
		f.inbox = nil
	}
	t := f.inTarget
	f.inTarget = 0
	f.inMu.Unlock()
	return buf, t
}

// run is the hub goroutine.
func (f *Fanout) run() {
	defer f.wg.Done()
	var unsub func()
	for {
		var err error
		unsub, err = f.sub.Subscribe(f.ctx, f.handle)
		if err == nil {
			break
		}
		f.log.Warn("subscribe to event bus failed; retrying", "err", err)
		if !f.sleep(f.cfg.RetryInterval) {
			return
		}
	}
	defer unsub()

	// Subscribed first, then the current revision: everything after it
	// reaches the inbox, everything up to it is History.
	for {
		rev, crev, err := f.hist.CurrentRevision(f.ctx)
		if err == nil {
			f.mu.Lock()
			f.rev, f.storeRev, f.compactRev = rev, rev, crev
			f.mu.Unlock()
			break
		}
		f.log.Warn("read current revision failed; retrying", "err", err)
		if !f.sleep(f.cfg.RetryInterval) {
			return
		}
	}
	close(f.ready)

	poll := time.NewTicker(f.cfg.PollInterval)
	defer poll.Stop()
	var buf []eventbus.Message
	active := false
	for {
		select {
		case <-f.done:
			return
		case <-f.inWake:
			active = true
		case <-poll.C:
			if !active {
				f.poll()
			}
			active = false
		}
		var target int64
		buf, target = f.takeInbox(buf)
		for i := range buf {
			if f.isDone() {
				return
			}
			f.apply(&buf[i])
			buf[i] = eventbus.Message{}
		}
		if target > f.rev {
			f.repair(target)
		}
	}
}

// poll asks History for the current revision: the safety net when the bus
// is silent (progress beats lost, subscription broken).
func (f *Fanout) poll() {
	rev, crev, err := f.hist.CurrentRevision(f.ctx)
	if err != nil {
		if f.ctx.Err() == nil {
			f.log.Debug("poll current revision failed", "err", err)
		}
		return
	}
	f.noteStore(rev, crev)
	if rev > f.rev {
		f.repair(rev)
	}
}

func (f *Fanout) noteStore(rev, crev int64) {
	f.mu.Lock()
	f.storeRev = max(f.storeRev, rev)
	f.compactRev = max(f.compactRev, crev)
	f.mu.Unlock()
}

// apply handles one bus message on the hub goroutine.
func (f *Fanout) apply(m *eventbus.Message) {
	if m.Progress || len(m.Events) == 0 {
		if m.Rev > f.rev {
			f.noteStore(m.Rev, 0)
			f.repair(m.Rev)
		}
		return
	}
	switch {
	case m.Rev <= f.rev:
		f.stats.duplicates.Add(1)
		return
	case m.Rev > f.rev+1 || !validEvents(m.Rev, m.Events):
		// A gap, or a message the bus should never have delivered: History
		// has the truth for everything up to m.Rev.
		f.repair(m.Rev)
		return
	}
	f.mu.Lock()
	f.deliverLocked(&revEvents{rev: m.Rev, full: m.Events})
	f.afterAdvanceLocked()
	f.mu.Unlock()
}

// validEvents checks what the hub relies on: every event has a key-value of
// revision rev.
func validEvents(rev int64, evs []*mvccpb.Event) bool {
	for _, ev := range evs {
		if ev == nil || ev.Kv == nil || ev.Kv.ModRevision != rev {
			return false
		}
	}
	return true
}

// repair brings the hub to revision `to` from History, in chunks.
func (f *Fanout) repair(to int64) {
	f.stats.repairs.Add(1)
	for f.rev < to {
		if f.isDone() {
			return
		}
		from := f.rev + 1
		end := min(to, from+f.cfg.ChunkRevisions-1)
		f.stats.historyReads.Add(1)
		revs, err := f.hist.RangeEvents(f.ctx, from, end, allKeys, allEnd)
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			compacted, cur, ok := f.hubCompacted(from)
			if compacted {
				continue
			}
			if ok && cur < to {
				// The target came from a message claiming a revision the
				// store does not have (yet): do not wait for it here; a
				// later message or poll brings the hub further.
				f.log.Warn("repair target beyond the store's revision", "target", to, "store", cur, "err", err)
				to = cur
				continue
			}
			f.log.Warn("repair from history failed; retrying", "from", from, "to", end, "err", err)
			if !f.sleep(f.cfg.RetryInterval) {
				return
			}
			continue
		}
		f.mu.Lock()
		for _, r := range revs {
			if r.Rev < from || r.Rev > end || r.Rev <= f.rev || len(r.Events) == 0 || !validEvents(r.Rev, r.Events) {
				f.log.Error("history returned an invalid revision; skipped", "rev", r.Rev, "from", from, "to", end)
				continue
			}
			f.deliverLocked(&revEvents{rev: r.Rev, full: r.Events})
		}
		if f.rev < end {
			// Revisions without events (none in etcd semantics): nothing to
			// deliver, but the hub has seen them.
			f.cache.add(&revEvents{rev: end})
			f.rev = end
		}
		f.afterAdvanceLocked()
		f.mu.Unlock()
		f.stats.repairedRevs.Add(uint64(end - from + 1))
	}
}

// hubCompacted checks, after a failed History read from `from`, whether
// the hub itself fell below the compaction revision; if so the synced
// watchers cannot be served contiguously and are canceled (or moved to
// catch-up) as etcd does for unsynced watchers. It also returns the store's
// current revision (ok: CurrentRevision succeeded).
func (f *Fanout) hubCompacted(from int64) (compacted bool, rev int64, ok bool) {
	rev, crev, err := f.hist.CurrentRevision(f.ctx)
	if err != nil {
		return false, 0, false
	}
	f.noteStore(rev, crev)
	if from >= crev {
		return false, rev, true
	}
	f.mu.Lock()
	f.jumpLocked(rev, crev)
	f.mu.Unlock()
	f.wakeCatchUp()
	return true, rev, true
}

func (f *Fanout) jumpLocked(rev, crev int64) {
	f.log.Warn("event history compacted before the hub caught up; skipping", "from", f.rev+1, "to", rev, "compact_revision", crev)
	old := f.rev
	for _, w := range f.synced.all() {
		next := max(w.next, old+1)
		switch {
		case next < crev:
			f.compactLocked(w, crev)
		case next <= rev:
			f.synced.remove(w)
			w.next = next
			f.addUnsyncedLocked(w)
		}
	}
	f.rev = max(rev, old)
	f.cache.clear()
	for s := range f.streams {
		s.recomputeMaxNext()
	}
	f.afterAdvanceLocked()
}

// deliverLocked applies revision r (== f.rev+1) to the synced watchers.
func (f *Fanout) deliverLocked(r *revEvents) {
	rev := r.rev
	if f.synced.size > 0 {
		if len(r.full) == 1 {
			for _, l := range f.synced.lists(r.full[0].Kv.Key) {
				for _, w := range l.ws {
					if w.next <= rev {
						f.scratch = append(f.scratch, w)
					}
				}
			}
			one := [1]int32{0}
			for _, w := range f.scratch {
				if evs := eventsFor(w, r, one[:], f.compactRev); evs != nil {
					f.sendSyncedLocked(w, r, evs)
				}
			}
			clear(f.scratch)
			f.scratch = f.scratch[:0]
		} else {
			for i, ev := range r.full {
				for _, l := range f.synced.lists(ev.Kv.Key) {
					for _, w := range l.ws {
						if w.next > rev {
							continue
						}
						p, ok := f.mpos[w]
						if !ok {
							p = len(f.ms)
							f.mpos[w] = p
							if p < cap(f.ms) {
								f.ms = f.ms[:p+1]
								f.ms[p].w = w
							} else {
								f.ms = append(f.ms, match{w: w})
							}
						}
						f.ms[p].idx = append(f.ms[p].idx, int32(i))
					}
				}
			}
			for i := range f.ms {
				m := &f.ms[i]
				if evs := eventsFor(m.w, r, m.idx, f.compactRev); evs != nil {
					f.sendSyncedLocked(m.w, r, evs)
				}
				m.w, m.idx = nil, m.idx[:0]
			}
			f.ms = f.ms[:0]
			clear(f.mpos)
		}
	}
	f.rev = rev
	f.cache.add(r)
}

func (f *Fanout) sendSyncedLocked(w *watcher, r *revEvents, evs []*mvccpb.Event) {
	if w.s.enqueueEvents(w, r.header(f), evs) == enqFull {
		// etcd's victim: the stream cannot keep up; catch up from r.rev later.
		f.stats.victims.Add(1)
		f.synced.remove(w)
		w.next = r.rev
		f.addUnsyncedLocked(w)
	}
}

func (f *Fanout) addUnsyncedLocked(w *watcher) {
	w.state = stUnsynced
	w.idx = int32(len(f.unsynced))
	f.unsynced = append(f.unsynced, w)
	w.s.nUnsynced.Add(1)
}

func (f *Fanout) removeUnsyncedLocked(w *watcher) {
	i, last := int(w.idx), len(f.unsynced)-1
	if i > last || f.unsynced[i] != w {
		return
	}
	f.unsynced[i] = f.unsynced[last]
	f.unsynced[i].idx = int32(i)
	f.unsynced[last] = nil
	f.unsynced = f.unsynced[:last]
	w.s.nUnsynced.Add(-1)
}

// toSyncedLocked hands an unsynced watcher that has been given everything
// up to f.rev to the hub.
func (f *Fanout) toSyncedLocked(w *watcher) {
	f.removeUnsyncedLocked(w)
	w.state = stSynced
	w.next = max(w.next, f.rev+1)
	f.synced.add(w)
	if w.s.pendingProgress {
		f.checkProgressLocked(w.s)
	}
}

// detachLocked removes w from whichever group holds it.
func (f *Fanout) detachLocked(w *watcher) {
	switch w.state {
	case stSynced:
		f.synced.remove(w)
	case stUnsynced:
		f.removeUnsyncedLocked(w)
	}
}

// compactLocked cancels w because the revisions it needs are compacted.
func (f *Fanout) compactLocked(w *watcher, crev int64) {
	f.detachLocked(w)
	w.state = stCompacted
	w.s.nCompacted++
	delete(w.s.future, w)
	w.s.nLive--
	w.s.resize()
	f.stats.compactCancels.Add(1)
	w.s.enqueueCtrl(w, &pb.WatchResponse{
		// etcd's compaction cancel carries no revision in its header (its
		// mvcc response has none): clients see Header.Revision 0.
		Header:          f.newHeader(0),
		WatchId:         w.id,
		CompactRevision: crev,
		Canceled:        true,
	}, true)
	if w.s.pendingProgress {
		f.checkProgressLocked(w.s)
	}
}

// afterAdvanceLocked runs after f.rev moved: deferred progress requests may
// now be answerable, unsynced watchers may now be moved.
func (f *Fanout) afterAdvanceLocked() {
	for s := range f.pending {
		f.checkProgressLocked(s)
	}
	if len(f.unsynced) > 0 {
		f.wakeCatchUp()
	}
}

// checkProgressLocked answers a deferred progress request of s if every
// live watcher of s is synced and has reached f.rev.
func (f *Fanout) checkProgressLocked(s *stream) {
	if !s.pendingProgress {
		return
	}
	if s.nLive == 0 || s.nCompacted > 0 {
		// Nothing to answer for, or (as etcd) a compacted watcher the client
		// has not canceled: never answered.
		s.pendingProgress = false
		delete(f.pending, s)
		return
	}
	if f.rev < s.progressTarget || !f.streamReachedLocked(s) {
		return
	}
	s.pendingProgress = false
	delete(f.pending, s)
	s.enqueueProgress(nil, f.newHeader(f.rev), true)
}

func (f *Fanout) streamReachedLocked(s *stream) bool {
	return s.nUnsynced.Load() == 0 && s.maxNext <= f.rev+1
}
