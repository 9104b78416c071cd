package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/concord-kv/concord/gateway/h2conn"
	"github.com/concord-kv/concord/gateway/h2server"
	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/proto/gen/v3electionpbconnect"
	"github.com/concord-kv/concord/proto/gen/v3lockpbconnect"
)

// forceNetHTTP2 makes every Serve use net/http's HTTP/2 server; the
// package's tests set it from CONCORD_TEST_NET_HTTP2 to run the whole suite
// over both servers.
var forceNetHTTP2 bool

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("gateway: closed")

// Gateway serves etcd's API for one Backend. It holds no state besides its
// listeners' servers; any number of gateways can front the same backend.
type Gateway struct {
	cfg Config
	b   Backend
	log *slog.Logger
	// learner is b when it may be a raft learner (learner.go), else nil.
	learner Learner
	// wire is b when it can encode ranges for the wire (services.go),
	// else nil.
	wire wireRanger
	// callers identifies each request's caller (internalsecret.go).
	callers *callers

	// services maps "/<package>.<Service>/" to the connect handler of that
	// service; exact-prefix lookup is cheaper than a ServeMux walk.
	services map[string]http.Handler
	// methods maps the path of every method of the services found in the
	// protobuf registry to whether it is unary: unary responses are written
	// without connect's early flush (fastpath.go).
	methods map[string]bool
	// described holds the prefixes of services found in the registry, whose
	// unknown methods route answers as grpc-go does.
	described map[string]bool
	// misc serves the non-RPC endpoints (/health, /version, ...).
	misc *http.ServeMux
	// httpRoutes is misc as clients reach it, with etcd's CORS headers;
	// route falls back to it, or to a 404 with Config.SeparateHTTP.
	httpRoutes, fallback http.Handler
	handler              http.Handler
	// rest serves etcd's JSON gateway; nil with Config.NoJSONGateway.
	rest *restGateway
	// health is the gRPC health service (grpchealth.go).
	health *healthService
	// tracing makes the spans of the RPCs and of a streamed range (nil:
	// off).
	tracing *tracing.Provider

	mu      sync.Mutex
	closed  bool
	servers map[*http.Server]struct{}
	// lean holds the h2server of each Serve without Config.NetHTTP2.
	lean map[*h2server.Server]*h2server.Split
}

// Option adds optional services to a Gateway.
type Option func(*options)

type options struct {
	watch    etcdserverpbconnect.WatchHandler
	lease    Lease
	lock     v3lockpbconnect.LockHandler
	election v3electionpbconnect.ElectionHandler
	// browserWatch serves concord.v1.WatchService (browserwatch.go).
	browserWatch Watcher
	// extra are plain HTTP handlers mounted next to /health (extra.go).
	extra []extraHandler
	// readyChecks are added to /readyz.
	readyChecks map[string]check
	// observer is told of every RPC (observe.go).
	observer CallObserver
	// tracing makes a span of every RPC (WithTracing).
	tracing *tracing.Provider
}

// WithTracing makes a SERVER span of every RPC the gateway serves, the
// child of the caller's when its traceparent is sampled (etcd's
// --enable-distributed-tracing). A nil p (tracing off) adds nothing.
func WithTracing(p *tracing.Provider) Option {
	return func(o *options) { o.tracing = p }
}

// WithReadyCheck adds a named check to /readyz (and /readyz/<name>): the
// process's own components, such as a lease service, report there whether
// they can do their job.
func WithReadyCheck(name string, f func(context.Context) error) Option {
	return func(o *options) {
		if o.readyChecks == nil {
			o.readyChecks = make(map[string]check)
		}
		o.readyChecks[name] = f
	}
}

// WithLock serves v3lockpb.Lock with h (a *recipes.Service); without it
// Lock answers Unimplemented.
func WithLock(h v3lockpbconnect.LockHandler) Option {
	return func(o *options) { o.lock = h }
}

