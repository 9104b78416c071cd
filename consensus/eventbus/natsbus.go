package eventbus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Defaults for NATSConfig and ConnectNATS.
const (
	// DefaultMaxPayload is the embedded server's max message size. etcd
	// accepts requests up to 1.5 MiB, so one event with its prev_kv can be
	// about 3 MiB; 8 MiB keeps nearly every revision in one message while
	// staying within what NATS recommends.
	DefaultMaxPayload = 8 << 20
	// DefaultPendingMsgs and DefaultPendingBytes bound what one subscription
	// may have queued in the client before nats.go drops messages (a slow
	// consumer). Generous: a brief stall of a handler should not cost a
	// history repair.
	DefaultPendingMsgs  = 1_000_000
	DefaultPendingBytes = 256 << 20
	// DefaultMaxRevisionBytes is the largest encoded revision that goes over
	// NATS; a larger one is replaced by a progress beat and consumers fetch
	// it from history, which is cheaper than pushing it through every
	// subscriber's queue. Kept well below DefaultPendingBytes so that one
	// revision can always be queued whole.
	DefaultMaxRevisionBytes = 64 << 20
	// DefaultStartTimeout bounds how long StartNATS waits for the server.
	DefaultStartTimeout = 10 * time.Second
	// DefaultConnectTimeout bounds dialing a NATS server.
	DefaultConnectTimeout = 5 * time.Second

	// reconnectWait is the pause before retrying a server already tried.
	reconnectWait = 250 * time.Millisecond
	// maxNATSPayload is nats-server's hard limit on max_payload.
	maxNATSPayload = 64 << 20
	// closeWait bounds how long Close waits for nats.go to report the
	// connection closed (its goroutines exit right after).
	closeWait = 5 * time.Second
	// defaultFlushTimeout is used when a caller's context has no deadline
	// (nats.go requires one to flush).
	defaultFlushTimeout = 10 * time.Second
)

// NATSConfig configures StartNATS: an embedded nats-server plus a client
// connection to it.
type NATSConfig struct {
	// ListenAddr is the client listener, host:port. "" means no network
	// listener at all: only in-process connections (the all-in-one mode).
	// Port 0 or -1 picks a random port.
	ListenAddr string
	// ServerName names the embedded server (default: its generated ID).
	ServerName string
	// ClusterAddr is the route listener (host:port) for a multi-node NATS
	// cluster; "" = no clustering. It requires ListenAddr. Routes are other members' route URLs
	// (nats://host:port). ClusterName defaults to "concord".
	ClusterAddr string
	ClusterName string
	Routes      []string
	// MaxPayload is the server's max message size (default
	// DefaultMaxPayload, at most 64 MiB). Larger revisions are fragmented.
	MaxPayload int
	// PendingMsgs/PendingBytes are per-subscription client queue limits
	// (defaults DefaultPendingMsgs/DefaultPendingBytes; -1 = unlimited).
	PendingMsgs  int
	PendingBytes int
	// MaxRevisionBytes caps one revision's encoded size on the bus (default
	// DefaultMaxRevisionBytes; -1 = unlimited).
	MaxRevisionBytes int64
	// StartTimeout bounds the wait for the server (default DefaultStartTimeout).
	StartTimeout time.Duration
	// TLS, if set, is required on the client listener and on routes (see
	// TLSFiles); it needs ListenAddr, and with ClusterAddr a CAFile.
	// In-process connections stay in cleartext.
	TLS TLSFiles
	// TLSTimeout bounds a TLS handshake (default DefaultTLSTimeout).
	TLSTimeout time.Duration
	Logger     *slog.Logger
}

