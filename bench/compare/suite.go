package compare

import (
	"context"
	"fmt"
	"slices"

	"github.com/concord-kv/concord/bench"
)

// Metric names the figure a Target compares.
type Metric string

// Metrics. Rate is higher-is-better; the others are lower-is-better.
const (
	MetricRate      Metric = "rate" // operations per second of the op
	MetricP50       Metric = "p50"  // latency percentiles of the op
	MetricP99       Metric = "p99"
	MetricMax       Metric = "max"
	MetricRSSIdle   Metric = "rss-idle"   // server RSS after start, before any load
	MetricRSSLoaded Metric = "rss-loaded" // server RSS after loading Config.RSSKeys keys
)

// Target is a goal for concord relative to etcd on the same machine and run:
// concord/etcd ≥ Ratio for a rate, ≤ Ratio for a latency or memory. Of and
// Base name other systems of a cluster comparison (e.g. 2 fan-outs over 1);
// an Info target is a figure to show, not a goal.
type Target struct {
	Metric Metric
	Op     string // operation of the result; "" = the primary one
	Ratio  float64
	Of     string // the system compared; "" = Concord
	Base   string // the system it is compared with; "" = Etcd
	Info   bool   // shown with its ratio, not checked
}

// of and base return the systems the target compares.
func (t Target) of() string {
	if t.Of == "" {
		return Concord
	}
	return t.Of
}

func (t Target) base() string {
	if t.Base == "" {
		return Etcd
	}
	return t.Base
}

// HigherIsBetter reports whether a larger value of the metric is better.
func (t Target) HigherIsBetter() bool { return t.Metric == MetricRate }

// Met reports whether ratio (concord/etcd) meets the target.
func (t Target) Met(ratio float64) bool {
	if t.HigherIsBetter() {
		return ratio >= t.Ratio
	}
	return ratio <= t.Ratio
}

// String renders the target as "≥ 1.5x" or "≤ 1.0x".
func (t Target) String() string {
	if t.HigherIsBetter() {
		return fmt.Sprintf("≥ %.1fx", t.Ratio)
	}
	return fmt.Sprintf("≤ %.1fx", t.Ratio)
}

// Case is one workload configuration run on both servers.
type Case struct {
	ID      string // short, unique: "put-1x1"
	Title   string // for the document: "put, 1 conn, 1 client"
	Conns   int
	Clients int
	// New returns a fresh workload for one run (workloads keep no state
	// between runs, but SetDefaults/Validate mutate them).
	New     func() bench.Workload
	Targets []Target
	// Custom, instead of New, is a measurement that needs the system
	// itself, not only its endpoints (killing the leader).
	Custom Custom
	// Systems it runs on (cluster comparison); nil = every system.
	Systems []string
	// MaxEndpoints limits the client endpoints to the first n; 0 = all.
	MaxEndpoints int
}

// Custom is a measurement that drives a whole system.
type Custom interface {
	Name() string
	Params() map[string]string
	Validate() error
	Run(ctx context.Context, sys System, env bench.Env) (*bench.Result, error)
}

// runsOn reports whether the case runs on the system labelled impl.
func (c Case) runsOn(impl string) bool {
	return c.Systems == nil || slices.Contains(c.Systems, impl)
}

// Params are the workload's parameters after defaults, for the document.
func (c Case) Params() string {
	if c.Custom != nil {
		return bench.FormatParams(c.Custom.Params())
	}
	w := c.New()
	w.SetDefaults()
	p := w.Params()
	p["conns"] = fmt.Sprint(c.Conns)
	p["clients"] = fmt.Sprint(c.Clients)
	return bench.FormatParams(p)
}

// Workload is the workload's command name.
func (c Case) Workload() string {
	if c.Custom != nil {
		return c.Custom.Name()
	}
	return c.New().Name()
}

// Value sizes of the suite: 256-byte values as in etcd's published
// benchmarks; 1 KiB objects for the Kubernetes-like workload.
const (
	valSize    = 256
	keySpace   = 100000
	rssKeysDef = 100000
)

