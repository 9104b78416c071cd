package watchfanout

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/pkg/v3/adt"
)

// Watcher states (guarded by Fanout.mu).
const (
	stNew       uint8 = iota // being created: in no group yet
	stSynced                 // in Fanout.synced: the hub feeds it
	stUnsynced               // in Fanout.unsynced: the catch-up feeds it
	stCompacted              // canceled by compaction; keeps its ID until the client cancels it, as etcd does
	stCanceled               // removed
)

// Watcher flags (immutable after creation).
const (
	fRange    uint8 = 1 << iota // key/end is a range; end == "" means "every key >= key"
	fPrevKV                     // keep PrevKv in events
	fNoPut                      // filter out PUT events
	fNoDelete                   // filter out DELETE events
	fProgress                   // progress_notify
	fFragment                   // fragment large responses
)

// watcher is one watch. It is kept small: 100,000s of them may exist.
type watcher struct {
	s   *stream
	key string // watched key, or start of the range
	end string // end of the range (fRange); "" = no end
	id  int64
	// next is the first revision the watcher has not been given. For a
	// synced watcher the effective value is max(next, Fanout.rev+1): the hub
	// does not touch every synced watcher on every revision. A synced
	// watcher with next > Fanout.rev+1 waits for a future start revision.
	next  int64
	idx   int32 // position in its list (group list or unsynced slice)
	state uint8
	flags uint8
	// Guarded by s.qmu.
	gone        bool // nothing more may be queued (canceled, compacted, stream closed)
	evSinceTick bool // events were queued since the last progress tick
}

func (w *watcher) isRange() bool { return w.flags&fRange != 0 }

// matches reports whether key is watched by w.
func (w *watcher) matches(key []byte) bool {
	if !w.isRange() {
		return string(key) == w.key
	}
	k := string(key)
	return k >= w.key && (w.end == "" || k < w.end)
}

// filtered reports whether ev is dropped by w's filters.
func (w *watcher) filtered(ev *mvccpb.Event) bool {
	switch ev.Type {
	case mvccpb.Event_PUT:
		return w.flags&fNoPut != 0
	case mvccpb.Event_DELETE:
		return w.flags&fNoDelete != 0
	}
	return false
}

func (w *watcher) interval() adt.Interval {
	// StringAffine treats "" as +infinity, which is exactly a from-key end.
	return adt.NewStringAffineInterval(w.key, w.end)
}

// wlist is the set of watchers sharing one key or one exact interval: events
// are matched once per list, not once per watcher.
type wlist struct{ ws []*watcher }

func (l *wlist) add(w *watcher) {
	w.idx = int32(len(l.ws))
	l.ws = append(l.ws, w)
}

func (l *wlist) remove(w *watcher) bool {
	i, last := int(w.idx), len(l.ws)-1
	if i > last || l.ws[i] != w {
		return false // defensive: not here
	}
	l.ws[i] = l.ws[last]
	l.ws[i].idx = int32(i)
	l.ws[last] = nil
	l.ws = l.ws[:last]
	if cap(l.ws) > 64 && len(l.ws) < cap(l.ws)/4 {
		l.ws = append([]*watcher(nil), l.ws...) // give memory back after mass cancels
	}
	return true
}

// group indexes watchers by key: single-key watchers in a map, range
// watchers in an interval tree whose nodes are exact intervals.
type group struct {
	keys   map[string]*wlist
	ranges adt.IntervalTree
	size   int
	buf    []*wlist                         // lists' result, reused
	rv     func(iv *adt.IntervalValue) bool // appends to buf; made once, so lookups do not allocate closures
}

func newGroup() *group {
	g := &group{keys: make(map[string]*wlist), ranges: adt.NewIntervalTree()}
	g.rv = func(iv *adt.IntervalValue) bool {
		g.buf = append(g.buf, iv.Val.(*wlist))
		return true
	}
	return g
}

func (g *group) add(w *watcher) {
	var l *wlist
	if !w.isRange() {
		if l = g.keys[w.key]; l == nil {
			l = &wlist{}
			g.keys[w.key] = l
		}
	} else {
		ivl := w.interval()
		if iv := g.ranges.Find(ivl); iv != nil {
			l = iv.Val.(*wlist)
		} else {
			l = &wlist{}
			g.ranges.Insert(ivl, l)
		}
	}
	l.add(w)
	g.size++
}

func (g *group) remove(w *watcher) {
	if !w.isRange() {
		l := g.keys[w.key]
		if l == nil || !l.remove(w) {
			return
		}
		if len(l.ws) == 0 {
			delete(g.keys, w.key)
		}
	} else {
		ivl := w.interval()
		iv := g.ranges.Find(ivl)
		if iv == nil || !iv.Val.(*wlist).remove(w) {
			return
		}
		if len(iv.Val.(*wlist).ws) == 0 {
			g.ranges.Delete(ivl)
		}
	}
	g.size--
}

// lists returns every list of watchers that watches key. The result is
// valid until the next call.
func (g *group) lists(key []byte) []*wlist {
	clear(g.buf)
	g.buf = g.buf[:0]
	if l := g.keys[string(key)]; l != nil {
		g.buf = append(g.buf, l)
	}
	if g.ranges.Len() > 0 {
		g.ranges.Visit(adt.NewStringAffinePoint(string(key)), g.rv)
	}
	return g.buf
}

// all returns every watcher of the group (rare paths only).
func (g *group) all() []*watcher {
	out := make([]*watcher, 0, g.size)
	for _, l := range g.keys {
		out = append(out, l.ws...)
	}
	if g.ranges.Len() > 0 {
		// Every interval intersects [\x00, +inf).
		g.ranges.Visit(adt.NewStringAffineInterval("\x00", ""), func(iv *adt.IntervalValue) bool {
			out = append(out, iv.Val.(*wlist).ws...)
			return true
		})
		// An interval starting at "" (impossible for etcd keys, which are
		// never empty) would be missed; watch keys are normalized to >= "\x00".
	}
	return out
}
