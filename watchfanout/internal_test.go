package watchfanout

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

func TestGroupMatchesLikeBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	keys := []string{"\x00", "a", "a/1", "a/2", "b", "ba", "c", "zz"}
	g := newGroup()
	var ws []*watcher
	for i := range 2000 {
		w := &watcher{id: int64(i), key: keys[rng.IntN(len(keys))]}
		switch rng.IntN(3) {
		case 1:
			w.flags |= fRange // from key
		case 2:
			w.flags |= fRange
			w.end = keys[rng.IntN(len(keys))] + "\x00"
			if w.end <= w.key {
				w.key = "\x00"
			}
		}
		g.add(w)
		ws = append(ws, w)
	}
	// Remove a random half, some twice (must be harmless).
	rng.Shuffle(len(ws), func(i, j int) { ws[i], ws[j] = ws[j], ws[i] })
	for _, w := range ws[:1000] {
		g.remove(w)
		g.remove(w)
	}
	live := ws[1000:]
	if g.size != len(live) || len(g.all()) != len(live) {
		t.Fatalf("size %d, all %d, want %d", g.size, len(g.all()), len(live))
	}
	for _, k := range append(keys, "a/", "a0", "bb", "zzz") {
		var got, want []int64
		for _, l := range g.lists([]byte(k)) {
			for _, w := range l.ws {
				got = append(got, w.id)
			}
		}
		for _, w := range live {
			if w.matches([]byte(k)) {
				want = append(want, w.id)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("key %q: matched %d watchers, want %d", k, len(got), len(want))
		}
	}
	for _, w := range live {
		g.remove(w)
	}
	if g.size != 0 || len(g.keys) != 0 || g.ranges.Len() != 0 {
		t.Fatalf("group not empty: %d %d %d", g.size, len(g.keys), g.ranges.Len())
	}
}

func bigEvents(n, size int) []*mvccpb.Event {
	var evs []*mvccpb.Event
	for i := range n {
		evs = append(evs, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: fmt.Appendf(nil, "k%03d", i), Value: bytes.Repeat([]byte{'v'}, size), ModRevision: 9}})
	}
	return evs
}

