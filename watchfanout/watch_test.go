package watchfanout_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

func TestConfigValidate(t *testing.T) {
	var c watchfanout.Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.ProgressNotifyInterval != 10*time.Minute || c.SendBuffer != 128 {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	bad := c
	bad.ProgressNotifyInterval = -1
	if err := bad.Validate(); !errors.Is(err, watchfanout.ErrInvalidConfig) {
		t.Fatalf("Validate(negative interval) = %v", err)
	}
	if _, err := watchfanout.New(bad, eventbus.NewMemory(), watchtest.NewModel(nil)); !errors.Is(err, watchfanout.ErrInvalidConfig) {
		t.Fatalf("New(bad config) = %v", err)
	}
}

func TestWatchPutDeleteCancel(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.model.Put("foo", "0")
	c := e.client()
	cr := c.createWait(key("foo"))
	if cr.WatchId != 0 || cr.Canceled || cr.Header.Revision != e.model.Rev() {
		t.Fatalf("created = %v, want id 0 at revision %d", cr, e.model.Rev())
	}
	r1 := e.model.Put("foo", "1")
	e.model.Put("bar", "x") // not watched
	r2, _ := e.model.Delete("foo", "")
	c.waitEventRev(0, r2)
	var evs []*pb.WatchResponse
	for _, r := range c.Responses() {
		if len(r.Events) > 0 {
			evs = append(evs, r)
		}
	}
	if len(evs) != 2 || evs[0].Header.Revision != r1 || evs[1].Header.Revision != r2 ||
		evs[0].Events[0].Type != mvccpb.Event_PUT || evs[1].Events[0].Type != mvccpb.Event_DELETE {
		t.Fatalf("event responses = %v", evs)
	}
	if evs[0].Events[0].PrevKv != nil {
		t.Fatalf("prev_kv sent without being requested")
	}
	if err := c.Cancel(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].Canceled })
	last := c.Responses()[len(c.Responses())-1]
	if last.WatchId != 0 || last.Created || last.CompactRevision != 0 {
		t.Fatalf("cancel response = %v", last)
	}
	// Cancel of an unknown ID gets no response (etcd), the stream keeps working.
	if err := c.Cancel(ctxT(t), 42); err != nil {
		t.Fatal(err)
	}
	cr = c.createWait(key("foo"))
	if cr.WatchId != 1 {
		t.Fatalf("second automatic id = %d, want 1", cr.WatchId)
	}
	r3 := e.model.Put("foo", "2")
	c.waitEventRev(1, r3)
	c.check(e.model.History())
}

func TestPrevKVAndFilters(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	c.createWait(watchtest.Watch{Key: []byte("k"), PrevKV: true})
	c.createWait(watchtest.Watch{Key: []byte("k"), NoPut: true})
	c.createWait(watchtest.Watch{Key: []byte("k"), NoDelete: true, PrevKV: true})
	e.model.Put("k", "a")
	e.model.Put("k", "b")
	rd, _ := e.model.Delete("k", "")
	c.sync(rd)
	res := c.check(e.model.History())
	if res[0].Events != 3 || res[1].Events != 1 || res[2].Events != 2 {
		t.Fatalf("event counts = %d %d %d, want 3 1 2", res[0].Events, res[1].Events, res[2].Events)
	}
	for _, r := range c.Responses() {
		if r.WatchId == 0 && len(r.Events) == 1 && r.Events[0].Kv.ModRevision == rd {
			if pk := r.Events[0].PrevKv; pk == nil || string(pk.Value) != "b" {
				t.Fatalf("delete prev_kv = %v, want value b", pk)
			}
		}
	}
}

