package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// K8s is a Kubernetes-like mixed workload: what kube-apiserver asks of etcd
// for one resource type. Objects live under Prefix ("ns-NN/obj-NNNNNNN");
// Watchers informer-like watches cover the whole prefix (with previous
// values, as the apiserver asks); the clients then run Total operations
// drawn from Mix:
//
//   - get: a linearizable read of one object;
//   - update: read, then a txn that writes only if mod_revision is unchanged,
//     retried on conflict (the apiserver's GuaranteedUpdate);
//   - create: a txn that writes only if the key does not exist;
//   - delete: read, then a txn that deletes only if mod_revision is unchanged;
//   - list: a paginated list of the whole prefix, PageSize keys per page,
//     later pages pinned to the first page's revision.
//
// Every successful write must reach every watcher; the run fails if events
// go missing.
type K8s struct {
	Objects      int64 // objects created before the run (and the key space); default 1000
	ValSize      int   // default 1024 (at least 8)
	PageSize     int64 // default 500
	Watchers     int   // default 10; 0 after SetDefaults only when NoWatch
	NoWatch      bool  // run without watchers
	Total        int64 // default 10000
	Rate         float64
	Mix          string // default DefaultK8sMix
	Prefix       string // default "/registry/bench/"
	StallTimeout time.Duration

	weights map[string]int
}

// DefaultK8sMix is the default operation mix of K8s, in percent.
const DefaultK8sMix = "get=30,update=50,list=5,create=10,delete=5"

var k8sOps = []string{"get", "update", "list", "create", "delete"}

// ParseMix parses "op=weight,..." over the K8s operations; omitted
// operations get weight 0.
func ParseMix(s string) (map[string]int, error) {
	m := map[string]int{}
	total := 0
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%w: mix entry %q is not op=weight", ErrInvalid, part)
		}
		if !slices.Contains(k8sOps, name) {
			return nil, fmt.Errorf("%w: unknown op %q in mix (want %s)", ErrInvalid, name, strings.Join(k8sOps, ", "))
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("%w: op %q twice in mix", ErrInvalid, name)
		}
		w, err := strconv.Atoi(val)
		if err != nil || w < 0 {
			return nil, fmt.Errorf("%w: weight of %q must be a non-negative integer, got %q", ErrInvalid, name, val)
		}
		m[name] = w
		total += w
	}
	if total == 0 {
		return nil, fmt.Errorf("%w: mix %q has no positive weight", ErrInvalid, s)
	}
	return m, nil
}

// Name implements Workload.
func (*K8s) Name() string { return "k8s" }

// SetDefaults implements Workload.
func (w *K8s) SetDefaults() {
	if w.Objects == 0 {
		w.Objects = 1000
	}
	if w.ValSize == 0 {
		w.ValSize = 1024
	}
	if w.PageSize == 0 {
		w.PageSize = 500
	}
	if w.Watchers == 0 && !w.NoWatch {
		w.Watchers = 10
	}
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.Mix == "" {
		w.Mix = DefaultK8sMix
	}
	if w.Prefix == "" {
		w.Prefix = "/registry/bench/"
	}
	if w.StallTimeout == 0 {
		w.StallTimeout = defaultStallTimeout
	}
}

// Validate implements Workload.
func (w *K8s) Validate() error {
	if err := errUnlessPositive("objects", w.Objects); err != nil {
		return err
	}
	if err := errUnlessPositive("page-size", w.PageSize); err != nil {
		return err
	}
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
	}
	if w.ValSize < 8 {
		return fmt.Errorf("%w: --val-size must be at least 8, got %d", ErrInvalid, w.ValSize)
	}
	if w.Watchers < 0 || (w.NoWatch && w.Watchers > 0) {
		return fmt.Errorf("%w: --watchers must be positive, or 0 to run without watches", ErrInvalid)
	}
	if err := errIfNegative("rate", w.Rate); err != nil {
		return err
	}
	weights, err := ParseMix(w.Mix)
	if err != nil {
		return err
	}
	w.weights = weights // parsed once here; measure runs only after Validate
	return nil
}

