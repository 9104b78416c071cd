// Package peer is consensus's network transport: raft messages between
// members over concord.v1.PeerService (connect-go, gRPC protocol, HTTP/2
// on --listen-peer-urls: cleartext for http:// peer URLs, TLS for https://
// ones, dialed with Config.TLS).
//
// Sending: each peer has one bounded send queue and one goroutine that keeps
// ONE long-lived client stream open to it. The goroutine waits for a
// message, drains everything else queued for that peer (up to a size limit)
// and sends it as one RaftBatch: the raft loop's messages of a Ready travel
// together, never one stream or request per message. When a send fails the
// stream is dropped, raft is told the peer is unreachable, messages queued
// meanwhile are discarded (raft retransmits what matters) and the goroutine
// reconnects with exponential backoff. Send never blocks the raft loop: a
// full queue drops the message and reports the peer unreachable, as etcd's
// rafthttp does.
//
// Snapshots travel on their own call (PeerService.Snapshot), one goroutine
// per snapshot, in chunks, so a large store never delays heartbeats; the
// outcome is reported to raft with ReportSnapshot.
//
// Receiving: Handler serves both calls. A batch is checked (cluster ID,
// recipient) and handed to consensus.Raft.Process, which applies
// backpressure when the raft loop is behind. Stop aborts every call in
// progress (it closes their request bodies) and waits for the handlers, so
// no call into Raft happens after Stop returns.
package peer

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
)

// Defaults.
const (
	DefaultQueueLength        = 4096 // etcd's streamBufSize
	DefaultMaxBatchBytes      = 4 << 20
	DefaultSnapshotChunkBytes = 1 << 20
	DefaultDialTimeout        = time.Second
	DefaultMinBackoff         = 50 * time.Millisecond
	DefaultMaxBackoff         = time.Second
	// maxReadBytes bounds one received message (a batch or a chunk).
	maxReadBytes = 64 << 20
)

var (
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("peer: invalid config")
	// ErrNotStarted answers calls that arrive before Start or after Stop.
	ErrNotStarted = errors.New("peer: transport not started")
)

