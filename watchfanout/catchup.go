package watchfanout

import (
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/pkg/v3/adt"
)

// cacheBudget bounds the events examined per catch-up round under the hub
// lock, so catching up many watchers from the cache never stalls the hub.
const cacheBudget = 1 << 16

// catchUpLoop feeds unsynced watchers: fresh watches that start in the past
// and watchers whose stream could not keep up. It runs until Close.
func (f *Fanout) catchUpLoop() {
	defer f.wg.Done()
	select {
	case <-f.ready:
	case <-f.done:
		return
	}
	t := time.NewTicker(f.cfg.ResyncInterval)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case <-f.catchWake:
		case <-t.C:
		}
		for f.catchUpRound() {
			if f.isDone() {
				return
			}
		}
	}
}

// cuw is a watcher being caught up from History outside the hub lock.
type cuw struct {
	w       *watcher
	next    int64 // local copy of w.next, written back under the lock
	blocked bool  // its stream is full (or it is gone): stop for this round
	b       batch
}

// maxBatchRevs bounds the revisions in one catch-up response (etcd's
// watchBatchMaxRevs).
const maxBatchRevs = 1000

// batch collects the events of one catching-up watcher over several
// revisions. etcd answers a watcher that catches up with its pending
// revisions in one response, whose header revision is the last revision
// examined for it; a batch is that response.
type batch struct {
	evs   []*mvccpb.Event
	from  int64 // revision of evs[0]
	revs  int   // revisions in evs
	size  int64 // eventsSize estimate
	owned bool  // evs was allocated here, not shared with a revEvents
}

func (b *batch) add(rev int64, evs []*mvccpb.Event) {
	switch {
	case b.evs == nil:
		b.evs, b.from, b.owned = evs, rev, false
	case b.owned:
		b.evs = append(b.evs, evs...)
	default:
		b.evs, b.owned = append(slices.Clip(b.evs), evs...), true
	}
	b.revs++
	b.size += eventsSize(evs)
}

func (b *batch) full(maxBytes int) bool {
	return b.revs >= maxBatchRevs || b.size >= int64(maxBytes)
}

// flushBatch queues w's batch with a header at *next-1, the last revision
// examined for w. If the stream refuses it, *next goes back to the batch's
// first revision. An empty batch is enqOK.
func (f *Fanout) flushBatch(w *watcher, b *batch, next *int64) enqueueResult {
	if b.evs == nil {
		return enqOK
	}
	res := w.s.enqueueEvents(w, f.newHeader(*next-1), b.evs)
	if res != enqOK {
		*next = b.from
	}
	*b = batch{}
	return res
}

// catchUpRound serves one batch of unsynced watchers and reports whether
// anything moved (so the caller loops until nothing can).
//
// Watchers whose next revision is still in the hub's cache are served under
// the hub lock, and moved to synced in the same critical section when they
// reach f.rev: no revision can slip in between. The others read History
// outside the lock up to the oldest cached revision (or the hub revision),
// then continue from the cache in a later round.
func (f *Fanout) catchUpRound() bool {
	f.mu.Lock()
	n := len(f.unsynced)
	if n == 0 {
		f.mu.Unlock()
		return false
	}
	sel := make([]*watcher, 0, min(n, f.cfg.CatchUpBatch))
	start := f.rr % n
	for i := 0; i < n && len(sel) < f.cfg.CatchUpBatch; i++ {
		w := f.unsynced[(start+i)%n]
		if w.s.hasRoom() {
			sel = append(sel, w)
		}
	}
	f.rr = start + len(sel)
	progressed := false
	budget := cacheBudget
	lo := f.cache.lo()
	var idx []int32
	var hist []cuw
	for _, w := range sel {
		if w.state != stUnsynced {
			continue
		}
		if w.next < f.compactRev && (lo == 0 || w.next < lo) {
			// Known compacted and not in memory: cancel as etcd does.
			f.compactLocked(w, f.compactRev)
			progressed = true
			continue
		}
		if (lo != 0 && w.next >= lo) || w.next > f.rev {
			if budget > 0 {
				var moved bool
				idx, moved = f.fromCacheLocked(w, &budget, idx, &batch{})
				progressed = progressed || moved
			}
			continue
		}
		hist = append(hist, cuw{w: w, next: w.next})
	}
	target := f.rev
	if lo != 0 {
		target = lo - 1
	}
	f.mu.Unlock()
	if len(hist) > 0 && f.fromHistory(hist, target) {
		progressed = true
	}
	return progressed
}