func TestRangeAndFromKeyWatches(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	c.createWait(prefix("a/"))                                           // [a/, a0)
	c.createWait(watchtest.Watch{Key: []byte("b"), RangeEnd: []byte{0}}) // >= b
	c.createWait(watchtest.Watch{Key: nil, RangeEnd: []byte{0}})         // everything
	for _, k := range []string{"a", "a/1", "a/2", "a0", "b", "c", "\x00x"} {
		e.model.Put(k, "v")
	}
	rev, _ := e.model.Txn([]watchtest.Op{{Key: []byte("a/3"), Value: []byte("v")}, {Key: []byte("zz"), Value: []byte("v")}})
	c.sync(rev)
	res := c.check(e.model.History())
	if res[0].Events != 3 || res[1].Events != 3 || res[2].Events != 9 {
		t.Fatalf("event counts = %d %d %d, want 3 3 9", res[0].Events, res[1].Events, res[2].Events)
	}
}

func TestCreateErrorsAndIDs(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.model.Put("x", "1")
	c := e.client()
	if cr := c.createWait(watchtest.Watch{Key: []byte("a")}); cr.WatchId != 0 {
		t.Fatalf("auto id = %d", cr.WatchId)
	}
	w7 := watchtest.Watch{Key: []byte("a")}
	req := w7.Request()
	req.WatchId = 7
	c.mu.Lock()
	c.creates = append(c.creates, w7, w7)
	c.mu.Unlock()
	for range 2 {
		if err := c.Create(ctxT(t), req); err != nil {
			t.Fatal(err)
		}
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return len(rs) >= 3 })
	rs := c.Responses()
	if rs[1].WatchId != 7 || !rs[1].Created || rs[1].Canceled {
		t.Fatalf("client-chosen id: %v", rs[1])
	}
	if rs[2].WatchId != -1 || !rs[2].Created || !rs[2].Canceled || rs[2].CancelReason != "mvcc: duplicate watch ID provided on the WatchStream" {
		t.Fatalf("duplicate id: %v", rs[2])
	}
	// Automatic IDs skip IDs chosen by the client.
	for want := int64(1); want <= 6; want++ {
		if cr := c.createWait(key("a")); cr.WatchId != want {
			t.Fatalf("auto id = %d, want %d", cr.WatchId, want)
		}
	}
	if cr := c.createWait(key("a")); cr.WatchId != 8 {
		t.Fatalf("auto id after 7 = %d, want 8", cr.WatchId)
	}
	if cr := c.createWait(watchtest.Watch{Key: []byte("b"), RangeEnd: []byte("a")}); cr.WatchId != -1 || !cr.Canceled || cr.CancelReason != "mvcc: watcher range is empty" {
		t.Fatalf("empty range: %v", cr)
	}
	if cr := c.createWait(watchtest.Watch{Key: []byte("b"), StartRevision: -1}); cr.WatchId != -1 || !cr.Canceled || cr.CancelReason != rpctypes.ErrCompacted.Error() {
		t.Fatalf("negative start: %v", cr)
	}
	r := e.model.Put("a", "1")
	c.sync(r)
	c.check(e.model.History())
}

func TestWatchFromPast(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  watchfanout.Config
	}{
		{"cache", watchfanout.Config{}},
		{"history", watchfanout.Config{CacheRevisions: 2, ChunkRevisions: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpt{cfg: tc.cfg})
			for i := range 50 {
				e.model.Put([]string{"a", "b", "c"}[i%3], strings.Repeat("v", i))
			}
			c := e.client()
			cr := c.createWait(watchtest.Watch{Key: []byte("a"), StartRevision: 2, PrevKV: true})
			if cr.Header.Revision != e.model.Rev() {
				t.Fatalf("created header %d, want current %d", cr.Header.Revision, e.model.Rev())
			}
			c.createWait(watchtest.Watch{Key: []byte("b"), RangeEnd: []byte("d"), StartRevision: 30})
			r := e.model.Put("a", "live")
			c.sync(r)
			res := c.check(e.model.History())
			if res[0].Events != 18 || res[1].Events != 15 || res[0].Reached != r {
				t.Fatalf("results = %+v", res)
			}
			st := e.f.Stats()
			if tc.name == "history" && st.HistoryReads == 0 {
				t.Fatalf("expected History reads, stats %+v", st)
			}
		})
	}
}

