package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// etcdMetrics are the etcd metrics concord exports under the same names;
// each must exist on both servers with the value given (or any value for "").
var etcdMetrics = []struct{ series, value string }{
	{"etcd_server_has_leader", "1"},
	{"etcd_server_is_leader", "1"},
	{"etcd_server_is_learner", "0"},
	{"etcd_server_leader_changes_seen_total", "1"},
	{`etcd_server_version{server_version="3.7.3"}`, "1"},
	{"etcd_server_proposals_committed_total", ""},
	{"etcd_server_proposals_applied_total", ""},
	{"etcd_server_proposals_pending", "0"},
	{"etcd_server_proposals_failed_total", "0"},
	{"etcd_server_slow_apply_total", ""},
	{`etcd_cluster_version{cluster_version="3.7"}`, "1"},
	{`etcd_server_go_version{server_go_version="` + runtime.Version() + `"}`, "1"},
	{"etcd_network_client_grpc_received_bytes_total", ""},
	{"etcd_network_client_grpc_sent_bytes_total", ""},
	{"etcd_server_quota_backend_bytes", "2.147483648e+09"},
	{"etcd_mvcc_db_total_size_in_bytes", ""},
	{"etcd_mvcc_db_total_size_in_use_in_bytes", ""},
	{"etcd_debugging_mvcc_current_revision", "3"},
	{"etcd_debugging_mvcc_compact_revision", "-1"},
	{"etcd_debugging_mvcc_watch_stream_total", "1"},
	{"etcd_debugging_mvcc_watcher_total", "1"},
	{"etcd_debugging_mvcc_slow_watcher_total", "0"},
	{`grpc_server_started_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`, "3"},
	{`grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`, "2"},
	{`grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`, "1"},
	{`grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}`, "1"},
	{`grpc_server_msg_received_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`, "3"},
	{`grpc_server_msg_sent_total{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`, "3"},
	{`grpc_server_msg_received_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}`, "1"},
	{`grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"}`, "2"},
	{`etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"}`, ""},
	{"etcd_disk_wal_fsync_duration_seconds_count", ""},
	{"etcd_disk_backend_commit_duration_seconds_count", ""},
	{"process_resident_memory_bytes", ""},
	{"go_goroutines", ""},
}

// TestMetrics scrapes /metrics on the client port of etcd and concord after
// the same traffic and requires etcd's names, labels and values. It also
// reads /debug/vars (etcd's expvar JSON) on both and requires the same
// variables, and the same fields in raft.status.
func TestMetrics(t *testing.T) {
	vars := map[string][]string{}
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		vars[t.Name()[strings.LastIndex(t.Name(), "/")+1:]] = debugVarsShape(t, s)
		ctx := testCtx(t)
		c := newClient(t, s)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wch := c.Watch(wctx, "w")
		must(c.Put(ctx, "a", "1"))(t)
		must(c.Put(ctx, "w", "1"))(t)
		if _, err := c.Put(ctx, "", "1"); err == nil {
			t.Fatal("put of an empty key succeeded")
		}
		select {
		case <-wch:
		case <-ctx.Done():
			t.Fatal("no watch event")
		}
		// Counters and gauges are read at scrape time, but a watch's count
		// may lag its first event by a moment on either server: poll.
		var missing []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			body := scrapeMetrics(t, s)
			missing = missing[:0]
			for _, m := range etcdMetrics {
				v, ok := seriesValue(body, m.series)
				if !ok || (m.value != "" && v != m.value) {
					missing = append(missing, m.series+" = "+v+", want "+m.value)
				}
			}
			if len(missing) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, m := range missing {
			t.Error(m)
		}
	})
	if want, got := vars[etcdImpl.name], vars[concordImpl.name]; want != nil && got != nil && !slices.Equal(got, want) {
		t.Errorf("/debug/vars: concord has %v\n                 etcd has %v", got, want)
	}
}

// debugVarsShape reads /debug/vars and returns its variables' names, then
// raft.status's fields (prefixed "raft.status.") and its raftState.
func debugVarsShape(t *testing.T, s *Server) []string {
	t.Helper()
	code, body := httpGet(t, s.clientURL()+"/debug/vars")
	if code != 200 {
		t.Fatalf("/debug/vars: status %d", code)
	}
	var vars map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &vars); err != nil {
		t.Fatalf("/debug/vars: %v\n%.300s", err, body)
	}
	var out []string
	for k := range vars {
		out = append(out, k)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(vars["raft.status"], &st); err != nil {
		t.Errorf("raft.status %.200s: %v", vars["raft.status"], err)
	}
	for k := range st {
		out = append(out, "raft.status."+k)
	}
	slices.Sort(out)
	return append(out, "raftState="+string(st["raftState"]))
}

func scrapeMetrics(t *testing.T, s *Server) string {
	t.Helper()
	return scrapeMetricsAt(t, s.clientURL())
}