// fromCacheLocked gives w the cached revisions from w.next on and moves it
// to synced once it reaches f.rev. It reports whether w advanced. The events
// go into b, which may hold those w got from History just before (so that,
// as from etcd, they make one response with the cached ones).
func (f *Fanout) fromCacheLocked(w *watcher, budget *int, idx []int32, b *batch) ([]int32, bool) {
	start := w.next
	for w.next <= f.rev && *budget > 0 {
		r := f.cache.get(w.next)
		if r == nil {
			break // fell out of the cache: History next round
		}
		*budget -= len(r.full) + 1
		idx = matchIdx(w, r, idx)
		if evs := eventsFor(w, r, idx, f.compactRev); evs != nil {
			b.add(r.rev, evs)
		}
		w.next++
		if b.full(f.cfg.MaxResponseBytes) && f.flushBatch(w, b, &w.next) != enqOK {
			return idx, w.next > start
		}
	}
	if f.flushBatch(w, b, &w.next) != enqOK {
		return idx, w.next > start
	}
	if w.next > f.rev {
		f.toSyncedLocked(w)
		return idx, true
	}
	return idx, w.next > start
}

// fromHistory reads [min next, target] from History in chunks and gives
// each watcher its events; local progress is written back under the lock.
func (f *Fanout) fromHistory(ws []cuw, target int64) bool {
	progressed := false
	// Batches span chunks; what is left goes out before a compaction
	// cancel and before next is written back (a refused batch moves next
	// back).
	flushAll := func() {
		for i := range ws {
			if c := &ws[i]; !c.blocked {
				f.flushCatchUp(c)
			}
		}
	}
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		// A watcher that read History up to the hub's cache goes on from the
		// cache with the same batch, in this critical section: etcd sends
		// a watcher catching up its pending revisions in one response, and
		// where History ends and the cache begins is no business of the
		// client's.
		budget := cacheBudget
		var idx []int32
		for i := range ws {
			c := &ws[i]
			w := c.w
			if !c.blocked && w.state == stUnsynced && c.b.evs != nil && budget > 0 {
				if lo := f.cache.lo(); lo != 0 && c.next >= lo && c.next <= f.rev {
					w.next = c.next
					idx, _ = f.fromCacheLocked(w, &budget, idx, &c.b)
					continue
				}
			}
			if !c.blocked {
				f.flushCatchUp(c)
			}
			if w.state == stUnsynced {
				w.next = c.next
			}
		}
	}()
	var pos []int // watchers matched by the current revision, in first-match order
	mark := make([][]int32, len(ws))
	for {
		from := int64(-1)
		for i := range ws {
			if c := &ws[i]; !c.blocked && c.next <= target && (from < 0 || c.next < from) {
				from = c.next
			}
		}
		if from < 0 || f.isDone() {
			return progressed
		}
		// Index (and bound the read to) the watchers that can still take
		// events: blocked ones would only be skipped event after event.
		ix := newTempIndex(ws)
		key, end := ix.bounds(ws)
		active := ix.n
		to := min(target, from+f.cfg.ChunkRevisions-1)
		f.stats.historyReads.Add(1)
		revs, err := f.hist.RangeEvents(f.ctx, from, to, key, end)
		if err != nil {
			if f.ctx.Err() != nil {
				return progressed
			}
			flushAll()
			if f.catchUpCompacted(ws, from) {
				return true
			}
			f.log.Warn("catch-up from history failed; retrying", "from", from, "to", to, "err", err)
			f.sleep(f.cfg.RetryInterval)
			return progressed
		}
		f.mu.Lock()
		crev := f.compactRev
		f.mu.Unlock()
		for _, hr := range revs {
			if active == 0 {
				break
			}
			if hr.Rev < from || hr.Rev > to || len(hr.Events) == 0 || !validEvents(hr.Rev, hr.Events) {
				f.log.Error("history returned an invalid revision; skipped", "rev", hr.Rev, "from", from, "to", to)
				continue
			}
			r := &revEvents{rev: hr.Rev, full: hr.Events}
			for i, ev := range r.full {
				for _, j := range ix.match(ev.Kv.Key) {
					c := &ws[j]
					if c.blocked || c.next > r.rev {
						continue
					}
					if len(mark[j]) == 0 {
						pos = append(pos, int(j))
					}
					mark[j] = append(mark[j], int32(i))
				}
			}
			for _, j := range pos {
				c := &ws[j]
				if evs := eventsFor(c.w, r, mark[j], crev); evs != nil {
					c.b.add(r.rev, evs)
					c.next = r.rev + 1
					progressed = true
					if c.b.full(f.cfg.MaxResponseBytes) && !f.flushCatchUp(c) {
						active--
					}
				}
				mark[j] = mark[j][:0]
			}
			pos = pos[:0]
		}
		for i := range ws {
			if c := &ws[i]; !c.blocked && c.next <= to {
				c.next = to + 1
				progressed = true
			}
		}
	}
}

