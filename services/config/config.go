// Package config turns flags, environment variables and an optional YAML file
// into the typed configuration of concord's components. It is the only package
// that touches viper: components receive plain Config structs.
//
// Names follow etcd where the meaning is the same (--data-dir, --listen-client-urls,
// ...), so scripts written for etcd start concord unchanged. Every flag can also
// be set through the environment, as CONCORD_DATA_DIR or etcd's ETCD_DATA_DIR
// (CONCORD_ wins), or through the YAML file named by --config-file, whose keys
// are the flag names (as in etcd's configuration file).
package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"golang.org/x/crypto/bcrypt"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus/compactor"
	"github.com/concord-kv/concord/internal/logging"
	"github.com/concord-kv/concord/internal/tracing"
)

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("config: invalid")

// Server is the configuration of a concord server process.
type Server struct {
	Name    string
	DataDir string
	// WALDir is etcd's --wal-dir: the store's write-ahead log ("": in
	// DataDir).
	WALDir string

	ListenClientURLs []url.URL
	// ListenClientHTTPURLs serve the HTTP endpoints (JSON gateway,
	// health, metrics) only; set, ListenClientURLs serve RPCs only
	// (etcd's --listen-client-http-urls).
	ListenClientHTTPURLs []url.URL
	// CORS and HostWhitelist are etcd's --cors and --host-whitelist for
	// the HTTP endpoints; nil allows every origin, or host.
	CORS, HostWhitelist []string
	// MaxConcurrentStreams is the HTTP/2 stream limit per client
	// connection (--max-concurrent-streams).
	MaxConcurrentStreams uint32
	// GRPCKeepAlive is --grpc-keepalive-*: the client connections' pings.
	GRPCKeepAlive GRPCKeepAlive
	// WarningUnaryRequestDuration and WarningApplyDuration are the
	// thresholds of etcd's slow request and slow apply warnings.
	WarningUnaryRequestDuration, WarningApplyDuration time.Duration
	// Socket are the options of the client and peer listeners.
	Socket SocketOptions
	// ListenMetricsURLs serve /metrics and the health endpoints only
	// (etcd's --listen-metrics-urls).
	ListenMetricsURLs []url.URL
	// FeatureGates are etcd's --feature-gates: validated against etcd's
	// gates and accepted, but concord's behaviour does not depend on them.
	FeatureGates             map[string]bool
	AdvertiseClientURLs      []url.URL
	ListenPeerURLs           []url.URL
	InitialAdvertisePeerURLs []url.URL
	InitialCluster           string
	// CorruptCheckTime is the period of etcd's corruption check (0: none).
	CorruptCheckTime time.Duration
	// CompactHashCheckTime is the period of etcd's compaction hash check,
	// which runs with the CompactHashCheck feature gate.
	CompactHashCheckTime time.Duration
	// Discovery, when enabled, gives a new member its initial cluster
	// (etcd's v3 discovery); InitialCluster is then this member alone.
	Discovery           Discovery
	InitialClusterState string
	InitialClusterToken string

	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	SnapshotCount     uint64
	// SnapshotCatchUpEntries are kept in the raft log below a truncation
	// for slow followers (--snapshot-catchup-entries).
	SnapshotCatchUpEntries uint64
	QuotaBackendBytes      int64
	// MaxLearners, PreVote, InitialElectionTickAdvance,
	// StrictReconfigCheck and UnsafeNoFsync are etcd's --max-learners,
	// --pre-vote, --initial-election-tick-advance, --strict-reconfig-check
	// and --unsafe-no-fsync (consensus.Config).
	MaxLearners                int
	PreVote                    bool
	InitialElectionTickAdvance bool
	StrictReconfigCheck        bool
	UnsafeNoFsync              bool
	// MemoryMlock is etcd's --memory-mlock: the member locks the process's
	// memory in RAM before it opens its store (internal/memlock).
	MemoryMlock     bool
	MaxRequestBytes int
	MaxTxnOps       int
	// ForceNewCluster is etcd's --force-new-cluster: a member restarting
	// on its data becomes the only member of its cluster
	// (consensus.Config.ForceNewCluster).
	ForceNewCluster bool
	// BcryptCost is the bcrypt cost of stored password hashes (etcd's
	// --bcrypt-cost, default 10).
	BcryptCost int
	// AuthTokenTTL is the lifetime of auth tokens (etcd's --auth-token-ttl,
	// seconds, default 300).
	AuthTokenTTL time.Duration
	// AuthToken is etcd's --auth-token: "simple" or
	// "jwt,sign-method=...,priv-key=...,pub-key=...,ttl=...".
	AuthToken string

	// WatchProgressNotifyInterval is the period of the progress
	// notifications of watches created with progress_notify (etcd's
	// --watch-progress-notify-interval): 10 minutes by default or when not
	// positive, and never below MinWatchProgressNotifyInterval.
	WatchProgressNotifyInterval time.Duration

	LogLevel slog.Level
	// Log is etcd's logging flags: level (LogLevel), format, outputs
	// and rotation.
	Log logging.Config

	// EnablePprof serves Go's runtime profiles under /debug/pprof/ on the
	// client URLs (etcd's --enable-pprof).
	EnablePprof bool
	// Tracing is etcd's --enable-distributed-tracing and
	// --distributed-tracing-*.
	Tracing tracing.Config

	// LeanHTTP2 serves gRPC (HTTP/2 prior knowledge) with the gateway's own
	// HTTP/2 server, gateway/h2server (--lean-http2, on by
	// default).
	LeanHTTP2 bool

	// EnableGRPCGateway serves etcd's JSON gateway (/v3/kv/range, ...) on
	// the client URLs (etcd's --enable-grpc-gateway, on by default).
	EnableGRPCGateway bool

	// EnableConsole serves the web console under /console/ on the client
	// URLs (--enable-console, on by default).
	EnableConsole bool

	// AutoCompaction is --auto-compaction-mode and
	// --auto-compaction-retention (off unless the retention is set).
	AutoCompaction compactor.Config

	// InertFlags describe the etcd flags given with a value other than
	// their default that have no effect in concord, for the log.
	InertFlags []string

	// ClientTLS is the TLS of the https:// client URLs.
	ClientTLS TLSInfo
	// PeerTLS is the TLS of the https:// peer URLs, and the certificate
	// presented to the https:// peers this member dials.
	PeerTLS TLSInfo
}

