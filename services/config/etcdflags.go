package config

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"

	"github.com/concord-kv/concord/internal/logging"
)

// The rest of etcd 3.7.3's server flags (embed.Config.AddFlags and
// etcdmain's newConfig), so that an etcd command line, ETCD_* environment or
// configuration file starts concord unchanged. Each one is implemented, or
// listed in etcdOnlyFlags as inert (accepted, no effect in concord by
// design, a value other than the default noted in the log), so nothing
// that changes behaviour is silently dropped.
// testdata/etcd-3.7.3-server-flags.txt lists etcd's flag set, and
// TestEveryEtcdFlagIsAccepted checks each.
const (
	fListenClientHTTPURLs = "listen-client-http-urls"
	fCORS                 = "cors"
	fHostWhitelist        = "host-whitelist"
	fMaxConcurrentStreams = "max-concurrent-streams"
	fGRPCKeepAliveMinTime = "grpc-keepalive-min-time"
	fGRPCKeepAliveIntvl   = "grpc-keepalive-interval"
	fGRPCKeepAliveTimeout = "grpc-keepalive-timeout"
	fSocketReusePort      = "socket-reuse-port"
	fSocketReuseAddress   = "socket-reuse-address"
	fLogger               = "logger"
	fLogOutputs           = "log-outputs"
	fLogFormat            = "log-format"
	fEnableLogRotation    = "enable-log-rotation"
	fLogRotationConfig    = "log-rotation-config-json"
	fWarningUnaryDuration = "warning-unary-request-duration"
	fWarningApplyDuration = "warning-apply-duration"
	fMaxLearners          = "max-learners"
	fPreVote              = "pre-vote"
	fInitialTickAdvance   = "initial-election-tick-advance"
	fStrictReconfigCheck  = "strict-reconfig-check"
	fUnsafeNoFsync        = "unsafe-no-fsync"
	fMemoryMlock          = "memory-mlock"
	fSnapshotCatchUp      = "snapshot-catchup-entries"
	fDiscoveryFallback    = "discovery-fallback"
	fCorruptCheckTime     = "corrupt-check-time"
	fWALDir               = "wal-dir"
	fCompactHashCheckTime = "compact-hash-check-time"
	fV2Deprecation        = "v2-deprecation"
	fForceNewCluster      = "force-new-cluster"
)

// etcdOnlyFlag is an etcd flag concord accepts without implementing it.
type etcdOnlyFlag struct {
	name, why string
}

const (
	whyBbolt   = "tunes etcd's bbolt backend; concord's store is Pebble, written once per raft Ready"
	whyIgnored = "ignored by etcd 3.7 too (a flag of older etcd versions)"
)

// etcdOnlyFlags are the etcd flags concord accepts but does not implement.
var etcdOnlyFlags = []etcdOnlyFlag{
	{"max-snapshots", "concord writes no snapshot files: a snapshot is the Pebble store, sent to a member that needs it"},
	{"max-wals", "concord writes no WAL files: its raft log lives in Pebble and is truncated after --snapshot-count entries"},
	{"backend-bbolt-freelist-type", whyBbolt},
	{"backend-batch-interval", whyBbolt},
	{"backend-batch-limit", whyBbolt},
	{"bootstrap-defrag-threshold-megabytes", whyBbolt},
	{"raft-read-timeout", "a timeout of etcd's rafthttp connections; concord's peer transport is one HTTP/2 stream per peer with its own keep-alive"},
	{"raft-write-timeout", "a timeout of etcd's rafthttp connections; concord's peer transport is one HTTP/2 stream per peer with its own keep-alive"},
	{"compaction-batch-limit", "concord compacts in the apply of the compaction request, in one store batch, not in timed batches of revisions"},
	{"compaction-sleep-interval", "concord compacts in the apply of the compaction request, in one store batch, not in timed batches of revisions"},
	{"downgrade-check-time", "concord has no cluster downgrade"},
	{fV2Deprecation, "etcd 3.7 ignores it too and enforces its default; concord has no v2 store"},
}

// etcdIgnoredFlags are the flags etcd 3.7 accepts and ignores (etcdmain's
// ignored list); they take no value, or any.
var etcdIgnoredFlags = []string{
	"cluster-active-size", "cluster-remove-delay", "cluster-sync-interval", "config", "force",
	"max-result-buffer", "max-retry-attempts", "peer-heartbeat-interval", "peer-election-timeout",
	"retry-interval", "snapshot", "v", "vv", "test.coverprofile", "test.outputdir",
}

