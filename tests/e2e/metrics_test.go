package e2e

import (
	"context"
	"runtime"
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
// the same traffic and requires etcd's names, labels and values.
func TestMetrics(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
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
}

func scrapeMetrics(t *testing.T, s *Server) string {
	t.Helper()
	code, body := httpGet(t, s.clientURL()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: status %d", code)
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