// WithElection serves v3electionpb.Election with h (a *recipes.Service);
// without it Election answers Unimplemented.
func WithElection(h v3electionpbconnect.ElectionHandler) Option {
	return func(o *options) { o.election = h }
}

// WithLease serves etcdserverpb.Lease with l (a *leasesvc.Service);
// without it the unary lease calls go to the backend's LeaseStore and
// LeaseKeepAlive/LeaseTimeToLive answer Unimplemented.
func WithLease(l Lease) Option {
	return func(o *options) { o.lease = l }
}

// WithWatch serves etcdserverpb.Watch with h (for example
// NewWatchService(fanout)); without it Watch answers Unimplemented.
func WithWatch(h etcdserverpbconnect.WatchHandler) Option {
	return func(o *options) { o.watch = h }
}

// New builds a Gateway. cfg is defaulted and validated.
func New(cfg Config, b Backend, opts ...Option) (*Gateway, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil backend", ErrInvalidConfig)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		cfg.TLS = serverTLS(cfg.TLS)
	}
	g := &Gateway{
		cfg:       cfg,
		b:         b,
		log:       cfg.Logger,
		services:  make(map[string]http.Handler),
		methods:   make(map[string]bool),
		described: make(map[string]bool),
		misc:      http.NewServeMux(),
		servers:   make(map[*http.Server]struct{}),
		lean:      make(map[*h2server.Server]*h2server.Split),
	}
	g.learner, _ = b.(Learner)
	g.wire, _ = b.(wireRanger)
	g.callers = &callers{secrets: cfg.InternalSecrets, log: cfg.Logger}
	o := options{
		watch:    etcdserverpbconnect.UnimplementedWatchHandler{},
		lock:     v3lockpbconnect.UnimplementedLockHandler{},
		election: v3electionpbconnect.UnimplementedElectionHandler{},
	}
	for _, opt := range opts {
		opt(&o)
	}
	authz, _ := b.(WatchAuthorizer)
	if ws, ok := o.watch.(watchService); ok {
		// Watches served in this process are checked against the
		// backend's permissions; a remote backend's consensus cannot see
		// them, so only a backend that can check them does.
		ws.authz = authz
		o.watch = ws
	}
	hopts := []connect.HandlerOption{
		// etcd lets the transport accept MaxRequestBytes plus gRPC overhead;
		// the exact limit is then enforced per request (tooLarge).
		connect.WithReadMaxBytes(cfg.MaxRequestBytes + grpcOverheadBytes),
		connect.WithRequestGate(g.gate),
	}
	g.tracing = o.tracing
	if o.tracing.On() {
		// First, so the span covers the other interceptors too.
		hopts = append(hopts, connect.WithInterceptors(o.tracing.Interceptor()))
	}
	var sizes MessageSizeObserver
	if o.observer != nil {
		hopts = append(hopts, connect.WithInterceptors(observerInterceptor{o.observer}))
		sizes, _ = o.observer.(MessageSizeObserver)
	}
	hopts = append(hopts, connect.WithCodec(protoCodec{sizes}))
	if cfg.WarningUnaryRequestDuration > 0 {
		hopts = append(hopts, connect.WithInterceptors(slowUnaryInterceptor{cfg.WarningUnaryRequestDuration, cfg.Logger}))
	}
	g.mount(etcdserverpbconnect.NewKVHandler(kvService{g: g}, hopts...))
	g.mount(etcdserverpbconnect.NewWatchHandler(o.watch, hopts...))
	g.mount(browserWatchHandler(o.browserWatch, authz, hopts...))
	g.mount(etcdserverpbconnect.NewLeaseHandler(leaseService{g: g, l: o.lease}, hopts...))
	g.mount(etcdserverpbconnect.NewClusterHandler(clusterService{g: g}, hopts...))
	g.mount(etcdserverpbconnect.NewMaintenanceHandler(maintenanceService{g: g}, hopts...))
	g.mount(etcdserverpbconnect.NewAuthHandler(authHandler(b), hopts...))
	g.mount(v3lockpbconnect.NewLockHandler(o.lock, hopts...))
	g.mount(v3electionpbconnect.NewElectionHandler(o.election, hopts...))
	g.health = &healthService{stopOnDefrag: cfg.StopServingOnDefrag}
	g.mount(healthServicePrefix, g.health.handler(hopts...))
	g.installHTTPEndpoints(o.readyChecks)
	for _, e := range o.extra {
		g.misc.Handle(e.pattern, g.callers.wrap(o.tracing.Handler(e.h)))
	}
	g.handler = http.HandlerFunc(g.route)
	g.httpRoutes = g.withCORS(g.misc)
	g.fallback = g.httpRoutes
	if cfg.SeparateHTTP {
		g.fallback = http.NotFoundHandler()
	}
	if !cfg.NoJSONGateway {
		g.rest = newRESTGateway(g.handler, cfg.MaxConcurrentStreams, cfg.MaxRequestBytes+grpcOverheadBytes)
		g.misc.Handle("/v3/", g.rest)
		g.misc.Handle("/v3beta/", g.rest)
	}
	return g, nil
}

