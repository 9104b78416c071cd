package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

const (
	// DefaultMaxRequestBytes is etcd's default --max-request-bytes (1.5 MiB).
	DefaultMaxRequestBytes = 1536 * 1024
	// DefaultMaxTxnOps is etcd's default --max-txn-ops.
	DefaultMaxTxnOps = 128
	// DefaultMaxConcurrentStreams is etcd's default: effectively unlimited,
	// because every watch and keep-alive stream of a client shares one
	// HTTP/2 connection.
	DefaultMaxConcurrentStreams = math.MaxUint32
	// DefaultKeepAliveInterval, DefaultKeepAliveTimeout and
	// DefaultKeepAliveMinTime are etcd's --grpc-keepalive-interval,
	// --grpc-keepalive-timeout and --grpc-keepalive-min-time defaults.
	DefaultKeepAliveInterval = 2 * time.Hour
	DefaultKeepAliveTimeout  = 20 * time.Second
	DefaultKeepAliveMinTime  = 5 * time.Second
	// DefaultShutdownTimeout bounds the graceful part of Serve's shutdown;
	// long-lived streams (watches) are cut after it.
	DefaultShutdownTimeout = 5 * time.Second

	// grpcOverheadBytes is what etcd allows on top of MaxRequestBytes for
	// gRPC framing before the transport rejects a message.
	grpcOverheadBytes = 512 * 1024
)

// ErrInvalidConfig is wrapped by every Validate error.
var ErrInvalidConfig = errors.New("gateway: invalid config")

// Config configures a Gateway. Zero values are replaced by SetDefaults.
type Config struct {
	// MaxRequestBytes is the largest write request accepted
	// (etcdserver: request is too large beyond it).
	MaxRequestBytes int
	// MaxTxnOps is the largest number of operations in one branch of a txn.
	MaxTxnOps int
	// MaxConcurrentStreams is the HTTP/2 per-connection stream limit.
	MaxConcurrentStreams uint32
	// KeepAlive is the HTTP/2 connections' keep-alive pings and client
	// ping policy (etcd's --grpc-keepalive-*).
	KeepAlive KeepAlive
	// NetHTTP2 serves HTTP/2 prior-knowledge connections (gRPC clients)
	// with net/http's HTTP/2 server instead of gateway/h2server, the
	// default (less CPU per call); every other connection goes to net/http
	// on the same listener either way.
	NetHTTP2 bool
	// NoJSONGateway turns off etcd's JSON gateway (POST /v3/kv/range, ...;
	// restgw.go), which etcd serves unless --enable-grpc-gateway=false.
	NoJSONGateway bool
	// CORS are the origins whose requests to the HTTP/JSON routes get
	// etcd's CORS headers (--cors); empty or "*" answers every origin with
	// "*", etcd's default.
	CORS []string
	// HostWhitelist are the host names a cleartext HTTP/1.1 request may
	// name in its Host header (--host-whitelist); others get 421
	// Misdirected Request. Empty or "*" accepts every host.
	HostWhitelist []string
	// SeparateHTTP makes Serve and ServeTLS serve RPCs only: the HTTP
	// endpoints are then on the listeners of ServeHTTPOnly (etcd's
	// --listen-client-http-urls).
	SeparateHTTP bool
	// WarningUnaryRequestDuration logs a warning for every unary RPC that
	// takes longer (etcd's --warning-unary-request-duration); 0: none.
	WarningUnaryRequestDuration time.Duration
	// StopServingOnDefrag makes the gRPC health service answer NOT_SERVING
	// while a defragmentation runs (etcd's StopGRPCServiceOnDefrag gate).
	StopServingOnDefrag bool
	// ShutdownTimeout is how long Serve waits for in-flight calls once its
	// context is done before closing connections.
	ShutdownTimeout time.Duration
	// TLS is the server side of the TLS listeners served by ServeTLS
	// (etcd's https:// client URLs): certificates, and ClientAuth with
	// ClientCAs for client certificate authentication. The gateway uses a
	// copy that offers ALPN h2 and http/1.1. nil: ServeTLS fails.
	TLS *tls.Config
	// InternalSecrets hold the secret the split topology's processes share
	// (--internal-secret-file) and those accepted besides it: a request
	// presenting the proof of one in InternalSecretHeader is a concord
	// process calling for itself, trusted as a root-role user once auth is
	// enabled (internalsecret.go). nil, or none: the header is ignored.
	InternalSecrets *InternalSecrets
	// Logger receives the gateway's logs; nil means slog.Default().
	Logger *slog.Logger
}

