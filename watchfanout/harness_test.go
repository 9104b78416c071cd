package watchfanout_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.uber.org/goleak"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 20 * time.Second

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// env is a model store publishing on a bus, and a Fanout consuming it.
type env struct {
	t       *testing.T
	model   *watchtest.Model
	bus     eventbus.Bus
	hist    watchfanout.History
	f       *watchfanout.Fanout
	store   randStore   // what the random tests write to (the model unless envOpt.newStore)
	publish atomic.Bool // when false, writes reach History but not the bus
}

type envOpt struct {
	cfg  watchfanout.Config
	bus  func(eventbus.Bus) eventbus.Bus               // wraps the bus the fanout subscribes to
	hist func(watchfanout.History) watchfanout.History // wraps the History the fanout reads
	// newStore replaces the model: it gets the publish function and returns
	// the store the random tests write to and the History to read from.
	newStore func(t *testing.T, publish func(eventbus.Revision)) (randStore, watchfanout.History)
}

func newEnv(t *testing.T, o envOpt) *env {
	t.Helper()
	e := &env{t: t}
	e.publish.Store(true)
	mem := eventbus.NewMemory()
	e.bus = mem
	if o.bus != nil {
		e.bus = o.bus(mem)
	}
	publish := func(r eventbus.Revision) {
		if e.publish.Load() {
			if err := mem.Publish(context.Background(), []eventbus.Revision{r}); err != nil {
				t.Errorf("publish: %v", err)
			}
		}
	}
	e.model = watchtest.NewModel(publish)
	e.hist = e.model
	e.store = modelStore{e.model}
	if o.newStore != nil {
		e.store, e.hist = o.newStore(t, publish)
	}
	if o.hist != nil {
		e.hist = o.hist(e.hist)
	}
	cfg := o.cfg
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	f, err := watchfanout.New(cfg, e.bus, e.hist)
	if err != nil {
		t.Fatal(err)
	}
	e.f = f
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("close fanout: %v", err)
		}
		_ = e.bus.Close()
	})
	return e
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// client is one watch stream served by the fanout.
type client struct {
	t *testing.T
	*watchtest.Stream
	mu      sync.Mutex
	creates []watchtest.Watch
	hist    watchfanout.History // for the compaction revision
	cancel  context.CancelFunc
	served  chan error
}

func (e *env) client() *client {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{t: e.t, Stream: watchtest.NewStream(ctx), hist: e.hist, cancel: cancel, served: make(chan error, 1)}
	go func() { c.served <- e.f.Serve(ctx, c.Stream) }()
	e.t.Cleanup(c.stop)
	return c
}

// stop ends the stream and waits for Serve to return.
func (c *client) stop() {
	c.cancel()
	select {
	case err := <-c.served:
		c.served <- err // keep it for other callers
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, watchfanout.ErrClosed) {
			c.t.Errorf("Serve: %v", err)
		}
	case <-time.After(waitTimeout):
		c.t.Errorf("Serve did not return after its context ended")
	}
}

func (c *client) create(w watchtest.Watch) {
	c.t.Helper()
	c.mu.Lock()
	c.creates = append(c.creates, w)
	c.mu.Unlock()
	if err := c.Create(ctxT(c.t), w.Request()); err != nil {
		c.t.Fatalf("create: %v", err)
	}
}

// createWait creates w and returns its created response.
func (c *client) createWait(w watchtest.Watch) *pb.WatchResponse {
	c.t.Helper()
	n := 0
	for _, r := range c.Responses() {
		if r.Created {
			n++
		}
	}
	c.create(w)
	var got *pb.WatchResponse
	c.wait(func(rs []*pb.WatchResponse) bool {
		k := 0
		for _, r := range rs {
			if r.Created {
				if k == n {
					got = r
					return true
				}
				k++
			}
		}
		return false
	})
	return got
}

func (c *client) wait(cond func([]*pb.WatchResponse) bool) {
	c.t.Helper()
	if err := c.Wait(ctxT(c.t), cond); err != nil {
		c.t.Fatalf("waiting for responses: %v; got %d responses", err, len(c.Responses()))
	}
}