// SetDefaults fills zero fields with defaults.
func (c *NATSConfig) SetDefaults() {
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.PendingMsgs == 0 {
		c.PendingMsgs = DefaultPendingMsgs
	}
	if c.PendingBytes == 0 {
		c.PendingBytes = DefaultPendingBytes
	}
	if c.MaxRevisionBytes == 0 {
		c.MaxRevisionBytes = DefaultMaxRevisionBytes
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.ClusterName == "" {
		c.ClusterName = "concord"
	}
	if c.TLSTimeout == 0 {
		c.TLSTimeout = DefaultTLSTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ErrInvalidConfig is wrapped by NATSConfig.Validate errors.
var ErrInvalidConfig = errors.New("eventbus: invalid config")

// Validate checks a config after SetDefaults.
func (c NATSConfig) Validate() error {
	if c.MaxPayload < 1024 || c.MaxPayload > maxNATSPayload {
		return fmt.Errorf("%w: max payload %d not in [1024, %d]", ErrInvalidConfig, c.MaxPayload, maxNATSPayload)
	}
	if c.PendingMsgs == 0 || c.PendingMsgs < -1 || c.PendingBytes == 0 || c.PendingBytes < -1 {
		return fmt.Errorf("%w: pending limits %d msgs / %d bytes", ErrInvalidConfig, c.PendingMsgs, c.PendingBytes)
	}
	if c.MaxRevisionBytes == 0 || c.MaxRevisionBytes < -1 {
		return fmt.Errorf("%w: max revision bytes %d", ErrInvalidConfig, c.MaxRevisionBytes)
	}
	if c.StartTimeout <= 0 {
		return fmt.Errorf("%w: start timeout %v", ErrInvalidConfig, c.StartTimeout)
	}
	if c.ListenAddr != "" {
		if _, _, err := splitHostPort(c.ListenAddr); err != nil {
			return fmt.Errorf("%w: listen address: %w", ErrInvalidConfig, err)
		}
	}
	if c.ClusterAddr != "" {
		if _, _, err := splitHostPort(c.ClusterAddr); err != nil {
			return fmt.Errorf("%w: cluster address: %w", ErrInvalidConfig, err)
		}
	}
	if c.ClusterAddr != "" && c.ListenAddr == "" {
		// nats-server starts routing only after its client listener is up;
		// without one it would never join the cluster (and hang on Shutdown).
		return fmt.Errorf("%w: a cluster address needs a client listen address", ErrInvalidConfig)
	}
	if len(c.Routes) > 0 && c.ClusterAddr == "" {
		return fmt.Errorf("%w: routes need a cluster address", ErrInvalidConfig)
	}
	for _, r := range c.Routes {
		if u, err := url.Parse(r); err != nil || u.Host == "" {
			return fmt.Errorf("%w: route %q is not a URL like nats://host:port", ErrInvalidConfig, r)
		}
	}
	return c.validateTLS()
}

func (c NATSConfig) validateTLS() error {
	if c.TLSTimeout <= 0 {
		return fmt.Errorf("%w: TLS timeout %v", ErrInvalidConfig, c.TLSTimeout)
	}
	if c.TLS.IsZero() {
		return nil
	}
	if err := c.TLS.validate(true); err != nil {
		return err
	}
	switch {
	case c.ListenAddr == "":
		// In-process connections never use TLS: configured, it would
		// protect nothing.
		return fmt.Errorf("%w: TLS needs a client listen address", ErrInvalidConfig)
	case c.ClusterAddr != "" && c.TLS.CAFile == "":
		// Each member dials the others' routes as a client: it must verify
		// them, and be verified, with a CA.
		return fmt.Errorf("%w: TLS routes are mutual: a cluster address with TLS needs a trusted CA", ErrInvalidConfig)
	}
	return nil
}

// splitHostPort parses host:port; port 0 or -1 means a random port, which
// nats-server spells -1 (0 would mean its default port 4222).
func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < -1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// NATS is a Bus over NATS. Made by StartNATS it also owns an embedded
// nats-server; made by ConnectNATS it is only a client.
//
// All subscriptions of one NATS share its connection; nats.go gives each its
// own delivery goroutine and pending queue, so a slow handler delays only its
// own subscription, and beyond the pending limits loses messages (counted,
// logged; consumers repair from history) instead of blocking anyone.
type NATS struct {
	log              *slog.Logger
	srv              *server.Server // nil for ConnectNATS
	nc               *nats.Conn
	connClosed       chan struct{} // closed by nats.go's ClosedHandler
	pendingMsgs      int
	pendingBytes     int
	maxRevisionBytes int64

	pubMu sync.Mutex // keeps the chunks of one revision and whole Publish calls contiguous on the wire

	mu     sync.Mutex // guards subs, closed
	subs   map[*natsSub]struct{}
	closed atomic.Bool

	closeOnce sync.Once

	publishedRevs, publishedProgress, publishedChunks, tooLarge atomic.Uint64
	delivered, malformed, incomplete, slow, droppedClosed       atomic.Uint64

	warnLimiter rateLimiter
}

var _ Bus = (*NATS)(nil)

// StartNATS starts an embedded nats-server and connects to it through an
// in-process pipe. With cfg.ListenAddr empty the server has no network
// listener at all (the all-in-one mode); otherwise other processes reach it
// at ClientURL() with ConnectNATS.
func StartNATS(ctx context.Context, cfg NATSConfig) (*NATS, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		MaxPayload: int32(cfg.MaxPayload),
		NoSigs:     true, // the process owns signal handling, not the library
		DontListen: cfg.ListenAddr == "",
	}
	if cfg.ListenAddr != "" {
		opts.Host, opts.Port, _ = splitHostPort(cfg.ListenAddr)
	}
	var tlsCfg *tls.Config
	if !cfg.TLS.IsZero() {
		var err error
		if tlsCfg, err = cfg.TLS.serverConfig(); err != nil {
			return nil, err
		}
		opts.TLSConfig = tlsCfg
		opts.TLSVerify = tlsCfg.ClientAuth == tls.RequireAndVerifyClientCert
		opts.TLSTimeout = cfg.TLSTimeout.Seconds()
	}
	if cfg.ClusterAddr != "" {
		opts.Cluster.Name = cfg.ClusterName
		opts.Cluster.Host, opts.Cluster.Port, _ = splitHostPort(cfg.ClusterAddr)
		for _, r := range cfg.Routes {
			u, _ := url.Parse(r)
			opts.Routes = append(opts.Routes, u)
		}
		if tlsCfg != nil {
			opts.Cluster.TLSConfig = tlsCfg.Clone()
			opts.Cluster.TLSTimeout = cfg.TLSTimeout.Seconds()
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("eventbus: nats server: %w", err)
	}
	srv.SetLoggerV2(natsServerLogger{cfg.Logger.With("subsystem", "nats-server")}, false, false, false)
	srv.Start()
	stop := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
	if err := waitReady(ctx, srv, cfg.StartTimeout); err != nil {
		stop()
		return nil, err
	}
	// The client always uses the in-process pipe: no TCP overhead, and it
	// works whether or not there is a listener.
	n, err := connect(ctx, "", clientOptions{
		name:             "concord-eventbus",
		logger:           cfg.Logger,
		pendingMsgs:      cfg.PendingMsgs,
		pendingBytes:     cfg.PendingBytes,
		maxRevisionBytes: cfg.MaxRevisionBytes,
		connectTimeout:   DefaultConnectTimeout,
	}, nats.InProcessServer(srv))
	if err != nil {
		stop()
		return nil, err
	}
	n.srv = srv
	return n, nil
}

func waitReady(ctx context.Context, srv *server.Server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if srv.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("eventbus: nats server not ready: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("eventbus: nats server not ready after %v (address in use?)", timeout)
		}
	}
}

// ClientOption configures ConnectNATS.
type ClientOption func(*clientOptions)

type clientOptions struct {
	name             string
	logger           *slog.Logger
	pendingMsgs      int
	pendingBytes     int
	maxRevisionBytes int64
	connectTimeout   time.Duration
	tls              *TLSFiles
	natsOpts         []nats.Option
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) ClientOption { return func(o *clientOptions) { o.logger = l } }

// WithName sets the NATS connection name (visible in server monitoring).
func WithName(name string) ClientOption { return func(o *clientOptions) { o.name = name } }

// WithPendingLimits sets per-subscription queue limits (-1 = unlimited; 0 keeps the default).
func WithPendingLimits(msgs, bytes int) ClientOption {
	return func(o *clientOptions) {
		if msgs != 0 {
			o.pendingMsgs = msgs
		}
		if bytes != 0 {
			o.pendingBytes = bytes
		}
	}
}

// WithMaxRevisionBytes caps one revision's encoded size (-1 = unlimited; 0 keeps the default).
func WithMaxRevisionBytes(n int64) ClientOption {
	return func(o *clientOptions) {
		if n != 0 {
			o.maxRevisionBytes = n
		}
	}
}

// WithConnectTimeout bounds dialing when ctx has no earlier deadline.
func WithConnectTimeout(d time.Duration) ClientOption {
	return func(o *clientOptions) {
		if d > 0 {
			o.connectTimeout = d
		}
	}
}

// WithNATSOptions passes extra nats.go options (TLS, credentials, ...).
func WithNATSOptions(opts ...nats.Option) ClientOption {
	return func(o *clientOptions) { o.natsOpts = append(o.natsOpts, opts...) }
}

// ConnectNATS returns a client-only Bus connected to existing NATS servers
// (urls: comma-separated nats://host:port, tls://host:port or host:port;
// see WithTLS). It reconnects forever after the
// initial connection; what is lost meanwhile is repaired from history.
func ConnectNATS(ctx context.Context, urls string, opts ...ClientOption) (*NATS, error) {
	o := clientOptions{
		name:             "concord-eventbus",
		pendingMsgs:      DefaultPendingMsgs,
		pendingBytes:     DefaultPendingBytes,
		maxRevisionBytes: DefaultMaxRevisionBytes,
		connectTimeout:   DefaultConnectTimeout,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	if urls == "" {
		return nil, fmt.Errorf("%w: no NATS URL", ErrInvalidConfig)
	}
	if o.pendingMsgs < -1 || o.pendingBytes < -1 || o.maxRevisionBytes < -1 {
		return nil, fmt.Errorf("%w: negative limits", ErrInvalidConfig)
	}
	var extra []nats.Option
	if o.tls != nil {
		tlsOpts, err := o.tls.clientOptions()
		if err != nil {
			return nil, err
		}
		extra = append(extra, tlsOpts...)
	}
	return connect(ctx, urls, o, append(extra, o.natsOpts...)...)
}

func connect(ctx context.Context, urls string, o clientOptions, extra ...nats.Option) (*NATS, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	timeout := o.connectTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	n := &NATS{
		log:              o.logger.With("subsystem", "eventbus"),
		connClosed:       make(chan struct{}),
		pendingMsgs:      o.pendingMsgs,
		pendingBytes:     o.pendingBytes,
		maxRevisionBytes: o.maxRevisionBytes,
		subs:             make(map[*natsSub]struct{}),
	}
	nopts := []nats.Option{
		nats.Name(o.name),
		nats.Timeout(timeout),
		nats.MaxReconnects(-1),
		// With several servers (a cluster of consensus members) a lost one is
		// replaced by the next quickly; nats.go's 2s default would leave
		// consumers on history repairs for that long.
		nats.ReconnectWait(reconnectWait),
		nats.ErrorHandler(n.onAsyncError),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				n.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			n.log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(n.connClosed) }),
	}
	nc, err := nats.Connect(urls, append(nopts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("eventbus: connect to nats: %w", err)
	}
	n.nc = nc
	if err := ctx.Err(); err != nil {
		n.closeConn()
		return nil, err
	}
	return n, nil
}

// ClientURL returns the URL other processes can connect to: the embedded
// server's listener (tls://host:port when it requires TLS), or the server this client is connected to. It is ""
// for an embedded server without a listener.
func (n *NATS) ClientURL() string {
	if n.srv != nil {
		if n.srv.Addr() == nil {
			return ""
		}
		return n.srv.ClientURL()
	}
	return n.nc.ConnectedUrl()
}

// ClusterURL returns the embedded server's route URL (nats://host:port),
// which other members list in their Routes; "" without clustering or for a
// client-only bus.
func (n *NATS) ClusterURL() string {
	if n.srv == nil || n.srv.ClusterAddr() == nil {
		return ""
	}
	return "nats://" + n.srv.ClusterAddr().String()
}

// MaxPayload is the largest message the connected server accepts.
func (n *NATS) MaxPayload() int64 { return n.nc.MaxPayload() }

// Publish implements Publisher. Revisions larger than the max payload are
// fragmented; a revision that cannot be carried at all (an event larger than
// the max payload, or more than MaxRevisionBytes) is replaced by a progress
// beat at its revision, so consumers notice the gap at once and fetch it
// from history; it is logged and counted (Stats.TooLarge), not an error.
// The caller may reuse the events once Publish returns.
func (n *NATS) Publish(ctx context.Context, revs []Revision) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validateRevisions(revs); err != nil {
		return err
	}
	if n.closed.Load() {
		return ErrClosed
	}
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	maxPayload := int(n.nc.MaxPayload())
	for _, r := range revs {
		if err := ctx.Err(); err != nil {
			return err
		}
		chunks, err := splitRevision(r, maxPayload)
		if err == nil && n.maxRevisionBytes > 0 && totalLen(chunks) > n.maxRevisionBytes {
			err = fmt.Errorf("%w: revision %d encodes to %d bytes > %d", ErrTooLarge, r.Rev, totalLen(chunks), n.maxRevisionBytes)
		}
		if errors.Is(err, ErrTooLarge) {
			n.tooLarge.Add(1)
			n.log.Warn("revision not published on the bus; consumers read it from history", "rev", r.Rev, "err", err)
			if err := n.publishProgressLocked(r.Rev); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		for _, c := range chunks {
			if err := n.nc.Publish(Subject, c); err != nil {
				return n.pubErr(r.Rev, err)
			}
		}
		n.publishedChunks.Add(uint64(len(chunks)))
		n.publishedRevs.Add(1)
	}
	return nil
}

func totalLen(chunks [][]byte) int64 {
	var t int64
	for _, c := range chunks {
		t += int64(len(c))
	}
	return t
}

// PublishProgress implements Publisher.
func (n *NATS) PublishProgress(ctx context.Context, rev int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validateProgress(rev); err != nil {
		return err
	}
	if n.closed.Load() {
		return ErrClosed
	}
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	return n.publishProgressLocked(rev)
}

func (n *NATS) publishProgressLocked(rev int64) error {
	b, err := marshalOpts.Marshal(progressResponse(rev))
	if err != nil {
		return fmt.Errorf("eventbus: encode progress %d: %w", rev, err)
	}
	if err := n.nc.Publish(Subject, b); err != nil {
		return n.pubErr(rev, err)
	}
	n.publishedChunks.Add(1)
	n.publishedProgress.Add(1)
	return nil
}

func (n *NATS) pubErr(rev int64, err error) error {
	if errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("publish revision %d: %w", rev, ErrClosed)
	}
	return fmt.Errorf("eventbus: publish revision %d: %w", rev, err)
}

// Flush waits until the server has received everything published so far.
func (n *NATS) Flush(ctx context.Context) error {
	if n.closed.Load() {
		return ErrClosed
	}
	ctx, cancel := withFlushDeadline(ctx)
	defer cancel()
	if err := n.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("eventbus: flush: %w", err)
	}
	return nil
}

func withFlushDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultFlushTimeout)
}

type natsSub struct {
	bus    *NATS
	handle func(Message)
	sub    *nats.Subscription

	hmu     sync.Mutex // held while handling; unsubscribe takes it to wait for the handler
	stopped bool
	asm     assembler

	once sync.Once
}

// Subscribe implements Subscriber. It returns once the server has
// registered the interest, so anything published afterwards (by any
// publisher on that server or its cluster) is delivered.
func (n *NATS) Subscribe(ctx context.Context, handle func(Message)) (func(), error) {
	if handle == nil {
		return nil, errors.New("eventbus: nil handler")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &natsSub{bus: n, handle: handle, asm: assembler{maxBytes: n.maxRevisionBytes}}
	n.mu.Lock()
	if n.closed.Load() {
		n.mu.Unlock()
		return nil, ErrClosed
	}
	sub, err := n.nc.Subscribe(Subject, s.onMsg)
	if err != nil {
		n.mu.Unlock()
		if errors.Is(err, nats.ErrConnectionClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("eventbus: subscribe: %w", err)
	}
	s.sub = sub
	n.subs[s] = struct{}{}
	n.mu.Unlock()
	if err := sub.SetPendingLimits(n.pendingMsgs, n.pendingBytes); err != nil {
		s.unsubscribe()
		return nil, fmt.Errorf("eventbus: pending limits: %w", err)
	}
	fctx, cancel := withFlushDeadline(ctx)
	defer cancel()
	if err := n.nc.FlushWithContext(fctx); err != nil {
		s.unsubscribe()
		return nil, fmt.Errorf("eventbus: subscribe: %w", err)
	}
	return s.unsubscribe, nil
}

// onMsg runs on the subscription's nats.go delivery goroutine.
func (s *natsSub) onMsg(m *nats.Msg) {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if s.stopped {
		return
	}
	n := s.bus
	w, err := decode(m.Data)
	if err != nil {
		n.malformed.Add(1)
		if n.warnLimiter.allow() {
			n.log.Warn("skipping malformed bus message", "bytes", len(m.Data), "err", err)
		}
		return
	}
	msg, ok, dropped := s.asm.push(w, len(m.Data))
	if dropped > 0 {
		n.incomplete.Add(uint64(dropped))
		if n.warnLimiter.allow() {
			n.log.Warn("dropped incomplete fragmented revision", "at_rev", w.Header.Revision)
		}
	}
	if ok {
		s.handle(msg)
		n.delivered.Add(1)
	}
}

func (s *natsSub) unsubscribe() {
	s.once.Do(func() {
		// Move the subscription's drop count to the bus in the same step as
		// removing it, so Stats never counts it twice or not at all.
		s.bus.mu.Lock()
		if d, err := s.sub.Dropped(); err == nil {
			s.bus.droppedClosed.Add(uint64(d))
		}
		delete(s.bus.subs, s)
		s.bus.mu.Unlock()
		_ = s.sub.Unsubscribe() // fails only if the connection is already closed: nothing to undo
		// nats.go does not wait for a running callback; taking hmu does.
		s.hmu.Lock()
		s.stopped = true
		s.asm.reset()
		s.hmu.Unlock()
	})
}

func (n *NATS) onAsyncError(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		n.slow.Add(1)
		if n.warnLimiter.allow() {
			n.log.Warn("slow bus subscriber: messages dropped; consumers repair from history", "err", err)
		}
		return
	}
	n.log.Warn("nats async error", "err", err)
}

// Stats returns cumulative counters.
func (n *NATS) Stats() Stats {
	dropped := n.droppedClosed.Load()
	n.mu.Lock()
	for s := range n.subs {
		if d, err := s.sub.Dropped(); err == nil {
			dropped += uint64(d)
		}
	}
	n.mu.Unlock()
	return Stats{
		PublishedRevisions: n.publishedRevs.Load(),
		PublishedProgress:  n.publishedProgress.Load(),
		PublishedChunks:    n.publishedChunks.Load(),
		TooLarge:           n.tooLarge.Load(),
		Delivered:          n.delivered.Load(),
		Malformed:          n.malformed.Load(),
		Incomplete:         n.incomplete.Load(),
		SlowConsumer:       n.slow.Load(),
		Dropped:            dropped,
	}
}

// Close implements Bus: it stops every subscription (waiting for handlers),
// flushes what was published, closes the connection and, for StartNATS,
// shuts the embedded server down and waits for it. Idempotent.
func (n *NATS) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed.Store(true)
		subs := make([]*natsSub, 0, len(n.subs))
		for s := range n.subs {
			subs = append(subs, s)
		}
		n.mu.Unlock()
		for _, s := range subs {
			s.unsubscribe()
		}
		n.pubMu.Lock() // let an in-flight Publish finish before flushing
		n.pubMu.Unlock()
		if n.nc.IsConnected() {
			ctx, cancel := context.WithTimeout(context.Background(), closeWait)
			if err := n.nc.FlushWithContext(ctx); err != nil {
				n.log.Debug("flush on close", "err", err)
			}
			cancel()
		}
		n.closeConn()
		if n.srv != nil {
			n.srv.Shutdown()
			n.srv.WaitForShutdown()
		}
	})
	return nil
}