// etcdCompatFlags declares etcd's server flags that ServerFlags does not
// declare elsewhere, with etcd's defaults.
func etcdCompatFlags(fs *pflag.FlagSet) {
	fs.String(fListenClientHTTPURLs, "", "comma-separated URLs to listen on for HTTP-only client traffic; set, --listen-client-urls serve gRPC only")
	httpAccessFlags(fs)
	fs.Uint32(fMaxConcurrentStreams, DefaultMaxConcurrentStreams, "maximum concurrent streams that each client can open at a time")
	keepAliveFlags(fs)
	fs.Bool(fSocketReusePort, false, "set SO_REUSEPORT on listeners, allowing rebinding of a port already in use")
	fs.Bool(fSocketReuseAddress, false, "set SO_REUSEADDR on listeners, allowing binding to an address in TIME_WAIT state")
	fs.String(fLogger, "zap", "etcd's structured logger; 'zap' is the only value, concord logs with log/slog")
	fs.String(fLogOutputs, logging.OutputDefault, "comma-separated log outputs: 'default' or 'stderr', 'stdout', 'systemd/journal' (stderr), or file paths")
	fs.String(fLogFormat, "json", "log format: json or console")
	fs.Bool(fEnableLogRotation, false, "rotate the log file (a single file in --log-outputs)")
	fs.String(fLogRotationConfig, logging.DefaultRotationJSON, "log rotation settings, as etcd's JSON: maxsize (MB), maxage (days), maxbackups, localtime, compress")
	fs.Duration(fWarningUnaryDuration, 300*time.Millisecond, "a unary request taking longer is logged as a warning")
	fs.Duration(fWarningApplyDuration, 100*time.Millisecond, "applying a raft entry taking longer is logged as a warning")
	fs.Int(fMaxLearners, 1, "maximum number of learners in the cluster membership")
	fs.Bool(fPreVote, true, "enable raft Pre-Vote, so a member that rejoins after a partition does not disrupt the cluster")
	fs.Bool(fInitialTickAdvance, true, "once other members are reachable, fast-forward the election clock at start so the first election comes about an election timeout sooner (a lone member campaigns at once)")
	fs.Bool(fStrictReconfigCheck, true, "reject reconfiguration requests that would cause quorum loss")
	fs.Bool(fUnsafeNoFsync, false, "disable fsync: unsafe, a crash loses acknowledged writes")
	fs.Uint64(fSnapshotCatchUp, 5000, "number of entries kept for a slow follower to catch up after the raft log is truncated")
	fs.String(fDiscoveryFallback, "exit", "etcd's behaviour when discovery fails: 'exit' ('proxy' is refused, as by etcd)")
	fs.String(fV2Deprecation, "", "etcd's v2 store deprecation stage; ignored, as by etcd 3.7")

	fs.String(fWALDir, "", "path to the dedicated WAL directory: the store's write-ahead log, which every write is fsynced to (default: in --data-dir)")
	fs.Uint("max-snapshots", 5, "etcd's snapshot file retention; inert in concord")
	fs.Uint("max-wals", 5, "etcd's WAL file retention; inert in concord")
	fs.String("backend-bbolt-freelist-type", "", "bbolt tuning; inert in concord")
	fs.Duration("backend-batch-interval", 0, "bbolt tuning; inert in concord")
	fs.Int("backend-batch-limit", 0, "bbolt tuning; inert in concord")
	fs.Uint("bootstrap-defrag-threshold-megabytes", 0, "bbolt defragmentation at start; inert in concord")
	fs.Bool(fMemoryMlock, false, "lock the process's memory in RAM so the store's caches are never swapped out (mlockall; needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK)")
	fs.Duration("raft-read-timeout", 5*time.Second, "etcd's rafthttp read timeout; inert in concord")
	fs.Duration("raft-write-timeout", 5*time.Second, "etcd's rafthttp write timeout; inert in concord")
	discoveryFlags(fs)
	fs.Bool(fForceNewCluster, false, "force to create a new one member cluster: a member restarting on its data keeps it, drops its uncommitted raft entries and removes every other member (disaster recovery after a permanent loss of quorum)")
	fs.Duration(fCorruptCheckTime, 0, "period of the corruption check, in which the raft leader compares its keyspace hash with every other member's (0: no check)")
	fs.Duration(fCompactHashCheckTime, time.Minute, "period of the compaction hash check, with the CompactHashCheck feature gate: the raft leader compares the hashes members stored at their latest compactions")
	fs.Int("compaction-batch-limit", 0, "etcd's compaction batch size; inert in concord")
	fs.Duration("compaction-sleep-interval", 0, "etcd's pause between compaction batches; inert in concord")
	fs.Duration("downgrade-check-time", 5*time.Second, "etcd's downgrade check period; inert in concord")
	for _, name := range etcdIgnoredFlags {
		fs.String(name, "", "ignored, as by etcd")
		fs.Lookup(name).NoOptDefVal = "true"
		fs.Lookup(name).Hidden = true
	}
}