func TestSendFragments(t *testing.T) {
	hdr := &pb.ResponseHeader{Revision: 9}
	for _, tc := range []struct {
		n, size, max int
		want         int // responses
	}{
		{1, 5000, 1000, 1},   // one event is never split
		{5, 10, 1000, 1},     // small enough
		{10, 300, 1000, 4},   // three per fragment (3*~310 < 1000)
		{10, 1000, 1000, 10}, // one per fragment
	} {
		resp := &pb.WatchResponse{Header: hdr, WatchId: 3, Events: bigEvents(tc.n, tc.size)}
		var got []*pb.WatchResponse
		if err := sendFragments(resp, tc.max, func(r *pb.WatchResponse) error { got = append(got, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Fatalf("%+v: %d responses, want %d", tc, len(got), tc.want)
		}
		var evs []*mvccpb.Event
		for i, r := range got {
			if r.Fragment != (i < len(got)-1) || r.WatchId != 3 || r.Header != hdr {
				t.Fatalf("%+v: fragment %d = %v", tc, i, r)
			}
			if len(r.Events) > 1 && proto.Size(r) >= tc.max {
				t.Fatalf("%+v: fragment %d is %d bytes", tc, i, proto.Size(r))
			}
			evs = append(evs, r.Events...)
		}
		if !slices.Equal(evs, resp.Events) {
			t.Fatalf("%+v: fragments do not reassemble", tc)
		}
	}
}

func TestRevCache(t *testing.T) {
	c := revCache{maxRevs: 4, maxBytes: 1 << 20}
	for r := int64(10); r <= 15; r++ {
		c.add(&revEvents{rev: r, full: bigEvents(1, 10)})
	}
	if c.lo() != 12 || c.len() != 4 || c.get(11) != nil || c.get(12).rev != 12 || c.get(15).rev != 15 || c.get(16) != nil {
		t.Fatalf("cache lo %d len %d", c.lo(), c.len())
	}
	c.add(&revEvents{rev: 18}) // gap: filled with empty revisions
	if c.get(16) == nil || len(c.get(16).full) != 0 || c.get(18).rev != 18 || c.lo() != 15 {
		t.Fatalf("gap not filled: lo %d", c.lo())
	}
	c.add(&revEvents{rev: 100}) // too far: start over
	if c.lo() != 100 || c.len() != 1 {
		t.Fatalf("after jump lo %d len %d", c.lo(), c.len())
	}
	small := revCache{maxRevs: 100, maxBytes: 2000}
	for r := int64(1); r <= 50; r++ {
		small.add(&revEvents{rev: r, full: bigEvents(1, 500)})
	}
	if small.bytes > 2000 || small.len() < 1 || small.get(50) == nil {
		t.Fatalf("byte bound: %d bytes, %d revisions", small.bytes, small.len())
	}
	c.clear()
	if c.lo() != 0 || c.get(100) != nil {
		t.Fatal("clear")
	}
}

func TestEventsForSharesSlices(t *testing.T) {
	evs := bigEvents(4, 3)
	for _, ev := range evs {
		ev.PrevKv = &mvccpb.KeyValue{Key: ev.Kv.Key}
	}
	evs[2].Type = mvccpb.Event_DELETE
	r := &revEvents{rev: 9, full: evs}
	prev := &watcher{flags: fPrevKV}
	plain := &watcher{}
	noPut := &watcher{flags: fNoPut}
	all := []int32{0, 1, 2, 3}
	if got := eventsFor(prev, r, all, 0); &got[0] != &evs[0] || len(got) != 4 {
		t.Fatal("prev_kv watcher does not share the full slice")
	}
	got := eventsFor(plain, r, all, 0)
	if got[0].PrevKv != nil || &got[0] != &r.strip()[0] {
		t.Fatal("plain watcher does not get the shared stripped slice")
	}
	if got := eventsFor(plain, r, []int32{1, 2}, 0); len(got) != 2 || got[0] != r.strip()[1] {
		t.Fatal("contiguous selection")
	}
	if got := eventsFor(noPut, r, all, 0); len(got) != 1 || got[0].Type != mvccpb.Event_DELETE || got[0].PrevKv != nil {
		t.Fatalf("filtered selection = %v", got)
	}
	if got := eventsFor(noPut, r, []int32{0}, 0); got != nil {
		t.Fatalf("fully filtered = %v", got)
	}
	allocs := testing.AllocsPerRun(100, func() { eventsFor(plain, r, all[1:2], 0) })
	if allocs != 0 {
		t.Fatalf("eventsFor allocates %v per call on the common path", allocs)
	}
}

// etcd reads previous values at revision-1 when it sends an event, so a
// prev_kv watcher gets none for the events of the compaction revision (the
// read below it fails), and gets them above it.
func TestEventsForNoPrevKVAtCompaction(t *testing.T) {
	evs := bigEvents(2, 3)
	for _, ev := range evs {
		ev.PrevKv = &mvccpb.KeyValue{Key: ev.Kv.Key}
	}
	r := &revEvents{rev: 9, full: evs}
	prev := &watcher{flags: fPrevKV}
	both := []int32{0, 1}
	for _, crev := range []int64{9, 12} {
		if got := eventsFor(prev, r, both, crev); len(got) != 2 || got[0].PrevKv != nil || got[1].PrevKv != nil {
			t.Fatalf("compaction at %d: events of revision 9 = %v, want no previous values", crev, got)
		}
	}
	if got := eventsFor(prev, r, both, 8); len(got) != 2 || got[0].PrevKv == nil || got[1].PrevKv == nil {
		t.Fatalf("compaction at 8: events of revision 9 = %v, want previous values", got)
	}
}
