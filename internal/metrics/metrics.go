// Package metrics serves a concord process's /metrics in Prometheus' text
// format, with etcd's metric names wherever the meaning is the same, so
// dashboards and alerts written for etcd keep working.
//
// It is the only package that imports the Prometheus client. Components
// expose plain snapshots (consensus.Node.Stats, watchfanout.Fanout.Stats),
// read at scrape time, so nothing on a request path touches Prometheus
// except the per-call gRPC counters, which are resolved once per method
// and code and then cost one atomic add, and the client byte counters (one
// add per message).
package metrics

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/etcd/api/v3/version"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/watchfanout"
)

// ConsensusSource is a consensus member (consensus.Node).
type ConsensusSource interface{ Stats() consensus.Stats }

// FanoutSource is a watch fan-out (watchfanout.Fanout).
type FanoutSource interface{ Stats() watchfanout.Stats }

// Sources are the components of one process; nil ones are left out.
type Sources struct {
	Consensus ConsensusSource
	Fanout    FanoutSource
	// Version is the etcd API version served (etcd_server_version).
	Version string
}

// Registry holds one process's metrics.
type Registry struct {
	reg   *prometheus.Registry
	calls *CallCounter
}

// New builds the registry for src, with Go's runtime and process metrics
// (go_*, process_*) as etcd has them.
func New(src Sources) (*Registry, error) {
	reg := prometheus.NewRegistry()
	calls := newCallMetrics()
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		calls.started, calls.handled, calls.msgReceived, calls.msgSent, calls.received, calls.sent,
	}
	if src.Consensus != nil {
		cs = append(cs, consensusCollector{src.Consensus, src.Version})
	}
	if src.Fanout != nil {
		cs = append(cs, fanoutCollector{src.Fanout})
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return &Registry{reg: reg, calls: calls}, nil
}

// Handler serves the registry in Prometheus' text format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{})
}

// Calls is the gateway.CallObserver that counts the process's RPCs.
func (r *Registry) Calls() *CallCounter { return r.calls }

// CallCounter keeps go-grpc-prometheus' grpc_server_started_total,
// grpc_server_handled_total and grpc_server_msg_received_total/_sent_total,
// which etcd exports, for the gateway's RPCs.
type CallCounter struct {
	started, handled *prometheus.CounterVec
	// msgReceived and msgSent are go-grpc-prometheus'
	// grpc_server_msg_received_total and _sent_total.
	msgReceived, msgSent *prometheus.CounterVec
	// received and sent are etcd's etcd_network_client_grpc_received_bytes_total
	// and _sent_bytes_total: the encoded size of every message.
	received, sent prometheus.Counter
	// byProc maps a procedure to its resolved counters (*procCounters),
	// so a call costs one lock-free map read and atomic adds, not label
	// hashing.
	byProc sync.Map
}

// procCounters are one procedure's counters; it is the gateway.CallDone of
// its calls.
type procCounters struct {
	started, ok prometheus.Counter
	// received and sent count the procedure's messages.
	received, sent prometheus.Counter
	handledVec     *prometheus.CounterVec
	labels         [3]string // grpc_type, grpc_service, grpc_method
	mu             sync.Mutex
	handled        map[connect.Code]prometheus.Counter // error codes seen
}

func newCallMetrics() *CallCounter {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &CallCounter{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		msgReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		msgSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_network_client_grpc_received_bytes_total",
			Help: "The total number of bytes received from grpc clients.",
		}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcd_network_client_grpc_sent_bytes_total",
			Help: "The total number of bytes sent to grpc clients.",
		}),
	}
}

// Received implements gateway.MessageSizeObserver.
func (m *CallCounter) Received(n int) { m.received.Add(float64(n)) }

// Sent implements gateway.MessageSizeObserver.
func (m *CallCounter) Sent(n int) { m.sent.Add(float64(n)) }

// Started implements gateway.CallObserver.
func (m *CallCounter) Started(procedure string, st connect.StreamType) gateway.CallDone {
	v, ok := m.byProc.Load(procedure)
	if !ok {
		// "/etcdserverpb.KV/Range" -> service "etcdserverpb.KV", method "Range".
		service, method, _ := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
		p := &procCounters{labels: [3]string{grpcType(st), service, method}, handledVec: m.handled,
			handled: make(map[connect.Code]prometheus.Counter)}
		p.started = m.started.WithLabelValues(p.labels[:]...)
		p.ok = m.handled.WithLabelValues(p.labels[0], p.labels[1], p.labels[2], codeName(0))
		p.received = m.msgReceived.WithLabelValues(p.labels[:]...)
		p.sent = m.msgSent.WithLabelValues(p.labels[:]...)
		v, _ = m.byProc.LoadOrStore(procedure, p)
	}
	p := v.(*procCounters)
	p.started.Inc()
	return p
}

// Received implements gateway.MessageCounter.
func (p *procCounters) Received() { p.received.Inc() }

// Sent implements gateway.MessageCounter.
func (p *procCounters) Sent() { p.sent.Inc() }

