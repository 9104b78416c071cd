package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Env is what a run needs besides the workload's own settings.
type Env struct {
	Client   ClientConfig
	Progress Progress     // nil: no progress display
	Logger   *slog.Logger // nil: discard
	// Phase, when set, is called with true just before a workload's timed
	// phase and with false just after it, so a caller can sample the
	// server (CPU time) over exactly what is measured. Set-up (preloads,
	// grants, watch creation) falls outside.
	Phase func(timed bool)
}

func (e *runEnv) phase(timed bool) {
	if e.Phase != nil {
		e.Phase(timed)
	}
}

// Workload is one benchmark. Implementations are the exported workload types
// of this package (Put, Range, TxnPut, TxnMixed, Watch, WatchLatency,
// LeaseKeepalive, K8s); the interface is sealed by its unexported method.
type Workload interface {
	// Name is the workload's command name, e.g. "put".
	Name() string
	// SetDefaults fills zero fields with etcd benchmark's defaults.
	SetDefaults()
	// Validate checks the settings after SetDefaults.
	Validate() error
	// Params lists the settings for the record.
	Params() map[string]string
	measure(ctx context.Context, env *runEnv) (*measurement, error)
}

// measurement is what a workload's measure returns: its operations and any
// extra counters (conflicts, retries, ...).
type measurement struct {
	ops      []OpResult
	counters map[string]string
}

// runEnv is Env after defaults, with the dialled connections.
type runEnv struct {
	Env
	pool *pool
}

// Run validates w and env, dials the connections, runs the workload and
// closes everything it opened. The result carries the workload's and the
// client's parameters.
func Run(ctx context.Context, w Workload, env Env) (*Result, error) {
	env.Client.SetDefaults()
	if err := env.Client.Validate(); err != nil {
		return nil, err
	}
	w.SetDefaults()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if env.Logger == nil {
		env.Logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	p, err := dial(ctx, env.Client)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	m, err := w.measure(ctx, &runEnv{Env: env, pool: p})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", w.Name(), err)
	}
	params := w.Params()
	params["conns"] = strconv.Itoa(env.Client.Conns)
	params["clients"] = strconv.Itoa(env.Client.Clients)
	maps.Copy(params, m.counters)
	return &Result{
		Workload:  w.Name(),
		Params:    params,
		Endpoints: env.Client.Endpoints,
		Started:   start,
		Elapsed:   time.Since(start),
		Ops:       m.ops,
	}, nil
}

// recorder collects one kind of operation.
type recorder struct {
	name, unit string
	hist       *Histogram
	errs       errorLog
	count      atomic.Int64
}

func newRecorder(name, unit string, writers int) *recorder {
	return &recorder{name: name, unit: unit, hist: NewHistogram(writers)}
}

// observe records a success with its latency, or a failure.
func (r *recorder) observe(writer int, d time.Duration, err error) {
	if err != nil {
		r.errs.add(err)
		return
	}
	r.count.Add(1)
	r.hist.Record(writer, d)
}

// countOnly records a success without a latency.
func (r *recorder) countOnly() { r.count.Add(1) }

func (r *recorder) result(elapsed time.Duration) OpResult {
	n, first := r.errs.get()
	return OpResult{Name: r.name, Unit: r.unit, Count: r.count.Load(), Errors: n, FirstError: first,
		Elapsed: elapsed, Latency: r.hist.Summary()}
}

// newLimiter returns a limiter for perSecond operations per second, or nil
// for no limit.
func newLimiter(perSecond float64) *rate.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), 1)
}

// timedLoop is closedLoop as the run's timed phase.
func (e *runEnv) timedLoop(ctx context.Context, n int, total int64, lim *rate.Limiter, bar Bar,
	do func(ctx context.Context, c int, seq int64) error) (time.Duration, error) {
	e.phase(true)
	defer e.phase(false)
	return closedLoop(ctx, n, total, lim, bar, do)
}

