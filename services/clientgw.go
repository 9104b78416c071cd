package services

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"

	"go.etcd.io/etcd/api/v3/version"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/recipes"
	"github.com/concord-kv/concord/internal/metrics"
	"github.com/concord-kv/concord/services/config"
)

// clientGateway is the gateway clients talk to: every etcd service, with
// locks and elections (etcd's v3lock and v3election) layered on the same KV,
// lease and watch paths any client uses. The all-in-one process and the split
// gateway build it the same way; only the backends differ (in process, or
// remote clients).
type clientGateway struct {
	*gateway.Gateway
	recipes *recipes.Service
}

func newClientGateway(gcfg gateway.Config, enablePprof bool, b gateway.Backend, w gateway.Watcher, l gateway.Lease, log *slog.Logger, extra ...gateway.Option) (*clientGateway, error) {
	rs, err := recipes.New(recipes.Config{
		MaxRequestBytes: gcfg.MaxRequestBytes,
		Logger:          log.With("component", "recipes"),
	}, b, l, w)
	if err != nil {
		return nil, fmt.Errorf("starting the lock and election services: %w", err)
	}
	opts := []gateway.Option{
		gateway.WithWatch(gateway.NewWatchService(w)), gateway.WithBrowserWatch(w), gateway.WithLease(l),
		gateway.WithLock(rs), gateway.WithElection(rs),
	}
	if enablePprof {
		opts = append(opts, pprofHandlers()...)
	}
	gw, err := gateway.New(gcfg, b, append(opts, extra...)...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("starting gateway: %w", err), rs.Close())
	}
	return &clientGateway{Gateway: gw, recipes: rs}, nil
}

// Close stops serving clients first, then the lock and election calls the
// gateway no longer routes; it is idempotent as both parts are.
func (c *clientGateway) Close() error {
	return errors.Join(c.Gateway.Close(), c.recipes.Close())
}

// gatewayConfig is the gateway configuration every role derives from its
// request limits.
func gatewayConfig(maxRequestBytes, maxTxnOps int, leanHTTP2, grpcGateway bool, log *slog.Logger) gateway.Config {
	return gateway.Config{
		MaxRequestBytes: maxRequestBytes,
		MaxTxnOps:       maxTxnOps,
		NetHTTP2:        !leanHTTP2,
		NoJSONGateway:   !grpcGateway,
		Logger:          log.With("component", "gateway"),
	}
}

// metricsOptions serves /metrics for the process's components (etcd's
// metric names), counts the gateway's RPCs in it, and serves etcd's
// /debug/vars.
func metricsOptions(src metrics.Sources) ([]gateway.Option, error) {
	src.Version = version.Version
	reg, err := metrics.New(src)
	if err != nil {
		return nil, err
	}
	return []gateway.Option{gateway.WithHTTPHandler("/metrics", reg.Handler()), gateway.WithCallObserver(reg.Calls()),
		gateway.WithHTTPHandler("/debug/vars", metrics.DebugVars(src))}, nil
}

// withServerHTTP is c with a server's etcd HTTP settings: --cors,
// --host-whitelist, --listen-client-http-urls (the client listeners then
// serve RPCs only), --max-concurrent-streams, --grpc-keepalive-* and
// --warning-unary-request-duration.
func withServerHTTP(c gateway.Config, s config.Server) gateway.Config {
	c.CORS, c.HostWhitelist = s.CORS, s.HostWhitelist
	c.SeparateHTTP = len(s.ListenClientHTTPURLs) > 0
	c.MaxConcurrentStreams = s.MaxConcurrentStreams
	c.KeepAlive = keepAlive(s.GRPCKeepAlive)
	c.WarningUnaryRequestDuration = s.WarningUnaryRequestDuration
	c.StopServingOnDefrag = alphaGateOn(s.FeatureGates, "StopGRPCServiceOnDefrag")
	return c
}

// alphaGateOn resolves one of etcd's alpha feature gates as etcd does: the
// gate's own setting, else AllAlpha, else off (etcd's default for them).
func alphaGateOn(gates map[string]bool, name string) bool {
	if v, ok := gates[name]; ok {
		return v
	}
	return gates["AllAlpha"]
}

// keepAlive is etcd's --grpc-keepalive-* as the gateway's KeepAlive, with
// etcd's PermitWithoutStream (false).
func keepAlive(k config.GRPCKeepAlive) gateway.KeepAlive {
	return gateway.KeepAlive{Interval: k.Interval, Timeout: k.Timeout, MinTime: k.MinTime}
}

// withInternalKeepAlive is c for the watch fan-out's and lease service's
// servers, whose clients are concord's gateways: their HTTP/2 transport
// pings every connection idle for 5 s (gateway/remote), streams or not,
// which etcd's policy (PermitWithoutStream false) would answer with GOAWAY
// too_many_pings after 20 s of idleness. Pings 5 s apart are allowed.
func withInternalKeepAlive(c gateway.Config) gateway.Config {
	c.KeepAlive = gateway.KeepAlive{PermitWithoutStream: true}
	return c
}

// withTLS is c serving TLS listeners with t.
func withTLS(c gateway.Config, t *tls.Config) gateway.Config {
	c.TLS = t
	return c
}