func (g *Gateway) mount(prefix string, h http.Handler) {
	g.services[prefix] = h
	ps := procedures(prefix)
	if ps != nil {
		g.described[prefix] = true
	}
	for p, unary := range ps {
		g.methods[p] = unary
	}
}

// Handler returns the http.Handler serving every RPC and HTTP endpoint.
// It needs HTTP/2 (h2c or TLS) for gRPC clients.
func (g *Gateway) Handler() http.Handler { return g.handler }

// route dispatches "/pkg.Service/Method" to the service's connect handler.
func (g *Gateway) route(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if len(p) > 1 && p[0] == '/' {
		if i := strings.IndexByte(p[1:], '/'); i > 0 {
			prefix := p[:i+2]
			if h, ok := g.services[prefix]; ok {
				unary, known := g.methods[p]
				if !known && g.described[prefix] && isGRPC(r) {
					// grpc-go's answer; connect's would be HTTP 404.
					writeGRPCUnimplemented(w, "unknown method "+p[i+2:]+" for service "+p[1:i+1])
					return
				}
				growStack()
				if unary {
					w = unaryWriter{w}
				}
				// gRPC has no use for a Date header; without it the server
				// skips formatting and encoding one per response.
				w.Header()["Date"] = nil
				var body *countingBody
				if enc := r.Header["Grpc-Encoding"]; len(enc) > 0 && enc[0] != "identity" {
					// Only compressed requests are counted: the count
					// tells what was over the limit (asGRPCGoReadError).
					body = &countingBody{ReadCloser: r.Body}
					r.Body = body
				} else {
					// As grpc-go (etcd) does, responses are compressed only
					// when the request was. connect would compress every
					// response to a client that merely accepts gzip, which
					// every grpc-go client linking grpc/encoding/gzip
					// advertises (OpenTelemetry's exporters link it, in
					// kube-apiserver too), at several times a call's CPU.
					delete(r.Header, "Grpc-Accept-Encoding")
				}
				h.ServeHTTP(w, g.callers.identify(r, true))
				asGRPCGoReadError(w.Header(), unary, body)
				return
			}
			if isGRPC(r) {
				// Answer like grpc-go does for a service it does not know,
				// so gRPC clients see Unimplemented rather than HTTP 404.
				writeGRPCUnimplemented(w, "unknown service "+p[1:i+1])
				return
			}
		}
	}
	g.fallback.ServeHTTP(w, r)
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// writeGRPCUnimplemented writes a trailers-only gRPC response.
func writeGRPCUnimplemented(w http.ResponseWriter, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", "12")
	h.Set("Grpc-Message", msg)
	w.WriteHeader(http.StatusOK)
}

// hasLeaderHeader is rpctypes.MetadataRequireLeaderKey in canonical header
// form, so the lookup does not canonicalize on every call.
var hasLeaderHeader = http.CanonicalHeaderKey(rpctypes.MetadataRequireLeaderKey)

// requireLeader implements clientv3.WithRequireLeader: a call carrying
// hasleader=true fails with ErrGRPCNoLeader while there is no leader, for
// unary and streaming calls alike, before the request is even decoded.
func (g *Gateway) requireLeader(ctx context.Context, _ connect.Spec, _ connect.Peer, h http.Header) (context.Context, error) {
	if v := h[hasLeaderHeader]; len(v) > 0 && v[0] == rpctypes.MetadataHasLeader && g.b.Leader() == 0 {
		return ctx, rpcError(rpctypes.ErrGRPCNoLeader)
	}
	return ctx, nil
}

// Serve serves the gateway on ln (HTTP/1.1 and cleartext HTTP/2, so gRPC
// works without TLS) until ctx is done, then shuts down gracefully for up to
// ShutdownTimeout before closing the remaining connections (watch streams
// never finish on their own). It returns nil after a shutdown caused by ctx
// or Close, and the server's error otherwise. ln is closed on return.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	return g.serve(ctx, ln, nil)
}

