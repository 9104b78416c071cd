package services

// The split topology (issue 5): each service in its own process, talking
// over the network through the same component code as the all-in-one. Only
// the adapters differ: consensus serves concord.v1.InternalService
// (consensus/internalapi) next to etcd's services, and the other processes
// reach it, each other and the event bus through gateway/remote and
// eventbus.ConnectNATS.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/sync/errgroup"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/consensus/internalapi"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/internal/metrics"
	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/services/config"
	"github.com/concord-kv/concord/watchfanout"
)

// RunConsensus runs one consensus member: raft and storage, an embedded NATS
// server listening on cfg.NATSListenAddr on which committed revisions are
// published, and, on the client URLs, etcd's KV, Lease (grants, revokes and
// listings only), Maintenance and Cluster services plus
// concord.v1.InternalService for the other processes.
func RunConsensus(ctx context.Context, cfg config.Consensus, log *slog.Logger) error {
	listeners, tlsCfg, err := listenClients(serverListenSpec(cfg.Server))
	if err != nil {
		return err
	}
	defer closeClients(listeners)
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	bus, err := eventbus.StartNATS(ctx, eventbus.NATSConfig{
		ListenAddr:  cfg.NATSListenAddr,
		ServerName:  cfg.Name,
		ClusterAddr: cfg.NATSClusterListenAddr,
		Routes:      cfg.NATSRoutes,
		TLS:         natsTLS(cfg.NATSTLS),
		Logger:      log.With("component", "nats"),
	})
	if err != nil {
		return fmt.Errorf("starting the event bus: %w", err)
	}
	defer bus.Close()

	secrets, err := loadSecretFiles(cfg.InternalSecretFile, cfg.InternalSecretAcceptFile, log)
	if err != nil {
		return err
	}
	ccfg := consensusConfig(cfg.Server, log)
	// With auth enabled, the watch fan-outs and lease services check
	// permissions by asking consensus for their clients' forwarded tokens,
	// and the internal API serves history and lease expiries to root-role
	// callers only (internalapi.Handler), which those processes are by the
	// common name of their client certificate or by the internal secret
	// they share with consensus. With neither they could not be: auth
	// enable is refused.
	authPossible := splitAuthPossible(cfg.Server, secrets.configured())
	ccfg.RefuseAuthEnable = !authPossible
	ccfg.Events = bus
	ccfg.Tracing = tp
	// Clustered NATS servers are one bus: the leader alone publishes to it.
	ccfg.EventsFromLeaderOnly = cfg.NATSClusterListenAddr != ""
	// Raft between the members on the peer URLs (peer.go), served by a
	// single member too so that `member add` can grow it.
	node, checks, stopMember, err := startMember(ctx, cfg.Server, ccfg, log, nil)
	if err != nil {
		return err
	}
	defer stopMember()
	if node.AuthState().Enabled() && !authPossible {
		// The watch and lease processes could not call the internal API.
		return errors.New("concord consensus: auth is enabled in this data dir; the split topology needs verified client certificates for it (--client-cert-auth, or --trusted-ca-file, on https:// client URLs) or an internal secret (--internal-secret-file, the same file on every process): its watch, lease and gateway processes call consensus as the root-role user their certificate names, or with the secret")
	}

	path, h := internalapi.Handler(node)
	opts, err := metricsOptions(metrics.Sources{Consensus: node})
	if err != nil {
		return err
	}
	opts = append(opts, gateway.WithHTTPHandler(path, h), gateway.WithTracing(tp))
	if cfg.EnablePprof {
		opts = append(opts, pprofHandlers()...)
	}
	gcfg := withServerHTTP(withTLS(gatewayConfig(cfg.MaxRequestBytes, cfg.MaxTxnOps, cfg.LeanHTTP2, cfg.EnableGRPCGateway, log), tlsCfg), cfg.Server)
	gcfg.InternalSecrets = secrets.secrets
	gw, err := gateway.New(gcfg, node, opts...)
	if err != nil {
		return fmt.Errorf("starting the member's API: %w", err)
	}
	defer gw.Close()
	log.Info("event bus listening", "nats-url", bus.ClientURL(), "nats-cluster-url", bus.ClusterURL())
	return serveSplit(ctx, gw, listeners, secrets, log, func(ctx context.Context, g *errgroup.Group) {
		g.Go(func() error { return watchNode(ctx, node) })
		g.Go(func() error { return runCompactor(ctx, cfg.AutoCompaction, node, log) })
		checks.run(ctx, g, node)
	})
}

