package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// defaultStallTimeout is how long a watch workload waits without receiving
// any expected event before it fails.
const defaultStallTimeout = 30 * time.Second

var errMissingEvents = errors.New("watch events missing")

// Watch is etcd benchmark's `watch`: Streams watch streams with
// WatchPerStream watchers each, spread over WatchedKeyTotal keys; then
// PutTotal puts to those keys, and every event is timed from the moment its
// put was issued to the moment a watcher received it.
type Watch struct {
	Streams         int // default 10
	WatchPerStream  int // default 100
	WatchedKeyTotal int // default 1
	PutRate         float64
	PutTotal        int64 // default 1000
	KeySize         int   // default 32
	KeySpaceSize    int64 // default 1
	Sequential      bool
	KeyPrefix       string
	StallTimeout    time.Duration // default 30s
}

// Name implements Workload.
func (*Watch) Name() string { return "watch" }

// SetDefaults implements Workload.
func (w *Watch) SetDefaults() {
	if w.Streams == 0 {
		w.Streams = 10
	}
	if w.WatchPerStream == 0 {
		w.WatchPerStream = 100
	}
	if w.WatchedKeyTotal == 0 {
		w.WatchedKeyTotal = 1
	}
	if w.PutTotal == 0 {
		w.PutTotal = 1000
	}
	if w.KeySize == 0 {
		w.KeySize = 32
	}
	if w.KeySpaceSize == 0 {
		w.KeySpaceSize = 1
	}
	if w.StallTimeout == 0 {
		w.StallTimeout = defaultStallTimeout
	}
}

// Validate implements Workload.
func (w *Watch) Validate() error {
	for _, c := range []struct {
		name string
		v    int64
	}{{"streams", int64(w.Streams)}, {"watch-per-stream", int64(w.WatchPerStream)},
		{"watched-key-total", int64(w.WatchedKeyTotal)}, {"put-total", w.PutTotal}} {
		if err := errUnlessPositive(c.name, c.v); err != nil {
			return err
		}
	}
	if err := errIfNegative("put-rate", w.PutRate); err != nil {
		return err
	}
	if w.StallTimeout < 0 {
		return fmt.Errorf("%w: stall timeout must not be negative", ErrInvalid)
	}
	return validateKeySpace(w.KeySize, w.KeySpaceSize)
}

// Params implements Workload.
func (w *Watch) Params() map[string]string {
	return map[string]string{
		"streams": itoa(int64(w.Streams)), "watch-per-stream": itoa(int64(w.WatchPerStream)),
		"watched-key-total": itoa(int64(w.WatchedKeyTotal)), "put-rate": ftoa(w.PutRate), "put-total": itoa(w.PutTotal),
		"key-size": itoa(int64(w.KeySize)), "key-space-size": itoa(w.KeySpaceSize), "sequential-keys": btoa(w.Sequential),
	}
}

