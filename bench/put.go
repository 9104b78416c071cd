package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Put is etcd benchmark's `put`: Total puts of ValSize-byte values to keys
// drawn from KeySpaceSize keys (sequentially or at random).
type Put struct {
	KeySize      int     // bytes of the key after KeyPrefix; default 8
	ValSize      int     // default 8
	Total        int64   // default 10000
	Rate         float64 // puts per second; 0 = unlimited
	KeySpaceSize int64   // distinct keys; default 1
	Sequential   bool    // key i%KeySpaceSize instead of a random key
	KeyPrefix    string  // prepended to every key (not in etcd's tool; keeps runs apart)
}

// Name implements Workload.
func (*Put) Name() string { return "put" }

// SetDefaults implements Workload.
func (w *Put) SetDefaults() {
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
func (w *Put) Validate() error {
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
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
func (w *Put) Params() map[string]string {
	return map[string]string{
		"key-size": itoa(int64(w.KeySize)), "val-size": itoa(int64(w.ValSize)), "total": itoa(w.Total),
		"rate": ftoa(w.Rate), "key-space-size": itoa(w.KeySpaceSize), "sequential-keys": btoa(w.Sequential),
	}
}

func (w *Put) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	keys := keyGen{prefix: w.KeyPrefix, size: w.KeySize}
	val := string(randomBytes(w.ValSize))
	rec := newRecorder("put", "req", env.Client.Clients)
	bar := startBar(env.Progress, "put", w.Total)
	elapsed, err := env.timedLoop(ctx, env.Client.Clients, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, seq int64) error {
			n := seq % w.KeySpaceSize
			if !w.Sequential {
				n = rand.Int64N(w.KeySpaceSize)
			}
			op := clientv3.OpPut(keys.key(n), val)
			st := time.Now()
			_, err := env.pool.client(c).Do(ctx, op)
			rec.observe(c, time.Since(st), err)
			return unsupported("Put", err)
		})
	if err != nil {
		return nil, err
	}
	return &measurement{ops: []OpResult{rec.result(elapsed)}}, nil
}