// KeepAlive is etcd's gRPC keep-alive (grpc-go's ServerParameters Time and
// Timeout, EnforcementPolicy MinTime and PermitWithoutStream) on the
// gateway's HTTP/2 connections. Zero fields get etcd's defaults.
//
// gateway/h2server implements all of it. net/http's HTTP/2 server
// (NetHTTP2) pings after Interval without reading and closes the
// connection when the PING's own ack is not back within Timeout (other
// frames do not count, unlike grpc-go), and it does not police client
// pings: MinTime and PermitWithoutStream have no effect there.
type KeepAlive struct {
	// Interval: a connection nothing was read from for Interval gets a
	// PING (--grpc-keepalive-interval).
	Interval time.Duration
	// Timeout: ... and is closed when nothing arrives Timeout after it
	// (--grpc-keepalive-timeout).
	Timeout time.Duration
	// MinTime: a client pinging more often (with no stream open and
	// without PermitWithoutStream: more often than every two hours) gets
	// strikes, and GOAWAY ENHANCE_YOUR_CALM "too_many_pings" at the third
	// (--grpc-keepalive-min-time).
	MinTime time.Duration
	// PermitWithoutStream holds pings on connections without streams to
	// MinTime too. etcd leaves it false; concord's internal services set
	// it, as concord's own clients ping idle connections every 5 s.
	PermitWithoutStream bool
}

// SetDefaults fills in zero fields.
func (c *Config) SetDefaults() {
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.MaxTxnOps == 0 {
		c.MaxTxnOps = DefaultMaxTxnOps
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.KeepAlive.Interval == 0 {
		c.KeepAlive.Interval = DefaultKeepAliveInterval
	}
	if c.KeepAlive.Timeout == 0 {
		c.KeepAlive.Timeout = DefaultKeepAliveTimeout
	}
	if c.KeepAlive.MinTime == 0 {
		c.KeepAlive.MinTime = DefaultKeepAliveMinTime
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the config is usable (after SetDefaults).
func (c Config) Validate() error {
	switch {
	case c.MaxRequestBytes <= 0:
		return fmt.Errorf("%w: MaxRequestBytes must be positive, got %d", ErrInvalidConfig, c.MaxRequestBytes)
	case c.MaxRequestBytes > math.MaxInt32-grpcOverheadBytes:
		return fmt.Errorf("%w: MaxRequestBytes %d is too large", ErrInvalidConfig, c.MaxRequestBytes)
	case c.MaxTxnOps <= 0:
		return fmt.Errorf("%w: MaxTxnOps must be positive, got %d", ErrInvalidConfig, c.MaxTxnOps)
	case c.MaxConcurrentStreams == 0:
		return fmt.Errorf("%w: MaxConcurrentStreams must be positive", ErrInvalidConfig)
	case c.KeepAlive.Interval <= 0 || c.KeepAlive.Timeout <= 0 || c.KeepAlive.MinTime <= 0:
		return fmt.Errorf("%w: KeepAlive durations must be positive, got %+v", ErrInvalidConfig, c.KeepAlive)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("%w: ShutdownTimeout must not be negative", ErrInvalidConfig)
	case c.Logger == nil:
		return fmt.Errorf("%w: Logger is nil (call SetDefaults)", ErrInvalidConfig)
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil:
		return fmt.Errorf("%w: TLS has no certificate", ErrInvalidConfig)
	case c.TLS != nil && c.TLS.ClientAuth >= tls.VerifyClientCertIfGiven && c.TLS.ClientCAs == nil && c.TLS.GetConfigForClient == nil:
		return fmt.Errorf("%w: TLS verifies client certificates but has no ClientCAs", ErrInvalidConfig)
	}
	return nil
}
