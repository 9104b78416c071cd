package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TxnPut is etcd benchmark's `txn-put`: Total txns, each putting TxnOps
// distinct keys of the key space.
type TxnPut struct {
	KeySize      int // default 8
	ValSize      int // default 8
	TxnOps       int // puts per txn; default 1
	Total        int64
	Rate         float64
	KeySpaceSize int64 // default 1
	KeyPrefix    string
}

// Name implements Workload.
func (*TxnPut) Name() string { return "txn-put" }

// SetDefaults implements Workload.
func (w *TxnPut) SetDefaults() {
	if w.KeySize == 0 {
		w.KeySize = 8
	}
	if w.ValSize == 0 {
		w.ValSize = 8
	}
	if w.TxnOps == 0 {
		w.TxnOps = 1
	}
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.KeySpaceSize == 0 {
		w.KeySpaceSize = 1
	}
}

// Validate implements Workload.
func (w *TxnPut) Validate() error {
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
	}
	if err := errUnlessPositive("txn-ops", int64(w.TxnOps)); err != nil {
		return err
	}
	if int64(w.TxnOps) > w.KeySpaceSize {
		// A txn may not put the same key twice.
		return fmt.Errorf("%w: --txn-ops (%d) must not exceed --key-space-size (%d)", ErrInvalid, w.TxnOps, w.KeySpaceSize)
	}
	if w.ValSize < 0 {
		return fmt.Errorf("%w: --val-size must not be negative, got %d", ErrInvalid, w.ValSize)
	}
	if err := errIfNegative("rate", w.Rate); err != nil {
		return err
	}
	return validateKeySpace(w.KeySize, w.KeySpaceSize)
}

// Params implements Workload.
func (w *TxnPut) Params() map[string]string {
	return map[string]string{
		"key-size": itoa(int64(w.KeySize)), "val-size": itoa(int64(w.ValSize)), "txn-ops": itoa(int64(w.TxnOps)),
		"total": itoa(w.Total), "rate": ftoa(w.Rate), "key-space-size": itoa(w.KeySpaceSize),
	}
}

func (w *TxnPut) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	keys := keyGen{prefix: w.KeyPrefix, size: w.KeySize}
	val := string(randomBytes(w.ValSize))
	rec := newRecorder("txn-put", "txn", env.Client.Clients)
	bar := startBar(env.Progress, "txn-put", w.Total)
	elapsed, err := env.timedLoop(ctx, env.Client.Clients, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, seq int64) error {
			ops := make([]clientv3.Op, w.TxnOps)
			for j := range ops {
				ops[j] = clientv3.OpPut(keys.key((seq*int64(w.TxnOps)+int64(j))%w.KeySpaceSize), val)
			}
			st := time.Now()
			_, err := env.pool.client(c).Txn(ctx).Then(ops...).Commit()
			rec.observe(c, time.Since(st), err)
			return unsupported("Txn", err)
		})
	if err != nil {
		return nil, err
	}
	return &measurement{ops: []OpResult{rec.result(elapsed)}}, nil
}

// TxnMixed is etcd benchmark's `txn-mixed key [end-range]`: Total txns, each
// either a range (with probability RWRatio/(1+RWRatio)) over Key's prefix or
// [Key, EndKey), limited to Limit keys, or a put to the key space.
type TxnMixed struct {
	Key          string // range start; "" with no EndKey ranges over every key
	EndKey       string // optional; without it the range is Key's prefix
	Limit        int64  // default 1000
	Consistency  string // "l" (default) or "s"
	RWRatio      float64
	KeySize      int // default 8
	ValSize      int // default 8
	Total        int64
	Rate         float64
	KeySpaceSize int64 // default 1
	KeyPrefix    string
}

// Name implements Workload.
func (*TxnMixed) Name() string { return "txn-mixed" }

// SetDefaults implements Workload.
func (w *TxnMixed) SetDefaults() {
	if w.Limit == 0 {
		w.Limit = 1000
	}
	if w.Consistency == "" {
		w.Consistency = "l"
	}
	if w.RWRatio == 0 {
		w.RWRatio = 1
	}
	if w.KeySize == 0 {
		w.KeySize = 8
	}
	if w.ValSize == 0 {
		w.ValSize = 8
	}
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.KeySpaceSize == 0 {
		w.KeySpaceSize = 1
	}
}

// Validate implements Workload.
func (w *TxnMixed) Validate() error {
	if err := checkConsistency(w.Consistency); err != nil {
		return err
	}
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
	}
	if err := errUnlessPositive("limit", w.Limit); err != nil {
		return err
	}
	if err := errIfNegative("rw-ratio", w.RWRatio); err != nil {
		return err
	}
	if err := errIfNegative("rate", w.Rate); err != nil {
		return err
	}
	if w.ValSize < 0 {
		return fmt.Errorf("%w: --val-size must not be negative, got %d", ErrInvalid, w.ValSize)
	}
	return validateKeySpace(w.KeySize, w.KeySpaceSize)
}

// Params implements Workload.
func (w *TxnMixed) Params() map[string]string {
	p := map[string]string{
		"key": quoteKey(w.Key), "limit": itoa(w.Limit), "consistency": w.Consistency, "rw-ratio": ftoa(w.RWRatio),
		"key-size": itoa(int64(w.KeySize)), "val-size": itoa(int64(w.ValSize)), "total": itoa(w.Total),
		"rate": ftoa(w.Rate), "key-space-size": itoa(w.KeySpaceSize),
	}
	if w.EndKey != "" {
		p["end-key"] = quoteKey(w.EndKey)
	}
	return p
}

func (w *TxnMixed) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	keys := keyGen{prefix: w.KeyPrefix, size: w.KeySize}
	val := string(randomBytes(w.ValSize))
	opts := []clientv3.OpOption{clientv3.WithLimit(w.Limit)}
	if w.EndKey != "" {
		opts = append(opts, clientv3.WithRange(w.EndKey))
	} else {
		opts = append(opts, clientv3.WithPrefix())
	}
	if w.Consistency == "s" {
		opts = append(opts, clientv3.WithSerializable())
	}
	get := clientv3.OpGet(w.Key, opts...)
	readP := w.RWRatio / (1 + w.RWRatio)

	n := env.Client.Clients
	all := newRecorder("txn", "txn", n)
	reads := newRecorder("read", "txn", n)
	writes := newRecorder("write", "txn", n)
	bar := startBar(env.Progress, "txn-mixed", w.Total)
	elapsed, err := env.timedLoop(ctx, n, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, seq int64) error {
			op, rec := get, reads
			if rand.Float64() >= readP {
				op, rec = clientv3.OpPut(keys.key(seq%w.KeySpaceSize), val), writes
			}
			st := time.Now()
			_, err := env.pool.client(c).Txn(ctx).Then(op).Commit()
			d := time.Since(st)
			rec.observe(c, d, err)
			all.observe(c, d, err)
			return unsupported("Txn", err)
		})
	if err != nil {
		return nil, err
	}
	return &measurement{ops: []OpResult{all.result(elapsed), reads.result(elapsed), writes.result(elapsed)}}, nil
}