// SocketOptions are etcd's --socket-reuse-port and --socket-reuse-address,
// set on the client and peer listeners.
type SocketOptions struct {
	ReusePort, ReuseAddress bool
}

// DefaultMaxConcurrentStreams is etcd's default --max-concurrent-streams:
// no limit.
const DefaultMaxConcurrentStreams = ^uint32(0)

// checkEtcdOnly returns the inert flags set to another value than their
// default, for the log, and refuses values etcd refuses.
func checkEtcdOnly(v *viper.Viper, fs *pflag.FlagSet) (inert []string, err error) {
	for _, e := range etcdOnlyFlags {
		f := fs.Lookup(e.name)
		if f == nil || isDefault(v, f) {
			continue
		}
		inert = append(inert, fmt.Sprintf("--%s has no effect in concord: %s", e.name, e.why))
	}
	for _, name := range etcdIgnoredFlags {
		if fs.Lookup(name) != nil && v.GetString(name) != "" {
			inert = append(inert, fmt.Sprintf("--%s has no effect in concord: %s", name, whyIgnored))
		}
	}
	switch fb := v.GetString(fDiscoveryFallback); fb {
	case "exit":
	case "proxy":
		return nil, fmt.Errorf("%w: v2 proxy is deprecated, and --%s can't be configured as %q", ErrInvalid, fDiscoveryFallback, fb)
	default:
		return nil, fmt.Errorf("%w: --%s: invalid value %q (valid: exit, proxy)", ErrInvalid, fDiscoveryFallback, fb)
	}
	if d := v.GetString(fV2Deprecation); d != "" && !slices.Contains([]string{"write-only", "write-only-drop-data", "gone", "write-only-skip-check"}, d) {
		return nil, fmt.Errorf("%w: --%s: invalid value %q", ErrInvalid, fV2Deprecation, d)
	}
	return inert, nil
}

// isDefault reports whether flag f's value in v is its default, compared
// as f's type (a duration "1m" and "60s" are the same).
func isDefault(v *viper.Viper, f *pflag.Flag) bool {
	switch f.Value.Type() {
	case "bool":
		d, _ := strconv.ParseBool(f.DefValue)
		return v.GetBool(f.Name) == d
	case "duration":
		d, _ := time.ParseDuration(f.DefValue)
		return v.GetDuration(f.Name) == d
	case "int", "int64":
		d, _ := strconv.ParseInt(f.DefValue, 10, 64)
		return v.GetInt64(f.Name) == d
	case "uint", "uint32", "uint64":
		d, _ := strconv.ParseUint(f.DefValue, 10, 64)
		return v.GetUint64(f.Name) == d
	}
	return slices.Equal(stringList(v, f.Name), splitList(f.DefValue))
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// loadLogging reads etcd's logging flags.
func loadLogging(v *viper.Viper) (logging.Config, error) {
	c := logging.Config{
		Format:  v.GetString(fLogFormat),
		Outputs: stringList(v, fLogOutputs),
		Rotate:  v.GetBool(fEnableLogRotation),
	}
	if err := validateLogger(v.GetString(fLogger)); err != nil {
		return c, err
	}
	var err error
	if c.Level, err = logLevel(v.GetString(fLogLevel)); err != nil {
		return c, err
	}
	if c.Rotate {
		if c.Rotation, err = logging.ParseRotation(v.GetString(fLogRotationConfig)); err != nil {
			return c, fmt.Errorf("%w: --%s: %w", ErrInvalid, fLogRotationConfig, err)
		}
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%w: --%s/--%s: %w", ErrInvalid, fLogOutputs, fLogFormat, err)
	}
	return c, nil
}

// logLevel reads --log-level: slog's levels, and etcd's panic and fatal,
// above error (concord logs nothing there, as etcd logs little).
func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "panic", "dpanic":
		return slog.LevelError + 4, nil
	case "fatal":
		return slog.LevelError + 8, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%w: --%s: %v (debug, info, warn, error, panic or fatal)", ErrInvalid, fLogLevel, err)
	}
	return l, nil
}

// validateLogger checks --logger as etcd does.
func validateLogger(name string) error {
	if name != "zap" {
		return fmt.Errorf("%w: --%s: unknown logger option %q", ErrInvalid, fLogger, name)
	}
	return nil
}

// httpAccessFlags declares --cors and --host-whitelist, for the
// all-in-one server and the split gateway.
func httpAccessFlags(fs *pflag.FlagSet) {
	fs.String(fCORS, "*", "comma-separated origins allowed for CORS on the HTTP (JSON) endpoints (empty or * means allow all)")
	fs.String(fHostWhitelist, "*", "comma-separated host names accepted in the Host header of cleartext HTTP requests (empty or * means allow all)")
}