// Watch progress notification bounds, etcd's: a period that is not positive
// means the default, a shorter positive one is raised to the minimum.
const (
	DefaultWatchProgressNotifyInterval = 10 * time.Minute
	MinWatchProgressNotifyInterval     = 100 * time.Millisecond
)

// leanHTTP2Usage documents --lean-http2, on by default since it
// passed the gateway and e2e suites and cut server CPU per request by 19-41%
// (docs/benchmarks.md); =false is the way back to net/http's HTTP/2 server.
const leanHTTP2Usage = "serve gRPC clients (cleartext HTTP/2) with concord's own lean HTTP/2 server; =false serves them with Go's net/http HTTP/2 server"

const enableGRPCGatewayUsage = "enable etcd's JSON gateway (POST /v3/kv/range, /v3/watch, ...) on the client URLs"

const enableConsoleUsage = "serve the web console (Connect-Web from the browser) under /console/ on the client URLs"

// flag names, shared by the flag set, the environment and the YAML file.
const (
	fName                = "name"
	fDataDir             = "data-dir"
	fListenClientURLs    = "listen-client-urls"
	fAdvertiseClientURLs = "advertise-client-urls"
	fListenPeerURLs      = "listen-peer-urls"
	fAdvertisePeerURLs   = "initial-advertise-peer-urls"
	fInitialCluster      = "initial-cluster"
	fInitialClusterState = "initial-cluster-state"
	fInitialClusterToken = "initial-cluster-token"
	fHeartbeatInterval   = "heartbeat-interval"
	fElectionTimeout     = "election-timeout"
	fSnapshotCount       = "snapshot-count"
	fQuotaBackendBytes   = "quota-backend-bytes"
	fBcryptCost          = "bcrypt-cost"
	fAuthToken           = "auth-token"
	fAuthTokenTTL        = "auth-token-ttl"
	fMaxRequestBytes     = "max-request-bytes"
	fMaxTxnOps           = "max-txn-ops"
	fWatchProgressNotify = "watch-progress-notify-interval"
	fLogLevel            = "log-level"
	fEnablePprof         = "enable-pprof"
	fLeanHTTP2           = "lean-http2"
	fEnableGRPCGateway   = "enable-grpc-gateway"
	fEnableConsole       = "enable-console"
	fListenMetricsURLs   = "listen-metrics-urls"
	fMetrics             = "metrics"
	fFeatureGates        = "feature-gates"
	fAutoCompactionMode  = "auto-compaction-mode"
	fAutoCompactionRet   = "auto-compaction-retention"
	fConfigFile          = "config-file"
	fEnableTracing       = "enable-distributed-tracing"
	fTracingAddress      = "distributed-tracing-address"
	fTracingService      = "distributed-tracing-service-name"
	fTracingInstance     = "distributed-tracing-instance-id"
	fTracingRate         = "distributed-tracing-sampling-rate"
)