// A watcher that starts in the past gets its pending revisions together, as
// etcd sends them: from the cache in one response, from History in one
// response per catch-up round however many chunks it read, each with the
// header at the last revision examined. Live revisions then come one
// response each.
func TestCatchUpBatchesRevisions(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  watchfanout.Config
		// wantResponses is how many event responses the catch-up takes.
		wantResponses int
	}{
		{"cache", watchfanout.Config{}, 1},
		// History over several chunks up to the oldest cached revision
		// (the two cached ones hold no event of "a").
		{"history", watchfanout.Config{CacheRevisions: 2, ChunkRevisions: 7}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpt{cfg: tc.cfg})
			for i := range 30 {
				e.model.Put([]string{"a", "b", "c"}[i%3], "v")
			}
			cur := e.model.Rev()
			// The hub first applies every put, so that what the cache holds
			// when the watch starts, and thus the split between History and
			// cache, does not depend on timing.
			waitStats := func(what string, ok func(watchfanout.Stats) bool) {
				deadline := time.Now().Add(waitTimeout)
				for !ok(e.f.Stats()) {
					if time.Now().After(deadline) {
						t.Fatalf("waiting until %s: stats %+v", what, e.f.Stats())
					}
					time.Sleep(time.Millisecond)
				}
			}
			waitStats("the hub applied every put", func(s watchfanout.Stats) bool { return s.Revision == cur })
			c := e.client()
			c.createWait(watchtest.Watch{Key: []byte("a"), StartRevision: 2})
			c.waitEventRev(0, cur-2) // the last put of "a"
			// Revisions that arrive while it is still catching up would be
			// batched with the rest, as etcd does for unsynced watchers.
			waitStats("the watcher is synced", func(s watchfanout.Stats) bool { return s.Synced == 1 && s.Unsynced == 0 })
			live := e.model.Put("a", "live")
			live2 := e.model.Put("a", "live")
			c.waitEventRev(0, live2)
			var evs []*pb.WatchResponse
			for _, r := range c.Responses() {
				if len(r.Events) > 0 {
					evs = append(evs, r)
				}
			}
			if len(evs) != tc.wantResponses+2 {
				t.Fatalf("%d event responses, want %d for the catch-up and 2 live: %v", len(evs), tc.wantResponses+2, evs)
			}
			n := 0
			for _, r := range evs[:tc.wantResponses] {
				last := r.Events[len(r.Events)-1].Kv.ModRevision
				if r.Header.Revision < last || r.Header.Revision > cur {
					t.Fatalf("catch-up response header %d, last event %d, store at %d", r.Header.Revision, last, cur)
				}
				n += len(r.Events)
			}
			if n != 10 {
				t.Fatalf("catch-up delivered %d events, want 10", n)
			}
			if evs[len(evs)-1].Header.Revision != live2 || evs[len(evs)-2].Header.Revision != live {
				t.Fatalf("live responses %v, want one at %d and one at %d", evs[len(evs)-2:], live, live2)
			}
			c.check(e.model.History())
		})
	}
}

