package compare

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/concord-kv/concord/bench"
)

// Topologies of a comparison.
const (
	TopologySingle  = "single"  // one etcd member vs all-in-one concord
	TopologyCluster = "cluster" // a 3-member etcd vs concord's split topology
)

// Concord1FO labels concord's split topology reached through gateways that
// use a single watch fan-out.
const Concord1FO = "concord-1fo"

// ClusterImpls are the systems of the cluster comparison, in run order.
var ClusterImpls = []string{Etcd, Concord, Concord1FO}

// ClusterSpec shapes the two clusters.
type ClusterSpec struct {
	EtcdMembers int       // default 3
	Split       SplitSpec // counts; default 3 consensus, 2 gateways, 2 fan-outs, 2 lease services, 2 one-fan-out gateways
	// RaftFlags go to every etcd member and concord consensus member
	// besides Config.ServerFlags: the same heartbeat and election timeout.
	RaftFlags []string
	// NoNATSRoutes leaves the members' NATS servers unclustered (each
	// member publishes to its own); by default they form one cluster.
	NoNATSRoutes bool
}

// DefaultRaftFlags are etcd's defaults, spelled out so both clusters surely
// run with them.
var DefaultRaftFlags = []string{"--heartbeat-interval", "100", "--election-timeout", "1000"}

// SetDefaults fills zero fields.
func (s *ClusterSpec) SetDefaults() {
	if s.EtcdMembers == 0 {
		s.EtcdMembers = 3
	}
	if s.Split.Consensus == 0 {
		s.Split.Consensus = 3
	}
	if s.Split.Gateways == 0 {
		s.Split.Gateways = 2
	}
	if s.Split.Fanouts == 0 {
		s.Split.Fanouts = 2
	}
	if s.Split.Leasesvcs == 0 {
		s.Split.Leasesvcs = 2
	}
	if s.Split.OneFanoutGateways == 0 {
		s.Split.OneFanoutGateways = s.Split.Gateways
	}
	if s.RaftFlags == nil {
		s.RaftFlags = DefaultRaftFlags
	}
	if !s.NoNATSRoutes {
		s.Split.NATSRoutes = true
	}
}

// serviceFlags are the flags of gateways, fan-outs and lease services: the
// log level of ServerFlags, the only one of them they take.
func serviceFlags(server []string) []string {
	for i, f := range server {
		if f == "--log-level" && i+1 < len(server) {
			return []string{f, server[i+1]}
		}
		if strings.HasPrefix(f, "--log-level=") {
			return []string{f}
		}
	}
	return nil
}

// Generators returns the topology generators of the two clusters, their
// data under dir.
func (s ClusterSpec) Generators(dir string, serverFlags []string) (etcd, concord func(PortFunc) ([]ProcSpec, error)) {
	flags := append(append([]string(nil), s.RaftFlags...), serverFlags...)
	etcd = func(p PortFunc) ([]ProcSpec, error) {
		return GenerateEtcdCluster(EtcdClusterSpec{Members: s.EtcdMembers, Dir: filepath.Join(dir, Etcd), Flags: flags}, p)
	}
	split := s.Split
	split.Dir = filepath.Join(dir, Concord)
	split.ConsensusFlags = flags
	split.ServiceFlags = serviceFlags(serverFlags)
	concord = func(p PortFunc) ([]ProcSpec, error) { return GenerateSplit(split, p) }
	return etcd, concord
}

// Systems returns the measured systems over the two running clusters:
// etcd through all its members, concord through its first Gateways
// gateways, concord-1fo through the one-fan-out gateways.
func (s ClusterSpec) Systems(etcd, concord *Cluster) map[string]System {
	gws := concord.Endpoints(RoleGateway)
	n := min(s.Split.Gateways, len(gws))
	return map[string]System{
		Etcd:       {Label: Etcd, Endpoints: etcd.Endpoints(RoleEtcd), Cluster: etcd},
		Concord:    {Label: Concord, Endpoints: gws[:n], Cluster: concord},
		Concord1FO: {Label: Concord1FO, Endpoints: gws[n:], Cluster: concord},
	}
}

// runClusterRounds runs every round of the cluster comparison.
func runClusterRounds(ctx context.Context, cfg Config, rep *Report, cases []Case, bins map[string]string, work string) error {
	for round := 1; round <= cfg.Rounds; round++ {
		if err := runClusterRound(ctx, cfg, rep, cases, bins, filepath.Join(work, fmt.Sprintf("round%d", round)), round); err != nil {
			return err
		}
	}
	return nil
}