// ServeTLS is Serve over TLS with Config.TLS (ErrInvalidConfig without
// it): the handshake offers ALPN h2 and http/1.1, and each connection is
// then routed as on Serve's cleartext listener, by the HTTP/2 client preface
// after the handshake, so gRPC, gRPC-Web/Connect and HTTP/1.1 JSON share the
// port.
func (g *Gateway) ServeTLS(ctx context.Context, ln net.Listener) error {
	if g.cfg.TLS == nil {
		ln.Close()
		return fmt.Errorf("%w: ServeTLS needs Config.TLS", ErrInvalidConfig)
	}
	return g.serve(ctx, ln, g.cfg.TLS)
}

// serve is Serve, over TLS when tlsCfg is set.
func (g *Gateway) serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) error {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	// With net/http's HTTP/2 server over TLS, net/http itself does the
	// handshake and picks HTTP/2 by ALPN.
	protocols.SetHTTP2(tlsCfg != nil)
	h := g.handler
	if tlsCfg == nil {
		h = g.cleartextHandler(h)
	}
	srv := &http.Server{
		Handler:   h,
		Protocols: &protocols,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: int(min(uint64(g.cfg.MaxConcurrentStreams), math.MaxInt)),
			// The part of KeepAlive net/http has (see KeepAlive).
			SendPingTimeout: g.cfg.KeepAlive.Interval,
			PingTimeout:     g.cfg.KeepAlive.Timeout,
		},
		// No ReadTimeout/WriteTimeout: they would cut watch and keep-alive
		// streams.
	}
	if g.cfg.NetHTTP2 || forceNetHTTP2 {
		if d := g.cfg.KeepAlive.Timeout; g.cfg.KeepAlive.Interval > 0 && d > 0 {
			// TCP_USER_TIMEOUT as the lean server sets it (h2server).
			srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
				if err := h2server.SetUserTimeout(c, d); err != nil {
					g.log.Debug("cannot set TCP_USER_TIMEOUT", "remote", c.RemoteAddr().String(), "err", err)
				}
				return ctx
			}
		}
	}

	// Coalesce the HTTP/2 server's writes and buffer its reads per
	// connection (h2conn): a fraction of the system calls per call.
	var (
		split *h2server.Split
		lean  *h2server.Server
	)
	h1ln := ln
	if !g.cfg.NetHTTP2 && !forceNetHTTP2 {
		var err error
		lean, err = h2server.New(h2server.Config{
			MaxConcurrentStreams: g.cfg.MaxConcurrentStreams,
			KeepAlive: h2server.KeepAlive{
				Time:                g.cfg.KeepAlive.Interval,
				Timeout:             g.cfg.KeepAlive.Timeout,
				MinTime:             g.cfg.KeepAlive.MinTime,
				PermitWithoutStream: g.cfg.KeepAlive.PermitWithoutStream,
			},
			Logger: g.log,
		}, h)
		if err != nil {
			ln.Close()
			return err
		}
		sln := ln
		if tlsCfg != nil {
			// The handshake happens on Split's sniffing goroutine (the
			// first Read), so a slow client holds up no one else.
			sln = newTLSListener(ln, tlsCfg, g.log)
		}
		split = h2server.NewSplit(sln, lean)
		h1ln = split.HTTP1()
	}
	hln, lerr := h2conn.NewListener(h1ln, h2conn.Config{})
	if lerr != nil {
		ln.Close()
		return lerr
	}
	var cln net.Listener = hln
	if tlsCfg != nil && lean == nil {
		// net/http must see *tls.Conn to negotiate HTTP/2; TLS goes on top
		// of h2conn so that its records are what h2conn coalesces.
		cln = tls.NewListener(cln, tlsCfg)
	}

	untrack, err := g.track(srv, lean, split)
	if err != nil {
		ln.Close()
		return err
	}
	defer untrack()

	g.log.Info("gateway serving", "addr", ln.Addr().String(), "lean_http2", lean != nil, "tls", tlsCfg != nil)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(cln) }()
	pending := 1
	sctx, stopSplit := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSplit()
	if split != nil {
		pending++
		go func() {
			err := split.Serve(sctx)
			if err == nil {
				err = http.ErrServerClosed
			}
			errc <- err
		}()
	}
	var serveErr error
	select {
	case serveErr = <-errc:
		pending--
	case <-ctx.Done():
	}
	if serveErr == nil || errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
		g.shutdown(ctx, srv, lean)
	} else {
		srv.Close()
		if lean != nil {
			lean.Close()
		}
	}
	if split != nil {
		split.Close()
	}
	stopSplit()
	for ; pending > 0; pending-- {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && serveErr == nil {
			serveErr = err
		}
	}
	if serveErr != nil {
		return serveErr
	}
	g.log.Info("gateway stopped", "addr", ln.Addr().String())
	return nil
}

