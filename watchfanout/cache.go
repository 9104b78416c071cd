package watchfanout

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// revEvents is one revision as the fanout delivers it. full and stripped
// are shared, read-only, by every response that carries them.
type revEvents struct {
	rev      int64
	full     []*mvccpb.Event    // as published: PrevKv set when the key existed
	stripped []*mvccpb.Event    // same events without PrevKv, built on first use
	hdr      *pb.ResponseHeader // built on first use
	size     int64              // approximate bytes, for the cache bound
}

func (r *revEvents) strip() []*mvccpb.Event {
	if r.stripped != nil {
		return r.stripped
	}
	need := false
	for _, ev := range r.full {
		if ev.PrevKv != nil {
			need = true
			break
		}
	}
	if !need {
		r.stripped = r.full
		return r.stripped
	}
	out := make([]*mvccpb.Event, len(r.full))
	for i, ev := range r.full {
		if ev.PrevKv == nil {
			out[i] = ev
		} else {
			out[i] = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
	}
	r.stripped = out
	return out
}

func (r *revEvents) header(f *Fanout) *pb.ResponseHeader {
	if r.hdr == nil {
		r.hdr = f.newHeader(r.rev)
	}
	return r.hdr
}

// eventsFor returns the events of r that w receives, given the ascending
// indexes of the events on keys w watches and the compaction revision. It
// shares r's slices whenever the selection is contiguous and unfiltered (the
// common case), so a revision delivered to 10,000 watchers allocates no
// event slices. nil: nothing.
//
// Previous values go only to prev_kv watchers, and not for a revision at or
// below crev: etcd reads them at revision-1 when it sends an event, and a
// read below the compaction revision fails, so a watch from the compaction
// revision gets that revision's events without them.
func eventsFor(w *watcher, r *revEvents, idx []int32, crev int64) []*mvccpb.Event {
	if len(idx) == 0 {
		return nil
	}
	base := r.full
	if w.flags&fPrevKV == 0 || r.rev <= crev {
		base = r.strip()
	}
	if w.flags&(fNoPut|fNoDelete) == 0 {
		first, last := int(idx[0]), int(idx[len(idx)-1])
		if last-first+1 == len(idx) {
			return base[first : last+1 : last+1]
		}
	}
	var out []*mvccpb.Event
	for _, i := range idx {
		if !w.filtered(r.full[i]) {
			out = append(out, base[i])
		}
	}
	return out
}

// matchIdx appends to buf the indexes of r's events that w watches.
func matchIdx(w *watcher, r *revEvents, buf []int32) []int32 {
	buf = buf[:0]
	for i, ev := range r.full {
		if w.matches(ev.Kv.Key) {
			buf = append(buf, int32(i))
		}
	}
	return buf
}

func eventsSize(evs []*mvccpb.Event) int64 {
	n := int64(64)
	for _, ev := range evs {
		n += 64
		if ev.Kv != nil {
			n += int64(len(ev.Kv.Key) + len(ev.Kv.Value))
		}
		if ev.PrevKv != nil {
			n += int64(len(ev.PrevKv.Key) + len(ev.PrevKv.Value))
		}
	}
	return n
}

// revCache holds the most recent contiguous revisions the hub applied, so
// that watchers that fell a little behind (slow streams, fresh watches a few
// revisions back) catch up from memory, under the hub lock, without a
// History read. It is bounded by revisions and bytes.
type revCache struct {
	ents     []*revEvents // ents[head:] are contiguous revisions
	head     int
	bytes    int64
	maxRevs  int
	maxBytes int64
}

// lo returns the oldest cached revision, or 0 when the cache is empty.
func (c *revCache) lo() int64 {
	if c.head == len(c.ents) {
		return 0
	}
	return c.ents[c.head].rev
}

func (c *revCache) len() int { return len(c.ents) - c.head }

func (c *revCache) get(rev int64) *revEvents {
	lo := c.lo()
	if lo == 0 || rev < lo {
		return nil
	}
	i := c.head + int(rev-lo)
	if i >= len(c.ents) {
		return nil
	}
	return c.ents[i]
}

// add appends r, which must follow the newest cached revision; revisions
// without events in between are cached as empty so indexing stays O(1).
func (c *revCache) add(r *revEvents) {
	if c.maxRevs <= 0 {
		return
	}
	if n := c.len(); n > 0 {
		last := c.ents[len(c.ents)-1].rev
		switch gap := r.rev - last - 1; {
		case gap < 0:
			c.clear() // cannot happen with a contiguous hub; start over
		case gap > int64(c.maxRevs):
			c.clear()
		default:
			for i := int64(1); i <= gap; i++ {
				c.push(&revEvents{rev: last + i})
			}
		}
	}
	if r.size == 0 {
		r.size = eventsSize(r.full)
	}
	c.push(r)
}

func (c *revCache) push(r *revEvents) {
	c.ents = append(c.ents, r)
	c.bytes += r.size
	for c.len() > 1 && (c.len() > c.maxRevs || c.bytes > c.maxBytes) {
		c.bytes -= c.ents[c.head].size
		c.ents[c.head] = nil
		c.head++
	}
	if c.head > 64 && c.head > len(c.ents)/2 {
		n := copy(c.ents, c.ents[c.head:])
		clear(c.ents[n:])
		c.ents = c.ents[:n]
		c.head = 0
	}
}

func (c *revCache) clear() {
	clear(c.ents)
	c.ents = c.ents[:0]
	c.head = 0
	c.bytes = 0
}
