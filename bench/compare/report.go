package compare

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/concord-kv/concord/bench"
)

// Environment describes where the comparison ran.
type Environment struct {
	CPUs           int
	CPUModel       string
	MemTotal       int64
	Kernel         string
	OS             string
	GoVersion      string // of the runner
	LoadBefore     string // /proc/loadavg before the run
	LoadAfter      string // and after
	EtcdVersion    string
	ConcordVersion string
}

// Sample is one run of one case on one server.
type Sample struct {
	Round     int
	Result    *bench.Result // nil when the run failed
	Err       string
	ServerCPU time.Duration // server user+system time during the timed phase
	// ClientCPU is the benchmark process's own user+system time during the
	// timed phase (0 in reports written before it was measured).
	ClientCPU time.Duration `json:",omitempty"`
	RSS       int64         // server RSS right after the timed phase
	// RoleCPU is the CPU of each role of a cluster (and of the client)
	// during the timed phase.
	RoleCPU map[string]time.Duration `json:",omitempty"`
}

// MemSample is one round's memory of one server.
type MemSample struct {
	Round    int
	Idle     int64 // RSS after start and Settle
	Loaded   int64 // RSS after loading Report.RSSKeys keys and Settle; 0 if loading failed
	LoadTime time.Duration
	Err      string
}

// CaseResult collects the samples of one case.
type CaseResult struct {
	ID, Title, Workload, Params string
	Targets                     []Target
	Samples                     map[string][]Sample // by implementation
	// Custom marks a measurement of the comparison tool itself, not a
	// `concord bench` workload.
	Custom bool `json:",omitempty"`
}

// Report is a whole comparison.
type Report struct {
	Started     time.Time
	Elapsed     time.Duration
	Rounds      int
	RSSKeys     int64
	ServerFlags []string
	WorkDir     string
	Env         Environment
	Cases       []*CaseResult
	Memory      map[string][]MemSample
	Notes       []string // events worth knowing (restarts)
	// Topology is "" (single servers) or TopologyCluster; Impls the
	// systems compared, in run order (nil = Impls); Processes the command
	// lines of each system's processes as the first round ran them.
	Topology  string              `json:",omitempty"`
	Impls     []string            `json:",omitempty"`
	Processes map[string][]string `json:",omitempty"`
}

// impls returns the compared systems in run order.
func (r *Report) impls() []string {
	if len(r.Impls) == 0 {
		return Impls
	}
	return r.Impls
}

// Summary is the medians over the successful runs of one operation of a
// case on one server.
type Summary struct {
	Runs, Failed int
	FirstErr     string // of the first failed run
	Unit         string
	Rate         float64
	Latency      bench.Latency // each percentile is the median of that percentile
	CPUPerOp     time.Duration // server CPU per operation (primary op only)
	// ClientCPUPerOp is the benchmark client's CPU per operation, and
	// CoresBusy the cores server and client kept busy together during the
	// timed phase (primary op only; 0 where not measured).
	ClientCPUPerOp time.Duration
	CoresBusy      float64
	Errors         int64 // failed requests, summed over runs
}

// OK reports whether at least one run succeeded.
func (s Summary) OK() bool { return s.Runs > s.Failed }

