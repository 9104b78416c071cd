package metrics_test

import (
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/metrics"
	"github.com/concord-kv/concord/storage"
	"github.com/concord-kv/concord/watchfanout"
)

type consensusStats consensus.Stats

func (s consensusStats) Stats() consensus.Stats { return consensus.Stats(s) }

type fanoutStats watchfanout.Stats

func (s fanoutStats) Stats() watchfanout.Stats { return watchfanout.Stats(s) }

func scrape(t *testing.T, r *metrics.Registry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics answered %d", rec.Code)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantLines(t *testing.T, body string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(body, "\n"+l+"\n") {
			t.Errorf("/metrics lacks %q", l)
		}
	}
}

func TestComponentMetrics(t *testing.T) {
	r, err := metrics.New(metrics.Sources{
		Version: "3.7.3",
		Consensus: consensusStats{MemberID: 0xabc, Leader: 0xabc, IsLeader: true, LeaderChanges: 2, Term: 3,
			CommittedIndex: 40, AppliedIndex: 39, Revision: 17, CompactRevision: -1, DBSize: 4096, DBSizeInUse: 2048,
			QuotaBytes: 1 << 31, ReadIndexRounds: 5, SnapshotsSent: 1, ProposalsPending: 2, ProposalsFailed: 7,
			SlowApplies: 4, Peers: []consensus.PeerStats{{ID: 0x1f, SentBytes: 100, ReceivedBytes: 80, SentFailures: 2, Disconnects: 1}, {ID: 0x2e, SentBytes: 5, Active: true,
				RoundTrip: consensus.Histogram{Buckets: map[float64]uint64{0.0001: 0, 0.0002: 2}, Count: 2, Sum: 0.0003}}},
			WALFsync: consensus.Histogram{Buckets: map[float64]uint64{0.001: 3, 0.002: 5}, Count: 6, Sum: 0.25},
			Ops:      storage.OpCounts{Ranges: 11, Puts: 12, Deletes: 13, Txns: 14, PutBytes: 15, Keys: 16}},
		Fanout: fanoutStats{Streams: 3, Synced: 7, Unsynced: 2, Victims: 4},
	})
	if err != nil {
		t.Fatal(err)
	}
	body := scrape(t, r)
	wantLines(t, body,
		"etcd_server_has_leader 1",
		"etcd_server_is_leader 1",
		"etcd_server_is_learner 0",
		"etcd_server_leader_changes_seen_total 2",
		`etcd_server_id{server_id="abc"} 1`,
		`etcd_server_version{server_version="3.7.3"} 1`,
		"etcd_server_proposals_committed_total 40",
		"etcd_server_proposals_applied_total 39",
		"etcd_server_proposals_pending 2",
		"etcd_server_proposals_failed_total 7",
		"etcd_server_slow_apply_total 4",
		`etcd_network_peer_sent_bytes_total{To="1f"} 100`,
		`etcd_network_peer_received_bytes_total{From="1f"} 80`,
		`etcd_network_peer_sent_failures_total{To="1f"} 2`,
		`etcd_network_peer_sent_bytes_total{To="2e"} 5`,
		`etcd_network_peer_received_bytes_total{From="2e"} 0`,
		`etcd_network_active_peers{Local="abc",Remote="1f"} 0`,
		`etcd_network_active_peers{Local="abc",Remote="2e"} 1`,
		`etcd_network_disconnected_peers_total{Local="abc",Remote="1f"} 1`,
		`etcd_cluster_version{cluster_version="3.7"} 1`,
		`etcd_server_go_version{server_go_version="`+runtime.Version()+`"} 1`,
		"etcd_mvcc_db_total_size_in_bytes 4096",
		"etcd_mvcc_db_total_size_in_use_in_bytes 2048",
		"etcd_server_quota_backend_bytes 2.147483648e+09",
		"etcd_debugging_mvcc_current_revision 17",
		"etcd_debugging_mvcc_compact_revision -1",
		"concord_raft_read_index_rounds_total 5",
		"concord_raft_snapshots_sent_total 1",
		"etcd_debugging_mvcc_watch_stream_total 3",
		"etcd_debugging_mvcc_watcher_total 9",
		"etcd_debugging_mvcc_slow_watcher_total 2",
		"concord_watch_victims_total 4",
		`etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"} 3`,
		`etcd_disk_wal_fsync_duration_seconds_bucket{le="0.002"} 5`,
		`etcd_disk_wal_fsync_duration_seconds_bucket{le="+Inf"} 6`,
		"etcd_disk_wal_fsync_duration_seconds_sum 0.25",
		"etcd_disk_wal_fsync_duration_seconds_count 6",
		"# TYPE etcd_network_peer_round_trip_time_seconds histogram",
		`etcd_network_peer_round_trip_time_seconds_bucket{To="2e",le="0.0002"} 2`,
		`etcd_network_peer_round_trip_time_seconds_count{To="2e"} 2`,
		"# TYPE etcd_mvcc_range_total counter", "etcd_mvcc_range_total 11",
		"# TYPE etcd_mvcc_put_total counter", "etcd_mvcc_put_total 12",
		"# TYPE etcd_mvcc_delete_total counter", "etcd_mvcc_delete_total 13",
		"# TYPE etcd_mvcc_txn_total counter", "etcd_mvcc_txn_total 14",
		"# TYPE etcd_debugging_mvcc_total_put_size_in_bytes gauge", "etcd_debugging_mvcc_total_put_size_in_bytes 15",
		"# TYPE etcd_debugging_mvcc_keys_total gauge", "etcd_debugging_mvcc_keys_total 16",
	)
	// As in etcd, a peer's failure series appears with its first failure,
	// its round-trip series with its first record.
	if strings.Contains(body, `etcd_network_peer_sent_failures_total{To="2e"}`) ||
		strings.Contains(body, `etcd_network_peer_round_trip_time_seconds_count{To="1f"}`) {
		t.Errorf("a failure series for a peer without failures:\n%s", body)
	}
}