// waitEventRev waits until watch id received an event at revision rev or later.
func (c *client) waitEventRev(id, rev int64) {
	c.t.Helper()
	c.wait(func(rs []*pb.WatchResponse) bool {
		for _, r := range rs {
			if r.WatchId == id && len(r.Events) > 0 && r.Events[len(r.Events)-1].Kv.ModRevision >= rev {
				return true
			}
		}
		return false
	})
}

// sync sends progress requests until one is answered with revision rev or
// later (the stream must have live watchers); the answer proves that every
// watcher of the stream was given everything up to it. Like etcd, the
// fanout answers none while the stream holds a watch canceled by compaction
// that the client has not canceled, so sync first cancels those, as a
// client that wants progress has to.
func (c *client) sync(rev int64) {
	c.t.Helper()
	for {
		if c.cancelCompacted() {
			continue
		}
		before := len(c.Responses())
		if err := c.RequestProgress(ctxT(c.t)); err != nil {
			c.t.Fatal(err)
		}
		var got int64
		compactedSince := false
		c.wait(func(rs []*pb.WatchResponse) bool {
			for _, r := range rs[before:] {
				switch {
				case r.WatchId == -1:
					got = r.Header.Revision
					return true
				case r.Canceled && r.CompactRevision != 0:
					// Canceled by compaction meanwhile: the request is dropped.
					compactedSince = true
					return true
				}
			}
			return false
		})
		if !compactedSince && got >= rev {
			return
		}
	}
}

// compacted returns the IDs of the watches canceled by compaction that the
// client has not canceled.
func (c *client) compacted() map[int64]bool {
	compacted := map[int64]bool{}
	for _, r := range c.Responses() {
		switch {
		case r.Canceled && r.CompactRevision != 0:
			compacted[r.WatchId] = true
		case r.Canceled && !r.Created:
			delete(compacted, r.WatchId)
		}
	}
	return compacted
}

// cancelCompacted cancels the watches canceled by compaction, waiting for
// each cancel response, and reports whether there were any.
func (c *client) cancelCompacted() bool {
	c.t.Helper()
	compacted := c.compacted()
	for id := range compacted {
		before := len(c.Responses())
		if err := c.Cancel(ctxT(c.t), id); err != nil {
			c.t.Fatal(err)
		}
		c.wait(func(rs []*pb.WatchResponse) bool {
			for _, r := range rs[before:] {
				if r.WatchId == id && r.Canceled && r.CompactRevision == 0 {
					return true
				}
			}
			return false
		})
	}
	return len(compacted) > 0
}

// check runs the guarantee checker over everything this stream received.
func (c *client) check(hist watchtest.History) []watchtest.Result {
	c.t.Helper()
	c.mu.Lock()
	creates := append([]watchtest.Watch(nil), c.creates...)
	c.mu.Unlock()
	// The compaction revision now is the highest one while the stream ran.
	var crev int64
	for attempt := 0; ; attempt++ {
		_, cr, err := c.hist.CurrentRevision(ctxT(c.t))
		if err == nil {
			crev = cr
			break
		}
		if attempt == 20 { // a flaky History fails some calls
			c.t.Fatalf("compaction revision: %v", err)
		}
	}
	res, err := watchtest.CheckStreamCompacted(hist, crev, creates, c.Responses())
	if err != nil {
		c.t.Fatalf("watch guarantees: %v", err)
	}
	return res
}

func key(k string) watchtest.Watch { return watchtest.Watch{Key: []byte(k)} }

func prefix(p string) watchtest.Watch {
	end := []byte(p)
	end[len(end)-1]++
	return watchtest.Watch{Key: []byte(p), RangeEnd: end}
}

// blockingHistory lets a test hold History reads.
type blockingHistory struct {
	watchfanout.History
	mu      sync.Mutex
	blocked chan struct{} // non-nil: RangeEvents waits for it
	reads   atomic.Int64
}

func (b *blockingHistory) block() {
	b.mu.Lock()
	b.blocked = make(chan struct{})
	b.mu.Unlock()
}

func (b *blockingHistory) unblock() {
	b.mu.Lock()
	if b.blocked != nil {
		close(b.blocked)
		b.blocked = nil
	}
	b.mu.Unlock()
}

func (b *blockingHistory) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	b.reads.Add(1)
	b.mu.Lock()
	ch := b.blocked
	b.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return b.History.RangeEvents(ctx, from, to, key, end)
}