// DefaultCases is the suite `task bench:compare` runs. The totals are scaled
// down from etcd's defaults so a full run with two rounds stays around ten
// minutes on a 2-core machine; docs/benchmarks.md lists them.
func DefaultCases() []Case {
	return []Case{
		{
			ID: "put-1x1", Title: "put, 1 conn, 1 client", Conns: 1, Clients: 1,
			New: func() bench.Workload {
				return &bench.Put{KeySize: 8, ValSize: valSize, Total: 2000, KeySpaceSize: keySpace, Sequential: true, KeyPrefix: "/bench/put-1x1/"}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 1.0}},
		},
		{
			ID: "put-100x1000", Title: "put, 100 conns, 1000 clients", Conns: 100, Clients: 1000,
			New: func() bench.Workload {
				return &bench.Put{KeySize: 8, ValSize: valSize, Total: 30000, KeySpaceSize: keySpace, Sequential: true, KeyPrefix: "/bench/put-100x1000/"}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 1.5}, {Metric: MetricP99, Ratio: 1.0}},
		},
		{
			ID: "range-key-l", Title: "range one key, linearizable, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.Range{Key: "/bench/range/key", Consistency: "l", Total: 30000, Preload: 1, PreloadValSize: valSize}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 1.2}},
		},
		{
			ID: "range-key-s", Title: "range one key, serializable, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.Range{Key: "/bench/range/key", Consistency: "s", Total: 30000, Preload: 1, PreloadValSize: valSize}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 1.2}},
		},
		{
			ID: "range-10k", Title: "range 10,000 keys (prefix), linearizable, 1 conn, 1 client", Conns: 1, Clients: 1,
			New: func() bench.Workload {
				return &bench.Range{Key: "/bench/range-10k/", Prefix: true, Consistency: "l", Total: 100, Preload: 10000, PreloadValSize: valSize}
			},
			Targets: []Target{{Metric: MetricP50, Ratio: 0.5}},
		},
		{
			ID: "txn-put", Title: "txn-put, 4 puts per txn, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.TxnPut{KeySize: 8, ValSize: valSize, TxnOps: 4, Total: 10000, KeySpaceSize: keySpace, KeyPrefix: "/bench/txn-put/"}
			},
		},
		{
			ID: "txn-mixed", Title: "txn-mixed, 1:1 reads (limit 100) and puts, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.TxnMixed{Key: "/bench/txn-mixed/", KeyPrefix: "/bench/txn-mixed/", Limit: 100, Consistency: "l", RWRatio: 1,
					KeySize: 8, ValSize: valSize, Total: 10000, KeySpaceSize: 10000}
			},
		},
		{
			ID: "watch", Title: "watch, 10 streams × 100 watchers on 10 keys, 1000 puts", Conns: 10, Clients: 10,
			New: func() bench.Workload {
				return &bench.Watch{Streams: 10, WatchPerStream: 100, WatchedKeyTotal: 10, PutTotal: 1000, KeySize: 32,
					KeySpaceSize: 1000, Sequential: true, KeyPrefix: "/bench/watch/"}
			},
		},
		{
			ID: "watch-latency", Title: "watch-latency, 10,000 watchers of one key (100 streams), 50 puts at ≤100/s", Conns: 10, Clients: 1,
			New: func() bench.Workload {
				return &bench.WatchLatency{Watchers: 10000, Streams: 100, PutRate: 100, Total: 50, KeySize: 32, ValSize: 32,
					KeyPrefix: "/bench/watch-latency/"}
			},
			// The target: ≥ 2× events/s and p99 put-to-event
			// latency ≤ 0.5× etcd's.
			Targets: []Target{{Metric: MetricRate, Ratio: 2.0}, {Metric: MetricP99, Ratio: 0.5}},
		},
		{
			ID: "lease-keepalive", Title: "lease keep-alive, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.LeaseKeepalive{Total: 20000}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 2.0}},
		},
		{
			ID: "k8s", Title: "Kubernetes-like mix, 1000 objects of 1 KiB, 10 watchers, 10 conns, 100 clients", Conns: 10, Clients: 100,
			New: func() bench.Workload {
				return &bench.K8s{Objects: 1000, ValSize: 1024, PageSize: 500, Watchers: 10, Total: 10000, Prefix: "/registry/bench/"}
			},
		},
	}
}

// MemoryTargets are the goals for server memory.
var MemoryTargets = []Target{{Metric: MetricRSSIdle, Ratio: 1.0}, {Metric: MetricRSSLoaded, Ratio: 1.0}}