// ServerFlags declares the server flags on fs, with etcd's names and defaults
// (adapted to concord: data in ./default.concord, clients on 127.0.0.1:2379).
func ServerFlags(fs *pflag.FlagSet) {
	fs.String(fName, "default", "human-readable name for this member")
	fs.String(fDataDir, "", "path to the data directory (default \"${name}.concord\")")
	fs.String(fListenClientURLs, "http://127.0.0.1:2379", "comma-separated URLs to listen on for client traffic")
	monitoringFlags(fs)
	fs.String(fAdvertiseClientURLs, "", "comma-separated client URLs to advertise to the rest of the cluster (default: the listen client URLs)")
	fs.String(fListenPeerURLs, "http://127.0.0.1:2380", "comma-separated URLs to listen on for peer traffic")
	fs.String(fAdvertisePeerURLs, "", "comma-separated peer URLs to advertise to the rest of the cluster (default: the listen peer URLs)")
	fs.String(fInitialCluster, "", "initial cluster configuration for bootstrapping, name=peerURL,... (default: this member alone)")
	fs.String(fInitialClusterState, "new", "initial cluster state ('new' or 'existing')")
	fs.String(fInitialClusterToken, "etcd-cluster", "initial cluster token for the cluster during bootstrap")
	fs.Uint(fHeartbeatInterval, 100, "time (in milliseconds) of a heartbeat interval")
	fs.Uint(fElectionTimeout, 1000, "time (in milliseconds) for an election to timeout")
	fs.Uint64(fSnapshotCount, 10000, "number of committed transactions to trigger a snapshot and truncate the raft log")
	fs.Int64(fQuotaBackendBytes, 0, "raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB)")
	fs.Uint(fBcryptCost, uint(bcrypt.DefaultCost), "Specify bcrypt algorithm cost factor for auth password hashing.")
	fs.String(fAuthToken, "simple", "Specify auth token specific options: 'simple' (concord's signed tokens, verifiable by every member) or 'jwt,sign-method=...,priv-key=...,pub-key=...,ttl=...'")
	fs.Uint(fAuthTokenTTL, 300, "The lifetime in seconds of the auth token.")
	fs.Int(fMaxRequestBytes, 1572864, "maximum client request size in bytes the server will accept")
	fs.Int(fMaxTxnOps, 128, "maximum number of operations permitted in a transaction")
	fs.Duration(fWatchProgressNotify, DefaultWatchProgressNotifyInterval, "duration of periodic watch progress notifications (at least 100ms)")
	fs.String(fLogLevel, "info", "log level: debug, info, warn, error, panic or fatal")
	fs.Bool(fEnablePprof, false, "enable runtime profiling data via HTTP server; address is at client URL + \"/debug/pprof/\"")
	fs.Bool(fLeanHTTP2, true, leanHTTP2Usage)
	fs.Bool(fEnableGRPCGateway, true, enableGRPCGatewayUsage)
	fs.Bool(fEnableConsole, true, enableConsoleUsage)
	fs.String(fAutoCompactionMode, string(compactor.ModePeriodic), "interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.")
	fs.String(fAutoCompactionRet, "0", "auto compaction retention for mvcc key value store. 0 means disable auto compaction.")
	fs.String(fConfigFile, "", "path to a YAML configuration file whose keys are the flag names")
	clientTLSFlags(fs)
	peerTLSFlags(fs)
	etcdCompatFlags(fs)
}

