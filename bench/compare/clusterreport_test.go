package compare

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/bench"
)

func clusterReport() *Report {
	ms := time.Millisecond
	watch := &CaseResult{ID: "watch-latency", Title: "watch", Workload: "watch-latency",
		Targets: []Target{{Metric: MetricRate, Ratio: 2, Of: Concord, Base: Concord1FO}, {Metric: MetricP99, Info: true}},
		Samples: map[string][]Sample{
			Etcd:       {{Round: 1, Result: result("event", 9000, ms, 10*ms)}},
			Concord:    {{Round: 1, Result: result("event", 3000, ms, 40*ms), RoleCPU: map[string]time.Duration{RoleGateway: 300 * ms, RoleWatchfanout: 600 * ms, RoleClient: 900 * ms}}},
			Concord1FO: {{Round: 1, Result: result("event", 2000, ms, 50*ms)}},
		}}
	resume := &CaseResult{ID: "resume", Title: "resume", Workload: "resume-after-leader-kill", Custom: true,
		Targets: []Target{{Metric: MetricP50, Info: true}},
		Samples: map[string][]Sample{
			Etcd:    {{Round: 1, Result: &bench.Result{Ops: []bench.OpResult{{Name: "resume", Unit: "kill", Count: 3, Elapsed: time.Minute, Latency: LatencyOf([]time.Duration{1400 * ms, 1500 * ms, 1600 * ms})}}}}},
			Concord: {{Round: 1, Err: "no write succeeded within 30s of killing the leader consensus-2"}},
		}}
	return &Report{Started: time.Date(2026, 11, 22, 5, 30, 0, 0, time.UTC), Rounds: 1, Topology: TopologyCluster, Impls: ClusterImpls,
		Env:       Environment{CPUs: 2, LoadBefore: "1.00 1.00 1.00", LoadAfter: "2.00 1.00 1.00"},
		Cases:     []*CaseResult{watch, resume},
		Processes: map[string][]string{Etcd: {"etcd-1: etcd --name etcd-1"}, Concord: {"consensus-1: concord consensus --name consensus-1"}}}
}

func TestClusterRows(t *testing.T) {
	rows := clusterReport().Rows()
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (no memory rows in a cluster report): %+v", len(rows), rows)
	}
	fo := rows[0]
	if fo.OfLabel != Concord || fo.BaseLabel != Concord1FO || fo.Concord != "3000" || fo.Etcd != "2000" || fo.Ratio != 1.5 || fo.Met != "no" || !fo.hasTarget {
		t.Errorf("fan-out row %+v", fo)
	}
	p99 := rows[1]
	if p99.hasTarget || p99.BaseLabel != Etcd || p99.Ratio != 4 || p99.Met != "" {
		t.Errorf("info row %+v", p99)
	}
	res := rows[2]
	if res.Etcd != "1500" || res.Concord != "failed" || res.hasTarget {
		t.Errorf("resume row %+v", res)
	}
}

func TestWriteClusterMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := WriteClusterMarkdown(&b, clusterReport(), "", "chart.svg"); err != nil {
		t.Fatal(err)
	}
	doc := b.String()
	for _, want := range []string{
		"# Benchmarks: concord's split topology vs a 3-member etcd",
		"| watch | req/s | concord | 3000 | concord-1fo | 2000 | 1.50x | ≥ 2.0x | no |",
		"| resume | p50 latency, ms | concord | failed | etcd | 1500 | — |",
		"**All processes share 2 CPUs**",
		"1.00 1.00 1.00 before, 2.00 1.00 1.00 after",
		"- **watch** (req/s): concord 3000 vs concord-1fo 2000 = 1.50x, target ≥ 2.0x.",
		NotesBegin + "\n" + defaultClusterNotes + "\n" + NotesEnd,
		"`resume-after-leader-kill` (a measurement of `concord bench compare`)",
		"| concord-1fo | event | 2000 |",
		"concord failed 1 of 1 runs: `no write succeeded within 30s",
		// 300ms of gateway CPU over 3000 events in 1s: 100 µs per event, 0.30 cores.
		"| watch-latency | concord | 300 µs (0.90) | — | — | 100 µs (0.30) | 200 µs (0.60) | — |",
		"![latency percentiles, etcd vs concord split topology](chart.svg)",
		"consensus-1: concord consensus --name consensus-1",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q", want)
		}
	}
}

func TestClusterDocsKeepNotesAndChartAllSystems(t *testing.T) {
	dir := t.TempDir()
	md, svg := filepath.Join(dir, "benchmarks-cluster.md"), filepath.Join(dir, "benchmarks-cluster-latency.svg")
	old := "# old\n" + NotesBegin + "\nthe 2 fan-outs share 2 cores\n" + NotesEnd + "\n"
	if err := os.WriteFile(md, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDocs(clusterReport(), md, svg); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), NotesBegin+"\nthe 2 fan-outs share 2 cores\n"+NotesEnd) || !strings.Contains(string(b), "split topology vs a 3-member etcd") {
		t.Errorf("notes or cluster document missing:\n%s", b)
	}
	s, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(s), implColors[Concord1FO]) || !strings.Contains(string(s), "<title>concord-1fo p50") {
		t.Error("chart lacks the 1-fan-out system")
	}
}

func TestLatencyOf(t *testing.T) {
	ms := time.Millisecond
	l := LatencyOf([]time.Duration{3 * ms, 1 * ms, 2 * ms})
	if l.Min != ms || l.P50 != 2*ms || l.Max != 3*ms || l.Mean != 2*ms || l.P99 != 3*ms {
		t.Errorf("LatencyOf = %+v", l)
	}
	if LatencyOf(nil) != (bench.Latency{}) {
		t.Error("LatencyOf(nil) is not zero")
	}
}

func TestClusterConfig(t *testing.T) {
	cfg := Config{Topology: TopologyCluster}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.EtcdMembers != 3 || cfg.Cluster.Split.Consensus != 3 || cfg.Cluster.Split.Gateways != 2 ||
		cfg.Cluster.Split.Fanouts != 2 || cfg.Cluster.Split.Leasesvcs != 2 || cfg.Cluster.Split.OneFanoutGateways != 2 {
		t.Errorf("cluster defaults %+v", cfg.Cluster)
	}
	ids := map[string]Case{}
	for _, c := range cfg.Cases {
		ids[c.ID] = c
	}
	if !ids["watch-latency"].runsOn(Concord1FO) || ids["put-100x1000"].runsOn(Concord1FO) || !ids["resume"].runsOn(Etcd) {
		t.Error("cases run on the wrong systems")
	}
	if ids["resume"].Workload() != "resume-after-leader-kill" || !strings.Contains(ids["resume"].Params(), "kills=3") {
		t.Errorf("resume case: %q %q", ids["resume"].Workload(), ids["resume"].Params())
	}

	bad := Config{Topology: "mesh"}
	bad.SetDefaults()
	if err := bad.Validate(); !errors.Is(err, bench.ErrInvalid) {
		t.Errorf("unknown topology: %v", err)
	}
	bad = Config{Topology: TopologyCluster, Cluster: ClusterSpec{Split: SplitSpec{Fanouts: -1}}}
	bad.SetDefaults()
	if err := bad.Validate(); !errors.Is(err, bench.ErrInvalid) {
		t.Errorf("negative fan-outs: %v", err)
	}
	bad = Config{Cases: []Case{{ID: "r", Custom: &Resume{Reps: -1}}}}
	bad.SetDefaults()
	if err := bad.Validate(); !errors.Is(err, bench.ErrInvalid) {
		t.Errorf("negative kills: %v", err)
	}
}