// Config configures a Transport.
type Config struct {
	Logger *slog.Logger
	// QueueLength bounds the messages waiting for one peer.
	QueueLength int
	// MaxBatchBytes bounds one RaftBatch (a single larger message is still
	// sent, alone).
	MaxBatchBytes int
	// SnapshotChunkBytes is the data size of one snapshot chunk.
	SnapshotChunkBytes int
	// DialTimeout bounds connecting to a peer.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the pause between reconnects.
	MinBackoff, MaxBackoff time.Duration
	// ProbeInterval is how often each peer's round-trip time is measured;
	// ProbeReportInterval and ProbeRetryInterval how often it is recorded
	// in etcd_network_peer_round_trip_time_seconds while the probes succeed
	// and while they fail (probe.go; etcd's 4 s, 30 s and 5 s by default).
	ProbeInterval, ProbeReportInterval, ProbeRetryInterval time.Duration
	// FirstAnswerProbeInterval is how often a peer is probed until it
	// first answers, during the FirstAnswerWindow after it is added
	// (PeerStats' Reachable soon after the start; 50 ms and 5 s by
	// default).
	FirstAnswerProbeInterval, FirstAnswerWindow time.Duration
	// TLS is the client TLS for https:// peer URLs (etcd's peer
	// certificate as client certificate, the peer CA as roots); nil dials
	// them with Go's defaults. http:// peer URLs ignore it.
	TLS *tls.Config
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.QueueLength == 0 {
		c.QueueLength = DefaultQueueLength
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.SnapshotChunkBytes == 0 {
		c.SnapshotChunkBytes = DefaultSnapshotChunkBytes
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeReportInterval == 0 {
		c.ProbeReportInterval = DefaultProbeReportInterval
	}
	if c.ProbeRetryInterval == 0 {
		c.ProbeRetryInterval = DefaultProbeRetryInterval
	}
	if c.FirstAnswerProbeInterval == 0 {
		c.FirstAnswerProbeInterval = DefaultFirstAnswerProbeInterval
	}
	if c.FirstAnswerWindow == 0 {
		c.FirstAnswerWindow = DefaultFirstAnswerWindow
	}
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	switch {
	case c.QueueLength <= 0, c.MaxBatchBytes <= 0, c.SnapshotChunkBytes <= 0:
		return fmt.Errorf("%w: queue length, batch and chunk sizes must be positive", ErrInvalidConfig)
	case c.DialTimeout <= 0:
		return fmt.Errorf("%w: dial timeout must be positive", ErrInvalidConfig)
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("%w: backoff must satisfy 0 < min <= max", ErrInvalidConfig)
	case c.ProbeInterval <= 0 || c.ProbeReportInterval <= 0 || c.ProbeRetryInterval <= 0 ||
		c.FirstAnswerProbeInterval <= 0 || c.FirstAnswerWindow < 0:
		return fmt.Errorf("%w: probe intervals must be positive", ErrInvalidConfig)
	}
	return nil
}

// Transport implements consensus.Transport over the network.
type Transport struct {
	cfg  Config
	lg   *slog.Logger
	http *http.Transport

	ctx    context.Context // cancelled by Stop: ends every sender and snapshot
	cancel context.CancelFunc
	wg     sync.WaitGroup // senders and snapshot goroutines

	mu      sync.Mutex
	started bool
	stopped bool
	local   consensus.LocalMember
	r       consensus.Raft
	peers   map[uint64]*sender
	// Calls being served: Stop closes their bodies and waits for them.
	calls    map[*http.Request]struct{}
	callsWG  sync.WaitGroup
	stopOnce sync.Once
	// counters maps a peer ID to its *peerCounters (PeerStats); created on
	// first use, deleted by RemovePeer.
	counters sync.Map
}

// peerCounters are one peer's traffic counters (consensus.PeerStats).
type peerCounters struct {
	sent, received, failures atomic.Uint64
	rtt                      *consensus.DurationHistogram
}

// peerCounter returns id's counters.
func (t *Transport) peerCounter(id uint64) *peerCounters {
	if c, ok := t.counters.Load(id); ok {
		return c.(*peerCounters)
	}
	c, _ := t.counters.LoadOrStore(id, &peerCounters{rtt: consensus.NewDurationHistogram(rttBuckets)})
	return c.(*peerCounters)
}

// PeerStats implements consensus.PeerStatser: the counters of every peer
// this member sends to.
func (t *Transport) PeerStats() []consensus.PeerStats {
	t.mu.Lock()
	senders := make([]*sender, 0, len(t.peers))
	for _, s := range t.peers {
		senders = append(senders, s)
	}
	t.mu.Unlock()
	slices.SortFunc(senders, func(a, b *sender) int { return cmp.Compare(a.to, b.to) })
	out := make([]consensus.PeerStats, 0, len(senders))
	for _, s := range senders {
		c := t.peerCounter(s.to)
		out = append(out, consensus.PeerStats{ID: s.to, SentBytes: c.sent.Load(),
			ReceivedBytes: c.received.Load(), SentFailures: c.failures.Load(),
			Active: s.connected.Load(), Reachable: s.reachable.Load(), Disconnects: s.disconnects.Load(), RoundTrip: c.rtt.Snapshot()})
	}
	return out
}

var _ consensus.Transport = (*Transport)(nil)

// New returns a transport; consensus.Start starts it.
func New(cfg Config) (*Transport, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// HTTP/2 either way: prior knowledge on http://, ALPN h2 on https://.
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true)
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	var tlsCfg *tls.Config
	if cfg.TLS != nil {
		tlsCfg = cfg.TLS.Clone()
	}
	ht := &http.Transport{
		Protocols:           &protocols,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: cfg.DialTimeout,
		// A dead peer is noticed by the kernel (RST) or, on a silent
		// network, by HTTP/2 pings.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 2 * time.Second, PingTimeout: 2 * time.Second},
	}
	t := &Transport{
		cfg:   cfg,
		lg:    cfg.Logger,
		http:  ht,
		peers: map[uint64]*sender{},
		calls: map[*http.Request]struct{}{},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	return t, nil
}

// Handler returns the path and handler of PeerService, to be served on the
// peer URLs with HTTP/2 enabled (cleartext on http://, over TLS on
// https://).
func (t *Transport) Handler() (string, http.Handler) {
	path, h := concordv1connect.NewPeerServiceHandler(handler{t}, connect.WithReadMaxBytes(maxReadBytes))
	return path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !t.enterCall(r) {
			http.Error(w, ErrNotStarted.Error(), http.StatusServiceUnavailable)
			return
		}
		defer t.leaveCall(r)
		// Stop also ends a call blocked in Raft, not only one reading.
		ctx, cancel := context.WithCancel(r.Context())
		defer context.AfterFunc(t.ctx, cancel)()
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// Start implements consensus.Transport.
func (t *Transport) Start(local consensus.LocalMember, r consensus.Raft) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started || t.stopped {
		return errors.New("peer: transport started twice or after Stop")
	}
	t.started, t.local, t.r = true, local, r
	return nil
}

// AddPeer implements consensus.Transport.
func (t *Transport) AddPeer(id uint64, urls []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || len(urls) == 0 {
		return
	}
	if s, ok := t.peers[id]; ok {
		s.setURLs(urls)
		return
	}
	s := newSender(t, id, urls)
	t.peers[id] = s
	t.wg.Add(2)
	go s.run()
	go s.probe()
}

// RemovePeer implements consensus.Transport.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.peers[id]; ok {
		s.cancel()
		delete(t.peers, id)
	}
	t.counters.Delete(id)
}