// RunWatchfanout runs a watch fan-out fed by the event bus (NATS client),
// repairing from the history of a consensus member, serving etcd's Watch
// service (and the browser watch) on its client URLs.
func RunWatchfanout(ctx context.Context, cfg config.Split, log *slog.Logger) error {
	listeners, tlsCfg, err := listenClients(splitListenSpec(cfg))
	if err != nil {
		return err
	}
	defer closeClients(listeners)
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	// Presented to consensus, and checked on the claims a gateway
	// forwards (gateway.ForwardedUserHeader).
	secrets, err := loadSecretFiles(cfg.InternalSecretFile, cfg.InternalSecretAcceptFile, log)
	if err != nil {
		return err
	}
	cons, hdr, err := dialConsensus(ctx, cfg, secrets.secrets, tp, log)
	if err != nil {
		return err
	}
	defer cons.Close()

	busOpts := []eventbus.ClientOption{eventbus.WithLogger(log.With("component", "nats")), eventbus.WithName(cfg.Name)}
	if !cfg.NATSTLS.IsZero() {
		busOpts = append(busOpts, eventbus.WithTLS(natsTLS(cfg.NATSTLS)))
	}
	bus, err := eventbus.ConnectNATS(ctx, cfg.NATSURL, busOpts...)
	if err != nil {
		return fmt.Errorf("connecting to the event bus %s: %w", cfg.NATSURL, err)
	}
	defer bus.Close()

	fanout, err := watchfanout.New(watchfanout.Config{
		Logger:                 log.With("component", "watchfanout"),
		ClusterID:              hdr.GetClusterId(),
		MemberID:               hdr.GetMemberId(),
		RaftTerm:               func() uint64 { return cons.Header().GetRaftTerm() },
		ProgressNotifyInterval: cfg.WatchProgressNotifyInterval,
		MaxResponseBytes:       cfg.MaxRequestBytes + 512*1024,
	}, bus, cons)
	if err != nil {
		return fmt.Errorf("starting the watch fan-out: %w", err)
	}
	defer fanout.Close()

	opts, err := metricsOptions(metrics.Sources{Fanout: fanout})
	if err != nil {
		return err
	}
	gcfg := withInternalKeepAlive(withTLS(gatewayConfig(cfg.MaxRequestBytes, cfg.MaxTxnOps, cfg.LeanHTTP2, cfg.EnableGRPCGateway, log), tlsCfg))
	gcfg.InternalSecrets = secrets.secrets
	gw, err := gateway.New(gcfg, authorizing(cons),
		append(opts, gateway.WithWatch(gateway.NewWatchService(fanout)), gateway.WithBrowserWatch(fanout), gateway.WithTracing(tp))...)
	if err != nil {
		return fmt.Errorf("starting the watch API: %w", err)
	}
	defer gw.Close()
	return serveSplit(ctx, gw, listeners, secrets, log, nil)
}

