// Package services wires concord's components into runnable services. Each
// Run function owns what it starts: it returns only after every goroutine and
// listener it created has stopped, which happens when ctx is cancelled or a
// component fails.
package services

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/sync/errgroup"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/compactor"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/metrics"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/services/config"
	"github.com/concord-kv/concord/watchfanout"
)

// RunAllInOne runs every service in one process: consensus publishes
// committed revisions on an embedded NATS server with no network listener,
// the watch fan-out consumes them from that bus exactly as it would in the
// split topology, and the gateway calls consensus and the fan-out directly
// through the same interfaces the split topology uses over the network.
// The one lease service decides lease expiries in process (leasesvc).
//
// Started several times with an --initial-cluster naming several members,
// each process is one voting member of a raft cluster (peer traffic on
// --listen-peer-urls) that still runs every other service for itself: its
// own NATS carries the revisions this member applies to its own watchers.
func RunAllInOne(ctx context.Context, cfg config.Server, log *slog.Logger) error {
	listeners, tlsCfg, err := listenClients(serverListenSpec(cfg))
	if err != nil {
		return err
	}
	defer closeClients(listeners)
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	bus, err := eventbus.StartNATS(ctx, eventbus.NATSConfig{Logger: log.With("component", "nats")})
	if err != nil {
		return fmt.Errorf("starting the event bus: %w", err)
	}
	defer bus.Close()

	ccfg := consensusConfig(cfg, log)
	ccfg.Events = bus
	ccfg.Tracing = tp
	// The other members reach this one on its peer URLs (peer.go); a
	// single member serves them too, as etcd does, so that `member add`
	// can grow it. Consensus owns the transport from Start on.
	var forwarded peerLeases
	node, checks, stopMember, err := startMember(ctx, cfg, ccfg, log, forwarded.handlers())
	if err != nil {
		return err
	}
	defer stopMember()

	fanout, err := watchfanout.New(watchfanout.Config{
		Logger:                 log.With("component", "watchfanout"),
		ClusterID:              node.ClusterID(),
		MemberID:               node.MemberID(),
		RaftTerm:               func() uint64 { return node.Header().RaftTerm },
		ProgressNotifyInterval: cfg.WatchProgressNotifyInterval,
		// etcd fragments watch responses (of watches that ask for it) at
		// the largest request plus 512 KiB of gRPC overhead.
		MaxResponseBytes: cfg.MaxRequestBytes + 512*1024,
		// Sharing the process with consensus and Pebble, the recent-revision
		// cache is kept small: only revisions of many or large events reach
		// the byte bound before the 1024-revision one, and 4 MiB (about
		// 6 MiB of heap) measured no slower on the watch benchmarks than the
		// 16 MiB default (docs/benchmarks.md).
		CacheBytes: allInOneWatchCacheBytes,
	}, bus, node)
	if err != nil {
		return fmt.Errorf("starting the watch fan-out: %w", err)
	}
	defer fanout.Close()

	// The only lease service of this process: it holds the lease authority
	// under the member name and decides expiries (DESIGN.md invariant 4).
	leases, err := leasesvc.New(leasesvc.Config{
		Holder:  cfg.Name,
		Logger:  log.With("component", "leasesvc"),
		Tracing: tp,
	}, node)
	if err != nil {
		return fmt.Errorf("starting the lease service: %w", err)
	}
	defer leases.Close()
	forwarded.set(leases)
	lease := newMemberLease(leases, node.MemberID(), func() []*pb.Member { return node.Membership().Members }, checks.peerTLS)
	defer lease.Close()

	mopts, err := metricsOptions(metrics.Sources{Consensus: node, Fanout: fanout})
	if err != nil {
		return err
	}
	mopts = append(mopts, consoleOptions(cfg.EnableConsole)...)
	mopts = append(mopts, gateway.WithTracing(tp))
	gw, err := newClientGateway(withServerHTTP(withTLS(gatewayConfig(cfg.MaxRequestBytes, cfg.MaxTxnOps, cfg.LeanHTTP2, cfg.EnableGRPCGateway, log), tlsCfg), cfg), cfg.EnablePprof, node, fanout, lease, log, mopts...)
	if err != nil {
		return err
	}
	defer gw.Close()

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return leases.Run(ctx) })
	g.Go(func() error { return watchNode(ctx, node) })
	g.Go(func() error { return runCompactor(ctx, cfg.AutoCompaction, node, log) })
	checks.run(ctx, g, node)
	if len(node.Membership().Members) == 1 {
		// With several members only one process's lease service holds the
		// authority; the others stay standbys and must not delay serving.
		waitLeaseAuthority(ctx, leases, log)
	}
	serveListeners(ctx, g, listeners, gw.Gateway, log)
	log.Info("concord is ready", "name", cfg.Name, "data-dir", cfg.DataDir,
		"advertise-client-urls", joinURLs(cfg.AdvertiseClientURLs))
	return endOfRun(g.Wait(), log)
}