func TestCompactedWatchCanceled(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{CacheRevisions: 2}})
	for range 10 {
		e.model.Put("k", "v")
	}
	if err := e.model.Compact(6); err != nil {
		t.Fatal(err)
	}
	c := e.client()
	cr := c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: 3})
	if cr.Canceled || cr.WatchId != 0 {
		t.Fatalf("created = %v; want a successful creation first (etcd)", cr)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].Canceled })
	last := c.Responses()[len(c.Responses())-1]
	if last.WatchId != 0 || last.CompactRevision != 6 {
		t.Fatalf("compaction cancel = %v", last)
	}
	// What etcdctl prints for it.
	if got := rpctypes.ErrCompacted.Error(); !strings.Contains(got, "required revision has been compacted") {
		t.Fatalf("rpctypes message %q", got)
	}
	// The compacted watch keeps its ID until the client cancels it (etcd).
	if cr := c.createWait(key("k")); cr.WatchId != 1 {
		t.Fatalf("next id = %d, want 1", cr.WatchId)
	}
	// etcd serves a watch that starts exactly at the compaction revision.
	cr = c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: 6})
	if cr.Canceled {
		t.Fatalf("watch at the compaction revision canceled: %v", cr)
	}
	r := e.model.Put("k", "w")
	c.waitEventRev(2, r)
	// etcd answers no progress request while the compacted watch is not
	// canceled by the client (it is never synced again); sync cancels it.
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c.sync(r)
	canceled := false
	for _, resp := range c.Responses() {
		switch {
		case resp.WatchId == 0 && resp.Canceled && resp.CompactRevision == 0:
			canceled = true
		case resp.WatchId == -1 && !canceled:
			t.Fatalf("progress answered before the compacted watch was canceled: %v", resp)
		}
	}
	res := c.check(e.model.History())
	if res[0].CompactRevision != 6 || res[2].Events != 7 || res[2].Reached != r {
		t.Fatalf("results = %+v", res)
	}
}

func TestCompactionDuringCatchUp(t *testing.T) {
	bh := &blockingHistory{}
	e := newEnv(t, envOpt{
		cfg:  watchfanout.Config{CacheRevisions: 2},
		hist: func(h watchfanout.History) watchfanout.History { bh.History = h; return bh },
	})
	for range 20 {
		e.model.Put("k", "v")
	}
	c := e.client()
	bh.block()
	cr := c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: 5})
	if err := e.model.Compact(15); err != nil {
		t.Fatal(err)
	}
	bh.unblock()
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].CompactRevision != 0 })
	last := c.Responses()[len(c.Responses())-1]
	if last.WatchId != cr.WatchId || !last.Canceled || last.CompactRevision != 15 {
		t.Fatalf("compaction cancel = %v", last)
	}
	c.check(e.model.History())
}

func TestHubCompactedWhileBehind(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{PollInterval: time.Hour}})
	c := e.client()
	c.createWait(key("k"))
	c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: 1000}) // far future: survives
	e.publish.Store(false)
	for range 10 {
		e.model.Put("k", "v")
	}
	cur := e.model.Rev()
	if err := e.model.Compact(cur); err != nil {
		t.Fatal(err)
	}
	if err := e.bus.PublishProgress(ctxT(t), cur); err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].CompactRevision != 0 })
	last := c.Responses()[len(c.Responses())-1]
	if last.WatchId != 0 || last.CompactRevision != cur {
		t.Fatalf("compaction cancel = %v", last)
	}
	if st := e.f.Stats(); st.Revision != cur || st.Synced != 1 || st.CompactCancels != 1 {
		t.Fatalf("stats = %+v", st)
	}
	c.check(e.model.History())
}

func TestFutureRevisionWaits(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	start := e.model.Rev() + 6
	c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: start})
	c.createWait(key("other"))
	for range 4 {
		e.model.Put("k", "early")
	}
	// As etcd: dropped, since the future watcher is not synced before its
	// start revision (at start-1 too).
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	r := e.model.Put("other", "x")
	if r != start-1 {
		t.Fatalf("put revision %d, want %d", r, start-1)
	}
	c.waitEventRev(1, start-1)
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if r = e.model.Put("k", "first"); r != start {
		t.Fatalf("put revision %d, want %d", r, start)
	}
	c.waitEventRev(0, start)
	// At the start revision: answered. Answers are queued in order, so none
	// of the requests above was answered if this is the only one.
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].WatchId == -1 })
	for _, resp := range c.Responses() {
		switch {
		case resp.WatchId == 0 && len(resp.Events) > 0 && resp.Events[0].Kv.ModRevision < start:
			t.Fatalf("response before the start revision: %v", resp)
		case resp.WatchId == -1 && resp.Header.Revision != start:
			t.Fatalf("progress response %v, want only one, at revision %d", resp, start)
		}
	}
	res := c.check(e.model.History())
	if res[0].Events != 1 || res[0].Start != start {
		t.Fatalf("results = %+v", res)
	}
}