// Params implements Workload.
func (w *K8s) Params() map[string]string {
	return map[string]string{
		"objects": itoa(w.Objects), "val-size": itoa(int64(w.ValSize)), "page-size": itoa(w.PageSize),
		"watchers": itoa(int64(w.Watchers)), "total": itoa(w.Total), "rate": ftoa(w.Rate), "mix": w.Mix,
		"prefix": quoteKey(w.Prefix),
	}
}

func (w *K8s) key(i int64) string { return fmt.Sprintf("%sns-%02d/obj-%07d", w.Prefix, i%10, i) }

// value returns an object whose first 8 bytes carry the time it was
// written, so watchers can time its event.
func (w *K8s) value(pad []byte) string {
	b := make([]byte, w.ValSize)
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	copy(b[8:], pad)
	return string(b)
}

// k8sState is one run's shared state.
type k8sState struct {
	w        *K8s
	env      *runEnv
	pad      []byte
	end      string // range end of the prefix
	recs     map[string]*recorder
	all      *recorder
	writes   atomic.Int64 // successful writes: each must reach every watcher
	conflict atomic.Int64
	notFound atomic.Int64
	exists   atomic.Int64
	listKeys atomic.Int64
}

func (w *K8s) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	s := &k8sState{w: w, env: env, pad: randomBytes(w.ValSize), end: clientv3.GetPrefixRangeEnd(w.Prefix),
		recs: map[string]*recorder{}, all: newRecorder("all", "op", env.Client.Clients)}
	for _, op := range k8sOps {
		s.recs[op] = newRecorder(op, "op", env.Client.Clients)
	}
	if err := s.setup(ctx); err != nil {
		return nil, err
	}

	// Watchers, each on a stream of its own like the apiserver's watch cache
	// per resource, spread over the connections.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events := newRecorder("watch-event", "event", max(w.Watchers, 1))
	var received, lastEvent atomic.Int64
	var watchErr errorLog
	var rwg sync.WaitGroup
	stopWatchers := func() {
		wcancel()
		rwg.Wait()
	}
	defer stopWatchers()
	base := time.Now()
	for i := range w.Watchers {
		wt := clientv3.NewWatcher(s.env.pool.client(i))
		defer wt.Close()
		wch := wt.Watch(wctx, w.Prefix, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
		if err := awaitCreated(ctx, wch); err != nil {
			return nil, err
		}
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
					if ev.Type == mvccpb.PUT && len(ev.Kv.Value) >= 8 {
						ts := int64(binary.BigEndian.Uint64(ev.Kv.Value))
						events.observe(i, now.Sub(time.Unix(0, ts)), nil)
					} else {
						events.countOnly()
					}
					received.Add(1)
					lastEvent.Store(int64(now.Sub(base)))
				}
			}
		}()
	}

	choose := s.chooser()
	seed := rand.Uint64()
	rngs := make([]*rand.Rand, env.Client.Clients)
	for c := range rngs {
		rngs[c] = rand.New(rand.NewPCG(seed, uint64(c)))
	}
	bar := startBar(env.Progress, "k8s", w.Total)
	start := time.Now()
	env.phase(true)
	elapsed, err := closedLoop(ctx, env.Client.Clients, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, _ int64) error {
			rng := rngs[c]
			op := choose(rng)
			st := time.Now()
			err := s.do(ctx, env.pool.client(c), op, rng.Int64N(w.Objects))
			d := time.Since(st)
			s.recs[op].observe(c, d, err)
			s.all.observe(c, d, err)
			return unsupported(op, err)
		})
	if err != nil {
		env.phase(false)
		return nil, err
	}
	var watchElapsed time.Duration
	if w.Watchers > 0 {
		want := s.writes.Load() * int64(w.Watchers)
		err := awaitCount(ctx, &received, want, w.StallTimeout)
		env.phase(false)
		stopWatchers()
		if n, first := watchErr.get(); n > 0 {
			if u := unsupported("Watch", errors.New(first)); u != nil {
				return nil, u
			}
		}
		if err != nil {
			return nil, err
		}
		watchElapsed = time.Duration(lastEvent.Load()) - start.Sub(base)
	} else {
		env.phase(false)
	}
	ops := []OpResult{s.all.result(elapsed)}
	for _, op := range k8sOps {
		if w.weights[op] > 0 {
			ops = append(ops, s.recs[op].result(elapsed))
		}
	}
	if w.Watchers > 0 {
		ev := events.result(watchElapsed)
		ev.Errors, ev.FirstError = watchErr.get()
		ops = append(ops, ev)
	}
	return &measurement{ops: ops, counters: map[string]string{
		"writes": itoa(s.writes.Load()), "conflicts": itoa(s.conflict.Load()), "not-found": itoa(s.notFound.Load()),
		"already-exists": itoa(s.exists.Load()), "listed-keys": itoa(s.listKeys.Load()),
	}}, nil
}