// scrapeMetricsAt reads the /metrics of the server at url.
func scrapeMetricsAt(t *testing.T, url string) string {
	t.Helper()
	code, body := httpGet(t, url+"/metrics")
	if code != 200 {
		t.Fatalf("%s/metrics: status %d", url, code)
	}
	return body
}

// seriesValue finds "<series> <value>" in a Prometheus text exposition.
func seriesValue(body, series string) (string, bool) {
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v, true
		}
	}
	return "<missing>", false
}

// mvccOpMetrics are etcd's mvcc operation metrics; TestMetricsMVCCOps
// compares how each request moves them on etcd and concord.
var mvccOpMetrics = []string{
	"etcd_mvcc_range_total",
	"etcd_mvcc_put_total",
	"etcd_mvcc_delete_total",
	"etcd_mvcc_txn_total",
	"etcd_debugging_mvcc_keys_total",
	"etcd_debugging_mvcc_total_put_size_in_bytes",
}

// TestMetricsMVCCOps runs the same etcdctl commands against etcd and
// concord and requires every command to move etcd_mvcc_range_total,
// _put_total, _delete_total, _txn_total, etcd_debugging_mvcc_keys_total
// and _total_put_size_in_bytes by the same amounts on both (etcd's
// dashboards read them), and the metrics' help and type to be etcd's.
// etcd's counting has quirks concord follows: a put with --prev-kv is a
// "txn", a write txn's compares are counted apart from its ops, a
// serializable get counts as any range, a delete that deletes nothing
// counts. The same holds through concord's split topology, counted by its
// consensus member.
func TestMetricsMVCCOps(t *testing.T) {
	got, atStart := map[string][]string{}, map[string][]int64{}
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		name := t.Name()[strings.LastIndex(t.Name(), "/")+1:]
		atStart[name] = mvccOpValues(t, s)
		got[name] = mvccOpSteps(t, s.Endpoint(), s.clientURL(), s.clientURL())
	})
	// In the split topology the requests go through a gateway and the
	// counters are the consensus member's, which applies and reads. Its
	// counts at start are not etcd's: the other services read at start.
	t.Run("split", func(t *testing.T) {
		c := startSplit(t)
		got["split"] = mvccOpSteps(t, c.gateways[0].endpoint(), c.gateways[0].url(), c.consensus.url())
	})
	want := got[etcdImpl.name]
	if want == nil {
		return // a subtest failed already
	}
	t.Logf("etcd's counts:\n%s", strings.Join(want, "\n"))
	if w, h := atStart[etcdImpl.name], atStart[concordImpl.name]; !slices.Equal(w, h) {
		t.Errorf("counts at start: concord %v, etcd %v", h, w)
	}
	for _, name := range []string{concordImpl.name, "split"} {
		have := got[name]
		if have == nil {
			continue // its subtest failed already
		}
		for i := range max(len(want), len(have)) {
			w, h := "<none>", "<none>"
			if i < len(want) {
				w = want[i]
			}
			if i < len(have) {
				h = have[i]
			}
			if w != h {
				t.Errorf("%s: %s\n   etcd: %s", name, h, w)
			}
		}
	}
	// The comparison above would pass if neither server counted anything.
	if !slices.ContainsFunc(want, func(l string) bool { return strings.Contains(l, "mvcc_txn_total+") }) {
		t.Errorf("etcd counted no txn; the steps no longer exercise the metrics:\n%s", strings.Join(want, "\n"))
	}
}