// RunLeasesvc runs a lease service whose backend is a consensus member over
// the network, serving etcd's Lease service and
// concord.v1.LeaseKeepAliveService on its client URLs. Several may run: the
// replicated lease authority lets one decide expiries (DESIGN.md invariant
// 4), the others answer "no leader" until they take over.
func RunLeasesvc(ctx context.Context, cfg config.Split, log *slog.Logger) error {
	listeners, tlsCfg, err := listenClients(splitListenSpec(cfg))
	if err != nil {
		return err
	}
	defer closeClients(listeners)
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	// Presented to consensus, and checked on the claims a gateway
	// forwards (gateway.ForwardedUserHeader).
	secrets, err := loadSecretFiles(cfg.InternalSecretFile, cfg.InternalSecretAcceptFile, log)
	if err != nil {
		return err
	}
	cons, _, err := dialConsensus(ctx, cfg, secrets.secrets, tp, log)
	if err != nil {
		return err
	}
	defer cons.Close()

	leases, err := leasesvc.New(leasesvc.Config{Holder: cfg.Name, Logger: log.With("component", "leasesvc"), Tracing: tp}, cons)
	if err != nil {
		return fmt.Errorf("starting the lease service: %w", err)
	}
	defer leases.Close()

	path, h := remote.KeepAliveHandler(remote.KeepAliveServer{L: leases, Authz: remote.NewAuthorizer(cons, nil)})
	opts, err := metricsOptions(metrics.Sources{})
	if err != nil {
		return err
	}
	gcfg := withInternalKeepAlive(withTLS(gatewayConfig(cfg.MaxRequestBytes, cfg.MaxTxnOps, cfg.LeanHTTP2, cfg.EnableGRPCGateway, log), tlsCfg))
	gcfg.InternalSecrets = secrets.secrets
	gw, err := gateway.New(gcfg, authorizing(cons), append(opts, gateway.WithLease(leases),
		gateway.WithHTTPHandler(path, h), gateway.WithTracing(tp),
		gateway.WithReadyCheck("lease_authority", func(context.Context) error { return leases.Ready() }))...)
	if err != nil {
		return fmt.Errorf("starting the lease API: %w", err)
	}
	defer gw.Close()
	// Serving starts at once, standby or not: a standby is a working
	// replica (grants, revokes and listings go to consensus; keep-alives
	// answer "no leader", which tells gateways to use the active one), and
	// /readyz's lease_authority check says which it is.
	return serveSplit(ctx, gw, listeners, secrets, log, func(ctx context.Context, g *errgroup.Group) {
		g.Go(func() error { return leases.Run(ctx) })
	})
}

// RunGateway runs a stateless gateway: KV, maintenance and cluster calls go
// to consensus, each watch stream to a watch fan-out, lease calls to a lease
// service; locks and elections run here on top of those, as in the
// all-in-one.
func RunGateway(ctx context.Context, cfg config.Split, log *slog.Logger) error {
	listeners, tlsCfg, err := listenClients(splitListenSpec(cfg))
	if err != nil {
		return err
	}
	defer closeClients(listeners)
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer stopTracing()

	dial, err := dialOptions(cfg, tp)
	if err != nil {
		return err
	}
	secrets, err := loadSecretFiles(cfg.InternalSecretFile, "", log)
	if err != nil {
		return err
	}
	consDial, err := consensusDialOptions(cfg, secrets.secrets, tp)
	if err != nil {
		return err
	}
	cons, err := remote.NewConsensus(cfg.ConsensusEndpoints, log.With("component", "remote-consensus"), consDial...)
	if err != nil {
		return fmt.Errorf("consensus endpoints: %w", err)
	}
	defer cons.Close()
	// The fan-outs and lease services check the secret where this gateway
	// forwards a client certificate's user for consensus to check.
	dial = append(dial, remote.WithClaimSecret(secrets.secrets))
	watcher, err := remote.NewWatcher(cfg.WatchfanoutEndpoints, dial...)
	if err != nil {
		return fmt.Errorf("watchfanout endpoints: %w", err)
	}
	defer watcher.Close()
	lease, err := remote.NewLease(cfg.LeasesvcEndpoints, cons.Header, dial...)
	if err != nil {
		return fmt.Errorf("leasesvc endpoints: %w", err)
	}
	defer lease.Close()

	mopts, err := metricsOptions(metrics.Sources{})
	if err != nil {
		return err
	}
	mopts = append(mopts, consoleOptions(cfg.EnableConsole)...)
	mopts = append(mopts, gateway.WithTracing(tp))
	gcfg := withTLS(gatewayConfig(cfg.MaxRequestBytes, cfg.MaxTxnOps, cfg.LeanHTTP2, cfg.EnableGRPCGateway, log), tlsCfg)
	gcfg.CORS, gcfg.HostWhitelist = cfg.CORS, cfg.HostWhitelist
	gcfg.KeepAlive = keepAlive(cfg.GRPCKeepAlive)
	gw, err := newClientGateway(gcfg, cfg.EnablePprof, cons, watcher, lease, log, mopts...)
	if err != nil {
		return err
	}
	defer gw.Close()
	return serveSplit(ctx, gw.Gateway, listeners, secrets, log, nil)
}