// Summary returns the medians of op ("" = primary) of impl.
func (c *CaseResult) Summary(impl, op string) Summary {
	var s Summary
	var rates []float64
	var cpu, clientCPU, cores []float64
	lat := map[string][]float64{}
	for _, sm := range c.Samples[impl] {
		s.Runs++
		if sm.Result == nil {
			s.Failed++
			if s.FirstErr == "" {
				s.FirstErr = sm.Err
			}
			continue
		}
		o := sm.Result.Primary()
		primary := true
		if op != "" {
			var ok bool
			if o, ok = sm.Result.Op(op); !ok {
				continue
			}
			primary = op == sm.Result.Primary().Name
		}
		s.Unit = o.Unit
		s.Errors += o.Errors
		rates = append(rates, o.Rate())
		for _, p := range []string{"min", "mean", "p50", "p90", "p99", "p999", "max"} {
			lat[p] = append(lat[p], float64(latField(o.Latency, p)))
		}
		if primary && o.Count > 0 && sm.ServerCPU > 0 {
			cpu = append(cpu, float64(sm.ServerCPU)/float64(o.Count))
			if sm.ClientCPU > 0 {
				clientCPU = append(clientCPU, float64(sm.ClientCPU)/float64(o.Count))
				if o.Elapsed > 0 {
					cores = append(cores, float64(sm.ServerCPU+sm.ClientCPU)/float64(o.Elapsed))
				}
			}
		}
	}
	s.Rate = Median(rates)
	d := func(p string) time.Duration { return time.Duration(math.Round(Median(lat[p]))) }
	s.Latency = bench.Latency{Min: d("min"), Mean: d("mean"), P50: d("p50"), P90: d("p90"), P99: d("p99"), P999: d("p999"), Max: d("max")}
	s.CPUPerOp = time.Duration(math.Round(Median(cpu)))
	if len(clientCPU) > 0 {
		s.ClientCPUPerOp = time.Duration(math.Round(Median(clientCPU)))
	}
	if len(cores) > 0 {
		s.CoresBusy = Median(cores)
	}
	return s
}

func latField(l bench.Latency, p string) time.Duration {
	switch p {
	case "min":
		return l.Min
	case "mean":
		return l.Mean
	case "p50":
		return l.P50
	case "p90":
		return l.P90
	case "p99":
		return l.P99
	case "p999":
		return l.P999
	}
	return l.Max
}

// opNames lists the operations the case's results carry, primary first.
func (c *CaseResult) opNames(impls []string) []string {
	var names []string
	for _, impl := range impls {
		for _, sm := range c.Samples[impl] {
			if sm.Result == nil {
				continue
			}
			for _, o := range sm.Result.Ops {
				if !slices.Contains(names, o.Name) {
					names = append(names, o.Name)
				}
			}
		}
	}
	return names
}

// Median returns the median of xs (mean of the two middle values for an
// even count), NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// targetValue returns the figure a target compares, for impl.
func (c *CaseResult) targetValue(impl string, t Target) (float64, Summary) {
	s := c.Summary(impl, t.Op)
	if !s.OK() {
		return math.NaN(), s
	}
	switch t.Metric {
	case MetricRate:
		return s.Rate, s
	case MetricP50:
		return bench.Millis(s.Latency.P50), s
	case MetricP99:
		return bench.Millis(s.Latency.P99), s
	case MetricMax:
		return bench.Millis(s.Latency.Max), s
	}
	return math.NaN(), s
}

// memValue returns the median idle or loaded RSS of impl in bytes.
func (r *Report) memValue(impl string, m Metric) float64 {
	var xs []float64
	for _, ms := range r.Memory[impl] {
		v := ms.Idle
		if m == MetricRSSLoaded {
			v = ms.Loaded
		}
		if v > 0 {
			xs = append(xs, float64(v))
		}
	}
	return Median(xs)
}

// Row is one line of the targets table. Etcd and Concord hold the values
// of the target's base and compared systems, BaseLabel and OfLabel their
// labels (etcd and concord unless the target names others).
type Row struct {
	Title, Metric    string
	BaseLabel        string
	OfLabel          string
	Etcd, Concord    string // formatted values or failures
	Ratio            float64
	Target           string // "" when the case has no target
	Met              string // "yes", "no", "n/a (...)" or ""
	target           Target
	etcdV, concordV  float64
	etcdS, concordS  Summary
	hasTarget, isMem bool
}

