package config

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/internal/tracing"
)

// Flags of the split topology's subcommands (concord consensus, watchfanout,
// leasesvc, gateway).
const (
	fNATSListenAddr           = "nats-listen-addr"
	fNATSClusterAddr          = "nats-cluster-listen-addr"
	fNATSRoutes               = "nats-routes"
	fNATSURL                  = "nats-url"
	fConsensusEndpoints       = "consensus-endpoints"
	fWatchfanoutEndpoints     = "watchfanout-endpoints"
	fLeasesvcEndpoints        = "leasesvc-endpoints"
	fInternalSecretFile       = "internal-secret-file"
	fInternalSecretAcceptFile = "internal-secret-accept-file"
)

// DefaultNATSListenAddr is where `concord consensus` serves its embedded NATS
// server by default (NATS's own default port, on loopback).
const DefaultNATSListenAddr = "127.0.0.1:4222"

// Consensus is the configuration of `concord consensus`: a consensus member
// with its embedded NATS server listening on the network.
type Consensus struct {
	Server
	// NATSListenAddr is the host:port of the embedded NATS server's client
	// listener, which watch fan-outs connect to.
	NATSListenAddr string
	// NATSClusterListenAddr is the host:port of the embedded NATS server's
	// route listener; set, the members' NATS servers form one cluster
	// (through NATSRoutes), so a fan-out connected to any of them receives
	// every revision, and only the raft leader publishes. "" keeps the
	// server alone, and every member publishes to its own.
	NATSClusterListenAddr string
	// NATSRoutes are the route URLs (nats://host:port) of the other
	// members' NATS servers; the same list, this member's own included, may
	// be given to every member.
	NATSRoutes []string
	// NATSTLS is the TLS of the NATS client listener and routes.
	NATSTLS NATSTLS
	// InternalSecretFile holds the secret shared with the split topology's
	// other processes (ReadInternalSecret); "": none.
	InternalSecretFile string
	// InternalSecretAcceptFile holds one more secret it accepts, never
	// presents (ReadAcceptedInternalSecret); "": none.
	InternalSecretAcceptFile string
}

// ConsensusFlags declares the flags of `concord consensus`: the server flags
// and the event bus's (--nats-*).
func ConsensusFlags(fs *pflag.FlagSet) {
	ServerFlags(fs)
	fs.String(fNATSListenAddr, DefaultNATSListenAddr, "host:port of the embedded NATS server's client listener (watch fan-outs connect here)")
	fs.String(fNATSClusterAddr, "", "host:port of the embedded NATS server's route listener; with several members, set it and --nats-routes so their NATS servers form one cluster (only the raft leader then publishes)")
	fs.String(fNATSRoutes, "", "comma-separated route URLs (nats://host:port) of the members' NATS servers (--nats-cluster-listen-addr); the same list, this member's own included, may be given to every member")
	natsTLSFlags(fs)
	internalSecretFlag(fs)
	internalSecretAcceptFlag(fs)
}

// LoadConsensus reads the flags declared by ConsensusFlags.
func LoadConsensus(fs *pflag.FlagSet) (Consensus, error) {
	s, err := LoadServer(fs)
	if err != nil {
		return Consensus{}, err
	}
	v, err := newViper(fs)
	if err != nil {
		return Consensus{}, err
	}
	c := Consensus{Server: s, NATSListenAddr: v.GetString(fNATSListenAddr), NATSClusterListenAddr: v.GetString(fNATSClusterAddr),
		NATSTLS: loadNATSTLS(v), InternalSecretFile: v.GetString(fInternalSecretFile),
		InternalSecretAcceptFile: v.GetString(fInternalSecretAcceptFile)}
	for _, r := range strings.Split(v.GetString(fNATSRoutes), ",") {
		if r = strings.TrimSpace(r); r != "" {
			c.NATSRoutes = append(c.NATSRoutes, r)
		}
	}
	return c, c.Validate()
}

// Validate reports the first NATS setting that cannot work.
func (c Consensus) Validate() error {
	switch {
	case c.NATSListenAddr == "":
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fNATSListenAddr)
	case len(c.NATSRoutes) > 0 && c.NATSClusterListenAddr == "":
		return fmt.Errorf("%w: --%s needs --%s", ErrInvalid, fNATSRoutes, fNATSClusterAddr)
	}
	if c.NATSClusterListenAddr != "" {
		if _, _, err := net.SplitHostPort(c.NATSClusterListenAddr); err != nil {
			return fmt.Errorf("%w: --%s: %v", ErrInvalid, fNATSClusterAddr, err)
		}
	}
	for _, r := range c.NATSRoutes {
		if u, err := url.Parse(r); err != nil || u.Scheme != "nats" || u.Host == "" {
			return fmt.Errorf("%w: --%s: %q is not a URL like nats://host:port", ErrInvalid, fNATSRoutes, r)
		}
	}
	if err := validateInternalSecretFiles(c.InternalSecretFile, c.InternalSecretAcceptFile); err != nil {
		return err
	}
	return c.NATSTLS.validate(true, c.NATSClusterListenAddr != "")
}