func TestProgressRequest(t *testing.T) {
	bh := &blockingHistory{}
	e := newEnv(t, envOpt{
		cfg:  watchfanout.Config{CacheRevisions: 1},
		hist: func(h watchfanout.History) watchfanout.History { bh.History = h; return bh },
	})
	c := e.client()
	// No watchers: no response (etcd).
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c.createWait(key("a"))
	c.createWait(key("b"))
	var last int64
	for range 5 {
		last = e.model.Put("a", "v")
	}
	c.waitEventRev(0, last)
	rs := c.Responses()
	if len(rs) != 2+5 {
		t.Fatalf("got %d responses, want 7 (no progress response without watchers): %v", len(rs), rs)
	}
	c.sync(e.model.Rev())
	lastResp := c.Responses()[len(c.Responses())-1]
	if lastResp.WatchId != -1 || lastResp.Header.Revision != e.model.Rev() || len(lastResp.Events) != 0 {
		t.Fatalf("progress response = %v", lastResp)
	}
	// With an unsynced watcher the answer waits until it has caught up.
	bh.block()
	c.createWait(watchtest.Watch{Key: []byte("a"), StartRevision: 2})
	n := len(c.Responses())
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	r := e.model.Put("b", "v")
	c.waitEventRev(1, r)
	for _, resp := range c.Responses()[n:] {
		if resp.WatchId == -1 {
			t.Fatalf("progress answered while a watcher is unsynced: %v", resp)
		}
	}
	bh.unblock()
	c.wait(func(rs []*pb.WatchResponse) bool { return rs[len(rs)-1].WatchId == -1 })
	if got := c.Responses()[len(c.Responses())-1].Header.Revision; got != r {
		t.Fatalf("deferred progress revision %d, want %d", got, r)
	}
	res := c.check(e.model.History())
	if res[2].Events != 5 {
		t.Fatalf("catch-up watcher got %d events, want 5", res[2].Events)
	}
}

// A progress request made after a write was acknowledged is answered at
// that write's revision or later, even while the bus has not brought it to
// the hub yet (etcd answers with the store's current revision; clients such
// as Kubernetes' watch cache rely on it).
func TestProgressRequestCoversStoreRevision(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{PollInterval: 50 * time.Millisecond}})
	c := e.client()
	c.createWait(key("a"))
	c.sync(e.model.Rev())
	e.publish.Store(false) // the write reaches History only: the hub lags
	r := e.model.Put("b", "v")
	n := len(c.Responses())
	if err := c.RequestProgress(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return len(rs) > n })
	if p := c.Responses()[n]; p.WatchId != -1 || p.Header.Revision < r {
		t.Fatalf("progress response %v, want watch -1 at revision %d or later", p, r)
	}
	c.check(e.model.History())
}

func TestProgressNotify(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{ProgressNotifyInterval: 30 * time.Millisecond}})
	c := e.client()
	c.createWait(watchtest.Watch{Key: []byte("quiet")}) // no progress_notify
	req := watchtest.Watch{Key: []byte("k")}.Request()
	req.ProgressNotify = true
	c.mu.Lock()
	c.creates = append(c.creates, watchtest.WatchFromRequest(req))
	c.mu.Unlock()
	if err := c.Create(ctxT(t), req); err != nil {
		t.Fatal(err)
	}
	r := e.model.Put("other", "v")
	c.wait(func(rs []*pb.WatchResponse) bool {
		for _, x := range rs {
			if x.WatchId == 1 && !x.Created && len(x.Events) == 0 && x.Header.Revision == r {
				return true
			}
		}
		return false
	})
	r = e.model.Put("k", "v")
	c.waitEventRev(1, r)
	r = e.model.Put("other", "w")
	c.wait(func(rs []*pb.WatchResponse) bool {
		x := rs[len(rs)-1]
		return x.WatchId == 1 && len(x.Events) == 0 && x.Header.Revision == r
	})
	for _, x := range c.Responses() {
		if x.WatchId == 0 && !x.Created {
			t.Fatalf("progress notification to a watch without progress_notify: %v", x)
		}
	}
	c.check(e.model.History())
}