// A process without consensus (a split gateway) exports no member metrics
// it cannot know, but still its RPC counters and Go's.
func TestWithoutComponents(t *testing.T) {
	r, err := metrics.New(metrics.Sources{})
	if err != nil {
		t.Fatal(err)
	}
	body := scrape(t, r)
	if strings.Contains(body, "etcd_server_has_leader") || strings.Contains(body, "etcd_debugging_mvcc_watcher_total") {
		t.Errorf("component metrics without components:\n%s", body)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(body, "\n"+name+" ") {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestCallCounters(t *testing.T) {
	r, err := metrics.New(metrics.Sources{})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Calls()
	for range 3 {
		c.Started("/etcdserverpb.KV/Range", connect.StreamTypeUnary).Handled(0)
	}
	c.Started("/etcdserverpb.KV/Put", connect.StreamTypeUnary).Handled(connect.CodeInvalidArgument)
	w := c.Started("/etcdserverpb.Watch/Watch", connect.StreamTypeBidi).(gateway.MessageCounter)
	w.Received()
	w.Received()
	w.Sent()
	c.Received(10)
	c.Sent(25)
	c.Sent(5)
	wantLines(t, scrape(t, r),
		"etcd_network_client_grpc_received_bytes_total 10",
		"etcd_network_client_grpc_sent_bytes_total 30",
		`grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 3`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 3`,
		`grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1`,
		`grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 1`,
		`grpc_server_msg_received_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 2`,
		`grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 1`,
	)
}

// The code label is grpc-go's name of the code, as go-grpc-prometheus
// (which etcd uses) writes it.
func TestCodeNamesMatchGRPC(t *testing.T) {
	r, err := metrics.New(metrics.Sources{})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Calls()
	for code := connect.Code(0); code <= 16; code++ {
		c.Started("/s.S/M", connect.StreamTypeUnary).Handled(code)
	}
	body := scrape(t, r)
	for code := codes.Code(0); code <= 16; code++ {
		want := `grpc_server_handled_total{grpc_code="` + code.String() + `",grpc_method="M",grpc_service="s.S",grpc_type="unary"} 1`
		wantLines(t, body, want)
	}
}