// Rows returns the targets table: one row per target, one per case without
// a target (its primary rate), and the memory rows.
func (r *Report) Rows() []Row {
	var rows []Row
	for _, c := range r.Cases {
		targets := c.Targets
		if len(targets) == 0 {
			targets = []Target{{Metric: MetricRate, Info: true}}
		}
		for _, t := range targets {
			hasTarget := !t.Info
			ev, es := c.targetValue(t.base(), t)
			cv, cs := c.targetValue(t.of(), t)
			row := Row{Title: c.Title, Metric: metricLabel(t, es, cs), BaseLabel: t.base(), OfLabel: t.of(), target: t, etcdV: ev, concordV: cv,
				etcdS: es, concordS: cs, hasTarget: hasTarget}
			row.Etcd, row.Concord = formatValue(t.Metric, ev, es), formatValue(t.Metric, cv, cs)
			row.Ratio = cv / ev
			if hasTarget {
				row.Target = t.String()
				row.Met = metString(t, row.Ratio, es, cs)
			}
			rows = append(rows, row)
		}
	}
	if r.RSSKeys != 0 || len(r.Memory) > 0 {
		for _, t := range MemoryTargets {
			if t.Metric == MetricRSSLoaded && r.RSSKeys <= 0 {
				continue
			}
			ev, cv := r.memValue(Etcd, t.Metric), r.memValue(Concord, t.Metric)
			title := "RSS idle (after start)"
			if t.Metric == MetricRSSLoaded {
				title = fmt.Sprintf("RSS with %s keys of %d B", groupDigits(r.RSSKeys), valSize)
			}
			row := Row{Title: title, Metric: "MiB", BaseLabel: Etcd, OfLabel: Concord, target: t, etcdV: ev, concordV: cv, hasTarget: true, isMem: true,
				Etcd: formatMiB(ev), Concord: formatMiB(cv), Ratio: cv / ev, Target: t.String()}
			row.Met = metString(t, row.Ratio, Summary{Runs: 1}, Summary{Runs: 1})
			rows = append(rows, row)
		}
	}
	return rows
}

func metricLabel(t Target, es, cs Summary) string {
	switch t.Metric {
	case MetricRate:
		unit := es.Unit
		if unit == "" {
			unit = cs.Unit
		}
		if unit == "" {
			unit = "op"
		}
		return unit + "/s"
	case MetricP50:
		return "p50 latency, ms"
	case MetricP99:
		return "p99 latency, ms"
	case MetricMax:
		return "max, ms"
	}
	return string(t.Metric)
}

func formatValue(m Metric, v float64, s Summary) string {
	if !s.OK() {
		if s.Runs == 0 {
			return "not run"
		}
		return "failed"
	}
	if math.IsNaN(v) {
		return "—"
	}
	if m == MetricRate {
		return bench.FormatRate(v)
	}
	return bench.FormatMillis(time.Duration(v * float64(time.Millisecond)))
}

func formatMiB(b float64) string {
	if math.IsNaN(b) {
		return "—"
	}
	return fmt.Sprintf("%.1f", b/(1<<20))
}

func formatRatio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "—"
	}
	return fmt.Sprintf("%.2fx", x)
}

func metString(t Target, ratio float64, es, cs Summary) string {
	switch {
	case !cs.OK():
		return "no (" + t.of() + " failed)"
	case !es.OK():
		return "n/a (" + t.base() + " failed)"
	case math.IsNaN(ratio) || math.IsInf(ratio, 0):
		return "n/a"
	case t.Met(ratio):
		return "yes"
	}
	return "no"
}