// runClusterRound starts both clusters fresh, runs every case on each
// system it applies to (etcd first), and stops them. Both clusters stay up
// during the round; only one is under load at a time.
func runClusterRound(ctx context.Context, cfg Config, rep *Report, cases []Case, bins map[string]string, dir string, round int) error {
	log := cfg.Logger.With("round", round)
	genEtcd, genConcord := cfg.Cluster.Generators(dir, cfg.ServerFlags)
	clusters := map[string]*Cluster{}
	defer func() {
		for _, c := range clusters {
			if err := c.Stop(); err != nil {
				log.Warn("stopping cluster", "impl", c.Impl, "err", err)
			}
		}
	}()
	gens := map[string]func(PortFunc) ([]ProcSpec, error){Etcd: genEtcd, Concord: genConcord}
	for _, impl := range Impls {
		gen := gens[impl]
		c, err := StartCluster(ctx, impl, bins[impl], filepath.Join(dir, impl), gen)
		if err != nil {
			return fmt.Errorf("round %d: starting the %s cluster: %w", round, impl, err)
		}
		clusters[impl] = c
		if _, err := c.WaitLeader(ctx, time.Minute); err != nil {
			return fmt.Errorf("round %d: %s: %w", round, impl, err)
		}
		if round == 1 {
			if rep.Processes == nil {
				rep.Processes = map[string][]string{}
			}
			for _, ps := range c.Specs {
				rep.Processes[impl] = append(rep.Processes[impl], ps.Name+": "+impl+" "+strings.Join(ps.Args, " "))
			}
		}
		log.Info("started", "impl", impl, "processes", len(c.Procs))
	}
	systems := cfg.Cluster.Systems(clusters[Etcd], clusters[Concord])
	for i, cs := range cases {
		cr := rep.Cases[i]
		for _, impl := range rep.impls() {
			if !cs.runsOn(impl) {
				continue
			}
			sys := systems[impl]
			if !sys.Cluster.Alive() {
				note := fmt.Sprintf("round %d: a process of %s had exited before %s; restarted on the same data dir", round, impl, cs.ID)
				rep.Notes = append(rep.Notes, note)
				log.Warn(note, "log", sys.Cluster.LogTail(1<<10))
				if err := restoreCluster(ctx, sys.Cluster); err != nil {
					return fmt.Errorf("round %d: restarting %s: %w", round, impl, err)
				}
			}
			sm := runOne(ctx, cfg, cs, sys, sys.Cluster, round)
			cr.Samples[impl] = append(cr.Samples[impl], sm)
			logSample(log, cs.ID, impl, sm)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

func logSample(log interface{ Info(string, ...any) }, id, impl string, sm Sample) {
	if sm.Err != "" {
		log.Info("run failed", "case", id, "impl", impl, "err", sm.Err)
		return
	}
	p := sm.Result.Primary()
	log.Info("run", "case", id, "impl", impl, "rate", bench.FormatRate(p.Rate()),
		"p50-ms", bench.FormatMillis(p.Latency.P50), "p99-ms", bench.FormatMillis(p.Latency.P99), "errors", p.Errors)
}

// DefaultClusterCases is the suite of `task bench:cluster` (issue 5's
// figures): 1,000 writers, linearizable reads of one key through two
// endpoints, 10,000 watchers over 2 fan-outs vs 1, and the time writes stop
// when the leader is killed.
func DefaultClusterCases() []Case {
	return []Case{
		{
			ID: "put-100x1000", Title: "put, 100 conns, 1000 clients", Conns: 100, Clients: 1000, Systems: []string{Etcd, Concord},
			New: func() bench.Workload {
				return &bench.Put{KeySize: 8, ValSize: valSize, Total: 30000, KeySpaceSize: keySpace, Sequential: true, KeyPrefix: "/bench/put-100x1000/"}
			},
			Targets: []Target{{Metric: MetricRate, Ratio: 1.0}, {Metric: MetricP99, Info: true}},
		},
		{
			ID: "range-key-l", Title: "range one key, linearizable, 10 conns, 100 clients, 2 endpoints", Conns: 10, Clients: 100,
			Systems: []string{Etcd, Concord}, MaxEndpoints: 2,
			New: func() bench.Workload {
				return &bench.Range{Key: "/bench/range/key", Consistency: "l", Total: 30000, Preload: 1, PreloadValSize: valSize}
			},
			Targets: []Target{{Metric: MetricRate, Info: true}, {Metric: MetricP99, Info: true}},
		},
		{
			ID: "watch-latency", Title: "watch-latency, 10,000 watchers of one key (100 streams), 50 puts at ≤100/s", Conns: 10, Clients: 1,
			New: func() bench.Workload {
				return &bench.WatchLatency{Watchers: 10000, Streams: 100, PutRate: 100, Total: 50, KeySize: 32, ValSize: 32,
					KeyPrefix: "/bench/watch-latency/"}
			},
			Targets: []Target{
				{Metric: MetricRate, Ratio: 2.0, Of: Concord, Base: Concord1FO},
				{Metric: MetricP99, Info: true, Of: Concord, Base: Concord1FO},
				{Metric: MetricRate, Info: true},
				{Metric: MetricP99, Info: true},
			},
		},
		{
			ID: "resume", Title: "resume writes after SIGKILL of the raft leader, under 8 put clients",
			Systems: []string{Etcd, Concord}, Custom: &Resume{Reps: 3, Clients: 8},
			Targets: []Target{{Metric: MetricP50, Info: true}, {Metric: MetricMax, Info: true}},
		},
	}
}