func TestSlowConsumerFallsBackAndRecovers(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{SendBuffer: 4, CacheRevisions: 16, ChunkRevisions: 10}})
	slow, fast := e.client(), e.client()
	for i := range 3 {
		slow.createWait(watchtest.Watch{Key: []byte("k"), PrevKV: i == 0})
		fast.createWait(key("k"))
	}
	slow.Pause()
	var last int64
	for i := range 200 {
		last = e.model.Put("k", strings.Repeat("x", i))
	}
	// The fast stream is not held back by the slow one.
	fast.waitEventRev(2, last)
	if st := e.f.Stats(); st.Victims == 0 || st.Unsynced == 0 {
		t.Fatalf("expected the slow stream's watchers to be unsynced: %+v", st)
	}
	slow.Resume()
	slow.sync(last)
	fast.sync(last) // the fast stream may have fallen behind for a moment too
	res := slow.check(e.model.History())
	for _, r := range res {
		if r.Events != 200 || r.Reached != last {
			t.Fatalf("slow watch result %+v, want 200 events up to %d", r, last)
		}
	}
	if st := e.f.Stats(); st.Unsynced != 0 || st.Synced != 6 {
		t.Fatalf("after recovery: %+v", st)
	}
	fast.check(e.model.History())
}

func TestFragments(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{MaxResponseBytes: 1000}})
	c := e.client()
	c.createWait(watchtest.Watch{Key: []byte("k"), RangeEnd: []byte("l"), Fragment: true, PrevKV: true})
	c.createWait(watchtest.Watch{Key: []byte("k"), RangeEnd: []byte("l")})
	var ops []watchtest.Op
	for i := range 10 {
		ops = append(ops, watchtest.Op{Key: []byte{'k', byte('0' + i)}, Value: bytes.Repeat([]byte{'v'}, 300)})
	}
	rev, _ := e.model.Txn(ops)
	c.sync(rev)
	frags, whole := 0, 0
	for _, r := range c.Responses() {
		switch {
		case r.WatchId == 0 && len(r.Events) > 0:
			frags++
			if len(r.Events) > 3 {
				t.Fatalf("fragment with %d events over 1000 bytes", len(r.Events))
			}
		case r.WatchId == 1 && len(r.Events) > 0:
			whole++
		}
	}
	if frags < 4 || whole != 1 {
		t.Fatalf("fragment responses %d (want >= 4), unfragmented %d (want 1)", frags, whole)
	}
	c.check(e.model.History())
}

func TestGapRepairedFromHistory(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{PollInterval: time.Hour}})
	c := e.client()
	c.createWait(prefix("k"))
	e.model.Put("k1", "a")
	e.publish.Store(false)
	e.model.Put("k2", "lost")
	e.model.Put("k3", "lost")
	e.publish.Store(true)
	r := e.model.Put("k4", "a") // arrives with a gap before it
	c.waitEventRev(0, r)
	// Lost at the tail: only a progress beat tells.
	e.publish.Store(false)
	r = e.model.Put("k5", "lost")
	if err := e.bus.PublishProgress(ctxT(t), r); err != nil {
		t.Fatal(err)
	}
	c.waitEventRev(0, r)
	res := c.check(e.model.History())
	if res[0].Events != 5 {
		t.Fatalf("events %d, want 5", res[0].Events)
	}
	if st := e.f.Stats(); st.Repairs < 2 {
		t.Fatalf("stats %+v: want >= 2 repairs", st)
	}
}