func (w *Watch) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	keys := keyGen{prefix: w.KeyPrefix, size: w.KeySize}
	watched := make([]string, w.WatchedKeyTotal)
	for i := range watched {
		n := int64(i) % w.KeySpaceSize
		if !w.Sequential {
			n = rand.Int64N(w.KeySpaceSize)
		}
		watched[i] = keys.key(n)
	}
	total := w.Streams * w.WatchPerStream
	numWatchers := map[string]int64{}
	for j := range total {
		numWatchers[watched[j%len(watched)]]++
	}

	// wctx owns every watch: cancelling it ends the receivers below.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	streams := make([]clientv3.Watcher, w.Streams)
	for i := range streams {
		streams[i] = clientv3.NewWatcher(env.pool.client(i))
	}
	defer func() {
		for _, s := range streams {
			_ = s.Close()
		}
	}()

	// Creation phase: each stream creates its watchers one after another;
	// a watcher counts as created when the server has confirmed it.
	create := newRecorder("create", "watch", w.Streams)
	chans := make([]clientv3.WatchChan, total)
	bar := startBar(env.Progress, "watch create", int64(total))
	createStart := time.Now()
	g, gctx := errgroup.WithContext(wctx)
	for s := range streams {
		g.Go(func() error {
			for k := range w.WatchPerStream {
				j := s*w.WatchPerStream + k
				st := time.Now()
				wch := streams[s].Watch(wctx, watched[j%len(watched)], clientv3.WithCreatedNotify())
				if err := awaitCreated(gctx, wch); err != nil {
					create.observe(s, 0, err)
					return err
				}
				create.observe(s, time.Since(st), nil)
				chans[j] = wch
				bar.Add(1)
			}
			return nil
		})
	}
	err := g.Wait()
	bar.Finish()
	if err != nil {
		return nil, err
	}
	createElapsed := time.Since(createStart)

	// Put phase.
	var eventsTotal int64
	for i := range w.PutTotal {
		eventsTotal += numWatchers[watched[i%int64(len(watched))]]
	}
	events := newRecorder("event", "event", total)
	puts := newRecorder("put", "req", env.Client.Clients)
	tl := newTimeline(w.PutTotal)
	var received, unattributed atomic.Int64
	var lastEvent atomic.Int64 // offset from tl.base
	var watchErr errorLog
	ebar := startBar(env.Progress, "watch events", eventsTotal)
	var rwg sync.WaitGroup
	for j, wch := range chans {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for resp := range wch {
				if err := resp.Err(); err != nil {
					if wctx.Err() == nil {
						watchErr.add(err)
					}
					continue
				}
				now := time.Now()
				for _, ev := range resp.Events {
					seq, ok := valueSeq(ev.Kv.Value)
					st, issued := tl.issued(seq)
					if !ok || !issued {
						unattributed.Add(1)
						continue
					}
					events.observe(j, now.Sub(st), nil)
					lastEvent.Store(int64(now.Sub(tl.base)))
					received.Add(1)
					ebar.Add(1)
				}
			}
		}()
	}
	stopReceivers := func() {
		wcancel()
		rwg.Wait()
		ebar.Finish()
	}

	pad := randomBytes(8)
	env.phase(true)
	putsElapsed, err := closedLoop(ctx, env.Client.Clients, w.PutTotal, newLimiter(w.PutRate), noBar{},
		func(ctx context.Context, c int, seq int64) error {
			key := watched[seq%int64(len(watched))]
			tl.markIssued(seq)
			st := time.Now()
			_, err := env.pool.client(c).Put(ctx, key, seqValue(seq, 8, pad))
			puts.observe(c, time.Since(st), err)
			return unsupported("Put", err)
		})
	if err != nil {
		env.phase(false)
		stopReceivers()
		return nil, err
	}
	err = awaitCount(ctx, &received, eventsTotal, w.StallTimeout)
	env.phase(false)
	stopReceivers()
	if n, first := watchErr.get(); n > 0 {
		if u := unsupported("Watch", errors.New(first)); u != nil {
			return nil, u
		}
	}
	if err != nil {
		return nil, err
	}
	ev := events.result(time.Duration(lastEvent.Load()))
	ev.Errors, ev.FirstError = watchErr.get()
	return &measurement{
		ops: []OpResult{ev, create.result(createElapsed), puts.result(putsElapsed)},
		counters: map[string]string{
			"events-expected": itoa(eventsTotal), "events-unattributed": itoa(unattributed.Load()),
		},
	}, nil
}

// awaitCreated waits for the created notification of a new watch. A channel
// that closes or reports an error first means the server refused the watch.
func awaitCreated(ctx context.Context, wch clientv3.WatchChan) error {
	select {
	case resp, ok := <-wch:
		if !ok {
			return errors.New("watch channel closed before the watch was created")
		}
		if err := resp.Err(); err != nil {
			if u := unsupported("Watch", err); u != nil {
				return u
			}
			return fmt.Errorf("creating watch: %w", err)
		}
		if !resp.Created {
			return fmt.Errorf("first watch response is not a creation (events: %d)", len(resp.Events))
		}
		return nil
	case <-ctx.Done():
		return ctxErr(ctx)
	}
}

