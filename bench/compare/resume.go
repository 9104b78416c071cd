package compare

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/bench"
)

// Resume measures how long writes stop when the raft leader dies: under a
// steady put load through the system's client endpoints it finds the leader
// (endpoint status), SIGKILLs it, and takes the time from the kill to the
// first successful put that was sent after the kill. Probe puts start every
// ProbeEvery so the resolution does not depend on how long the load's
// in-flight requests hang. The killed member is restarted on its data and
// the cluster waited on before the next repetition.
type Resume struct {
	Reps           int           // kills per run; default 3
	Clients        int           // closed-loop put clients of the steady load; default 8
	Warmup         time.Duration // load before the kill; default 2s
	ProbeEvery     time.Duration // default 10ms
	RequestTimeout time.Duration // per put; default 2s
	GiveUp         time.Duration // a kill after which no put succeeds for this long fails; default 30s
	ValSize        int           // default 256
}

// SetDefaults fills zero fields.
func (r *Resume) SetDefaults() {
	if r.Reps == 0 {
		r.Reps = 3
	}
	if r.Clients == 0 {
		r.Clients = 8
	}
	if r.Warmup == 0 {
		r.Warmup = 2 * time.Second
	}
	if r.ProbeEvery == 0 {
		r.ProbeEvery = 10 * time.Millisecond
	}
	if r.RequestTimeout == 0 {
		r.RequestTimeout = 2 * time.Second
	}
	if r.GiveUp == 0 {
		r.GiveUp = 30 * time.Second
	}
	if r.ValSize == 0 {
		r.ValSize = valSize
	}
}

// Name is the measurement's name in the document.
func (r *Resume) Name() string { return "resume-after-leader-kill" }

// Validate checks the settings (after SetDefaults).
func (r *Resume) Validate() error {
	c := *r
	c.SetDefaults()
	if c.Reps < 1 || c.Clients < 1 || c.Warmup < 0 || c.ProbeEvery <= 0 || c.RequestTimeout <= 0 || c.GiveUp <= 0 || c.ValSize < 0 {
		return fmt.Errorf("%w: resume: counts and durations must be positive", bench.ErrInvalid)
	}
	return nil
}

// Params lists the settings.
func (r *Resume) Params() map[string]string {
	c := *r
	c.SetDefaults()
	return map[string]string{"kills": fmt.Sprint(c.Reps), "load-clients": fmt.Sprint(c.Clients), "warmup": c.Warmup.String(),
		"probe-every": c.ProbeEvery.String(), "request-timeout": c.RequestTimeout.String(), "val-size": fmt.Sprint(c.ValSize)}
}

// Run kills the leader Reps times. The result's primary op "resume" holds
// one observation per successful repetition; failed ones count as errors.
func (r *Resume) Run(ctx context.Context, sys System, env bench.Env) (*bench.Result, error) {
	c := *r
	c.SetDefaults()
	if sys.Cluster == nil {
		return nil, errors.New("resume needs a cluster")
	}
	start := time.Now()
	var times []time.Duration
	var errs int64
	var firstErr string
	var killed []string
	for rep := range c.Reps {
		d, name, err := c.once(ctx, sys, rep)
		killed = append(killed, name)
		if err != nil {
			errs++
			if firstErr == "" {
				firstErr = err.Error()
			}
		} else {
			times = append(times, d)
		}
		// The next kill needs the whole cluster back, whatever happened.
		if rerr := restoreCluster(ctx, sys.Cluster); rerr != nil {
			return nil, fmt.Errorf("restoring the cluster after kill %d: %w", rep+1, rerr)
		}
	}
	params := c.Params()
	params["killed"] = strings.Join(killed, ",")
	return &bench.Result{Workload: c.Name(), Params: params, Endpoints: sys.Endpoints, Started: start, Elapsed: time.Since(start),
		Ops: []bench.OpResult{{Name: "resume", Unit: "kill", Count: int64(len(times)), Errors: errs, FirstError: firstErr,
			Elapsed: time.Since(start), Latency: LatencyOf(times)}}}, nil
}

// restoreCluster relaunches dead processes and waits for /health
// everywhere and a leader.
func restoreCluster(ctx context.Context, c *Cluster) error {
	for _, s := range c.Procs {
		if !s.Alive() {
			if err := s.Relaunch(); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		return err
	}
	_, err := c.WaitLeader(ctx, time.Minute)
	return err
}

// once runs one kill and returns the time to the first write after it and
// the killed member's name.
func (c *Resume) once(ctx context.Context, sys System, rep int) (time.Duration, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: sys.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return 0, "", err
	}
	defer cli.Close()
	val := strings.Repeat("v", c.ValSize)
	prefix := fmt.Sprintf("/bench/resume/%d/", rep)
	var seq atomic.Int64
	put := func() error {
		pctx, pcancel := context.WithTimeout(ctx, c.RequestTimeout)
		defer pcancel()
		_, err := cli.Put(pctx, fmt.Sprintf("%s%08d", prefix, seq.Add(1)%10000), val)
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait
	var loadOK atomic.Int64
	for range c.Clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				if put() == nil {
					loadOK.Add(1)
				} else {
					_ = sleepCtx(ctx, time.Millisecond) // a refused connection fails at once
				}
			}
		})
	}
	if err := sleepCtx(ctx, c.Warmup); err != nil {
		return 0, "", err
	}
	if loadOK.Load() == 0 {
		return 0, "", errors.New("no put succeeded before the kill")
	}
	leader, err := sys.Cluster.Leader(ctx)
	if err != nil {
		return 0, "", err
	}
	name := sys.Cluster.Specs[leader].Name

	// Probes: one new put every ProbeEvery from the kill on; the first to
	// succeed ends the measurement.
	type done struct{ at time.Time }
	first := make(chan done, 1)
	kill := time.Now()
	sys.Cluster.Procs[leader].Kill()
	t := time.NewTicker(c.ProbeEvery)
	defer t.Stop()
	giveUp := time.NewTimer(c.GiveUp)
	defer giveUp.Stop()
	for {
		wg.Go(func() {
			if put() == nil {
				select {
				case first <- done{time.Now()}:
				default:
				}
			}
		})
		select {
		case d := <-first:
			return d.at.Sub(kill), name, nil
		case <-giveUp.C:
			return 0, name, fmt.Errorf("no write succeeded within %v of killing the leader %s", c.GiveUp, name)
		case <-ctx.Done():
			return 0, name, ctx.Err()
		case <-t.C:
		}
	}
}

// LatencyOf summarizes a few observations exactly (no histogram): the
// percentiles are nearest-rank.
func LatencyOf(ds []time.Duration) bench.Latency {
	if len(ds) == 0 {
		return bench.Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	rank := func(p float64) time.Duration {
		i := int(p/100*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return bench.Latency{Min: s[0], Mean: sum / time.Duration(len(s)), P50: rank(50), P90: rank(90), P99: rank(99), P999: rank(99.9), Max: s[len(s)-1]}
}
