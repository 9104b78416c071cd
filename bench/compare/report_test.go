package compare

import (
	"bytes"
	"encoding/xml"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/bench"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 {
		t.Error("Median sorted its input")
	}
}

func TestTarget(t *testing.T) {
	rate := Target{Metric: MetricRate, Ratio: 1.5}
	if !rate.Met(1.5) || rate.Met(1.49) || rate.String() != "≥ 1.5x" {
		t.Errorf("rate target: %v %v %q", rate.Met(1.5), rate.Met(1.49), rate.String())
	}
	lat := Target{Metric: MetricP99, Ratio: 1}
	if !lat.Met(1) || lat.Met(1.01) || lat.String() != "≤ 1.0x" || lat.HigherIsBetter() {
		t.Errorf("latency target: %v %v %q", lat.Met(1), lat.Met(1.01), lat.String())
	}
}

// result builds a bench result whose primary op ran count ops in one second
// with the given p50 and p99.
func result(name string, count int64, p50, p99 time.Duration) *bench.Result {
	return &bench.Result{Workload: name, Ops: []bench.OpResult{{Name: name, Unit: "req", Count: count, Elapsed: time.Second,
		Latency: bench.Latency{Min: p50 / 2, P50: p50, P90: p99 / 2, P99: p99, P999: p99 * 2, Max: p99 * 3}}}}
}

func testReport() *Report {
	ms := time.Millisecond
	put := &CaseResult{ID: "put-1x1", Title: "put, 1 conn", Workload: "put", Params: "total=10",
		Targets: []Target{{Metric: MetricRate, Ratio: 1}, {Metric: MetricP99, Ratio: 1}},
		Samples: map[string][]Sample{
			Etcd: {{Round: 1, Result: result("put", 1000, ms, 4*ms), ServerCPU: 100 * ms},
				{Round: 2, Result: result("put", 3000, 3*ms, 8*ms), ServerCPU: 300 * ms}},
			Concord: {{Round: 1, Result: result("put", 3000, ms, 2*ms), ServerCPU: 150 * ms, ClientCPU: 60 * ms},
				{Round: 2, Result: result("put", 5000, ms, 4*ms), ServerCPU: 250 * ms, ClientCPU: 100 * ms}},
		}}
	lease := &CaseResult{ID: "lease", Title: "lease keep-alive", Workload: "lease-keepalive",
		Targets: []Target{{Metric: MetricRate, Ratio: 2}},
		Samples: map[string][]Sample{
			Etcd:    {{Round: 1, Result: result("keepalive", 500, ms, 2*ms)}},
			Concord: {{Round: 1, Err: "lease-keepalive: server does not implement an RPC: LeaseKeepAlive | x"}},
		}}
	txn := &CaseResult{ID: "txn", Title: "txn-put", Workload: "txn-put",
		Samples: map[string][]Sample{
			Etcd:    {{Round: 1, Result: result("txn-put", 100, ms, ms)}},
			Concord: {{Round: 1, Result: result("txn-put", 150, ms, ms)}},
		}}
	return &Report{
		Started: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC), Elapsed: 3 * time.Minute, Rounds: 2, RSSKeys: 100000,
		ServerFlags: DefaultServerFlags,
		Env:         Environment{CPUs: 2, CPUModel: "Test CPU", LoadBefore: "1.00 2.00 3.00", LoadAfter: "4.00 5.00 6.00", EtcdVersion: "etcd Version: 3.7.3"},
		Cases:       []*CaseResult{put, lease, txn},
		Memory: map[string][]MemSample{
			Etcd:    {{Round: 1, Idle: 40 << 20, Loaded: 100 << 20}, {Round: 2, Idle: 42 << 20, Loaded: 110 << 20}},
			Concord: {{Round: 1, Idle: 30 << 20, Loaded: 120 << 20}, {Round: 2, Idle: 32 << 20, Loaded: 130 << 20}},
		},
		Notes: []string{"round 2: concord had exited before lease; restarted"},
	}
}

