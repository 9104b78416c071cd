package recipes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/v3electionpbconnect"
	"github.com/concord-kv/concord/proto/gen/v3lockpbconnect"
)

// The recipes' own errors, with the texts of clientv3/concurrency and
// etcd's v3election package. They are returned unwrapped to the client.
var (
	// ErrElectionNotLeader is concurrency.ErrElectionNotLeader: Proclaim by
	// a caller whose leader key is gone or was re-created.
	ErrElectionNotLeader = errors.New("election: not leader")
	// ErrElectionNoLeader is concurrency.ErrElectionNoLeader: Leader on an
	// election without candidates.
	ErrElectionNoLeader = errors.New("election: no leader")
	// ErrSessionExpired is concurrency.ErrSessionExpired: the Lock caller's
	// key disappeared (its lease expired) while it waited.
	ErrSessionExpired = errors.New("mutex: session is expired")
	// ErrMissingLeaderKey is v3election.ErrMissingLeaderKey.
	ErrMissingLeaderKey = errors.New(`"leader" field must be provided`)

	// ErrClosed is returned by calls after Close; clients see etcd's
	// "etcdserver: server stopped".
	ErrClosed = errors.New("recipes: closed")
	// ErrInvalidConfig is wrapped by every Validate error.
	ErrInvalidConfig = errors.New("recipes: invalid config")

	// errLostWatcher is concurrency's error for a watch that ended without
	// the awaited deletion.
	errLostWatcher = errors.New("lost watcher waiting for delete")
)

const (
	// DefaultSessionTTL is clientv3/concurrency's default session TTL in
	// seconds, the TTL of the lease granted for a call without a lease.
	DefaultSessionTTL = 60
	// DefaultCleanupTimeout bounds the deletion of a caller's key after it
	// gave up waiting. etcd uses its server's lifetime context without a
	// bound; a bound keeps a stuck backend from holding the call forever.
	DefaultCleanupTimeout = 30 * time.Second
)

// KV is the part of the backend the recipes use; consensus.Node implements
// it. Responses carry complete headers.
type KV interface {
	Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error)
	DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error)
	Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error)
}

// LeaseGranter grants the lease of a call made without one;
// *leasesvc.Service implements it (so the new lease gets a deadline at
// once), as does consensus.Node.
type LeaseGranter interface {
	LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error)
}

// Config configures a Service. Zero values are replaced by SetDefaults.
type Config struct {
	// SessionTTL is the TTL in seconds of the lease granted for a call
	// without one.
	SessionTTL int64
	// MaxRequestBytes is the server's --max-request-bytes: a write the
	// recipes build beyond it fails with "etcdserver: request is too
	// large", as etcd's proposal of it would.
	MaxRequestBytes int
	// CleanupTimeout bounds removing a caller's key after it gave up.
	CleanupTimeout time.Duration
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger
}

// SetDefaults fills in zero fields.
func (c *Config) SetDefaults() {
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.CleanupTimeout == 0 {
		c.CleanupTimeout = DefaultCleanupTimeout
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = gateway.DefaultMaxRequestBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the config is usable (after SetDefaults).
func (c Config) Validate() error {
	switch {
	case c.SessionTTL <= 0:
		return fmt.Errorf("%w: SessionTTL must be positive, got %d", ErrInvalidConfig, c.SessionTTL)
	case c.CleanupTimeout <= 0:
		return fmt.Errorf("%w: CleanupTimeout must be positive, got %v", ErrInvalidConfig, c.CleanupTimeout)
	case c.MaxRequestBytes <= 0:
		return fmt.Errorf("%w: MaxRequestBytes must be positive, got %d", ErrInvalidConfig, c.MaxRequestBytes)
	case c.Logger == nil:
		return fmt.Errorf("%w: Logger is nil (call SetDefaults)", ErrInvalidConfig)
	}
	return nil
}

// Service serves the Lock and Election services. It implements
// v3lockpbconnect.LockHandler and v3electionpbconnect.ElectionHandler (pass
// it to gateway.WithLock and gateway.WithElection). It keeps no state
// between calls.
type Service struct {
	cfg    Config
	kv     KV
	leases LeaseGranter
	w      gateway.Watcher
	lg     *slog.Logger

	// life is the service's lifetime: every call is cancelled when it ends,
	// and cleanups run under it (etcd's client.Ctx()).
	life     context.Context
	stopLife context.CancelFunc

	mu     sync.Mutex
	closed bool
	calls  sync.WaitGroup
}

var (
	_ v3lockpbconnect.LockHandler         = (*Service)(nil)
	_ v3electionpbconnect.ElectionHandler = (*Service)(nil)
)

// New returns a Service over kv, leases and w. cfg is defaulted and
// validated.
func New(cfg Config, kv KV, leases LeaseGranter, w gateway.Watcher) (*Service, error) {
	if kv == nil || leases == nil || w == nil {
		return nil, fmt.Errorf("%w: nil KV, LeaseGranter or Watcher", ErrInvalidConfig)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	life, stop := context.WithCancel(context.Background())
	return &Service{cfg: cfg, kv: kv, leases: leases, w: w, lg: cfg.Logger, life: life, stopLife: stop}, nil
}

// Close cancels every call in flight, waits for them to return and makes
// later calls fail with ErrClosed. Idempotent.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopLife()
	s.calls.Wait()
	return nil
}

// begin registers a call: the returned context also ends when the service
// closes, and end must be called when the call returns.
func (s *Service) begin(ctx context.Context) (context.Context, func(), error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, ErrClosed
	}
	s.calls.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel)
	return ctx, func() {
		stop()
		cancel()
		s.calls.Done()
	}, nil
}

// cleanupContext is the context of a cleanup after the caller gave up: the
// service's lifetime, bounded by CleanupTimeout.
func (s *Service) cleanupContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.life, s.cfg.CleanupTimeout)
}

// txn and deleteRange are the recipes' writes: checked against
// MaxRequestBytes first, as etcd's server checks the proposal its
// in-process client's request becomes (the gateway checks only the
// lock/election request itself).
func (s *Service) txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if proto.Size(r) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	return s.kv.Txn(ctx, r)
}

func (s *Service) deleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if proto.Size(r) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	return s.kv.DeleteRange(ctx, r)
}

// sessionLease is the lease of concurrency.NewSession(WithLease(lease)):
// the caller's lease, or a new one of SessionTTL seconds when the caller
// passed none.
func (s *Service) sessionLease(ctx context.Context, lease int64) (int64, error) {
	if lease != 0 {
		return lease, nil
	}
	resp, err := s.leases.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: s.cfg.SessionTTL})
	if err != nil {
		return 0, err
	}
	return resp.GetID(), nil
}

// wireError turns an error of a call into what etcd's handlers send.
//
// etcd's handlers reach the KV through an in-process clientv3, whose calls
// turn every error etcd knows by its message (rpctypes.Error) into a plain
// error; gRPC sends a plain error with code Unknown. So a backend error
// reaches the client with etcd's message and code Unknown ("etcdserver:
// requested lease not found", not NotFound), while context errors keep
// Canceled/DeadlineExceeded and the recipes' own sentinels are Unknown with
// their text anyway.
func wireError(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrClosed) {
		err = rpctypes.ErrGRPCStopped
	}
	werr := gateway.TranslateError(err)
	var ce *connect.Error
	if !errors.As(werr, &ce) {
		return werr
	}
	var known rpctypes.EtcdError
	if errors.As(rpctypes.Error(status.Error(codes.Code(ce.Code()), ce.Message())), &known) {
		return connect.NewError(connect.CodeUnknown, errors.New(ce.Message()))
	}
	return ce
}