// Role names a split-topology process that is not a consensus member.
type Role string

// The roles of `concord watchfanout`, `concord leasesvc` and `concord gateway`.
const (
	RoleWatchfanout Role = "watchfanout"
	RoleLeasesvc    Role = "leasesvc"
	RoleGateway     Role = "gateway"
)

// Split is the configuration of a watch fan-out, lease service or gateway
// process of the split topology.
type Split struct {
	Role Role
	// Name identifies the process (the lease authority holder for leasesvc;
	// it must be unique among lease services).
	Name             string
	ListenClientURLs []url.URL
	// ListenMetricsURLs is Server.ListenMetricsURLs.
	ListenMetricsURLs []url.URL
	// ConsensusEndpoints are the consensus members' client URLs
	// (comma-separated). One reachable member is enough: the others are
	// learned from it, calls follow the leader and fail over
	// (remote.Consensus).
	ConsensusEndpoints string
	// NATSURL is the event bus (watchfanout only): comma-separated NATS
	// URLs, the members' --nats-listen-addr; the client moves to another
	// when its server goes away (with clustered members, any one serves).
	NATSURL string
	// NATSTLS is how a watch fan-out reaches NATSURL over TLS.
	NATSTLS NATSTLS
	// WatchfanoutEndpoints and LeasesvcEndpoints are where a gateway
	// forwards watch streams and lease calls: one at a time, moving to the
	// next when one answers Unavailable.
	WatchfanoutEndpoints string
	LeasesvcEndpoints    string

	MaxRequestBytes             int
	MaxTxnOps                   int
	WatchProgressNotifyInterval time.Duration
	LogLevel                    slog.Level
	EnablePprof                 bool
	// Tracing is Server.Tracing (--enable-distributed-tracing,
	// --distributed-tracing-*).
	Tracing tracing.Config
	// LeanHTTP2 is Server.LeanHTTP2 (--lean-http2).
	LeanHTTP2 bool
	// EnableGRPCGateway is Server.EnableGRPCGateway (--enable-grpc-gateway).
	EnableGRPCGateway bool
	// EnableConsole is Server.EnableConsole (--enable-console; gateway
	// only).
	EnableConsole bool
	// CORS and HostWhitelist are Server.CORS and Server.HostWhitelist
	// (--cors, --host-whitelist; gateway only).
	CORS, HostWhitelist []string
	// GRPCKeepAlive is Server.GRPCKeepAlive (--grpc-keepalive-*; gateway
	// only: the others serve concord's own clients).
	GRPCKeepAlive GRPCKeepAlive

	// ClientTLS is Server.ClientTLS: the TLS of the https:// client URLs.
	ClientTLS TLSInfo
	// EndpointTLS is how this process dials the https:// endpoints of the
	// others.
	EndpointTLS EndpointTLS
	// InternalSecretFile holds the secret shared with the consensus
	// members (ReadInternalSecret), presented on every call to them; "":
	// none.
	InternalSecretFile string
	// InternalSecretAcceptFile holds one more secret the watch fan-outs
	// and lease services accept, never present; "": none.
	InternalSecretAcceptFile string
}

// SplitFlags declares the flags of the subcommand for role.
func SplitFlags(fs *pflag.FlagSet, role Role) {
	fs.String(fName, string(role), "name of this process (for leasesvc: the lease authority holder, unique per instance)")
	fs.String(fListenClientURLs, "http://127.0.0.1:2379", "comma-separated URLs to listen on for client traffic")
	monitoringFlags(fs)
	fs.String(fConsensusEndpoints, "http://127.0.0.1:2379", "comma-separated client URLs of the consensus members")
	switch role {
	case RoleWatchfanout:
		fs.String(fNATSURL, "nats://"+DefaultNATSListenAddr, "comma-separated NATS URLs of the event bus (the consensus members' --nats-listen-addr)")
		fs.Duration(fWatchProgressNotify, DefaultWatchProgressNotifyInterval, "duration of periodic watch progress notifications (at least 100ms)")
		natsTLSFlags(fs)
	case RoleGateway:
		fs.String(fWatchfanoutEndpoints, "", "comma-separated client URLs of the watch fan-outs")
		fs.String(fLeasesvcEndpoints, "", "comma-separated client URLs of the lease services")
		fs.Bool(fEnablePprof, false, "enable runtime profiling data via HTTP server; address is at client URL + \"/debug/pprof/\"")
		fs.Bool(fEnableConsole, true, enableConsoleUsage)
		httpAccessFlags(fs)
		keepAliveFlags(fs)
	}
	fs.Int(fMaxRequestBytes, 1572864, "maximum client request size in bytes the server will accept")
	fs.Int(fMaxTxnOps, 128, "maximum number of operations permitted in a transaction")
	fs.Bool(fLeanHTTP2, true, leanHTTP2Usage)
	fs.Bool(fEnableGRPCGateway, true, enableGRPCGatewayUsage)
	fs.String(fLogLevel, "info", "log level: debug, info, warn or error")
	fs.String(fConfigFile, "", "path to a YAML configuration file whose keys are the flag names")
	clientTLSFlags(fs)
	endpointTLSFlags(fs)
	internalSecretFlag(fs)
	if role != RoleGateway {
		// Gateways present the secret and check none.
		internalSecretAcceptFlag(fs)
	}
}