// awaitCount polls n until it reaches want, failing when it does not move
// for stall.
func awaitCount(ctx context.Context, n *atomic.Int64, want int64, stall time.Duration) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last, lastChange := n.Load(), time.Now()
	for {
		cur := n.Load()
		if cur >= want {
			return nil
		}
		if cur != last {
			last, lastChange = cur, time.Now()
		} else if time.Since(lastChange) > stall {
			return fmt.Errorf("%w: received %d of %d, none in the last %v", errMissingEvents, cur, want, stall)
		}
		select {
		case <-ctx.Done():
			return ctxErr(ctx)
		case <-tick.C:
		}
	}
}

// timeline records when each put was issued, as offsets from a base time
// that carries a monotonic clock reading.
type timeline struct {
	base time.Time
	at   []atomic.Int64 // offset+1; 0 = not issued
}

func newTimeline(n int64) *timeline {
	return &timeline{base: time.Now(), at: make([]atomic.Int64, n)}
}

func (t *timeline) markIssued(seq int64) { t.at[seq].Store(int64(time.Since(t.base)) + 1) }

func (t *timeline) issued(seq int64) (time.Time, bool) {
	if seq < 0 || seq >= int64(len(t.at)) {
		return time.Time{}, false
	}
	off := t.at[seq].Load()
	if off == 0 {
		return time.Time{}, false
	}
	return t.base.Add(time.Duration(off - 1)), true
}

// WatchLatency is etcd benchmark's `watch-latency`: Watchers watchers of
// one key spread over Streams streams; Total puts to the key at PutRate,
// each waiting until every watcher has received its event. An event's
// latency runs from the moment its put was issued to the moment a watcher
// received it; the event rate is events received per second of the run.
type WatchLatency struct {
	Watchers     int     // default 100
	Streams      int     // default 10
	PutRate      float64 // default 100
	Total        int64   // puts; default 10000
	KeySize      int     // default 32
	ValSize      int     // default 32 (at least 8: the put's sequence number)
	KeyPrefix    string
	StallTimeout time.Duration // default 30s
}

// Name implements Workload.
func (*WatchLatency) Name() string { return "watch-latency" }

// SetDefaults implements Workload.
func (w *WatchLatency) SetDefaults() {
	if w.Watchers == 0 {
		w.Watchers = 100
	}
	if w.Streams == 0 {
		w.Streams = 10
	}
	if w.PutRate == 0 {
		w.PutRate = 100
	}
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.KeySize == 0 {
		w.KeySize = 32
	}
	if w.ValSize == 0 {
		w.ValSize = 32
	}
	if w.StallTimeout == 0 {
		w.StallTimeout = defaultStallTimeout
	}
}

// Validate implements Workload.
func (w *WatchLatency) Validate() error {
	for _, c := range []struct {
		name string
		v    int64
	}{{"watchers", int64(w.Watchers)}, {"streams", int64(w.Streams)}, {"total", w.Total}, {"key-size", int64(w.KeySize)}} {
		if err := errUnlessPositive(c.name, c.v); err != nil {
			return err
		}
	}
	if w.Streams > w.Watchers {
		return fmt.Errorf("%w: --streams (%d) must not exceed --watchers (%d)", ErrInvalid, w.Streams, w.Watchers)
	}
	if w.ValSize < 8 {
		return fmt.Errorf("%w: --val-size must be at least 8 (the put's sequence number), got %d", ErrInvalid, w.ValSize)
	}
	if w.PutRate < 0 || w.StallTimeout < 0 {
		return fmt.Errorf("%w: --put-rate and the stall timeout must not be negative", ErrInvalid)
	}
	return nil
}

// Params implements Workload.
func (w *WatchLatency) Params() map[string]string {
	return map[string]string{
		"watchers": itoa(int64(w.Watchers)), "streams": itoa(int64(w.Streams)), "put-rate": ftoa(w.PutRate),
		"total": itoa(w.Total), "key-size": itoa(int64(w.KeySize)), "val-size": itoa(int64(w.ValSize)),
	}
}

