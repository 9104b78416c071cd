package watchfanout_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

type randomOpts struct {
	seed      uint64
	faulty    bool // drop, duplicate and delay bus messages
	compact   bool // compact behind the writers
	flaky     bool // History calls fail now and then
	inbox     int  // Config.InboxLimit (0: default)
	streams   int
	perStream int // watch creations per stream
	ops       int // writes in the concurrent phase (plus 100 after)
	newStore  func(t *testing.T, publish func(eventbus.Revision)) (randStore, watchfanout.History)
}

func TestRandomTrafficMemoryBus(t *testing.T) {
	runRandom(t, randomOpts{seed: 1, streams: 12, perStream: 25, ops: 700})
}

func TestRandomTrafficFaultyBus(t *testing.T) {
	runRandom(t, randomOpts{seed: 2, faulty: true, streams: 12, perStream: 25, ops: 700})
}

func TestRandomTrafficFaultyBusCompaction(t *testing.T) {
	runRandom(t, randomOpts{seed: 3, faulty: true, compact: true, streams: 8, perStream: 25, ops: 700})
}

func TestRandomTrafficFaultyBusFlakyHistory(t *testing.T) {
	runRandom(t, randomOpts{seed: 4, faulty: true, flaky: true, inbox: 2, streams: 8, perStream: 20, ops: 500})
}

var errFlaky = errors.New("flaky history: unavailable")

// flakyHistory fails a fraction of History calls with a transient error.
type flakyHistory struct {
	watchfanout.History
	mu    sync.Mutex
	rng   *rand.Rand
	fails atomic.Int64
}

func (h *flakyHistory) fail() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rng.IntN(5) == 0 {
		h.fails.Add(1)
		return true
	}
	return false
}

func (h *flakyHistory) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	if h.fail() {
		return nil, errFlaky
	}
	return h.History.RangeEvents(ctx, from, to, key, end)
}

func (h *flakyHistory) CurrentRevision(ctx context.Context) (int64, int64, error) {
	if h.fail() {
		return 0, 0, errFlaky
	}
	return h.History.CurrentRevision(ctx)
}

var randomKeys = func() []string {
	var ks []string
	for i := range 16 {
		ks = append(ks, fmt.Sprintf("k%02d", i))
	}
	return append(ks, "l", "m/1", "m/2")
}()

func randomWatch(rng *rand.Rand, cur int64) watchtest.Watch {
	var w watchtest.Watch
	k := randomKeys[rng.IntN(len(randomKeys))]
	switch rng.IntN(5) {
	case 0, 1:
		w.Key = []byte(k)
	case 2:
		w.Key, w.RangeEnd = []byte("k0"), []byte("k1") // prefix k0
	case 3:
		a, b := randomKeys[rng.IntN(len(randomKeys))], randomKeys[rng.IntN(len(randomKeys))]
		if a > b {
			a, b = b, a
		}
		w.Key, w.RangeEnd = []byte(a), []byte(b+"\x00")
	case 4:
		w.Key, w.RangeEnd = []byte(k), []byte{0}
	}
	switch p := rng.IntN(10); {
	case p < 4:
	case p < 8:
		w.StartRevision = max(1, cur-rng.Int64N(150))
	default:
		w.StartRevision = cur + 1 + rng.Int64N(10)
	}
	w.NoPut = rng.IntN(10) == 0
	w.NoDelete = rng.IntN(10) == 0
	w.PrevKV = rng.IntN(2) == 0
	w.Fragment = rng.IntN(3) == 0
	w.ProgressNotify = rng.IntN(5) == 0
	return w
}

// randStore is what the random traffic writes to.
type randStore interface {
	write(rng *rand.Rand)
	Rev() int64
	History() watchtest.History
	Compact(rev int64) error
}

type modelStore struct{ *watchtest.Model }

func (m modelStore) write(rng *rand.Rand) { randomWrite(rng, m.Model) }