func groupDigits(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Markers around the hand-written analysis in the document: regenerating
// keeps what is between them.
const (
	NotesBegin = "<!-- notes:begin -->"
	NotesEnd   = "<!-- notes:end -->"
)

// ExtractNotes returns the hand-written part of an earlier document, or ""
// when it has none.
func ExtractNotes(doc string) string {
	i := strings.Index(doc, NotesBegin)
	j := strings.Index(doc, NotesEnd)
	if i < 0 || j < i {
		return ""
	}
	return strings.Trim(doc[i+len(NotesBegin):j], "\n")
}

const defaultNotes = `_No analysis written yet: explain here, for each miss above, where the time
or memory goes (profiles, CPU per operation) and what would fix it._`

// WriteMarkdown writes the document: targets table, misses, the preserved
// notes, every workload's medians, the chart and the set-up.
func WriteMarkdown(w io.Writer, r *Report, notes, svgName string) error {
	if strings.TrimSpace(notes) == "" {
		notes = defaultNotes
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Benchmarks: concord vs etcd\n\n")
	p("<!-- Generated by `task bench:compare` (`concord bench compare`). Only the text between the notes\n")
	p("     markers is kept when the file is regenerated; everything else is rewritten. -->\n\n")
	p("Both servers ran on this machine with the same flags and data directories on the same disk; every\n")
	p("workload ran on etcd, then on concord, then again (A B A B), %d round(s); the figures are the medians\n", r.Rounds)
	p("of the rounds. Ratios are concord/etcd. Load on the machine: %s before, %s after (1, 5, 15 min),\n",
		r.Env.LoadBefore, r.Env.LoadAfter)
	p("on %d CPUs — other work on the machine makes the figures noisy; compare ratios, not absolutes.\n", r.Env.CPUs)
	p("Run %s, took %s.\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Elapsed.Round(time.Second))

	p("## Targets\n\n")
	p("| workload | metric | etcd | concord | concord/etcd | target | met? |\n")
	p("|---|---|---:|---:|---:|---|---|\n")
	rows := r.Rows()
	for _, row := range rows {
		if !row.hasTarget {
			continue
		}
		p("| %s | %s | %s | %s | %s | %s | %s |\n", row.Title, row.Metric, row.Etcd, row.Concord, formatRatio(row.Ratio), row.Target, row.Met)
	}
	p("\nWorkloads without a target:\n\n")
	p("| workload | metric | etcd | concord | concord/etcd |\n")
	p("|---|---|---:|---:|---:|\n")
	for _, row := range rows {
		if row.hasTarget {
			continue
		}
		p("| %s | %s | %s | %s | %s |\n", row.Title, row.Metric, row.Etcd, row.Concord, formatRatio(row.Ratio))
	}

	p("\n## Where concord misses a target\n\n")
	misses := 0
	for _, row := range rows {
		if !row.hasTarget || row.Met == "yes" {
			continue
		}
		misses++
		switch {
		case !row.isMem && !row.concordS.OK():
			p("- **%s** (%s): concord failed: `%s`\n", row.Title, row.Metric, oneLine(row.concordS.FirstErr))
		case !row.isMem && !row.etcdS.OK():
			p("- **%s** (%s): etcd failed, no comparison: `%s`\n", row.Title, row.Metric, oneLine(row.etcdS.FirstErr))
		default:
			p("- **%s** (%s): concord %s vs etcd %s = %s, target %s.", row.Title, row.Metric, row.Concord, row.Etcd,
				formatRatio(row.Ratio), row.Target)
			if !row.isMem && row.etcdS.CPUPerOp > 0 && row.concordS.CPUPerOp > 0 {
				p(" Server CPU per op: concord %s, etcd %s.", fmtMicros(row.concordS.CPUPerOp), fmtMicros(row.etcdS.CPUPerOp))
				if c, e := row.concordS, row.etcdS; c.ClientCPUPerOp > 0 && e.ClientCPUPerOp > 0 {
					p(" Client CPU per op: %s against concord, %s against etcd; server and client kept %.2f and %.2f of %d cores busy.",
						fmtMicros(c.ClientCPUPerOp), fmtMicros(e.ClientCPUPerOp), c.CoresBusy, e.CoresBusy, r.Env.CPUs)
				}
			}
			p("\n")
		}
	}
	if misses == 0 {
		p("Every target is met in this run.\n")
	}
	p("\n### Why (analysis, kept across regenerations)\n\n%s\n%s\n%s\n", NotesBegin, notes, NotesEnd)

	writeWorkloads(&b, r)
	p("\n## Latency percentiles\n\n![latency percentiles, etcd vs concord](%s)\n\n", svgName)
	p("Primary operation of each workload, log scale; a missing bar means the run failed.\n")

	p("\n## Memory\n\n| server | round | RSS idle MiB | RSS with keys MiB | loading time |\n|---|---:|---:|---:|---:|\n")
	for _, impl := range Impls {
		for _, m := range r.Memory[impl] {
			load := m.LoadTime.Round(10 * time.Millisecond).String()
			if m.Err != "" {
				load = "failed: " + oneLine(m.Err)
			}
			p("| %s | %d | %s | %s | %s |\n", impl, m.Round, formatMiB(float64(m.Idle)), formatMiB(float64(m.Loaded)), load)
		}
	}

	p("\n## Set-up\n\n")
	p("- Machine: %s, %d CPUs, %s RAM, Linux %s (%s).\n", r.Env.CPUModel, r.Env.CPUs, formatMiB(float64(r.Env.MemTotal))+" MiB", r.Env.Kernel, r.Env.OS)
	p("- etcd: `%s` (built with `go build go.etcd.io/etcd/server/v3`, the version pinned in go.mod).\n", r.Env.EtcdVersion)
	p("- concord: `%s`, all-in-one (`./services/concord`).\n", r.Env.ConcordVersion)
	p("- Both binaries are installed by copying them from the build's output, as a package or an image\n")
	p("  layer would (a binary started straight from the linker's output maps all of its text).\n")
	p("- Runner: %s; the benchmark client runs on the same machine as the servers and shares its CPUs.\n", r.Env.GoVersion)
	p("- Both servers: single member, `--name bench`, loopback client and peer URLs, data directory on the\n")
	p("  same disk, and `%s`.\n", strings.Join(r.ServerFlags, " "))
	p("- Each round starts both servers fresh, samples their RSS (idle), loads %s keys (256 B values, txns\n", groupDigits(r.RSSKeys))
	p("  of 100 puts) into each, samples RSS again, then runs every workload on etcd and then on concord.\n")
	p("  Both servers stay up during the round; only one is under load at a time.\n")
	p("- Sizes are scaled down from etcd's defaults to keep a full run near ten minutes on 2 cores:\n\n")
	for _, c := range r.Cases {
		p("  - %s: `%s` %s\n", c.ID, c.Workload, c.Params)
	}
	for _, n := range r.Notes {
		p("- Note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeWorkloads writes every case's medians per system and operation.
func writeWorkloads(b *strings.Builder, r *Report) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("\n## All workloads\n\n")
	p("Medians over the rounds of each percentile; server CPU is the server process's user+system time\n")
	p("during the timed phase divided by the operations (it includes everything the server did meanwhile);\n")
	p("client CPU is the same for the benchmark process, which shares the machine's cores with the server.\n")
	for _, c := range r.Cases {
		if c.Custom {
			p("\n### %s\n\n`%s` (a measurement of `concord bench compare`) with %s\n\n", c.Title, c.Workload, c.Params)
		} else {
			p("\n### %s\n\n`concord bench %s` with %s\n\n", c.Title, c.Workload, c.Params)
		}
		p("| server | op | rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU/op | client CPU/op | failed requests | failed runs |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, op := range c.opNames(r.impls()) {
			for _, impl := range r.impls() {
				s := c.Summary(impl, op)
				if !s.OK() {
					continue
				}
				l := s.Latency
				p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d/%d |\n", impl, op, bench.FormatRate(s.Rate),
					bench.FormatMillis(l.P50), bench.FormatMillis(l.P90), bench.FormatMillis(l.P99), bench.FormatMillis(l.P999),
					bench.FormatMillis(l.Max), microsOrDash(s.CPUPerOp), microsOrDash(s.ClientCPUPerOp), s.Errors, s.Failed, s.Runs)
			}
		}
		for _, impl := range r.impls() {
			if s := c.Summary(impl, ""); s.Failed > 0 {
				p("\n%s failed %d of %d runs: `%s`\n", impl, s.Failed, s.Runs, oneLine(s.FirstErr))
			}
		}
	}

}

// microsOrDash formats a CPU time per op, "—" where none was measured.
func microsOrDash(d time.Duration) string {
	if d <= 0 {
		return "—"
	}
	return fmtMicros(d)
}

func fmtMicros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// oneLine shortens an error for a table or a list item.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	s = strings.ReplaceAll(s, "`", "'")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// WriteDocs writes the markdown document to mdPath, keeping the notes of
// the document already there, and the chart to svgPath (linked from the
// document by its path relative to mdPath's directory).
func WriteDocs(r *Report, mdPath, svgPath string) error {
	var notes string
	if old, err := os.ReadFile(mdPath); err == nil {
		notes = ExtractNotes(string(old))
	}
	rel, err := filepath.Rel(filepath.Dir(mdPath), svgPath)
	if err != nil {
		rel = svgPath
	}
	var md, svg bytes.Buffer
	write := WriteMarkdown
	if r.Topology == TopologyCluster {
		write = WriteClusterMarkdown
	}
	if err := write(&md, r, notes, filepath.ToSlash(rel)); err != nil {
		return err
	}
	if err := WriteSVG(&svg, r); err != nil {
		return err
	}
	if err := os.WriteFile(mdPath, md.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(svgPath, svg.Bytes(), 0o644)
}
