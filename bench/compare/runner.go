// Package compare runs the bench workloads on a real etcd (built from the Go
// module proxy at the version pinned in go.mod) and on concord (all-in-one),
// started with the same flags on the same disk, alternating the two servers
// run after run (A B A B), and writes the medians, ratios and target checks
// to docs/benchmarks.md with an SVG chart of the latency percentiles.
//
// Invariants: both servers run with identical settings (single member,
// snapshot count, quota, log level) and data directories under one work
// directory; every case runs on etcd then concord within a round before the
// next case starts, so slow drifts of the machine (other load, thermal)
// affect both alike; a failed run is recorded with its error, never dropped
// silently, and never counts towards a median; the runner stops every
// process it started.
package compare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/concord-kv/concord/bench"
	"github.com/concord-kv/concord/internal/gobuild"
)

// Implementation labels, in run order within a round.
const (
	Etcd    = "etcd"
	Concord = "concord"
)

// Impls lists the implementations in the order every case runs them.
var Impls = []string{Etcd, Concord}

// Config configures a comparison.
type Config struct {
	Rounds     int    // runs of every case on each server; default 2
	WorkDir    string // binaries, data dirs and logs; default a new temporary directory, removed afterwards
	KeepWork   bool   // keep WorkDir
	ModuleRoot string // where to build from; default the module of the current directory
	EtcdBin    string // prebuilt etcd; default: build EtcdPackage
	ConcordBin string // prebuilt concord; default: build ConcordPackage
	Only       string // regexp on case IDs; "" = all
	Cases      []Case // default DefaultCases()
	RSSKeys    int64  // keys loaded before the loaded-RSS sample; default 100000; negative = skip
	// ServerFlags are the flags both servers get besides names, URLs and
	// the data dir. Default: DefaultServerFlags.
	ServerFlags []string
	RunTimeout  time.Duration // bound on one run; default 5 minutes
	Settle      time.Duration // idle time before an RSS sample; default 3s
	Progress    bench.Progress
	Logger      *slog.Logger
	// Topology is TopologySingle (default) or TopologyCluster: a 3-member
	// etcd against concord's split topology shaped by Cluster, with
	// DefaultClusterCases and no memory samples.
	Topology string
	Cluster  ClusterSpec
}