// LoadServer reads the flags declared by ServerFlags (already parsed in fs),
// the environment and the configuration file, and validates the result.
func LoadServer(fs *pflag.FlagSet) (Server, error) {
	return loadServer(fs, net.DefaultResolver)
}

// loadServer is LoadServer with the resolver that --discovery-srv uses.
func loadServer(fs *pflag.FlagSet, resolver SRVResolver) (Server, error) {
	v, err := newViper(fs)
	if err != nil {
		return Server{}, err
	}
	var c Server
	c.Name = v.GetString(fName)
	c.DataDir = v.GetString(fDataDir)
	if c.DataDir == "" {
		c.DataDir = c.Name + ".concord"
	}
	c.WALDir = v.GetString(fWALDir)
	for _, u := range []struct {
		flag string
		dst  *[]url.URL
	}{
		{fListenClientURLs, &c.ListenClientURLs},
		{fListenClientHTTPURLs, &c.ListenClientHTTPURLs},
		{fListenMetricsURLs, &c.ListenMetricsURLs},
		{fAdvertiseClientURLs, &c.AdvertiseClientURLs},
		{fListenPeerURLs, &c.ListenPeerURLs},
		{fAdvertisePeerURLs, &c.InitialAdvertisePeerURLs},
	} {
		if *u.dst, err = parseURLs(u.flag, v.GetString(u.flag)); err != nil {
			return Server{}, err
		}
	}
	if len(c.AdvertiseClientURLs) == 0 {
		c.AdvertiseClientURLs = c.ListenClientURLs
	}
	if len(c.InitialAdvertisePeerURLs) == 0 {
		c.InitialAdvertisePeerURLs = c.ListenPeerURLs
	}
	c.InitialCluster = v.GetString(fInitialCluster)
	if c.Discovery, err = loadDiscovery(v); err != nil {
		return Server{}, err
	}
	srv, srvName := v.GetString(fDiscoverySRV), v.GetString(fDiscoverySRVName)
	bootstraps := 0
	for _, set := range []bool{c.InitialCluster != "", srv != "", c.Discovery.Enabled()} {
		if set {
			bootstraps++
		}
	}
	switch {
	case bootstraps > 1:
		return Server{}, fmt.Errorf("%w: %w", ErrInvalid, errConflictBootstrap)
	case srv != "":
		ctx, cancel := context.WithTimeout(context.Background(), discoveryTimeout)
		c.InitialCluster, err = initialClusterFromSRV(ctx, resolver, srv, srvName, c.Name, c.InitialAdvertisePeerURLs)
		cancel()
		if err != nil {
			return Server{}, err
		}
	case srvName != "":
		return Server{}, fmt.Errorf("%w: --%s is only used with --%s", ErrInvalid, fDiscoverySRVName, fDiscoverySRV)
	}
	if c.InitialCluster == "" {
		parts := make([]string, len(c.InitialAdvertisePeerURLs))
		for i, u := range c.InitialAdvertisePeerURLs {
			parts[i] = c.Name + "=" + u.String()
		}
		c.InitialCluster = strings.Join(parts, ",")
	}
	c.InitialClusterState = v.GetString(fInitialClusterState)
	c.InitialClusterToken = v.GetString(fInitialClusterToken)
	c.HeartbeatInterval = time.Duration(v.GetUint(fHeartbeatInterval)) * time.Millisecond
	c.ElectionTimeout = time.Duration(v.GetUint(fElectionTimeout)) * time.Millisecond
	c.SnapshotCount = v.GetUint64(fSnapshotCount)
	c.QuotaBackendBytes = v.GetInt64(fQuotaBackendBytes)
	c.BcryptCost = int(min(v.GetUint(fBcryptCost), uint(bcrypt.MaxCost)+1))
	c.AuthToken = v.GetString(fAuthToken)
	c.AuthTokenTTL = time.Duration(min(v.GetUint(fAuthTokenTTL), 1<<31)) * time.Second
	if _, err := auth.ParseTokenOptions(c.AuthToken, c.AuthTokenTTL); err != nil {
		return Server{}, fmt.Errorf("%w: --%s: %v", ErrInvalid, fAuthToken, err)
	}
	c.SnapshotCatchUpEntries = v.GetUint64(fSnapshotCatchUp)
	c.MaxLearners = v.GetInt(fMaxLearners)
	c.PreVote = v.GetBool(fPreVote)
	c.InitialElectionTickAdvance = v.GetBool(fInitialTickAdvance)
	c.StrictReconfigCheck = v.GetBool(fStrictReconfigCheck)
	c.UnsafeNoFsync = v.GetBool(fUnsafeNoFsync)
	c.MemoryMlock = v.GetBool(fMemoryMlock)
	c.ForceNewCluster = v.GetBool(fForceNewCluster)
	c.CorruptCheckTime = v.GetDuration(fCorruptCheckTime)
	c.CompactHashCheckTime = v.GetDuration(fCompactHashCheckTime)
	c.MaxRequestBytes = v.GetInt(fMaxRequestBytes)
	c.MaxTxnOps = v.GetInt(fMaxTxnOps)
	// As etcd: not positive keeps the default, too short is raised to the
	// minimum.
	c.WatchProgressNotifyInterval = v.GetDuration(fWatchProgressNotify)
	switch {
	case c.WatchProgressNotifyInterval <= 0:
		c.WatchProgressNotifyInterval = DefaultWatchProgressNotifyInterval
	case c.WatchProgressNotifyInterval < MinWatchProgressNotifyInterval:
		c.WatchProgressNotifyInterval = MinWatchProgressNotifyInterval
	}
	if c.CORS, c.HostWhitelist, err = loadHTTPAccess(v); err != nil {
		return Server{}, err
	}
	c.MaxConcurrentStreams = v.GetUint32(fMaxConcurrentStreams)
	c.GRPCKeepAlive = loadGRPCKeepAlive(v)
	// As etcd: 0 keeps the defaults.
	if c.WarningUnaryRequestDuration = v.GetDuration(fWarningUnaryDuration); c.WarningUnaryRequestDuration <= 0 {
		c.WarningUnaryRequestDuration = 300 * time.Millisecond
	}
	if c.WarningApplyDuration = v.GetDuration(fWarningApplyDuration); c.WarningApplyDuration <= 0 {
		c.WarningApplyDuration = 100 * time.Millisecond
	}
	c.Socket = SocketOptions{ReusePort: v.GetBool(fSocketReusePort), ReuseAddress: v.GetBool(fSocketReuseAddress)}
	c.EnablePprof = v.GetBool(fEnablePprof)
	if c.Tracing, err = loadTracing(v); err != nil {
		return Server{}, err
	}
	c.LeanHTTP2 = v.GetBool(fLeanHTTP2)
	c.EnableGRPCGateway = v.GetBool(fEnableGRPCGateway)
	c.EnableConsole = v.GetBool(fEnableConsole)
	if c.FeatureGates, err = parseFeatureGates(v.GetString(fFeatureGates)); err != nil {
		return Server{}, err
	}
	if c.AutoCompaction, err = parseAutoCompaction(v.GetString(fAutoCompactionMode), v.GetString(fAutoCompactionRet)); err != nil {
		return Server{}, err
	}
	if c.ClientTLS, err = loadTLS(v, false); err != nil {
		return Server{}, err
	}
	if c.PeerTLS, err = loadTLS(v, true); err != nil {
		return Server{}, err
	}
	if srv != "" && strings.Contains(c.InitialCluster, "https://") && c.PeerTLS.TrustedCAFile == "" {
		c.PeerTLS.ServerName = srv
	}
	if c.Log, err = loadLogging(v); err != nil {
		return Server{}, err
	}
	c.LogLevel = c.Log.Level
	if c.InertFlags, err = checkEtcdOnly(v, fs); err != nil {
		return Server{}, err
	}
	return c, c.Validate()
}

