package bench

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

// Range is etcd benchmark's `range key [end-range]`: Total range requests
// for one key, a key range, or (Prefix) every key with a prefix, each
// linearizable (Consistency "l") or serializable ("s").
type Range struct {
	Key         string // required
	End         string // optional range end (exclusive); excludes Prefix
	Prefix      bool   // range over every key starting with Key
	Consistency string // "l" (default) or "s"
	Total       int64  // default 10000
	Rate        float64
	Limit       int64 // max keys per response; 0 = no limit
	// Preload, when positive, first writes (untimed) PreloadValSize-byte
	// values so the range has something to return: for a prefix or a key
	// range, Preload keys Key+"%08d"; for a single key (Preload must be 1),
	// Key itself. Not in etcd's tool: it makes a run self-contained.
	Preload        int64
	PreloadValSize int // default 256
}

// Name implements Workload.
func (*Range) Name() string { return "range" }

// SetDefaults implements Workload.
func (w *Range) SetDefaults() {
	if w.Consistency == "" {
		w.Consistency = "l"
	}
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.PreloadValSize == 0 {
		w.PreloadValSize = 256
	}
}

// Validate implements Workload.
func (w *Range) Validate() error {
	if w.Key == "" {
		return fmt.Errorf("%w: range needs a key", ErrInvalid)
	}
	if w.End != "" && w.Prefix {
		return fmt.Errorf("%w: give either an end key or --prefix, not both", ErrInvalid)
	}
	if err := checkConsistency(w.Consistency); err != nil {
		return err
	}
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
	}
	if err := errIfNegative("rate", w.Rate); err != nil {
		return err
	}
	if w.Limit < 0 || w.Preload < 0 || w.PreloadValSize < 0 {
		return fmt.Errorf("%w: --limit, --preload and --preload-val-size must not be negative", ErrInvalid)
	}
	if w.Preload > 1 && w.End == "" && !w.Prefix {
		return fmt.Errorf("%w: --preload %d needs --prefix or an end key (a single key takes --preload 1)", ErrInvalid, w.Preload)
	}
	return nil
}

// Params implements Workload.
func (w *Range) Params() map[string]string {
	p := map[string]string{
		"key": quoteKey(w.Key), "consistency": w.Consistency, "total": itoa(w.Total), "rate": ftoa(w.Rate),
	}
	if w.End != "" {
		p["end"] = quoteKey(w.End)
	}
	if w.Prefix {
		p["prefix"] = "true"
	}
	if w.Limit > 0 {
		p["limit"] = itoa(w.Limit)
	}
	if w.Preload > 0 {
		p["preload"] = itoa(w.Preload)
		p["preload-val-size"] = itoa(int64(w.PreloadValSize))
	}
	return p
}

func (w *Range) op() clientv3.Op {
	var opts []clientv3.OpOption
	switch {
	case w.Prefix:
		opts = append(opts, clientv3.WithPrefix())
	case w.End != "":
		opts = append(opts, clientv3.WithRange(w.End))
	}
	if w.Consistency == "s" {
		opts = append(opts, clientv3.WithSerializable())
	}
	if w.Limit > 0 {
		opts = append(opts, clientv3.WithLimit(w.Limit))
	}
	return clientv3.OpGet(w.Key, opts...)
}

func (w *Range) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	switch {
	case w.Preload == 1 && w.End == "" && !w.Prefix:
		if _, err := env.pool.client(0).Put(ctx, w.Key, string(randomBytes(w.PreloadValSize))); err != nil {
			return nil, setupErr("Put", "preloading the key", err)
		}
	case w.Preload > 0:
		if err := preload(ctx, env, w.Key, w.Preload, w.PreloadValSize); err != nil {
			return nil, err
		}
	}
	op := w.op()
	rec := newRecorder("range", "req", env.Client.Clients)
	var keysPerRange atomic.Int64
	keysPerRange.Store(-1)
	bar := startBar(env.Progress, "range", w.Total)
	elapsed, err := env.timedLoop(ctx, env.Client.Clients, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, _ int64) error {
			st := time.Now()
			resp, err := env.pool.client(c).Do(ctx, op)
			rec.observe(c, time.Since(st), err)
			if err == nil {
				keysPerRange.CompareAndSwap(-1, int64(len(resp.Get().Kvs)))
			}
			return unsupported("Range", err)
		})
	if err != nil {
		return nil, err
	}
	// The number of keys the first successful response carried, so a reader
	// can check that both servers returned the same thing.
	return &measurement{
		ops:      []OpResult{rec.result(elapsed)},
		counters: map[string]string{"keys-per-range": itoa(keysPerRange.Load())},
	}, nil
}

// preloadBatch is how many puts one preload txn carries: below the default
// --max-txn-ops (128) of both etcd and concord.
const preloadBatch = 100

// preload writes n keys prefix+"%08d" with size-byte values in txns of
// preloadBatch puts, from a few concurrent clients.
func preload(ctx context.Context, env *runEnv, prefix string, n int64, size int) error {
	val := string(randomBytes(size))
	batches := (n + preloadBatch - 1) / preloadBatch
	bar := startBar(env.Progress, "preload", n)
	defer bar.Finish()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for c := range min(8, env.Client.Conns*4, int(batches)) {
		g.Go(func() error {
			cli := env.pool.client(c)
			for {
				b := next.Add(1) - 1
				if b >= batches {
					return nil
				}
				var ops []clientv3.Op
				for i := b * preloadBatch; i < min(n, (b+1)*preloadBatch); i++ {
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%08d", prefix, i), val))
				}
				if _, err := cli.Txn(gctx).Then(ops...).Commit(); err != nil {
					return setupErr("Txn", "preloading keys", err)
				}
				bar.Add(int64(len(ops)))
			}
		})
	}
	return g.Wait()
}

// Load writes n keys prefix+"%08d" with valSize-byte values, in txns of 100
// puts from up to 8 concurrent connections: set-up for a comparison (e.g.
// memory with 100,000 keys), not a measurement.
func Load(ctx context.Context, cfg ClientConfig, prefix string, n int64, valSize int, p Progress) error {
	cfg.SetDefaults()
	cfg.Conns = 8
	if err := cfg.Validate(); err != nil {
		return err
	}
	pl, err := dial(ctx, cfg)
	if err != nil {
		return err
	}
	defer pl.Close()
	return preload(ctx, &runEnv{Env: Env{Client: cfg, Progress: p}, pool: pl}, prefix, n, valSize)
}