func (n *NATS) closeConn() {
	n.nc.Close()
	select {
	case <-n.connClosed:
	case <-time.After(closeWait):
		n.log.Warn("nats connection did not report closed in time")
	}
}

// natsServerLogger adapts nats-server's logger to slog.
type natsServerLogger struct{ l *slog.Logger }

func (a natsServerLogger) logf(level slog.Level, format string, v []any) {
	if a.l.Enabled(context.Background(), level) {
		a.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

func (a natsServerLogger) Noticef(format string, v ...any) { a.logf(slog.LevelInfo, format, v) }
func (a natsServerLogger) Warnf(format string, v ...any)   { a.logf(slog.LevelWarn, format, v) }

// Fatalf is only logged: the embedded server must never end the process;
// startup failures surface through StartNATS's readiness check.
func (a natsServerLogger) Fatalf(format string, v ...any) { a.logf(slog.LevelError, format, v) }
func (a natsServerLogger) Errorf(format string, v ...any) { a.logf(slog.LevelError, format, v) }
func (a natsServerLogger) Debugf(format string, v ...any) { a.logf(slog.LevelDebug, format, v) }
func (a natsServerLogger) Tracef(format string, v ...any) { a.logf(slog.LevelDebug-4, format, v) }

// rateLimiter lets through at most one event per second, so a flood of bad
// messages cannot flood the log (the counters still see every one).
type rateLimiter struct{ last atomic.Int64 }

func (r *rateLimiter) allow() bool {
	now := time.Now().UnixNano()
	last := r.last.Load()
	return now-last >= int64(time.Second) && r.last.CompareAndSwap(last, now)
}