// Validate reports the first setting that cannot work.
func (c Server) Validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: --%s must not be empty", ErrInvalid, fName)
	case len(c.ListenClientURLs) == 0:
		return fmt.Errorf("%w: --%s must name at least one URL", ErrInvalid, fListenClientURLs)
	case c.InitialClusterState != "new" && c.InitialClusterState != "existing":
		return fmt.Errorf("%w: --%s must be 'new' or 'existing', not %q", ErrInvalid, fInitialClusterState, c.InitialClusterState)
	case c.HeartbeatInterval <= 0:
		return fmt.Errorf("%w: --%s must be positive", ErrInvalid, fHeartbeatInterval)
	case c.ElectionTimeout < 5*c.HeartbeatInterval:
		// etcd's rule: an election timeout shorter than a few heartbeats makes leaders flap.
		return fmt.Errorf("%w: --%s (%v) must be at least 5 times --%s (%v)", ErrInvalid, fElectionTimeout, c.ElectionTimeout, fHeartbeatInterval, c.HeartbeatInterval)
	case c.QuotaBackendBytes < 0:
		return fmt.Errorf("%w: --%s must not be negative", ErrInvalid, fQuotaBackendBytes)
	case c.BcryptCost < bcrypt.MinCost || c.BcryptCost > bcrypt.MaxCost:
		return fmt.Errorf("%w: --%s must be between %d and %d", ErrInvalid, fBcryptCost, bcrypt.MinCost, bcrypt.MaxCost)
	case c.AuthTokenTTL <= 0:
		return fmt.Errorf("%w: --%s must be positive", ErrInvalid, fAuthTokenTTL)
	case c.MaxRequestBytes <= 0:
		return fmt.Errorf("%w: --%s must be positive", ErrInvalid, fMaxRequestBytes)
	case c.MaxTxnOps <= 0:
		return fmt.Errorf("%w: --%s must be positive", ErrInvalid, fMaxTxnOps)
	case c.MaxConcurrentStreams == 0:
		return fmt.Errorf("%w: --%s must be positive", ErrInvalid, fMaxConcurrentStreams)
	case c.MaxLearners < 1:
		return fmt.Errorf("%w: --%s must be at least 1", ErrInvalid, fMaxLearners)
	}
	if err := c.ClientTLS.validate(slices.Concat(c.ListenClientURLs, c.ListenClientHTTPURLs, c.ListenMetricsURLs)); err != nil {
		return err
	}
	return c.PeerTLS.asPeer().validate(c.ListenPeerURLs)
}