func TestSilentBusPolled(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{PollInterval: 20 * time.Millisecond}})
	c := e.client()
	c.createWait(key("k"))
	e.publish.Store(false)
	r := e.model.Put("k", "never published")
	c.waitEventRev(0, r)
	c.check(e.model.History())
}

func TestDuplicatesDropped(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	c.createWait(key("k"))
	e.publish.Store(false)
	r := e.model.Put("k", "v")
	h := e.model.History()
	for range 3 {
		if err := e.bus.Publish(ctxT(t), []eventbus.Revision{h[len(h)-1]}); err != nil {
			t.Fatal(err)
		}
	}
	e.publish.Store(true)
	r2 := e.model.Put("k", "w")
	c.waitEventRev(0, r2)
	res := c.check(e.model.History())
	if res[0].Events != 2 || r2 != r+1 {
		t.Fatalf("events %d", res[0].Events)
	}
	if st := e.f.Stats(); st.Duplicates < 2 {
		t.Fatalf("stats %+v: want >= 2 duplicates", st)
	}
}

func TestRecvEOFKeepsServing(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	c.createWait(key("k"))
	c.CloseSend()
	r := e.model.Put("k", "v")
	c.waitEventRev(0, r)
	c.check(e.model.History())
}

type failingStream struct{ *watchtest.Stream }

var errSend = errors.New("send failed")

func (failingStream) Send(*pb.WatchResponse) error { return errSend }

func TestServeEnds(t *testing.T) {
	e := newEnv(t, envOpt{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A failing Send ends Serve with its error.
	fs := failingStream{watchtest.NewStream(ctx)}
	done := make(chan error, 1)
	go func() { done <- e.f.Serve(ctx, fs) }()
	if err := fs.Create(ctxT(t), key("k").Request()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, errSend) {
		t.Fatalf("Serve = %v, want %v", err, errSend)
	}
	// A Recv error other than EOF ends Serve with it.
	es := &errStream{err: io.ErrUnexpectedEOF}
	if err := e.f.Serve(ctx, es); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Serve = %v", err)
	}
	// Close ends running streams with ErrClosed and is idempotent.
	c := e.client()
	c.createWait(key("k"))
	if err := e.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-c.served; !errors.Is(err, watchfanout.ErrClosed) {
		t.Fatalf("Serve after Close = %v", err)
	}
	c.served <- watchfanout.ErrClosed
	if err := e.f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.f.Serve(ctx, watchtest.NewStream(ctx)); !errors.Is(err, watchfanout.ErrClosed) {
		t.Fatalf("Serve on a closed fanout = %v", err)
	}
	if st := e.f.Stats(); st.Streams != 0 || st.Synced != 0 {
		t.Fatalf("stats after close %+v", st)
	}
}

type errStream struct{ err error }

func (s *errStream) Recv() (*pb.WatchRequest, error) { return nil, s.err }
func (s *errStream) Send(*pb.WatchResponse) error    { return nil }

func TestStreamEndRemovesWatchers(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	for range 10 {
		c.createWait(prefix("k"))
	}
	c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: 1})
	if st := e.f.Stats(); st.Synced+st.Unsynced != 11 {
		t.Fatalf("stats %+v", st)
	}
	c.stop()
	if st := e.f.Stats(); st.Synced != 0 || st.Unsynced != 0 || st.Streams != 0 {
		t.Fatalf("stats after stream end %+v", st)
	}
}

// failStart fails CurrentRevision until released.
type failStart struct {
	watchfanout.History
	ok atomic.Bool
}

func (h *failStart) CurrentRevision(ctx context.Context) (int64, int64, error) {
	if !h.ok.Load() {
		return 0, 0, errors.New("history unavailable")
	}
	return h.History.CurrentRevision(ctx)
}