// mvccOpSteps runs etcdctl and HTTP steps through ep (gRPC) and clientURL
// (HTTP) and returns, per step, how the mvcc op counters scraped from
// metricsURL moved, then how much they moved in all and their HELP/TYPE
// lines.
func mvccOpSteps(t *testing.T, ep, clientURL, metricsURL string) []string {
	var lease string
	steps := []struct {
		stdin string
		args  func() []string // etcdctl's, or "GET", path: an HTTP GET of the client URL
	}{
		{"", func() []string { return []string{"put", "a", "1"} }},
		{"", func() []string { return []string{"put", "b", "2"} }},
		{"", func() []string { return []string{"put", "a", "22", "--prev-kv"} }},
		{"", func() []string { return []string{"put", "a", "--ignore-value"} }},
		{"", func() []string { return []string{"put", "nope", "--ignore-value"} }},
		{"", func() []string { return []string{"get", "a"} }},
		{"", func() []string { return []string{"get", "a", "--consistency=s"} }},
		{"", func() []string { return []string{"get", "", "--prefix", "--limit=1"} }},
		{"", func() []string { return []string{"get", "a", "--rev=1"} }},
		{"", func() []string { return []string{"del", "nothing"} }},
		{"", func() []string { return []string{"del", "b", "--prev-kv"} }},
		// Two compares (the second fails), then the failure branch.
		{"version(\"a\") > \"0\"\nmod(\"c\") > \"0\"\nvalue(\"a\") = \"x\"\n\nput c v\n\nput c w\nget c\n\n",
			func() []string { return []string{"txn"} }},
		{"version(\"c\") = \"1\"\n\nput d v\n\n\n", func() []string { return []string{"txn"} }},
		{"\nput d v2 --prev-kv\ndel a\n\n\n", func() []string { return []string{"txn"} }},
		// Read only.
		{"value(\"c\") = \"w\"\n\nget c\nget d\n\n\n", func() []string { return []string{"txn"} }},
		{"", func() []string { return []string{"put", "l1", "v", "--lease=" + lease} }},
		{"", func() []string { return []string{"put", "l2", "v", "--lease=" + lease} }},
		{"", func() []string { return []string{"lease", "revoke", lease} }},
		// 25 puts in one txn, then streamed ranges over them: a range
		// per chunk (10 keys, then 20), plus the count of the rest
		// when --limit stops the stream early.
		{manyPuts("s", 25), func() []string { return []string{"txn"} }},
		{"", func() []string { return []string{"get", "s", "--prefix", "--stream"} }},
		{"", func() []string { return []string{"get", "s", "--prefix", "--stream", "--limit=15"} }},
		{"", func() []string { return []string{"get", "s", "--prefix", "--stream", "--count-only"} }},
		{"", func() []string { return []string{"compaction", "3"} }},
		{"", func() []string { return []string{"compaction", "2"} }}, // compacted: refused
		// The health checks read with a range, as etcd's do.
		{"", func() []string { return []string{"GET", "/health"} }},
		{"", func() []string { return []string{"GET", "/health?serializable=true"} }},
		{"", func() []string { return []string{"GET", "/livez"} }},
		{"", func() []string { return []string{"GET", "/readyz"} }},
		{"", func() []string { return []string{"GET", "/readyz/linearizable_read"} }},
		{"", func() []string { return []string{"GET", "/version"} }},
		{"", func() []string { return []string{"GET", "/debug/vars"} }},
	}
	out := mustCtl(t, ep, "lease", "grant", "600")
	m := reGrantText.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("lease grant: %q", out)
	}
	lease = m[1]
	var lines []string
	start := mvccOpValuesAt(t, metricsURL)
	prev := start
	for _, st := range steps {
		args := st.args()
		if args[0] == "GET" {
			if code, body := httpGet(t, clientURL+args[1]); code != 200 {
				t.Errorf("GET %s: %d %s", args[1], code, body)
			}
		} else {
			runCtl(t, ep, st.stdin, args...)
		}
		cur := mvccOpValuesAt(t, metricsURL)
		var d []string
		for i, name := range mvccOpMetrics {
			if cur[i] != prev[i] {
				d = append(d, fmt.Sprintf("%s%+d", strings.TrimPrefix(name, "etcd_"), cur[i]-prev[i]))
			}
		}
		cmd := "etcdctl " + strings.ReplaceAll(strings.Join(args, " "), lease, "<lease>")
		if args[0] == "GET" {
			cmd = strings.Join(args, " ")
		}
		lines = append(lines, cmd+": "+strings.Join(d, " "))
		prev = cur
	}
	moved := make([]int64, len(prev))
	for i := range prev {
		moved[i] = prev[i] - start[i]
	}
	lines = append(lines, fmt.Sprintf("moved in all: %v", moved))
	body := scrapeMetricsAt(t, metricsURL)
	for _, name := range mvccOpMetrics {
		for _, kind := range []string{"# HELP ", "# TYPE "} {
			line, ok := metaLine(body, kind+name+" ")
			if !ok {
				t.Errorf("no %q line", kind+name)
			}
			lines = append(lines, line)
		}
	}
	return lines
}

// manyPuts is etcdctl txn's input for a txn without compares that puts n
// keys prefix00, prefix01, ...
func manyPuts(prefix string, n int) string {
	var b strings.Builder
	b.WriteString("\n")
	for i := range n {
		fmt.Fprintf(&b, "put %s%02d v\n", prefix, i)
	}
	b.WriteString("\n\n")
	return b.String()
}

// mvccOpValues scrapes mvccOpMetrics' values.
func mvccOpValues(t *testing.T, s *Server) []int64 {
	t.Helper()
	return mvccOpValuesAt(t, s.clientURL())
}

// mvccOpValuesAt scrapes mvccOpMetrics' values from the server at url.
func mvccOpValuesAt(t *testing.T, url string) []int64 {
	t.Helper()
	body := scrapeMetricsAt(t, url)
	out := make([]int64, len(mvccOpMetrics))
	for i, name := range mvccOpMetrics {
		v, ok := seriesValue(body, name)
		if !ok {
			t.Fatalf("%s: no %s", url, name)
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("%s = %q: %v", name, v, err)
		}
		out[i] = int64(f)
	}
	return out
}

// metaLine finds the exposition line that starts with prefix.
func metaLine(body, prefix string) (string, bool) {
	for line := range strings.SplitSeq(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			return line, true
		}
	}
	return "", false
}