// closedLoop runs total operations on n concurrent clients, each running one
// operation at a time, in sequence order, under an optional rate limit. do
// runs operation seq on client index c and reports its own outcome to its
// recorders; when it returns a non-nil error the loop stops and closedLoop
// returns that error (do returns errors only for conditions that make the
// rest of the run meaningless, e.g. ErrUnsupported). closedLoop returns the
// wall time of the loop.
func closedLoop(ctx context.Context, n int, total int64, lim *rate.Limiter, bar Bar,
	do func(ctx context.Context, c int, seq int64) error) (time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seq := next.Add(1) - 1
				if seq >= total || ctx.Err() != nil {
					return
				}
				if lim != nil {
					if err := lim.Wait(ctx); err != nil {
						return
					}
				}
				if err := do(ctx, c, seq); err != nil {
					cancel(err)
					return
				}
				bar.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	bar.Finish()
	if err := context.Cause(ctx); err != nil {
		return elapsed, err
	}
	return elapsed, nil
}

// keyGen builds etcd-benchmark keys: prefix followed by size bytes holding
// the zig-zag varint of the key number, zero padded (etcd's
// binary.PutVarint into a key of --key-size bytes).
type keyGen struct {
	prefix string
	size   int
}

func (g keyGen) key(n int64) string {
	b := make([]byte, len(g.prefix)+g.size)
	copy(b, g.prefix)
	binary.PutVarint(b[len(g.prefix):], n)
	return string(b)
}

// varintLen is how many bytes binary.PutVarint needs for n.
func varintLen(n int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], n)
}

// validateKeySpace checks that keys numbered [0, space) fit in size bytes.
func validateKeySpace(size int, space int64) error {
	if space < 1 {
		return fmt.Errorf("%w: --key-space-size must be positive, got %d", ErrInvalid, space)
	}
	if size < 1 {
		return fmt.Errorf("%w: --key-size must be positive, got %d", ErrInvalid, size)
	}
	if need := varintLen(space - 1); size < need {
		return fmt.Errorf("%w: --key-size %d cannot hold %d distinct keys (needs %d bytes)", ErrInvalid, size, space, need)
	}
	return nil
}

// randomBytes returns n random bytes (a value is generated once per run, as
// etcd's benchmark does).
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return b
}

// seqValue returns a value of size bytes (at least 8) whose first 8 bytes
// carry seq, so a watch event can be matched to the put that caused it.
func seqValue(seq int64, size int, pad []byte) string {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(seq))
	copy(b[8:], pad)
	return string(b)
}

// valueSeq decodes what seqValue wrote.
func valueSeq(v []byte) (int64, bool) {
	if len(v) < 8 {
		return 0, false
	}
	s := binary.BigEndian.Uint64(v)
	if s > math.MaxInt64 {
		return 0, false
	}
	return int64(s), true
}

// checkConsistency validates etcd's --consistency values.
func checkConsistency(c string) error {
	if c != "l" && c != "s" {
		return fmt.Errorf("%w: --consistency must be l (linearizable) or s (serializable), got %q", ErrInvalid, c)
	}
	return nil
}

func errUnlessPositive(name string, v int64) error {
	if v < 1 {
		return fmt.Errorf("%w: --%s must be positive, got %d", ErrInvalid, name, v)
	}
	return nil
}

func errIfNegative(name string, v float64) error {
	if v < 0 || math.IsNaN(v) {
		return fmt.Errorf("%w: --%s must not be negative, got %v", ErrInvalid, name, v)
	}
	return nil
}

// ctxErr returns ctx's error, preferring its cause.
func ctxErr(ctx context.Context) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return ctx.Err()
}

func itoa(v int64) string      { return strconv.FormatInt(v, 10) }
func ftoa(v float64) string    { return strconv.FormatFloat(v, 'g', -1, 64) }
func btoa(v bool) string       { return strconv.FormatBool(v) }
func quoteKey(k string) string { return strconv.Quote(k) }