// setup removes what an earlier run left under the prefix and creates the
// objects, untimed.
func (s *k8sState) setup(ctx context.Context) error {
	cli := s.env.pool.client(0)
	if _, err := cli.Delete(ctx, s.w.Prefix, clientv3.WithPrefix()); err != nil {
		return setupErr("DeleteRange", fmt.Sprintf("clearing %q", s.w.Prefix), err)
	}
	n := s.w.Objects
	batches := (n + preloadBatch - 1) / preloadBatch
	bar := startBar(s.env.Progress, "k8s objects", n)
	defer bar.Finish()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for c := range min(8, int(batches)) {
		g.Go(func() error {
			cli := s.env.pool.client(c)
			for {
				b := next.Add(1) - 1
				if b >= batches {
					return nil
				}
				var ops []clientv3.Op
				for i := b * preloadBatch; i < min(n, (b+1)*preloadBatch); i++ {
					ops = append(ops, clientv3.OpPut(s.w.key(i), s.w.value(s.pad)))
				}
				if _, err := cli.Txn(gctx).Then(ops...).Commit(); err != nil {
					return setupErr("Txn", "creating objects", err)
				}
				bar.Add(int64(len(ops)))
			}
		})
	}
	return g.Wait()
}

// chooser returns a function that draws an operation by weight.
func (s *k8sState) chooser() func(*rand.Rand) string {
	var names []string
	var cum []int
	t := 0
	for _, op := range k8sOps {
		if w := s.w.weights[op]; w > 0 {
			t += w
			names = append(names, op)
			cum = append(cum, t)
		}
	}
	return func(r *rand.Rand) string {
		x := r.IntN(t)
		i, _ := slices.BinarySearch(cum, x+1)
		return names[i]
	}
}

// maxConflictRetries bounds an optimistic update; the apiserver retries
// without a bound, but a benchmark must end.
const maxConflictRetries = 20

var errTooManyConflicts = errors.New("too many mod_revision conflicts")

func (s *k8sState) do(ctx context.Context, cli *clientv3.Client, op string, i int64) error {
	key := s.w.key(i)
	switch op {
	case "get":
		_, err := cli.Get(ctx, key)
		return err
	case "create":
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, s.w.value(s.pad))).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			s.writes.Add(1)
		} else {
			s.exists.Add(1)
		}
		return nil
	case "update", "delete":
		return s.guarded(ctx, cli, op, key)
	case "list":
		return s.list(ctx, cli)
	}
	return fmt.Errorf("unknown op %q", op)
}

// guarded reads key and then updates or deletes it only if its mod_revision
// is unchanged, refreshing from the txn's else branch on conflict.
func (s *k8sState) guarded(ctx context.Context, cli *clientv3.Client, op, key string) error {
	get, err := cli.Get(ctx, key)
	if err != nil {
		return err
	}
	kvs := get.Kvs
	for range maxConflictRetries {
		if len(kvs) == 0 {
			s.notFound.Add(1)
			return nil
		}
		write := clientv3.OpPut(key, s.w.value(s.pad))
		if op == "delete" {
			write = clientv3.OpDelete(key)
		}
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kvs[0].ModRevision)).
			Then(write).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			s.writes.Add(1)
			return nil
		}
		s.conflict.Add(1)
		kvs = resp.Responses[0].GetResponseRange().Kvs
	}
	return errTooManyConflicts
}

// list reads the whole prefix page by page at one revision.
func (s *k8sState) list(ctx context.Context, cli *clientv3.Client) error {
	from := s.w.Prefix
	var rev, n int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(s.end), clientv3.WithLimit(s.w.PageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, from, opts...)
		if err != nil {
			return err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		n += int64(len(resp.Kvs))
		if !resp.More || len(resp.Kvs) == 0 {
			s.listKeys.Store(n)
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