// newViper layers, from weakest to strongest: flag defaults, the YAML file,
// ETCD_* variables, CONCORD_* variables, flags set on the command line.
func newViper(fs *pflag.FlagSet) (*viper.Viper, error) {
	v := viper.New()
	if err := v.BindPFlags(fs); err != nil {
		return nil, fmt.Errorf("config: binding flags: %w", err)
	}
	// viper looks names up with one prefix only; look ETCD_ up ourselves and
	// let CONCORD_ and explicit flags override it.
	fs.VisitAll(func(f *pflag.Flag) {
		env := strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if val, ok := os.LookupEnv("ETCD_" + env); ok {
			v.SetDefault(f.Name, val)
		}
	})
	v.SetEnvPrefix("CONCORD")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	if file := v.GetString(fConfigFile); file != "" {
		v.SetConfigFile(file)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return nil, fmt.Errorf("%w: --%s %s: %v", ErrInvalid, fConfigFile, file, err)
		}
		if err := mergeEtcdFileSections(v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func parseURLs(flag, s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("%w: --%s: %q is not a URL like http://127.0.0.1:2379", ErrInvalid, flag, part)
		}
		out = append(out, *u)
	}
	return out, nil
}

// parseAutoCompaction reads etcd's auto-compaction flags the way etcd does:
// a plain number is hours in periodic mode and revisions in revision mode;
// periodic mode also takes a duration ("30m").
func parseAutoCompaction(mode, retention string) (compactor.Config, error) {
	c := compactor.Config{Mode: compactor.Mode(mode)}
	switch c.Mode {
	case compactor.ModePeriodic, compactor.ModeRevision:
	case "":
		return c, fmt.Errorf("%w: undefined auto-compaction-mode", ErrInvalid)
	default:
		return c, fmt.Errorf("%w: unknown auto-compaction-mode %q", ErrInvalid, mode)
	}
	if n, err := strconv.Atoi(retention); err == nil && n >= 0 {
		if c.Mode == compactor.ModeRevision {
			c.Revisions = int64(n)
		} else {
			c.Retention = time.Duration(n) * time.Hour
		}
		return c, nil
	}
	d, err := time.ParseDuration(retention)
	if err != nil || d < 0 || c.Mode == compactor.ModeRevision {
		return c, fmt.Errorf("%w: error parsing CompactionRetention: --%s=%q", ErrInvalid, fAutoCompactionRet, retention)
	}
	c.Retention = d
	return c, nil
}

