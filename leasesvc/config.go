package leasesvc

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/concord-kv/concord/internal/tracing"
)

// Defaults. MaxRevokesPerSecond is etcd's leaseRevokeRate.
//
// The authority term is short so that a standby takes over a dead holder in
// about the time etcd needs to elect a new leader (its lessor lives on the
// leader): a standby acts 1.5 s after the last renewal it saw, i.e. 1.25 to
// 1.5 s after the holder died. Renewals come six times a term (a raft entry
// each, as cheap as a small put), so the holder keeps answering keep-alives
// through a second of failed or slow renewals, such as a raft election.
const (
	DefaultCheckInterval       = 100 * time.Millisecond
	DefaultMaxRevokesPerSecond = 1000
	DefaultMaxRevokeBatch      = 500
	DefaultRenewInterval       = 250 * time.Millisecond
	DefaultTakeoverTimeout     = 1500 * time.Millisecond
	DefaultRevokeRetryInterval = 3 * time.Second
	DefaultReconcileInterval   = 30 * time.Second
)

// ErrInvalidConfig is wrapped by every Validate error.
var ErrInvalidConfig = errors.New("leasesvc: invalid config")

// Clock is the time source; tests inject a fake one.
type Clock interface {
	Now() time.Time
	// After sends the time on the returned channel once d has passed.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a Service. Zero values are replaced by SetDefaults.
type Config struct {
	// Holder names this instance in the replicated lease authority record.
	// It must be unique among running instances; an instance that starts
	// and finds its own name in the record takes the authority over at
	// once (it is a restart of the previous holder).
	Holder string
	// Clock is the time source (nil: the real clock).
	Clock Clock
	// Tracing, when on, gets etcd's "lease_renew" span of each keep-alive.
	Tracing *tracing.Provider
	// CheckInterval is how often deadlines are checked; a lease is revoked
	// at most about CheckInterval (plus raft) after it expires.
	CheckInterval time.Duration
	// MaxRevokesPerSecond limits expiry revokes, so that many leases
	// expiring together cannot stall writes (etcd's leaseRevokeRate).
	MaxRevokesPerSecond int
	// MaxRevokeBatch is the most leases revoked by one raft command.
	MaxRevokeBatch int
	// RenewInterval is how often the active instance renews its authority
	// and a standby looks at the authority record.
	RenewInterval time.Duration
	// TakeoverTimeout is how long a standby must see the authority record
	// unrenewed before it takes over. The active instance stops answering
	// keep-alives RenewInterval before its last renewal could let a standby
	// take over, so that no lease expires earlier than its holder expects.
	TakeoverTimeout time.Duration
	// RevokeRetryInterval is how long an expired lease whose revoke did not
	// complete waits before it is revoked again (etcd's
	// ExpiredLeasesRetryInterval).
	RevokeRetryInterval time.Duration
	// ReconcileInterval is how often the active instance compares its
	// leases with the replicated ones, picking up leases granted through
	// another instance and dropping leases revoked through one.
	ReconcileInterval time.Duration
	// Logger receives the service's logs (nil: slog.Default()).
	Logger *slog.Logger
}

// SetDefaults fills in zero fields.
func (c *Config) SetDefaults() {
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.MaxRevokesPerSecond == 0 {
		c.MaxRevokesPerSecond = DefaultMaxRevokesPerSecond
	}
	if c.MaxRevokeBatch == 0 {
		c.MaxRevokeBatch = DefaultMaxRevokeBatch
	}
	if c.RenewInterval == 0 {
		c.RenewInterval = DefaultRenewInterval
	}
	if c.TakeoverTimeout == 0 {
		c.TakeoverTimeout = max(DefaultTakeoverTimeout, 6*c.RenewInterval)
	}
	if c.RevokeRetryInterval == 0 {
		c.RevokeRetryInterval = DefaultRevokeRetryInterval
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports the first problem of a defaulted config.
func (c Config) Validate() error {
	switch {
	case c.Holder == "":
		return fmt.Errorf("%w: Holder must be set", ErrInvalidConfig)
	case c.Clock == nil || c.Logger == nil:
		return fmt.Errorf("%w: Clock and Logger must be set (call SetDefaults)", ErrInvalidConfig)
	case c.CheckInterval <= 0, c.RenewInterval <= 0, c.RevokeRetryInterval <= 0, c.ReconcileInterval <= 0:
		return fmt.Errorf("%w: intervals must be positive", ErrInvalidConfig)
	case c.MaxRevokesPerSecond <= 0 || c.MaxRevokeBatch <= 0:
		return fmt.Errorf("%w: MaxRevokesPerSecond and MaxRevokeBatch must be positive", ErrInvalidConfig)
	case c.TakeoverTimeout < 3*c.RenewInterval:
		return fmt.Errorf("%w: TakeoverTimeout %v must be at least 3 RenewIntervals (%v)",
			ErrInvalidConfig, c.TakeoverTimeout, c.RenewInterval)
	}
	return nil
}