// Send implements consensus.Transport.
func (t *Transport) Send(msgs []*raftpb.Message) {
	var full []*sender
	t.mu.Lock()
	for _, m := range msgs {
		s, ok := t.peers[m.GetTo()]
		if !ok {
			continue
		}
		select {
		case s.q <- m:
		default:
			full = append(full, s)
		}
	}
	t.mu.Unlock()
	for _, s := range full {
		s.dropped(1, "send queue full")
	}
}

// SendSnapshot implements consensus.Transport.
func (t *Transport) SendSnapshot(m *raftpb.Message, data io.ReadCloser) {
	t.mu.Lock()
	s, ok := t.peers[m.GetTo()]
	if t.stopped {
		t.mu.Unlock()
		_ = data.Close()
		return
	}
	t.wg.Add(1)
	t.mu.Unlock()
	// The outcome is reported from this goroutine even for an unknown
	// peer: the raft loop calling SendSnapshot must not wait for itself.
	go func() {
		defer t.wg.Done()
		defer data.Close()
		err := fmt.Errorf("peer: unknown member %x", m.GetTo())
		if ok {
			err = s.sendSnapshot(m, data)
		}
		status := raft.SnapshotFinish
		if err != nil {
			status = raft.SnapshotFailure
			t.lg.Warn("sending snapshot failed", "to", fmt.Sprintf("%x", m.GetTo()), "error", err)
		}
		t.report(func(r consensus.Raft) { r.ReportSnapshot(m.GetTo(), status) })
	}()
}

// Stop implements consensus.Transport.
func (t *Transport) Stop() {
	t.stopOnce.Do(func() {
		t.mu.Lock()
		t.stopped = true
		for _, s := range t.peers {
			s.cancel()
		}
		// Calls blocked reading from a peer wake up with an error.
		for r := range t.calls {
			_ = r.Body.Close()
		}
		t.mu.Unlock()
		t.cancel()
		t.wg.Wait()
		t.callsWG.Wait()
		t.http.CloseIdleConnections()
	})
}

// report calls into Raft unless the transport stopped.
func (t *Transport) report(f func(consensus.Raft)) {
	t.mu.Lock()
	r, ok := t.r, !t.stopped && t.started
	t.mu.Unlock()
	if ok {
		f(r)
	}
}

// delivering is whether received messages reach raft: between Start and
// Stop.
func (t *Transport) delivering() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.started && !t.stopped
}