func TestSummaryMedians(t *testing.T) {
	r := testReport()
	s := r.Cases[0].Summary(Concord, "")
	if s.Runs != 2 || s.Failed != 0 || s.Rate != 4000 {
		t.Fatalf("summary = %+v", s)
	}
	if s.Latency.P99 != 3*time.Millisecond { // median of 2ms and 4ms
		t.Fatalf("p99 = %v, want 3ms", s.Latency.P99)
	}
	// CPU per op: median of 150ms/3000 = 50µs and 250ms/5000 = 50µs.
	if s.CPUPerOp != 50*time.Microsecond {
		t.Fatalf("cpu/op = %v, want 50µs", s.CPUPerOp)
	}
	// Client CPU per op: 60ms/3000 = 100ms/5000 = 20µs; cores busy in the
	// one-second timed phases: (150+60)/1000 and (250+100)/1000, median 0.28.
	if s.ClientCPUPerOp != 20*time.Microsecond || math.Abs(s.CoresBusy-0.28) > 1e-9 {
		t.Fatalf("client cpu/op = %v, cores = %v; want 20µs, 0.28", s.ClientCPUPerOp, s.CoresBusy)
	}
	if e := r.Cases[0].Summary(Etcd, ""); e.ClientCPUPerOp != 0 || e.CoresBusy != 0 {
		t.Fatalf("etcd samples without client CPU gave %v, %v", e.ClientCPUPerOp, e.CoresBusy)
	}
	f := r.Cases[1].Summary(Concord, "")
	if f.OK() || f.Failed != 1 || !strings.Contains(f.FirstErr, "LeaseKeepAlive") {
		t.Fatalf("failed summary = %+v", f)
	}
	if r.Cases[0].Summary(Etcd, "nonexistent").Runs != 2 || r.Cases[0].Summary(Etcd, "nonexistent").Rate == r.Cases[0].Summary(Etcd, "").Rate {
		t.Fatal("summary of a missing op took the primary op's figures")
	}
}

func TestRows(t *testing.T) {
	rows := testReport().Rows()
	byKey := map[string]Row{}
	for _, r := range rows {
		byKey[r.Title+"/"+r.Metric] = r
	}
	rate := byKey["put, 1 conn/req/s"]
	if rate.Etcd != "2000" || rate.Concord != "4000" || rate.Ratio != 2 || rate.Met != "yes" || rate.Target != "≥ 1.0x" {
		t.Fatalf("put rate row = %+v", rate)
	}
	p99 := byKey["put, 1 conn/p99 latency, ms"]
	if p99.Etcd != "6.00" || p99.Concord != "3.00" || p99.Ratio != 0.5 || p99.Met != "yes" {
		t.Fatalf("put p99 row = %+v", p99)
	}
	lease := byKey["lease keep-alive/req/s"]
	if lease.Concord != "failed" || lease.Met != "no (concord failed)" {
		t.Fatalf("lease row = %+v", lease)
	}
	txn := byKey["txn-put/req/s"]
	if txn.hasTarget || txn.Target != "" || txn.Ratio != 1.5 {
		t.Fatalf("txn row = %+v", txn)
	}
	idle := byKey["RSS idle (after start)/MiB"]
	if idle.Etcd != "41.0" || idle.Concord != "31.0" || idle.Met != "yes" {
		t.Fatalf("idle row = %+v", idle)
	}
	loaded := byKey["RSS with 100,000 keys of 256 B/MiB"]
	if loaded.Etcd != "105.0" || loaded.Concord != "125.0" || loaded.Met != "no" {
		t.Fatalf("loaded row = %+v", loaded)
	}
}

func TestWriteMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteMarkdown(&buf, testReport(), "my analysis\nkept", "chart.svg"); err != nil {
		t.Fatal(err)
	}
	doc := buf.String()
	for _, want := range []string{
		"| workload | metric | etcd | concord | concord/etcd | target | met? |",
		"| put, 1 conn | req/s | 2000 | 4000 | 2.00x | ≥ 1.0x | yes |",
		"| put, 1 conn | p99 latency, ms | 6.00 | 3.00 | 0.50x | ≤ 1.0x | yes |",
		"| lease keep-alive | req/s | 500.0 | failed | — | ≥ 2.0x | no (concord failed) |",
		"| txn-put | req/s | 100.0 | 150.0 | 1.50x |",
		"| RSS with 100,000 keys of 256 B | MiB | 105.0 | 125.0 | 1.19x | ≤ 1.0x | no |",
		"- **lease keep-alive** (req/s): concord failed: `lease-keepalive: server does not implement an RPC: LeaseKeepAlive / x`",
		"1.00 2.00 3.00 before, 4.00 5.00 6.00 after",
		NotesBegin + "\nmy analysis\nkept\n" + NotesEnd,
		"![latency percentiles, etcd vs concord](chart.svg)",
		"| concord | put | 4000 | 1.00 | 1.50 | 3.00 | 6.00 | 9.00 | 50 µs | 20 µs | 0 | 0/2 |",
		"| etcd | put | 2000 | 2.00 | 3.00 | 6.00 | 12.0 | 18.0 | 100 µs | — | 0 | 0/2 |",
		"concord failed 1 of 1 runs",
		"- Note: round 2: concord had exited before lease; restarted",
		"`--snapshot-count 10000 --quota-backend-bytes 2147483648 --log-level warn`",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("document lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(doc)
	}
	if got := ExtractNotes(doc); got != "my analysis\nkept" {
		t.Fatalf("ExtractNotes = %q", got)
	}
	if ExtractNotes("no markers") != "" {
		t.Fatal("ExtractNotes without markers is not empty")
	}
	buf.Reset()
	if err := WriteMarkdown(&buf, testReport(), "", "c.svg"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), defaultNotes) {
		t.Fatal("empty notes are not replaced by the placeholder")
	}
}