// flushCatchUp queues c's batch. If the stream refuses it (full, or the
// watcher is gone) c is blocked for the rest of the round.
func (f *Fanout) flushCatchUp(c *cuw) bool {
	if f.flushBatch(c.w, &c.b, &c.next) != enqOK {
		c.blocked = true
		return false
	}
	return true
}

// catchUpCompacted handles a History error: if [from, ...] is compacted,
// the watchers that need compacted revisions are canceled.
func (f *Fanout) catchUpCompacted(ws []cuw, from int64) bool {
	rev, crev, err := f.hist.CurrentRevision(f.ctx)
	if err != nil {
		return false
	}
	f.noteStore(rev, crev)
	if from >= crev {
		return false
	}
	f.mu.Lock()
	for i := range ws {
		c := &ws[i]
		if c.w.state == stUnsynced && c.next < crev {
			c.w.next = c.next
			f.compactLocked(c.w, crev)
		}
	}
	f.mu.Unlock()
	return true
}

// tempIndex matches keys against the watchers of one catch-up batch
// (indexes into the batch), like group but without touching the watchers.
type tempIndex struct {
	n      int // watchers indexed
	keys   map[string][]int32
	ranges adt.IntervalTree // exact interval -> *[]int32
	buf    []int32
	rv     func(iv *adt.IntervalValue) bool
}

func newTempIndex(ws []cuw) *tempIndex {
	ix := &tempIndex{keys: make(map[string][]int32), ranges: adt.NewIntervalTree()}
	ix.rv = func(iv *adt.IntervalValue) bool {
		ix.buf = append(ix.buf, *iv.Val.(*[]int32)...)
		return true
	}
	for i := range ws {
		if ws[i].blocked {
			continue
		}
		ix.n++
		w := ws[i].w
		if !w.isRange() {
			ix.keys[w.key] = append(ix.keys[w.key], int32(i))
			continue
		}
		ivl := w.interval()
		if iv := ix.ranges.Find(ivl); iv != nil {
			p := iv.Val.(*[]int32)
			*p = append(*p, int32(i))
		} else {
			ix.ranges.Insert(ivl, &[]int32{int32(i)})
		}
	}
	return ix
}

// match returns the batch indexes of the watchers of key, valid until the
// next call.
func (ix *tempIndex) match(key []byte) []int32 {
	ix.buf = append(ix.buf[:0], ix.keys[string(key)]...)
	if ix.ranges.Len() > 0 {
		ix.ranges.Visit(adt.NewStringAffinePoint(string(key)), ix.rv)
	}
	return ix.buf
}

// bounds returns the smallest key range (Range semantics) covering every
// watcher of the batch, so History reads only what can match.
func (ix *tempIndex) bounds(ws []cuw) (key, end []byte) {
	lo, hi, open, n, last := "", "", false, 0, -1
	for i := range ws {
		if ws[i].blocked {
			continue
		}
		w := ws[i].w
		if n == 0 || w.key < lo {
			lo = w.key
		}
		n++
		last = i
		e := w.key + "\x00"
		if w.isRange() {
			if w.end == "" {
				open = true
			}
			e = w.end
		}
		if e > hi {
			hi = e
		}
	}
	switch {
	case open:
		return []byte(lo), []byte{0}
	case n == 1 && !ws[last].w.isRange():
		return []byte(lo), nil
	default:
		return []byte(lo), []byte(hi)
	}
}