// natsTLS is the event bus's TLS flags (--nats-*) as eventbus files: the
// same three mean the same on the server and on the client.
func natsTLS(t config.NATSTLS) eventbus.TLSFiles {
	return eventbus.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.TrustedCAFile}
}

// dialConsensus connects to consensus and waits until it answers, so that
// components that need its identity (cluster and member IDs) get it.
func dialConsensus(ctx context.Context, cfg config.Split, secrets *gateway.InternalSecrets, tp *tracing.Provider, log *slog.Logger) (*remote.Consensus, *pb.ResponseHeader, error) {
	dial, err := consensusDialOptions(cfg, secrets, tp)
	if err != nil {
		return nil, nil, err
	}
	cons, err := remote.NewConsensus(cfg.ConsensusEndpoints, log.With("component", "remote-consensus"), dial...)
	if err != nil {
		return nil, nil, fmt.Errorf("consensus endpoints: %w", err)
	}
	log.Info("waiting for consensus", "endpoints", cfg.ConsensusEndpoints)
	hdr, err := cons.WaitReady(ctx)
	if err != nil {
		cons.Close()
		return nil, nil, fmt.Errorf("waiting for consensus at %s: %w", cfg.ConsensusEndpoints, err)
	}
	return cons, hdr, nil
}

// dialOptions is how cfg's process reaches the https:// endpoints of the
// others (--cacert, --cert, --key, --insecure-skip-tls-verify), passing
// its requests' traces on to them when tp is on.
func dialOptions(cfg config.Split, tp *tracing.Provider) ([]remote.DialOption, error) {
	c, err := cfg.EndpointTLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("endpoint TLS: %w", err)
	}
	return []remote.DialOption{remote.WithTLS(c), remote.WithTracing(tp)}, nil
}

// consensusDialOptions is how cfg's process reaches the consensus
// members: dialOptions, and the internal secret (--internal-secret-file)
// presented on every call. The other processes check it only on calls
// that forward a client certificate's user (RunGateway: WithClaimSecret).
func consensusDialOptions(cfg config.Split, secrets *gateway.InternalSecrets, tp *tracing.Provider) ([]remote.DialOption, error) {
	dial, err := dialOptions(cfg, tp)
	if err != nil {
		return nil, err
	}
	return append(dial, remote.WithInternalSecret(secrets)), nil
}

// serveSplit serves gw on every listener, and reloads the internal secret
// files, until ctx ends or one fails; start, if set, adds the process's own
// goroutines to the group first.
func serveSplit(ctx context.Context, gw *gateway.Gateway, listeners []clientListener, secrets *secretFiles, log *slog.Logger,
	start func(context.Context, *errgroup.Group)) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return secrets.run(ctx, secretReloadInterval) })
	if start != nil {
		start(ctx, g)
	}
	serveListeners(ctx, g, listeners, gw, log)
	log.Info("concord is ready")
	return endOfRun(g.Wait(), log)
}

// authorizingConsensus is the backend of a process that serves watches or
// lease keep-alives itself (a watch fan-out, a lease service): consensus,
// plus the permission checks etcd makes on those (gateway.WatchAuthorizer,
// gateway.LeaseAuthorizer), asked of consensus for the token each client
// presented, directly or forwarded by a gateway, or the user its
// certificate names (a claim consensus checks the hops of). The client gateway's
// backend is plain consensus: it leaves these checks to the process it
// forwards the watch or keep-alive to, which makes them whoever calls it.
type authorizingConsensus struct {
	*remote.Consensus
	*remote.Authorizer
}

func authorizing(c *remote.Consensus) authorizingConsensus {
	return authorizingConsensus{Consensus: c, Authorizer: remote.NewAuthorizer(c, nil)}
}

// splitAuthPossible tells whether a consensus member can tell the split
// topology's other processes from clients once auth is enabled: by
// verified client certificates, through which they name the root-role user
// they call it as, or by the internal secret they share with it.
func splitAuthPossible(s config.Server, secret bool) bool {
	return s.ClientTLS.ClientCertAuth || s.ClientTLS.TrustedCAFile != "" || secret
}