// track registers the servers of one Serve, so that Close stops them; it
// fails with ErrClosed after Close. lean and split may be nil. untrack
// forgets them.
func (g *Gateway) track(srv *http.Server, lean *h2server.Server, split *h2server.Split) (untrack func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	g.servers[srv] = struct{}{}
	if lean != nil {
		g.lean[lean] = split
	}
	return func() {
		g.mu.Lock()
		delete(g.servers, srv)
		delete(g.lean, lean)
		g.mu.Unlock()
	}, nil
}

// shutdown stops srv and lean gracefully for up to ShutdownTimeout, then
// closes what is left.
func (g *Gateway) shutdown(ctx context.Context, srv *http.Server, lean *h2server.Server) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
	defer cancel()
	var leanErr error
	var wg sync.WaitGroup
	if lean != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leanErr = lean.Shutdown(sctx)
		}()
	}
	err := srv.Shutdown(sctx)
	wg.Wait()
	if err != nil || leanErr != nil {
		g.log.Info("gateway graceful shutdown incomplete; closing connections", "err", errors.Join(err, leanErr))
		srv.Close()
		if lean != nil {
			lean.Close()
		}
	}
}

// Close stops every server started by Serve immediately (their Serve calls
// return nil) and makes later Serve calls fail with ErrClosed. Idempotent.
func (g *Gateway) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	var errs []error
	for srv := range g.servers {
		if err := srv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for lean, split := range g.lean {
		errs = append(errs, lean.Close(), split.Close())
	}
	if g.rest != nil {
		errs = append(errs, g.rest.close())
	}
	return errors.Join(errs...)
}