func TestHistoryUnavailableAtStart(t *testing.T) {
	fs := &failStart{}
	e := newEnv(t, envOpt{
		cfg:  watchfanout.Config{RetryInterval: 5 * time.Millisecond},
		hist: func(h watchfanout.History) watchfanout.History { fs.History = h; return fs },
	})
	e.model.Put("k", "before")
	// Serve waits for the hub; a canceled context ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.f.Serve(ctx, watchtest.NewStream(ctx)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve before ready = %v", err)
	}
	c := e.client()
	c.mu.Lock()
	c.creates = append(c.creates, key("k"))
	c.mu.Unlock()
	created := make(chan error, 1)
	go func() { created <- c.Create(ctxT(t), key("k").Request()) }() // taken once the hub is ready
	fs.ok.Store(true)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return len(rs) == 1 })
	r := e.model.Put("k", "after")
	c.waitEventRev(0, r)
	c.check(e.model.History())
}

func TestBogusProgressBeatDoesNotStall(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{RetryInterval: time.Millisecond}})
	c := e.client()
	c.createWait(key("k"))
	// A beat for a revision the store does not have (a stale publisher).
	if err := e.bus.PublishProgress(ctxT(t), e.model.Rev()+1000); err != nil {
		t.Fatal(err)
	}
	r := e.model.Put("k", "v")
	c.waitEventRev(0, r)
	c.sync(r)
	c.check(e.model.History())
}

func TestControlBackpressure(t *testing.T) {
	e := newEnv(t, envOpt{})
	c := e.client()
	c.Pause() // the client reads nothing
	const n = 2000
	var accepted atomic.Int64
	done := make(chan error, 1)
	go func() {
		for range n {
			if err := c.Create(ctxT(t), key("k").Request()); err != nil {
				done <- err
				return
			}
			accepted.Add(1)
		}
		done <- nil
	}()
	// The server stops reading requests once ~1024 control responses are
	// queued (plus the batch the blocked sender holds).
	last, stable := int64(-1), 0
	for stable < 5 {
		time.Sleep(20 * time.Millisecond)
		if a := accepted.Load(); a == last {
			stable++
		} else {
			last, stable = a, 0
		}
	}
	if last >= n || last > 1100 {
		t.Fatalf("%d create requests accepted by a server whose client reads nothing", last)
	}
	c.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.wait(func(rs []*pb.WatchResponse) bool { return len(rs) == n })
	for i, r := range c.Responses() {
		if !r.Created || r.WatchId != int64(i) {
			t.Fatalf("response %d = %v", i, r)
		}
	}
}

// As etcd (progressIfSync: rev >= the watch's start revision), a watch
// waiting for a future start revision gets no progress notification before
// the store reaches it, not even at the revision just below; the ticks that
// notify another watcher of the stream prove it was considered.
func TestProgressNotifyWaitsForStart(t *testing.T) {
	e := newEnv(t, envOpt{cfg: watchfanout.Config{ProgressNotifyInterval: 5 * time.Millisecond}})
	c := e.client()
	start := e.model.Rev() + 2
	c.createWait(watchtest.Watch{Key: []byte("x"), ProgressNotify: true})                       // ID 0
	c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: start, ProgressNotify: true}) // ID 1
	below := e.model.Put("other", "v")                                                          // start-1
	notified := func(id, rev int64) func([]*pb.WatchResponse) bool {
		return func(rs []*pb.WatchResponse) bool {
			n := 0
			for _, r := range rs {
				if r.WatchId == id && !r.Created && len(r.Events) == 0 && r.Header.Revision >= rev {
					n++
				}
			}
			return n >= 3
		}
	}
	c.wait(notified(0, below))
	for _, r := range c.Responses() {
		if r.WatchId == 1 && !r.Created {
			t.Fatalf("watch from revision %d notified at %d: %v", start, r.Header.Revision, r)
		}
	}
	if r := e.model.Put("other", "v"); r != start {
		t.Fatalf("put revision %d, want %d", r, start)
	}
	c.wait(notified(1, start))
}