func randomWrite(rng *rand.Rand, m *watchtest.Model) {
	k := func() []byte { return []byte(randomKeys[rng.IntN(len(randomKeys))]) }
	v := func() []byte { return fmt.Appendf(nil, "v%d-%s", rng.IntN(1000), make([]byte, rng.IntN(120))) }
	switch p := rng.IntN(20); {
	case p < 13:
		m.Txn([]watchtest.Op{{Key: k(), Value: v()}})
	case p < 15:
		m.Txn([]watchtest.Op{{Key: k(), Delete: true}})
	case p < 16:
		m.Txn([]watchtest.Op{{Key: []byte("k0"), End: []byte("k1"), Delete: true}})
	default:
		used := map[string]bool{}
		var ops []watchtest.Op
		for range 2 + rng.IntN(4) {
			key := k()
			if used[string(key)] {
				continue
			}
			used[string(key)] = true
			ops = append(ops, watchtest.Op{Key: key, Value: v(), Delete: rng.IntN(4) == 0})
		}
		m.Txn(ops)
	}
}

// lastReached returns what a client knows watch id reached: the highest
// header revision of its event and progress responses, or start-1.
func lastReached(rs []*pb.WatchResponse, from int, id, start int64) int64 {
	reached := start - 1
	for _, r := range rs[from:] {
		if r.WatchId != id || r.Created || r.Canceled {
			continue
		}
		if r.Header.Revision > reached {
			reached = r.Header.Revision
		}
	}
	return reached
}

func runRandom(t *testing.T, o randomOpts) {
	cfg := watchfanout.Config{
		SendBuffer:             8,
		SendBufferPerWatcher:   -1, // small queues: many victims
		CacheRevisions:         48,
		ChunkRevisions:         16,
		CatchUpBatch:           16,
		MaxResponseBytes:       400,
		ProgressNotifyInterval: 25 * time.Millisecond,
		ResyncInterval:         10 * time.Millisecond,
		PollInterval:           50 * time.Millisecond,
		RetryInterval:          2 * time.Millisecond,
		InboxLimit:             o.inbox,
	}
	var faulty eventbus.Bus
	opt := envOpt{cfg: cfg, newStore: o.newStore}
	var flaky *flakyHistory
	if o.flaky {
		opt.hist = func(h watchfanout.History) watchfanout.History {
			flaky = &flakyHistory{History: h, rng: rand.New(rand.NewPCG(o.seed, 77))}
			return flaky
		}
	}
	if o.faulty {
		opt.bus = func(b eventbus.Bus) eventbus.Bus {
			faulty = eventbus.NewFaulty(b, int64(o.seed), 0.1, 0.1, 0.1)
			return faulty
		}
	}
	e := newEnv(t, opt)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	// Progress beats, as consensus publishes them.
	wg.Go(func() {
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				_ = e.bus.PublishProgress(ctx, e.store.Rev())
			}
		}
	})
	if o.compact {
		wg.Go(func() {
			tk := time.NewTicker(20 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tk.C:
					if r := e.store.Rev() - 120; r > 1 {
						_ = e.store.Compact(r)
					}
				}
			}
		})
	}

	// Writers.
	var written atomic.Int64
	writersDone := make(chan struct{})
	var wwg sync.WaitGroup
	for i := range 3 {
		rng := rand.New(rand.NewPCG(o.seed, uint64(100+i)))
		wwg.Go(func() {
			for written.Add(1) <= int64(o.ops) {
				e.store.write(rng)
				if rng.IntN(3) == 0 {
					time.Sleep(time.Millisecond) // let watchers be created in between
				}
			}
		})
	}
	wg.Go(func() { wwg.Wait(); close(writersDone) })

	// Clients.
	clients := make([]*client, o.streams)
	for i := range clients {
		clients[i] = e.client()
	}
	var totalCreates atomic.Int64
	var cwg sync.WaitGroup
	for i, c := range clients {
		rng := rand.New(rand.NewPCG(o.seed, uint64(i)))
		cwg.Go(func() {
			if err := randomClient(ctx, rng, e, c, o, writersDone, &totalCreates); err != nil {
				t.Errorf("client %d: %v", i, err)
			}
		})
	}
	cwg.Wait()
	<-writersDone
	tail := rand.New(rand.NewPCG(o.seed, 999))
	for range 100 {
		e.store.write(tail)
	}
	final := e.store.Rev()
	for _, c := range clients {
		c.Resume()
		c.createWait(watchtest.Watch{Key: []byte("k00")}) // a live watcher, so the progress request is answered
		c.sync(final)
	}
	close(stop)
	wg.Wait()

	hist := e.store.History()
	watches, events, compacted := 0, 0, 0
	for i, c := range clients {
		res := c.check(hist)
		for _, r := range res {
			watches++
			events += r.Events
			if r.CompactRevision != 0 {
				compacted++
			}
			if !r.Canceled && r.Reached < final {
				t.Errorf("stream %d watch %d reached %d, want %d", i, r.ID, r.Reached, final)
			}
		}
	}
	st := e.f.Stats()
	t.Logf("revisions %d, watches %d (creates %d), events delivered %d, compaction cancels %d; fanout %+v",
		final, watches, totalCreates.Load(), events, compacted, st)
	if f, ok := faulty.(*eventbus.Faulty); ok {
		fs := f.Stats()
		t.Logf("bus faults %+v", fs)
		if fs.Dropped == 0 || fs.Duplicated == 0 || fs.Delayed == 0 {
			t.Errorf("no faults injected: %+v", fs)
		}
		if st.Repairs == 0 || st.Duplicates == 0 {
			t.Errorf("faults injected but no repair/duplicate seen: %+v", st)
		}
	}
	if flaky != nil {
		t.Logf("history failures injected: %d", flaky.fails.Load())
		if flaky.fails.Load() == 0 {
			t.Errorf("no history failure injected")
		}
	}
	if watches < o.streams*o.perStream/2 {
		t.Errorf("only %d watches created", watches)
	}
	if o.compact && compacted == 0 {
		t.Errorf("no watch was canceled by compaction")
	}
}