func TestWriteDocsKeepsNotes(t *testing.T) {
	dir := t.TempDir()
	md, svg := filepath.Join(dir, "docs", "benchmarks.md"), filepath.Join(dir, "docs", "benchmarks-latency.svg")
	if err := os.MkdirAll(filepath.Dir(md), 0o755); err != nil {
		t.Fatal(err)
	}
	old := "# old\n" + NotesBegin + "\nwhy concord is slow\n" + NotesEnd + "\nstale figures\n"
	if err := os.WriteFile(md, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDocs(testReport(), md, svg); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.Contains(doc, NotesBegin+"\nwhy concord is slow\n"+NotesEnd) || strings.Contains(doc, "stale figures") {
		t.Fatalf("notes not kept or old text not replaced:\n%s", doc)
	}
	if !strings.Contains(doc, "](benchmarks-latency.svg)") {
		t.Fatal("chart link is not relative to the document")
	}
	if _, err := os.Stat(svg); err != nil {
		t.Fatal(err)
	}
}

func TestWriteSVG(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteSVG(&buf, testReport()); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML with one bar per (panel, percentile, implementation
	// that succeeded): put 4×2, lease 4×1 (concord failed), txn 4×2.
	dec := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	bars, root := 0, ""
	for {
		tok, err := dec.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("invalid SVG: %v\n%s", err, buf.String())
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local == "rect" {
				for _, a := range se.Attr {
					if a.Name.Local == "fill" && (a.Value == implColors[Etcd] || a.Value == implColors[Concord]) {
						bars++
					}
				}
			}
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q", root)
	}
	// 20 bars plus the two legend swatches.
	if bars != 22 {
		t.Fatalf("%d coloured rects, want 22", bars)
	}
	if !strings.Contains(buf.String(), "<title>concord p99 3.00 ms</title>") {
		t.Fatal("bar tooltips missing")
	}
	buf.Reset()
	if err := WriteSVG(&buf, &Report{}); err != nil || !strings.Contains(buf.String(), "no successful runs") {
		t.Fatalf("empty chart: %v %s", err, buf.String())
	}
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may contain spaces and parentheses; utime=250 stime=50 ticks.
	line := "1234 (we) ird (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200"
	d, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if d != 3*time.Second {
		t.Fatalf("cpu = %v, want 3s", d)
	}
	for _, bad := range []string{"garbage", "1 (x) S 1 2"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q) accepted", bad)
		}
	}
}

func TestProcUsageSelf(t *testing.T) {
	u, err := ProcUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.RSS <= 0 || u.Peak < u.RSS {
		t.Fatalf("usage = %+v", u)
	}
	if _, err := (&Server{cfg: ServerConfig{Impl: "x"}}).Usage(); !errors.Is(err, ErrExited) {
		t.Fatalf("usage of a stopped server: %v, want ErrExited", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.Rounds != 2 || c.RSSKeys != 100000 || len(c.Cases) == 0 {
		t.Fatalf("defaults = %+v", c)
	}
	ids := map[string]bool{}
	for _, cs := range c.Cases {
		ids[cs.ID] = true
		if cs.Params() == "" || cs.Workload() == "" || cs.Conns < 1 || cs.Clients < 1 {
			t.Errorf("case %s is incomplete", cs.ID)
		}
	}
	// Every target of the issue has a case.
	for _, id := range []string{"put-1x1", "put-100x1000", "range-key-l", "range-key-s", "range-10k", "watch-latency", "lease-keepalive"} {
		if !ids[id] {
			t.Errorf("no case %s", id)
		}
	}
	c.Only = "^range-key"
	if got := c.selected(); len(got) != 2 {
		t.Fatalf("--only selected %d cases", len(got))
	}
	for _, bad := range []Config{
		{Rounds: -1},
		{Only: "("},
		{Cases: []Case{{ID: "a", New: func() bench.Workload { return &bench.Put{} }}, {ID: "a", New: func() bench.Workload { return &bench.Put{} }}}},
		{Cases: []Case{{ID: "bad", New: func() bench.Workload { return &bench.Put{Total: -1} }}}},
	} {
		bad.SetDefaults()
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}
