package bench

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaseKeepalive is etcd benchmark's `lease-keepalive`: every client grants
// one lease (untimed), then the clients send Total single keep-alives
// (clientv3's KeepAliveOnce: one LeaseKeepAlive stream per request, exactly
// what etcd's tool measures). The leases are revoked afterwards.
type LeaseKeepalive struct {
	Total int64 // default 10000
	Rate  float64
	TTL   int64 // seconds; default 100, as in etcd's tool
}

// Name implements Workload.
func (*LeaseKeepalive) Name() string { return "lease-keepalive" }

// SetDefaults implements Workload.
func (w *LeaseKeepalive) SetDefaults() {
	if w.Total == 0 {
		w.Total = 10000
	}
	if w.TTL == 0 {
		w.TTL = 100
	}
}

// Validate implements Workload.
func (w *LeaseKeepalive) Validate() error {
	if err := errUnlessPositive("total", w.Total); err != nil {
		return err
	}
	if err := errUnlessPositive("ttl", w.TTL); err != nil {
		return err
	}
	return errIfNegative("rate", w.Rate)
}

// Params implements Workload.
func (w *LeaseKeepalive) Params() map[string]string {
	return map[string]string{"total": itoa(w.Total), "rate": ftoa(w.Rate), "ttl": itoa(w.TTL)}
}

func (w *LeaseKeepalive) measure(ctx context.Context, env *runEnv) (*measurement, error) {
	n := env.Client.Clients
	ids := make([]clientv3.LeaseID, n)
	for c := range ids {
		resp, err := env.pool.client(c).Grant(ctx, w.TTL)
		if err != nil {
			return nil, setupErr("LeaseGrant", "granting a lease", err)
		}
		ids[c] = resp.ID
	}
	defer func() {
		// Best effort: a lease left behind expires after TTL anyway.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for c, id := range ids {
			_, _ = env.pool.client(c).Revoke(rctx, id)
		}
	}()

	rec := newRecorder("keepalive", "req", n)
	bar := startBar(env.Progress, "lease-keepalive", w.Total)
	elapsed, err := env.timedLoop(ctx, n, w.Total, newLimiter(w.Rate), bar,
		func(ctx context.Context, c int, _ int64) error {
			st := time.Now()
			_, err := env.pool.client(c).KeepAliveOnce(ctx, ids[c])
			rec.observe(c, time.Since(st), err)
			return unsupported("LeaseKeepAlive", err)
		})
	if err != nil {
		return nil, err
	}
	return &measurement{ops: []OpResult{rec.result(elapsed)}}, nil
}