// randomClient creates, cancels and resumes watches, pauses its stream and
// requests progress, until the writers are done or it created its share.
func randomClient(ctx context.Context, rng *rand.Rand, e *env, c *client, o randomOpts, writersDone chan struct{}, total *atomic.Int64) error {
	type open struct {
		w       watchtest.Watch
		id      int64
		from    int // index of its created response
		created int64
	}
	var opens []open
	createWait := func(w watchtest.Watch) error {
		n := len(c.Responses())
		c.mu.Lock()
		c.creates = append(c.creates, w)
		c.mu.Unlock()
		if err := c.Create(ctx, w.Request()); err != nil {
			return err
		}
		total.Add(1)
		var got *pb.WatchResponse
		idx := 0
		err := c.Wait(ctx, func(rs []*pb.WatchResponse) bool {
			for i := n; i < len(rs); i++ {
				if rs[i].Created {
					got, idx = rs[i], i
					return true
				}
			}
			return false
		})
		if err != nil {
			return fmt.Errorf("waiting for created: %w", err)
		}
		if !got.Canceled {
			opens = append(opens, open{w: w, id: got.WatchId, from: idx, created: got.Header.Revision})
		}
		return nil
	}
	// The first watch stays open.
	if err := createWait(watchtest.Watch{Key: []byte("k01"), RangeEnd: []byte{0}, PrevKV: true}); err != nil {
		return err
	}
	created := 1
	for created < o.perStream {
		select {
		case <-writersDone:
			return nil
		default:
		}
		switch p := rng.IntN(20); {
		case p < 11:
			if err := createWait(randomWatch(rng, e.store.Rev())); err != nil {
				return err
			}
			created++
		case p < 14 && len(opens) > 1:
			// Cancel one, then resume it from where it got to.
			i := 1 + rng.IntN(len(opens)-1)
			op := opens[i]
			opens = append(opens[:i], opens[i+1:]...)
			n := len(c.Responses())
			if err := c.Cancel(ctx, op.id); err != nil {
				return err
			}
			err := c.Wait(ctx, func(rs []*pb.WatchResponse) bool {
				for _, r := range rs[n:] {
					if r.WatchId == op.id && r.Canceled {
						return true
					}
				}
				// Already canceled by compaction before our request.
				for _, r := range rs[op.from:n] {
					if r.WatchId == op.id && r.Canceled {
						return true
					}
				}
				return false
			})
			if err != nil {
				return fmt.Errorf("waiting for cancel of %d: %w", op.id, err)
			}
			start := op.w.StartRevision
			if start == 0 {
				start = op.created + 1
			}
			resume := op.w
			resume.StartRevision = lastReached(c.Responses(), op.from, op.id, start) + 1
			if err := createWait(resume); err != nil {
				return err
			}
			created++
		case p < 16:
			if err := c.RequestProgress(ctx); err != nil {
				return err
			}
		case p < 18:
			c.Pause()
			time.Sleep(time.Duration(2+rng.IntN(20)) * time.Millisecond)
			c.Resume()
		default:
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}