// LoadSplit reads the flags declared by SplitFlags(fs, role).
func LoadSplit(fs *pflag.FlagSet, role Role) (Split, error) {
	v, err := newViper(fs)
	if err != nil {
		return Split{}, err
	}
	c := Split{
		Role:                     role,
		Name:                     v.GetString(fName),
		ConsensusEndpoints:       v.GetString(fConsensusEndpoints),
		NATSURL:                  v.GetString(fNATSURL),
		WatchfanoutEndpoints:     v.GetString(fWatchfanoutEndpoints),
		LeasesvcEndpoints:        v.GetString(fLeasesvcEndpoints),
		MaxRequestBytes:          v.GetInt(fMaxRequestBytes),
		MaxTxnOps:                v.GetInt(fMaxTxnOps),
		EnablePprof:              v.GetBool(fEnablePprof),
		LeanHTTP2:                v.GetBool(fLeanHTTP2),
		EnableGRPCGateway:        v.GetBool(fEnableGRPCGateway),
		EnableConsole:            v.GetBool(fEnableConsole),
		EndpointTLS:              loadEndpointTLS(v),
		InternalSecretFile:       v.GetString(fInternalSecretFile),
		InternalSecretAcceptFile: v.GetString(fInternalSecretAcceptFile),
	}
	if role == RoleWatchfanout {
		c.NATSTLS = loadNATSTLS(v)
	}
	if role == RoleGateway {
		if c.CORS, c.HostWhitelist, err = loadHTTPAccess(v); err != nil {
			return Split{}, err
		}
		c.GRPCKeepAlive = loadGRPCKeepAlive(v)
	}
	if c.ClientTLS, err = loadTLS(v, false); err != nil {
		return Split{}, err
	}
	if c.ListenClientURLs, err = parseURLs(fListenClientURLs, v.GetString(fListenClientURLs)); err != nil {
		return Split{}, err
	}
	if c.ListenMetricsURLs, err = parseURLs(fListenMetricsURLs, v.GetString(fListenMetricsURLs)); err != nil {
		return Split{}, err
	}
	if _, err := parseFeatureGates(v.GetString(fFeatureGates)); err != nil {
		return Split{}, err
	}
	if c.Tracing, err = loadTracing(v); err != nil {
		return Split{}, err
	}
	c.WatchProgressNotifyInterval = v.GetDuration(fWatchProgressNotify)
	switch {
	case c.WatchProgressNotifyInterval <= 0:
		c.WatchProgressNotifyInterval = DefaultWatchProgressNotifyInterval
	case c.WatchProgressNotifyInterval < MinWatchProgressNotifyInterval:
		c.WatchProgressNotifyInterval = MinWatchProgressNotifyInterval
	}
	if err := c.LogLevel.UnmarshalText([]byte(v.GetString(fLogLevel))); err != nil {
		return Split{}, fmt.Errorf("%w: --%s: %v", ErrInvalid, fLogLevel, err)
	}
	return c, c.Validate()
}

// Validate reports the first setting that cannot work for c.Role.
func (c Split) Validate() error {
	empty := func(s string) bool { return strings.TrimSpace(s) == "" }
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fName)
	case len(c.ListenClientURLs) == 0:
		return fmt.Errorf("%w: --%s must name at least one URL", ErrInvalid, fListenClientURLs)
	case empty(c.ConsensusEndpoints):
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fConsensusEndpoints)
	case c.Role == RoleWatchfanout && empty(c.NATSURL):
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fNATSURL)
	case c.Role == RoleGateway && empty(c.WatchfanoutEndpoints):
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fWatchfanoutEndpoints)
	case c.Role == RoleGateway && empty(c.LeasesvcEndpoints):
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fLeasesvcEndpoints)
	case c.MaxRequestBytes <= 0 || c.MaxTxnOps <= 0:
		return fmt.Errorf("%w: --%s and --%s must be positive", ErrInvalid, fMaxRequestBytes, fMaxTxnOps)
	}
	if err := c.EndpointTLS.validate(); err != nil {
		return err
	}
	if err := validateInternalSecretFiles(c.InternalSecretFile, c.InternalSecretAcceptFile); err != nil {
		return err
	}
	if err := c.NATSTLS.validate(false, false); err != nil {
		return err
	}
	return c.ClientTLS.validate(append(slices.Clone(c.ListenClientURLs), c.ListenMetricsURLs...))
}