func (t *Transport) enterCall(r *http.Request) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started || t.stopped {
		return false
	}
	t.calls[r] = struct{}{}
	t.callsWG.Add(1)
	return true
}

func (t *Transport) leaveCall(r *http.Request) {
	t.mu.Lock()
	delete(t.calls, r)
	t.mu.Unlock()
	t.callsWG.Done()
}

// receiver returns the local member and Raft for a call in progress.
func (t *Transport) receiver() (consensus.LocalMember, consensus.Raft) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.local, t.r
}

// handler serves PeerService.
type handler struct{ t *Transport }

func (h handler) check(cluster, to uint64) (consensus.Raft, error) {
	local, r := h.t.receiver()
	if cluster != local.ClusterID || to != local.ID {
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("%w: got cluster %x member %x, this is cluster %x member %x",
				consensus.ErrWrongCluster, cluster, to, local.ClusterID, local.ID))
	}
	return r, nil
}

func (h handler) Stream(ctx context.Context, st *connect.ClientStream[concordv1.RaftBatch]) (*concordv1.StreamResponse, error) {
	for st.Receive() {
		b := st.Msg()
		r, err := h.check(b.GetClusterId(), b.GetTo())
		if err != nil {
			return nil, err
		}
		var size int
		for _, m := range b.GetMessages() {
			size += proto.Size(m)
		}
		h.t.peerCounter(b.GetFrom()).received.Add(uint64(size))
		if err := r.Process(ctx, b.GetMessages()); err != nil {
			if errors.Is(err, consensus.ErrMemberRemoved) {
				// etcd's 410 Gone: the sender stops when it hears this.
				return nil, connect.NewError(connect.CodeFailedPrecondition, err)
			}
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
	}
	if err := st.Err(); err != nil {
		return nil, err
	}
	return &concordv1.StreamResponse{}, nil
}

func (h handler) Snapshot(ctx context.Context, st *connect.ClientStream[concordv1.SnapshotChunk]) (*concordv1.SnapshotResponse, error) {
	if !st.Receive() {
		if err := st.Err(); err != nil {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("peer: empty snapshot call"))
	}
	first := st.Msg()
	m := first.GetMessage()
	r, err := h.check(first.GetClusterId(), m.GetTo())
	if err != nil {
		return nil, err
	}
	if m.GetType() != raftpb.MsgSnap {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("peer: snapshot call carries %s", m.GetType()))
	}
	data := &chunkReader{st: st, buf: first.GetData(), received: &h.t.peerCounter(m.GetFrom()).received}
	if err := r.ReceiveSnapshot(ctx, m, data); err != nil {
		return nil, connect.NewError(connect.CodeAborted, err)
	}
	return &concordv1.SnapshotResponse{}, nil
}

// Membership serves a joining member the cluster's ID and member table.
func (h handler) Membership(context.Context, *concordv1.MembershipRequest) (*concordv1.MembershipResponse, error) {
	_, r := h.t.receiver()
	if r == nil {
		return nil, connect.NewError(connect.CodeUnavailable, ErrNotStarted)
	}
	m := r.Membership()
	return &concordv1.MembershipResponse{ClusterId: m.ClusterID, Members: m.Members}, nil
}

// Promote serves a follower's forwarded MemberPromote on the leader.
// Errors travel as etcd's message for them.
func (h handler) Promote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	_, rf := h.t.receiver()
	if rf == nil {
		return nil, connect.NewError(connect.CodeUnavailable, ErrNotStarted)
	}
	resp, err := rf.PromoteMember(ctx, r)
	if err != nil {
		for _, s := range promoteErrors {
			if errors.Is(err, s) {
				return nil, connect.NewError(connect.CodeFailedPrecondition, s)
			}
		}
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return resp, nil
}

// promoteErrors are the outcomes of a promotion on the leader that the
// forwarding follower returns as they are.
var promoteErrors = []error{
	consensus.ErrLearnerNotReady, consensus.ErrMemberNotFound, consensus.ErrMemberNotLearner,
	consensus.ErrNotEnoughStartedMembers, consensus.ErrNotLeader,
}