// loadHTTPAccess reads --cors and --host-whitelist, etcd's way: origins
// are URLs, either list empty or with * lets everything through (nil).
func loadHTTPAccess(v *viper.Viper) (cors, hosts []string, err error) {
	if cors, err = parseOrigins(stringList(v, fCORS)); err != nil {
		return nil, nil, err
	}
	hosts = stringList(v, fHostWhitelist)
	if slices.Contains(hosts, "*") {
		hosts = nil
	}
	return cors, hosts, nil
}

// parseOrigins reads --cors: URLs, or *; empty or * allow every origin (nil).
func parseOrigins(list []string) ([]string, error) {
	var out []string
	for _, o := range list {
		if o == "*" {
			return nil, nil
		}
		// etcd parses them as its URLs (types.NewURLs): host:port, no path.
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("%w: --%s: %q is not an origin like http://example.com:8080 or *", ErrInvalid, fCORS, o)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return nil, fmt.Errorf("%w: --%s: URL address does not have the form \"host:port\": %s", ErrInvalid, fCORS, o)
		}
		if u.Path != "" {
			return nil, fmt.Errorf("%w: --%s: URL must not contain a path: %s", ErrInvalid, fCORS, o)
		}
		out = append(out, o)
	}
	return out, nil
}

// EtcdArgs rewrites etcd's single-dash long flags (-name default, as Go's
// flag package, which etcd uses, accepts them) to pflag's --name, for
// the flags of the given sets that have no one-letter shorthand of that
// name; everything after "--" is left alone.
func EtcdArgs(args []string, sets ...*pflag.FlagSet) []string {
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) > 1 && a[0] == '-' && a[1] != '-' {
			name, _, _ := strings.Cut(a[1:], "=")
			for _, fs := range sets {
				if fs.Lookup(name) != nil && (len(name) > 1 || fs.ShorthandLookup(name) == nil) {
					a = "-" + a
					break
				}
			}
		}
		out = append(out, a)
	}
	return out
}

// GRPCKeepAlive is etcd's --grpc-keepalive-* as etcd hands them to grpc-go:
// the client connections' server pings (Interval, Timeout) and client ping
// policy (MinTime).
type GRPCKeepAlive struct {
	MinTime, Interval, Timeout time.Duration
}

// grpc-go's defaults, which apply in etcd when a flag is not positive, and
// its floor for the server's ping interval (internal.KeepaliveMinServerPingTime).
const (
	grpcDefaultMinTime  = 5 * time.Minute
	grpcDefaultInterval = 2 * time.Hour
	grpcDefaultTimeout  = 20 * time.Second
	grpcMinInterval     = time.Second
)

// keepAliveFlags declares etcd's --grpc-keepalive-* with etcd's defaults,
// for the all-in-one server and the split gateway.
func keepAliveFlags(fs *pflag.FlagSet) {
	fs.Duration(fGRPCKeepAliveMinTime, 5*time.Second, "minimum interval a client should wait before pinging the server (one with no stream open: 2 hours); the third ping too early gets GOAWAY too_many_pings. 0 means grpc-go's 5m, as in etcd")
	fs.Duration(fGRPCKeepAliveIntvl, 2*time.Hour, "a client connection the server has read nothing from for this long is pinged. 0 (or a 0 --grpc-keepalive-timeout) means grpc-go's 2h and 20s, as in etcd; below 1s means 1s, as in grpc-go")
	fs.Duration(fGRPCKeepAliveTimeout, 20*time.Second, "a pinged connection is closed when nothing arrives within this. 0 (or a 0 --grpc-keepalive-interval) means grpc-go's 2h and 20s, as in etcd")
}

// loadGRPCKeepAlive reads --grpc-keepalive-* as etcd uses them: etcd gives
// grpc-go the enforcement policy only for a positive min time and the
// server parameters only when both are positive, so grpc-go's defaults
// apply otherwise (whatever etcd's help says about 0 disabling them), and
// grpc-go raises an interval below a second to a second.
func loadGRPCKeepAlive(v *viper.Viper) GRPCKeepAlive {
	k := GRPCKeepAlive{
		MinTime:  v.GetDuration(fGRPCKeepAliveMinTime),
		Interval: v.GetDuration(fGRPCKeepAliveIntvl),
		Timeout:  v.GetDuration(fGRPCKeepAliveTimeout),
	}
	if k.MinTime <= 0 {
		k.MinTime = grpcDefaultMinTime
	}
	if k.Interval <= 0 || k.Timeout <= 0 {
		k.Interval, k.Timeout = grpcDefaultInterval, grpcDefaultTimeout
	}
	k.Interval = max(k.Interval, grpcMinInterval)
	return k
}