// endOfRun is what a process's run returns once its errgroup ended: nil for
// a stop it was asked for, and for a member removed from the cluster, which
// etcd also treats as a clean end (it logs the removal and exits 0).
func endOfRun(err error, log *slog.Logger) error {
	switch {
	case errors.Is(err, context.Canceled):
		return nil
	case errors.Is(err, consensus.ErrMemberRemoved):
		log.Warn("stopping: " + consensus.ErrMemberRemoved.Error())
		return nil
	}
	return err
}

// allInOneWatchCacheBytes bounds the all-in-one fan-out's cache of recent
// revisions (watchfanout.Config.CacheBytes).
const allInOneWatchCacheBytes = 4 << 20

// waitLeaseAuthority lets the lease service take the authority before
// clients are served, so the first keep-alive is answered. Alone in the
// process it does so at once, unless the data dir's authority names another
// holder (the member was renamed): then it takes over after the takeover
// timeout, and keep-alives answer "no leader" (clients retry) until then.
func waitLeaseAuthority(ctx context.Context, leases *leasesvc.Service, log *slog.Logger) {
	wctx, cancel := context.WithTimeout(ctx, 2*leasesvc.DefaultTakeoverTimeout)
	defer cancel()
	if err := leases.WaitActive(wctx); err != nil && ctx.Err() == nil {
		log.Warn("lease service not active yet; serving anyway", "error", err)
	}
}

func consensusConfig(cfg config.Server, log *slog.Logger) consensus.Config {
	c := consensus.Config{
		Name:              cfg.Name,
		DataDir:           cfg.DataDir,
		WALDir:            cfg.WALDir,
		ClientURLs:        urlStrings(cfg.AdvertiseClientURLs),
		PeerURLs:          urlStrings(cfg.InitialAdvertisePeerURLs),
		InitialCluster:    cfg.InitialCluster,
		ClusterState:      cfg.InitialClusterState,
		ClusterToken:      cfg.InitialClusterToken,
		HeartbeatInterval: cfg.HeartbeatInterval,
		ElectionTimeout:   cfg.ElectionTimeout,
		SnapshotCount:     cfg.SnapshotCount,
		QuotaBackendBytes: cfg.QuotaBackendBytes,
		MaxRequestBytes:   cfg.MaxRequestBytes,
		BcryptCost:        cfg.BcryptCost,
		AuthToken:         cfg.AuthToken,
		AuthTokenTTL:      cfg.AuthTokenTTL,
		Logger:            log.With("component", "consensus"),

		SnapshotCatchUpEntries:            cfg.SnapshotCatchUpEntries,
		MaxLearners:                       cfg.MaxLearners,
		DisablePreVote:                    !cfg.PreVote,
		DisableInitialElectionTickAdvance: !cfg.InitialElectionTickAdvance,
		DisableStrictReconfigCheck:        !cfg.StrictReconfigCheck,
		UnsafeNoFsync:                     cfg.UnsafeNoFsync,
		ForceNewCluster:                   cfg.ForceNewCluster,
		WarningApplyDuration:              cfg.WarningApplyDuration,
	}
	if cfg.Discovery.Enabled() {
		// As etcd: the member and cluster IDs come from the discovery
		// token, not --initial-cluster-token.
		c.ClusterToken = cfg.Discovery.Token
		c.DiscoverCluster = discoverCluster(cfg.Discovery, c.Logger)
	}
	return c
}

// clientListener is a bound client URL, served over TLS for https:// and
// unixs://.
type clientListener struct {
	net.Listener
	tls bool
	// metrics marks a --listen-metrics-urls listener: /metrics and health
	// only.
	metrics bool
	// httpOnly marks a --listen-client-http-urls listener: the HTTP
	// endpoints, no RPC.
	httpOnly bool
}