func (w *WatchLatency) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	key := keyGen{prefix: w.KeyPrefix, size: w.KeySize}.key(rand.Int64N(1 << 40))
	pad := randomBytes(w.ValSize)
	// Puts go through a connection of their own, as in etcd's tool, so they
	// do not queue behind event deliveries.
	putCli, err := newClient(ctx, env.Client)
	if err != nil {
		return nil, err
	}
	defer putCli.Close()

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	streams := make([]clientv3.Watcher, w.Streams)
	for i := range streams {
		streams[i] = clientv3.NewWatcher(env.pool.client(i))
	}
	defer func() {
		for _, s := range streams {
			_ = s.Close()
		}
	}()
	chans := make([]clientv3.WatchChan, w.Watchers)
	cbar := startBar(env.Progress, "watch create", int64(w.Watchers))
	g, gctx := errgroup.WithContext(wctx)
	for s := range streams {
		g.Go(func() error {
			for j := s; j < w.Watchers; j += w.Streams {
				chans[j] = streams[s].Watch(wctx, key, clientv3.WithCreatedNotify())
				if err := awaitCreated(gctx, chans[j]); err != nil {
					return err
				}
				cbar.Add(1)
			}
			return nil
		})
	}
	err = g.Wait()
	cbar.Finish()
	if err != nil {
		return nil, err
	}

	events := newRecorder("event", "event", w.Watchers)
	puts := newRecorder("put", "req", 1)
	var (
		cur          atomic.Int64 // sequence number of the put in flight
		issuedAt     atomic.Int64 // its issue time, offset from base
		pending      atomic.Int64 // watchers still to receive it
		unattributed atomic.Int64
		watchErr     errorLog
	)
	cur.Store(-1)
	base := time.Now()
	done := make(chan struct{}, 1)
	var rwg sync.WaitGroup
	for j, wch := range chans {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for resp := range wch {
				if err := resp.Err(); err != nil {
					if wctx.Err() == nil {
						watchErr.add(err)
					}
					continue
				}
				now := time.Now()
				for _, ev := range resp.Events {
					seq, ok := valueSeq(ev.Kv.Value)
					if !ok || seq != cur.Load() {
						unattributed.Add(1)
						continue
					}
					events.observe(j, now.Sub(base)-time.Duration(issuedAt.Load()), nil)
					if pending.Add(-1) == 0 {
						done <- struct{}{}
					}
				}
			}
		}()
	}
	defer func() {
		wcancel()
		rwg.Wait()
	}()

	lim := newLimiter(w.PutRate)
	bar := startBar(env.Progress, "watch-latency", w.Total)
	defer bar.Finish()
	env.phase(true)
	defer env.phase(false)
	start := time.Now()
	for seq := range w.Total {
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				return nil, ctxErr(ctx)
			}
		}
		pending.Store(int64(w.Watchers))
		cur.Store(seq)
		issuedAt.Store(int64(time.Since(base)))
		st := time.Now()
		_, err := putCli.Put(ctx, key, seqValue(seq, w.ValSize, pad))
		puts.observe(0, time.Since(st), err)
		if err != nil {
			if u := unsupported("Put", err); u != nil {
				return nil, u
			}
			if ctx.Err() != nil {
				return nil, ctxErr(ctx)
			}
			continue // counted as an error; the next put still runs
		}
		if err := awaitSignal(ctx, done, w.StallTimeout); err != nil {
			n, first := watchErr.get()
			if n > 0 {
				if u := unsupported("Watch", errors.New(first)); u != nil {
					return nil, u
				}
				return nil, fmt.Errorf("%w: put %d: %d of %d watchers did not receive it (first watch error: %s)",
					errMissingEvents, seq, pending.Load(), w.Watchers, first)
			}
			return nil, fmt.Errorf("put %d: %d of %d watchers did not receive it: %w", seq, pending.Load(), w.Watchers, err)
		}
		bar.Add(1)
	}
	elapsed := time.Since(start)
	ev := events.result(elapsed)
	ev.Errors, ev.FirstError = watchErr.get()
	return &measurement{
		ops:      []OpResult{ev, puts.result(elapsed)},
		counters: map[string]string{"events-unattributed": itoa(unattributed.Load())},
	}, nil
}

// awaitSignal waits for one value on c, failing after timeout.
func awaitSignal(ctx context.Context, c <-chan struct{}, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: nothing within %v", errMissingEvents, timeout)
	case <-ctx.Done():
		return ctxErr(ctx)
	}
}