// DefaultServerFlags are etcd's defaults spelled out, so that both servers
// surely run with the same ones: snapshot every 10,000 entries, 2 GiB quota,
// and warnings-only logs so logging costs the same little on both.
var DefaultServerFlags = []string{"--snapshot-count", "10000", "--quota-backend-bytes", "2147483648", "--log-level", "warn"}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.Rounds == 0 {
		c.Rounds = 2
	}
	if c.Topology == "" {
		c.Topology = TopologySingle
	}
	if c.Topology == TopologyCluster {
		c.Cluster.SetDefaults()
		if c.Cases == nil {
			c.Cases = DefaultClusterCases()
		}
	}
	if c.Cases == nil {
		c.Cases = DefaultCases()
	}
	if c.RSSKeys == 0 {
		c.RSSKeys = rssKeysDef
	}
	if c.ServerFlags == nil {
		c.ServerFlags = DefaultServerFlags
	}
	if c.RunTimeout == 0 {
		c.RunTimeout = 5 * time.Minute
	}
	if c.Settle == 0 {
		c.Settle = 3 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the configuration after SetDefaults.
func (c *Config) Validate() error {
	if c.Rounds < 1 {
		return fmt.Errorf("%w: rounds must be at least 1, got %d", bench.ErrInvalid, c.Rounds)
	}
	switch c.Topology {
	case TopologySingle:
	case TopologyCluster:
		if err := c.Cluster.Split.Validate(); err != nil {
			return fmt.Errorf("%w: %v", bench.ErrInvalid, err)
		}
		if c.Cluster.EtcdMembers < 1 {
			return fmt.Errorf("%w: etcd members must be at least 1", bench.ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: topology must be %q or %q, got %q", bench.ErrInvalid, TopologySingle, TopologyCluster, c.Topology)
	}
	if _, err := regexp.Compile(c.Only); err != nil {
		return fmt.Errorf("%w: --only: %v", bench.ErrInvalid, err)
	}
	seen := map[string]bool{}
	for _, cs := range c.Cases {
		if cs.ID == "" || seen[cs.ID] || (cs.New == nil) == (cs.Custom == nil) {
			return fmt.Errorf("%w: case %q: IDs must be unique and non-empty, one of New and Custom set", bench.ErrInvalid, cs.ID)
		}
		seen[cs.ID] = true
		if cs.Custom != nil {
			if err := cs.Custom.Validate(); err != nil {
				return fmt.Errorf("case %s: %w", cs.ID, err)
			}
			continue
		}
		w := cs.New()
		w.SetDefaults()
		if err := w.Validate(); err != nil {
			return fmt.Errorf("case %s: %w", cs.ID, err)
		}
	}
	return nil
}

func (c *Config) selected() []Case {
	re := regexp.MustCompile(c.Only) // checked in Validate
	var out []Case
	for _, cs := range c.Cases {
		if re.MatchString(cs.ID) {
			out = append(out, cs)
		}
	}
	return out
}

// Run builds (unless given) both servers, runs the comparison and returns
// its report. It fails only when the comparison itself cannot run (build,
// start); failures of single runs are recorded in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	rep := &Report{Started: time.Now(), Rounds: cfg.Rounds, RSSKeys: cfg.RSSKeys, ServerFlags: cfg.ServerFlags}
	rep.Env = environment()
	rep.Env.LoadBefore = loadAvg()

	work := cfg.WorkDir
	if work == "" {
		d, err := os.MkdirTemp("", "concord-bench-")
		if err != nil {
			return nil, err
		}
		work = d
		if !cfg.KeepWork {
			defer os.RemoveAll(work)
		}
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	bins, err := buildBinaries(ctx, cfg, work)
	if err != nil {
		return nil, err
	}
	rep.Env.EtcdVersion = BinaryVersion(ctx, bins[Etcd])
	rep.Env.ConcordVersion = BinaryVersion(ctx, bins[Concord])
	rep.WorkDir = work

	cases := cfg.selected()
	for _, cs := range cases {
		rep.Cases = append(rep.Cases, &CaseResult{ID: cs.ID, Title: cs.Title, Workload: cs.Workload(), Params: cs.Params(),
			Targets: cs.Targets, Samples: map[string][]Sample{}, Custom: cs.Custom != nil})
	}
	if cfg.Topology == TopologyCluster {
		rep.Topology, rep.Impls, rep.RSSKeys = TopologyCluster, ClusterImpls, 0
		rep.ServerFlags = append(append([]string(nil), cfg.Cluster.RaftFlags...), cfg.ServerFlags...)
		if err := runClusterRounds(ctx, cfg, rep, cases, bins, work); err != nil {
			return nil, err
		}
		rep.Env.LoadAfter = loadAvg()
		rep.Elapsed = time.Since(rep.Started)
		log.Info("comparison done", "elapsed", rep.Elapsed.Round(time.Second))
		return rep, nil
	}
	rep.Memory = map[string][]MemSample{}
	for round := 1; round <= cfg.Rounds; round++ {
		if err := runRound(ctx, cfg, rep, cases, bins, filepath.Join(work, fmt.Sprintf("round%d", round)), round); err != nil {
			return nil, err
		}
	}
	rep.Env.LoadAfter = loadAvg()
	rep.Elapsed = time.Since(rep.Started)
	log.Info("comparison done", "elapsed", rep.Elapsed.Round(time.Second))
	return rep, nil
}

func buildBinaries(ctx context.Context, cfg Config, work string) (map[string]string, error) {
	bins := map[string]string{Etcd: cfg.EtcdBin, Concord: cfg.ConcordBin}
	root := cfg.ModuleRoot
	if bins[Etcd] == "" || bins[Concord] == "" {
		if root == "" {
			r, err := gobuild.ModuleRoot(ctx, "")
			if err != nil {
				return nil, err
			}
			root = r
		}
	}
	pkgs := map[string]string{Etcd: EtcdPackage, Concord: ConcordPackage}
	var wg sync.WaitGroup
	errs := make([]error, len(Impls))
	for i, impl := range Impls {
		if bins[impl] != "" {
			continue
		}
		out := filepath.Join(work, "bin", impl)
		bins[impl] = out
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg.Logger.Info("building", "impl", impl, "package", pkgs[impl])
			errs[i] = Build(ctx, root, pkgs[impl], out)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return bins, nil
}

// runRound starts fresh servers, samples their memory, runs every case on
// each (etcd first), and stops them.
func runRound(ctx context.Context, cfg Config, rep *Report, cases []Case, bins map[string]string, dir string, round int) error {
	log := cfg.Logger.With("round", round)
	servers := map[string]*Server{}
	defer func() {
		for _, s := range servers {
			if err := s.Stop(); err != nil {
				log.Warn("stopping server", "impl", s.Impl(), "err", err)
			}
		}
	}()
	for _, impl := range Impls {
		s, err := StartServer(ctx, ServerConfig{Impl: impl, Bin: bins[impl], DataDir: filepath.Join(dir, impl+".data"),
			Extra: cfg.ServerFlags})
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		servers[impl] = s
		log.Info("started", "impl", impl, "endpoint", s.Endpoint(), "pid", s.PID())
	}

	// Memory: idle, then with RSSKeys keys.
	if err := sleepCtx(ctx, cfg.Settle); err != nil {
		return err
	}
	mem := map[string]*MemSample{}
	for _, impl := range Impls {
		u, err := servers[impl].Usage()
		if err != nil {
			return err
		}
		mem[impl] = &MemSample{Round: round, Idle: u.RSS}
	}
	if cfg.RSSKeys > 0 {
		for _, impl := range Impls {
			st := time.Now()
			err := bench.Load(ctx, bench.ClientConfig{Endpoints: []string{servers[impl].Endpoint()}}, "/bench/rss/", cfg.RSSKeys, valSize, cfg.Progress)
			if err != nil {
				mem[impl].Err = err.Error()
				log.Warn("loading keys", "impl", impl, "err", err)
				continue
			}
			mem[impl].LoadTime = time.Since(st)
		}
		if err := sleepCtx(ctx, cfg.Settle); err != nil {
			return err
		}
		for _, impl := range Impls {
			if u, err := servers[impl].Usage(); err == nil {
				mem[impl].Loaded = u.RSS
			}
		}
	}
	for _, impl := range Impls {
		rep.Memory[impl] = append(rep.Memory[impl], *mem[impl])
		log.Info("memory", "impl", impl, "idle-rss-MiB", mem[impl].Idle>>20, "loaded-rss-MiB", mem[impl].Loaded>>20)
	}

	for i, cs := range cases {
		cr := rep.Cases[i]
		for _, impl := range Impls {
			s := servers[impl]
			if !s.Alive() {
				note := fmt.Sprintf("round %d: %s had exited before %s; restarted on the same data dir", round, impl, cs.ID)
				rep.Notes = append(rep.Notes, note)
				log.Warn(note)
				if err := s.Restart(ctx); err != nil {
					return fmt.Errorf("round %d: restarting %s: %w", round, impl, err)
				}
			}
			sm := runOne(ctx, cfg, cs, System{Label: impl, Endpoints: []string{s.Endpoint()}}, s, round)
			cr.Samples[impl] = append(cr.Samples[impl], sm)
			if sm.Err != "" {
				log.Warn("run failed", "case", cs.ID, "impl", impl, "err", sm.Err)
				continue
			}
			p := sm.Result.Primary()
			log.Info("run", "case", cs.ID, "impl", impl, "rate", bench.FormatRate(p.Rate()),
				"p50-ms", bench.FormatMillis(p.Latency.P50), "p99-ms", bench.FormatMillis(p.Latency.P99), "errors", p.Errors)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// meter is what runOne samples: one server or a whole cluster.
type meter interface {
	Usage() (Usage, error)
	Alive() bool
	LogTail(n int) string
}

// runOne runs one case on one system and samples the system's CPU over
// the timed phase.
func runOne(ctx context.Context, cfg Config, cs Case, sys System, m meter, round int) Sample {
	ctx, cancel := context.WithTimeout(ctx, cfg.RunTimeout)
	defer cancel()
	sm := Sample{Round: round}
	var before, after Usage
	var clientBefore, clientAfter time.Duration
	var rolesBefore, rolesAfter map[string]time.Duration
	roles, _ := m.(interface {
		RoleCPU() map[string]time.Duration
	})
	var sampleErr error
	env := bench.Env{
		Client:   bench.ClientConfig{Endpoints: sys.endpoints(cs.MaxEndpoints), Conns: cs.Conns, Clients: cs.Clients},
		Progress: cfg.Progress,
		Phase: func(timed bool) {
			u, err := m.Usage()
			if err != nil {
				sampleErr = err
			}
			var r map[string]time.Duration
			if roles != nil {
				r = roles.RoleCPU()
			}
			// The client shares the machine's cores with the server: its
			// CPU says how much of them the server could have had.
			var client time.Duration
			if cu, err := ProcUsage(os.Getpid()); err == nil {
				client = cu.CPU
			}
			if timed {
				before, rolesBefore, clientBefore = u, r, client
			} else {
				after, rolesAfter, clientAfter = u, r, client
			}
		},
	}
	var res *bench.Result
	var err error
	if cs.Custom != nil {
		res, err = cs.Custom.Run(ctx, sys, env)
	} else {
		res, err = bench.Run(ctx, cs.New(), env)
	}
	if err != nil {
		sm.Err = err.Error()
		if !m.Alive() {
			sm.Err += fmt.Sprintf(" (server exited; log tail: %s)", strings.TrimSpace(m.LogTail(1<<10)))
		}
		return sm
	}
	sm.Result = res
	if sampleErr == nil && after.CPU >= before.CPU {
		sm.ServerCPU = after.CPU - before.CPU
	}
	if clientAfter > clientBefore {
		sm.ClientCPU = clientAfter - clientBefore
	}
	sm.RSS = after.RSS
	if rolesBefore != nil && rolesAfter != nil {
		sm.RoleCPU = map[string]time.Duration{}
		for role, cpu := range rolesAfter {
			if d := cpu - rolesBefore[role]; d > 0 {
				sm.RoleCPU[role] = d
			}
		}
	}
	return sm
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// environment describes the machine.
func environment() Environment {
	e := Environment{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "MemTotal" {
				e.MemTotal = parseKB(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	return e
}

// loadAvg returns the 1, 5 and 15 minute load averages as in /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