// Handled implements gateway.CallDone.
func (p *procCounters) Handled(code connect.Code) {
	if code == 0 {
		p.ok.Inc()
		return
	}
	p.mu.Lock()
	c := p.handled[code]
	if c == nil {
		c = p.handledVec.WithLabelValues(p.labels[0], p.labels[1], p.labels[2], codeName(code))
		p.handled[code] = c
	}
	p.mu.Unlock()
	c.Inc()
}

// grpcType names a stream type as go-grpc-prometheus does.
func grpcType(st connect.StreamType) string {
	switch st {
	case connect.StreamTypeClient:
		return "client_stream"
	case connect.StreamTypeServer:
		return "server_stream"
	case connect.StreamTypeBidi:
		return "bidi_stream"
	default:
		return "unary"
	}
}

// codeName is the gRPC code's name as grpc-go's codes.Code.String gives
// it ("OK", "NotFound", ...), which go-grpc-prometheus uses.
func codeName(c connect.Code) string {
	if c == 0 {
		return "OK"
	}
	// connect's names are snake case ("not_found"); gRPC's are camel case.
	var b strings.Builder
	for part := range strings.SplitSeq(c.String(), "_") {
		if part == "" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

// desc builds a metric description.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descHasLeader       = desc("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.")
	descIsLeader        = desc("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.")
	descIsLearner       = desc("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.")
	descLeaderChanges   = desc("etcd_server_leader_changes_seen_total", "The number of leader changes seen.")
	descServerID        = desc("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.", "server_id")
	descServerVersion   = desc("etcd_server_version", "Which version is running. 1 for 'server_version' label with current version.", "server_version")
	descCommitted       = desc("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.")
	descApplied         = desc("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.")
	descPending         = desc("etcd_server_proposals_pending", "The current number of pending proposals to commit.")
	descFailed          = desc("etcd_server_proposals_failed_total", "The total number of failed proposals seen.")
	descSlowApplies     = desc("etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk).")
	descClusterVersion  = desc("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current cluster version", "cluster_version")
	descPeerSent        = desc("etcd_network_peer_sent_bytes_total", "The total number of bytes sent to peers.", "To")
	descPeerReceived    = desc("etcd_network_peer_received_bytes_total", "The total number of bytes received from peers.", "From")
	descPeerFailures    = desc("etcd_network_peer_sent_failures_total", "The total number of send failures from peers.", "To")
	descActivePeers     = desc("etcd_network_active_peers", "The current number of active peer connections.", "Local", "Remote")
	descDisconnected    = desc("etcd_network_disconnected_peers_total", "The total number of disconnected peers.", "Local", "Remote")
	descPeerRTT         = desc("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers", "To")
	descGoVersion       = desc("etcd_server_go_version", "Which Go version server is running with. 1 for 'server_go_version' label with current version.", "server_go_version")
	descTerm            = desc("concord_raft_term", "The current raft term.")
	descDBSize          = desc("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")
	descDBSizeInUse     = desc("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.")
	descQuota           = desc("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.")
	descRevision        = desc("etcd_debugging_mvcc_current_revision", "The current revision of store.")
	descCompactRevision = desc("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.")
	descReadIndex       = desc("concord_raft_read_index_rounds_total", "ReadIndex rounds started for linearizable reads (each serves every read waiting when it starts).")
	descSnapsSent       = desc("concord_raft_snapshots_sent_total", "Store snapshots sent to followers far behind the leader's log.")
	descSnapsInstalled  = desc("concord_raft_snapshots_installed_total", "Store snapshots received from a leader and installed.")
	descRangeOps        = desc("etcd_mvcc_range_total", "Total number of ranges seen by this member.")
	descPutOps          = desc("etcd_mvcc_put_total", "Total number of puts seen by this member.")
	descDeleteOps       = desc("etcd_mvcc_delete_total", "Total number of deletes seen by this member.")
	descTxnOps          = desc("etcd_mvcc_txn_total", "Total number of txns seen by this member.")
	descKeys            = desc("etcd_debugging_mvcc_keys_total", "Total number of keys.")
	descPutSize         = desc("etcd_debugging_mvcc_total_put_size_in_bytes", "The total size of put kv pairs seen by this member.")
	descWALFsync        = desc("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.")
	descBackendCommit   = desc("etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called by backend.")

	descWatchStreams = desc("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.")
	descWatchers     = desc("etcd_debugging_mvcc_watcher_total", "Total number of watchers.")
	descSlowWatchers = desc("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.")
	descVictims      = desc("concord_watch_victims_total", "Watchers moved to catch-up because their stream could not keep up.")
	descHistoryReads = desc("concord_watch_history_reads_total", "Reads of consensus history for watchers catching up and gap repairs.")
	descDropped      = desc("concord_watch_bus_messages_dropped_total", "Event bus messages dropped because the fan-out's inbox was full (repaired from history).")
)

// emit sends one constant metric; a mismatch between d and labels (a bug)
// shows in the scrape as an invalid metric instead of a panic.
func emit(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type consensusCollector struct {
	src     ConsensusSource
	version string
}

func (c consensusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHasLeader, descIsLeader, descIsLearner, descLeaderChanges, descServerID,
		descServerVersion, descCommitted, descApplied, descPending, descFailed, descSlowApplies, descClusterVersion, descGoVersion, descPeerSent, descPeerReceived, descPeerFailures, descActivePeers, descDisconnected, descPeerRTT, descTerm, descDBSize, descDBSizeInUse, descQuota, descRevision,
		descCompactRevision, descReadIndex, descSnapsSent, descSnapsInstalled, descWALFsync, descBackendCommit,
		descRangeOps, descPutOps, descDeleteOps, descTxnOps, descKeys, descPutSize} {
		ch <- d
	}
}

func (c consensusCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(ch, d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64) { emit(ch, d, prometheus.CounterValue, v) }
	gauge(descHasLeader, boolGauge(s.Leader != 0))
	gauge(descIsLeader, boolGauge(s.IsLeader))
	gauge(descIsLearner, boolGauge(s.IsLearner))
	counter(descLeaderChanges, float64(s.LeaderChanges))
	gauge(descServerID, 1, fmt.Sprintf("%x", s.MemberID))
	gauge(descServerVersion, 1, c.version)
	// A cluster of concord members runs one version, so the cluster
	// version is the server's major.minor, as /version reports it.
	gauge(descClusterVersion, 1, version.Cluster(c.version))
	gauge(descGoVersion, 1, runtime.Version())
	// etcd exports these two as gauges despite the _total suffix.
	gauge(descCommitted, float64(s.CommittedIndex))
	gauge(descApplied, float64(s.AppliedIndex))
	gauge(descPending, float64(s.ProposalsPending))
	counter(descFailed, float64(s.ProposalsFailed))
	counter(descSlowApplies, float64(s.SlowApplies))
	local := fmt.Sprintf("%x", s.MemberID)
	for _, p := range s.Peers {
		id := fmt.Sprintf("%x", p.ID)
		gauge(descActivePeers, boolGauge(p.Active), local, id)
		if p.Disconnects > 0 {
			emit(ch, descDisconnected, prometheus.CounterValue, float64(p.Disconnects), local, id)
		}
		emit(ch, descPeerSent, prometheus.CounterValue, float64(p.SentBytes), id)
		emit(ch, descPeerReceived, prometheus.CounterValue, float64(p.ReceivedBytes), id)
		// etcd's series appears with the first failure.
		if p.SentFailures > 0 {
			emit(ch, descPeerFailures, prometheus.CounterValue, float64(p.SentFailures), id)
		}
		// etcd's series appears with the first record (5 s after the peer
		// was added).
		if p.RoundTrip.Count > 0 {
			histogram(ch, descPeerRTT, p.RoundTrip, id)
		}
	}
	gauge(descTerm, float64(s.Term))
	gauge(descDBSize, float64(s.DBSize))
	gauge(descDBSizeInUse, float64(s.DBSizeInUse))
	gauge(descQuota, float64(s.QuotaBytes))
	gauge(descRevision, float64(s.Revision))
	gauge(descCompactRevision, float64(s.CompactRevision))
	// Counted by the store as etcd's mvcc layer counts them (storage.OpCounts).
	counter(descRangeOps, float64(s.Ops.Ranges))
	counter(descPutOps, float64(s.Ops.Puts))
	counter(descDeleteOps, float64(s.Ops.Deletes))
	counter(descTxnOps, float64(s.Ops.Txns))
	gauge(descKeys, float64(s.Ops.Keys))
	gauge(descPutSize, float64(s.Ops.PutBytes))
	counter(descReadIndex, float64(s.ReadIndexRounds))
	counter(descSnapsSent, float64(s.SnapshotsSent))
	counter(descSnapsInstalled, float64(s.SnapshotsInstalled))
	histogram(ch, descWALFsync, s.WALFsync)
	histogram(ch, descBackendCommit, s.BackendCommit)
}

func histogram(ch chan<- prometheus.Metric, d *prometheus.Desc, h consensus.Histogram, labels ...string) {
	m, err := prometheus.NewConstHistogram(d, h.Count, h.Sum, h.Buckets, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

type fanoutCollector struct{ src FanoutSource }

func (c fanoutCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWatchStreams, descWatchers, descSlowWatchers, descVictims, descHistoryReads, descDropped} {
		ch <- d
	}
}

func (c fanoutCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	emit(ch, descWatchStreams, prometheus.GaugeValue, float64(s.Streams))
	emit(ch, descWatchers, prometheus.GaugeValue, float64(s.Synced+s.Unsynced))
	emit(ch, descSlowWatchers, prometheus.GaugeValue, float64(s.Unsynced))
	emit(ch, descVictims, prometheus.CounterValue, float64(s.Victims))
	emit(ch, descHistoryReads, prometheus.CounterValue, float64(s.HistoryReads))
	emit(ch, descDropped, prometheus.CounterValue, float64(s.DroppedMessages))
}