// ForwardPromote implements consensus.PromoteForwarder.
func (t *Transport) ForwardPromote(ctx context.Context, urls []string, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	var errs []error
	for _, u := range urls {
		c := concordv1connect.NewPeerServiceClient(&http.Client{Transport: t.http}, u, connect.WithGRPC())
		resp, err := c.Promote(ctx, r)
		if err == nil {
			return resp, nil
		}
		var ce *connect.Error
		if errors.As(err, &ce) && ce.Code() == connect.CodeFailedPrecondition {
			for _, s := range promoteErrors {
				if ce.Message() == s.Error() {
					return nil, s
				}
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return nil, fmt.Errorf("peer: forward member promote: %w", errors.Join(errs...))
}

// FetchMembership implements consensus.MembershipFetcher: it asks the
// members at urls, in order, until one answers.
func (t *Transport) FetchMembership(ctx context.Context, urls []string) (consensus.Membership, error) {
	var errs []error
	for _, u := range urls {
		c := concordv1connect.NewPeerServiceClient(&http.Client{Transport: t.http}, u, connect.WithGRPC())
		cctx, cancel := context.WithTimeout(ctx, 2*t.cfg.DialTimeout+time.Second)
		resp, err := c.Membership(cctx, &concordv1.MembershipRequest{})
		cancel()
		if err == nil {
			return consensus.Membership{ClusterID: resp.GetClusterId(), Members: resp.GetMembers()}, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", u, err))
	}
	return consensus.Membership{}, fmt.Errorf("peer: could not fetch the cluster membership: %w", errors.Join(errs...))
}

// chunkReader reads the data of the snapshot chunks after the first.
type chunkReader struct {
	st  *connect.ClientStream[concordv1.SnapshotChunk]
	buf []byte
	// received counts the bytes read (the sender's received bytes).
	received *atomic.Uint64
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		if !c.st.Receive() {
			if err := c.st.Err(); err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		c.buf = c.st.Msg().GetData()
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	c.received.Add(uint64(n))
	return n, nil
}

// sender owns the stream to one peer.
type sender struct {
	t      *Transport
	to     uint64
	q      chan *raftpb.Message
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	urls   []string
	urlIdx int
	active bool // owned by run
	// connected mirrors active for PeerStats; disconnects counts its
	// changes to false (etcd_network_disconnected_peers_total).
	connected   atomic.Bool
	disconnects atomic.Uint64
	// reachable is whether the peer answered the latest probe (probe).
	reachable atomic.Bool
}

func newSender(t *Transport, to uint64, urls []string) *sender {
	s := &sender{t: t, to: to, q: make(chan *raftpb.Message, t.cfg.QueueLength), urls: urls}
	s.ctx, s.cancel = context.WithCancel(t.ctx)
	return s
}

func (s *sender) setURLs(urls []string) {
	s.mu.Lock()
	s.urls, s.urlIdx = urls, 0
	s.mu.Unlock()
}

func (s *sender) client() concordv1connect.PeerServiceClient {
	s.mu.Lock()
	u := s.urls[s.urlIdx%len(s.urls)]
	s.mu.Unlock()
	return concordv1connect.NewPeerServiceClient(&http.Client{Transport: s.t.http}, u, connect.WithGRPC(),
		connect.WithSendMaxBytes(maxReadBytes))
}

// nextURL moves to the peer's next URL after a failure.
func (s *sender) nextURL() {
	s.mu.Lock()
	s.urlIdx++
	s.mu.Unlock()
}

// dropped reports lost messages to raft.
func (s *sender) dropped(n int, why string) {
	if n == 0 {
		return
	}
	s.t.peerCounter(s.to).failures.Add(uint64(n))
	s.t.lg.Debug("dropped raft messages", "to", fmt.Sprintf("%x", s.to), "count", n, "reason", why)
	s.t.report(func(r consensus.Raft) { r.ReportUnreachable(s.to) })
}

func (s *sender) setActive(active bool, err error) {
	if s.active == active {
		return
	}
	s.active = active
	s.connected.Store(active)
	if !active {
		s.disconnects.Add(1)
	}
	if active {
		s.t.lg.Info("peer became active", "peer", fmt.Sprintf("%x", s.to))
	} else {
		s.t.lg.Warn("peer became inactive", "peer", fmt.Sprintf("%x", s.to), "error", err)
	}
}

type raftStream = connect.ClientStreamForClientSimple[concordv1.RaftBatch, concordv1.StreamResponse]

func (s *sender) run() {
	defer s.t.wg.Done()
	var (
		st      *raftStream
		batch   []*raftpb.Message
		backoff = s.t.cfg.MinBackoff
	)
	defer func() {
		if st != nil {
			_, _ = st.CloseAndReceive()
		}
	}()
	local, _ := s.t.receiver()
	for {
		batch = batch[:0]
		select {
		case <-s.ctx.Done():
			return
		case m := <-s.q:
			batch = append(batch, m)
		}
		size := proto.Size(batch[0])
	drain:
		for size < s.t.cfg.MaxBatchBytes {
			select {
			case m := <-s.q:
				batch = append(batch, m)
				size += proto.Size(m)
			default:
				break drain
			}
		}
		var err error
		if st == nil {
			st, err = s.client().Stream(s.ctx)
		}
		if err == nil {
			err = st.Send(&concordv1.RaftBatch{
				ClusterId: local.ClusterID, From: local.ID, To: s.to, Messages: batch,
			})
		}
		if err == nil {
			s.setActive(true, nil)
			s.t.peerCounter(s.to).sent.Add(uint64(size))
			backoff = s.t.cfg.MinBackoff
			continue
		}
		if st != nil {
			if _, cerr := st.CloseAndReceive(); cerr != nil {
				err = cerr
			}
			st = nil
		}
		if s.ctx.Err() != nil {
			return
		}
		if connect.CodeOf(err) == connect.CodeFailedPrecondition && strings.Contains(err.Error(), consensus.ErrMemberRemoved.Error()) {
			s.t.report(func(r consensus.Raft) { r.ReportRemoved() })
		}
		s.setActive(false, err)
		s.dropped(len(batch), "stream failed")
		s.nextURL()
		// Messages queued while the peer is down are stale by the time it
		// is back; raft sends fresh ones.
		if !s.pause(backoff) {
			return
		}
		backoff = min(2*backoff, s.t.cfg.MaxBackoff)
	}
}

// pause waits d, discarding queued messages; false when stopped.
func (s *sender) pause(d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	n := 0
	defer func() { s.dropped(n, "peer unreachable") }()
	for {
		select {
		case <-s.ctx.Done():
			return false
		case <-s.q:
			n++
		case <-tm.C:
			return true
		}
	}
}

// sendSnapshot streams one snapshot: the MsgSnap, then the data in chunks.
func (s *sender) sendSnapshot(m *raftpb.Message, data io.Reader) error {
	local, _ := s.t.receiver()
	st, err := s.client().Snapshot(s.ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&concordv1.SnapshotChunk{ClusterId: local.ClusterID, Message: m}); err != nil {
		_, cerr := st.CloseAndReceive()
		return errors.Join(err, cerr)
	}
	buf := make([]byte, s.t.cfg.SnapshotChunkBytes)
	var sent int64
	for {
		n, rerr := io.ReadFull(data, buf)
		if n > 0 {
			if err := st.Send(&concordv1.SnapshotChunk{Data: buf[:n]}); err != nil {
				_, cerr := st.CloseAndReceive()
				return errors.Join(err, cerr)
			}
			sent += int64(n)
			s.t.peerCounter(s.to).sent.Add(uint64(n))
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			_, cerr := st.CloseAndReceive()
			return errors.Join(fmt.Errorf("peer: read snapshot: %w", rerr), cerr)
		}
	}
	if _, err := st.CloseAndReceive(); err != nil {
		return err
	}
	s.t.lg.Info("sent snapshot", "to", fmt.Sprintf("%x", s.to), "bytes", sent,
		"snapshot-index", m.GetSnapshot().GetMetadata().GetIndex())
	return nil
}