// etcdFeatureGates are the gates etcd 3.7 knows (server/features), so that
// a command line written for etcd (kubeadm sets InitialCorruptCheck=true)
// starts concord unchanged, and a misspelt gate fails as it does in etcd.
var etcdFeatureGates = []string{
	"StopGRPCServiceOnDefrag", "TxnModeWriteWithSharedBuffer", "InitialCorruptCheck", "CompactHashCheck",
	"LeaseCheckpoint", "LeaseCheckpointPersist", "SetMemberLocalAddr", "FastLeaseKeepAlive", "PriorityRequest",
	"AllAlpha", "AllBeta",
}

// parseFeatureGates reads --feature-gates=Name=true,Other=false with etcd's
// errors.
func parseFeatureGates(s string) (map[string]bool, error) {
	gates := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok {
			return nil, fmt.Errorf("%w: --%s: missing bool value for %s", ErrInvalid, fFeatureGates, k)
		}
		if !slices.Contains(etcdFeatureGates, k) {
			return nil, fmt.Errorf("%w: --%s: unrecognized feature gate: %s", ErrInvalid, fFeatureGates, k)
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("%w: --%s: invalid value of %s=%s, err: %v", ErrInvalid, fFeatureGates, k, v, err)
		}
		gates[k] = b
	}
	return gates, nil
}

// monitoringFlags declares etcd's monitoring flags, taken by every process
// that serves clients.
func monitoringFlags(fs *pflag.FlagSet) {
	fs.String(fListenMetricsURLs, "", "comma-separated URLs to serve /metrics and the health endpoints on (nothing else)")
	fs.String(fMetrics, "basic", "level of detail of exported metrics (etcd's 'basic' or 'extensive'; concord exports the same set for both)")
	fs.String(fFeatureGates, "", "etcd's feature gates, Name=true|false,...; validated and accepted, concord's behaviour does not depend on them")
	fs.Bool(fEnableTracing, false, "export OpenTelemetry traces of the requests served (OTLP over gRPC, to --distributed-tracing-address)")
	fs.String(fTracingAddress, tracing.DefaultAddress, "host:port of the OpenTelemetry collector (OTLP gRPC, cleartext)")
	fs.String(fTracingService, tracing.DefaultServiceName, "service.name of the exported spans")
	fs.String(fTracingInstance, "", "service.instance.id of the exported spans (unique per process; \"\": not set)")
	fs.Int(fTracingRate, 0, "traces sampled per million requests, besides those whose caller's traceparent is sampled (0 to 1000000)")
}

// loadTracing reads the tracing flags declared by monitoringFlags.
func loadTracing(v *viper.Viper) (tracing.Config, error) {
	c := tracing.Config{
		Enabled:                v.GetBool(fEnableTracing),
		Address:                v.GetString(fTracingAddress),
		ServiceName:            v.GetString(fTracingService),
		InstanceID:             v.GetString(fTracingInstance),
		SamplingRatePerMillion: v.GetInt(fTracingRate),
	}
	if err := c.Validate(); err != nil {
		return tracing.Config{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c, nil
}