// serveListeners serves gw on every listener in g.
func serveListeners(ctx context.Context, g *errgroup.Group, lns []clientListener, gw *gateway.Gateway, log *slog.Logger) {
	for _, ln := range lns {
		if !ln.metrics && !ln.httpOnly { // those log their own
			log.Info("serving client requests", "address", ln.Addr().String(), "tls", ln.tls)
		}
		g.Go(func() error { return ln.serve(ctx, gw) })
	}
}

func (l clientListener) serve(ctx context.Context, gw *gateway.Gateway) error {
	if l.metrics {
		return gw.ServeMetrics(ctx, l.Listener, l.tls)
	}
	if l.httpOnly {
		return gw.ServeHTTPOnly(ctx, l.Listener, l.tls)
	}
	if l.tls {
		return gw.ServeTLS(ctx, l.Listener)
	}
	return gw.Serve(ctx, l.Listener)
}

// listenSpec is what a process listens on for clients: the client URLs
// (RPCs, and the HTTP endpoints unless HTTP URLs are given), the HTTP-only
// URLs, the metrics URLs, their TLS and socket options.
type listenSpec struct {
	Client, HTTP, Metrics []url.URL
	TLS                   config.TLSInfo
	Socket                config.SocketOptions
}

func serverListenSpec(cfg config.Server) listenSpec {
	return listenSpec{Client: cfg.ListenClientURLs, HTTP: cfg.ListenClientHTTPURLs, Metrics: cfg.ListenMetricsURLs, TLS: cfg.ClientTLS, Socket: cfg.Socket}
}

func splitListenSpec(cfg config.Split) listenSpec {
	return listenSpec{Client: cfg.ListenClientURLs, Metrics: cfg.ListenMetricsURLs, TLS: cfg.ClientTLS}
}

// listenClients binds every URL of s (listenAll) and builds the TLS
// configuration of the https:// ones (nil without any).
func listenClients(s listenSpec) ([]clientListener, *tls.Config, error) {
	all := slices.Concat(s.Client, s.HTTP, s.Metrics)
	tlsCfg, err := s.TLS.ServerConfig(all)
	if err != nil {
		return nil, nil, fmt.Errorf("client TLS: %w", err)
	}
	lns, err := listenAll(all, s.Socket)
	if err != nil {
		return nil, nil, err
	}
	out := make([]clientListener, len(lns))
	for i, ln := range lns {
		out[i] = clientListener{Listener: ln, tls: config.IsTLS(all[i]),
			httpOnly: i >= len(s.Client) && i < len(s.Client)+len(s.HTTP), metrics: i >= len(s.Client)+len(s.HTTP)}
	}
	return out, tlsCfg, nil
}

func closeClients(lns []clientListener) {
	for _, ln := range lns {
		_ = ln.Close()
	}
}

// listenAll binds every URL before anything starts, so a taken port fails
// the start instead of leaving a half-serving process.
func listenAll(urls []url.URL, opts config.SocketOptions) ([]net.Listener, error) {
	lc := listenConfig(opts)
	var lns []net.Listener
	for _, u := range urls {
		network, addr := "tcp", u.Host
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			network, addr = "unix", u.Host+u.Path
		}
		ln, err := lc.Listen(context.Background(), network, addr)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("listening on %s: %w", u.String(), err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		_ = ln.Close()
	}
}

func urlStrings(urls []url.URL) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = u.String()
	}
	return out
}

func joinURLs(urls []url.URL) string { return strings.Join(urlStrings(urls), ",") }

// watchNode ends the process when its consensus member stops on its own: a
// raft loop that failed (an error), or a member removed from the cluster
// (endOfRun turns that into a clean exit, as etcd's).
func watchNode(ctx context.Context, node *consensus.Node) error {
	select {
	case <-ctx.Done():
		return nil
	case <-node.Done():
		if err := node.Err(); err != nil {
			return fmt.Errorf("consensus member stopped: %w", err)
		}
		return errors.New("consensus member stopped")
	}
}

// runCompactor compacts node's history as --auto-compaction-* ask (nothing
// when the retention is 0, etcd's default).
func runCompactor(ctx context.Context, cfg compactor.Config, node *consensus.Node, log *slog.Logger) error {
	cfg.Logger = log.With("component", "compactor")
	return compactor.Run(ctx, cfg, compactorBackend{node})
}

// compactorBackend is a member as the compactor sees it.
type compactorBackend struct{ *consensus.Node }

func (b compactorBackend) Rev() int64     { return b.Store().Rev() }
func (b compactorBackend) IsLeader() bool { return b.Leader() != 0 && b.Leader() == b.MemberID() }
