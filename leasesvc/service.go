// Package leasesvc decides when leases expire. Leases themselves (ID,
// granted TTL, attached keys) are replicated state in consensus; grants and
// revokes go through raft. leasesvc keeps only deadlines, in memory: a heap
// ordered by deadline, refreshed by keep-alives (which never go through
// raft), and it proposes a revoke when a deadline passes.
//
// Invariants (DESIGN.md invariant 4):
//
//   - At most one instance decides expiries: the holder of the replicated
//     lease authority record {holder, epoch}. Every expiry revoke carries the
//     holder's epoch and consensus applies it only if the epoch is still
//     current, so a deposed or partitioned instance revokes nothing.
//   - No lease expires earlier than its holder could expect. The active
//     instance answers keep-alives only until TakeoverTimeout-RenewInterval
//     after the start of its last successful renewal, while a standby takes
//     over only after it has watched the record stay unrenewed for
//     TakeoverTimeout, and only if the record is still the one it watched
//     (the acquisition names its RenewedIndex, so a renewal the standby
//     missed fails the takeover); the new holder then loads every lease
//     from consensus and gives each a full fresh TTL before expiring
//     anything, as etcd does after a leader change. The same refresh follows any period in which the
//     active instance refused keep-alives because its renewals were failing.
//   - Revokes are rate limited (MaxRevokesPerSecond, batches of at most
//     MaxRevokeBatch), so a storm of expiries cannot stall writes; consensus
//     deletes all keys of one lease in a single revision.
//
// A Service is started with Run and stopped with Close; Run owns the two
// goroutines (authority and expiry loops).
package leasesvc

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/storage"
)

var (
	// ErrNotActive is returned by keep-alives and TimeToLive while this
	// instance is not the active lease authority (a standby, or an active
	// instance whose authority renewals are failing). Clients retry.
	ErrNotActive = errors.New("leasesvc: not the active lease authority")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("leasesvc: closed")
	// ErrRunning is returned by a second call to Run.
	ErrRunning = errors.New("leasesvc: already running")
)

// Backend is what leasesvc needs from consensus; *consensus.Node implements
// it.
type Backend interface {
	LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error)
	// LeaseRevoke is a user revoke: not fenced.
	LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error)
	LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error)
	// Leases and Lease read the replicated leases linearizably.
	Leases(ctx context.Context) ([]storage.LeaseInfo, error)
	Lease(ctx context.Context, id int64) (storage.LeaseInfo, bool, error)
	// RevokeExpiredLeases is the fenced revoke (consensus.ErrStaleEpoch).
	RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error)
	LeaseAuthority(ctx context.Context) (consensus.LeaseAuthority, error)
	AcquireLeaseAuthority(ctx context.Context, holder string, epoch, renewedIndex uint64) (consensus.LeaseAuthority, error)
	RenewLeaseAuthority(ctx context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error)
	// Header is a response header as of now, for keep-alive and
	// TimeToLive responses.
	Header() *pb.ResponseHeader
}

// lease is one lease's deadline.
type lease struct {
	id, ttl int64
	expiry  time.Time // when it expires; refreshed by keep-alives
	// due orders the heap: the expiry, or once a revoke was proposed, when
	// to propose it again if it did not complete.
	due  time.Time
	idx  int    // position in the heap
	seq  uint64 // when it was added (reconcile drops only older entries)
	gone chan struct{}
}

// LeaseStatus is a lease as TimeToLive reports it.
type LeaseStatus struct {
	ID int64
	// TTL is the remaining time in whole seconds, truncated as etcd does
	// (it may be negative for a lease whose revoke is still pending).
	TTL        int64
	GrantedTTL int64
	Keys       [][]byte // only when asked for
}

// Service is one leasesvc instance: active or standby.
type Service struct {
	cfg   Config
	b     Backend
	clock Clock
	lg    *slog.Logger

	mu         sync.Mutex
	closed     bool
	epoch      uint64    // the authority epoch held, 0 when none
	loaded     bool      // leases were loaded after the acquisition
	validUntil time.Time // keep-alives are answered until then
	leases     map[int64]*lease
	heap       leaseHeap
	seq        uint64
	limiter    *rate.Limiter
	activeC    chan struct{} // closed once active; replaced on demotion
	demoteC    chan struct{} // closed on demotion; replaced on promotion
	lastRead   time.Time     // when a standby last read the authority record

	// Owned by the authority loop.
	observed      bool
	lastSeen      consensus.LeaseAuthority
	lastChange    time.Time
	lastReconcile time.Time

	runMu   sync.Mutex
	running bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// New returns a standby Service; Run makes it compete for the authority.
func New(cfg Config, b Backend) (*Service, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil backend", ErrInvalidConfig)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Service{
		cfg:     cfg,
		b:       b,
		clock:   cfg.Clock,
		lg:      cfg.Logger.With("holder", cfg.Holder),
		leases:  make(map[int64]*lease),
		limiter: rate.NewLimiter(rate.Limit(cfg.MaxRevokesPerSecond), max(1, cfg.MaxRevokesPerSecond/2)),
		activeC: make(chan struct{}),
		demoteC: make(chan struct{}),
	}, nil
}

// Run competes for the lease authority and, while holding it, expires
// leases. It returns nil when ctx is done or Close is called.
func (s *Service) Run(ctx context.Context) error {
	s.runMu.Lock()
	if s.running {
		s.runMu.Unlock()
		return ErrRunning
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.runMu.Unlock()
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	s.running, s.cancel, s.done = true, cancel, make(chan struct{})
	s.runMu.Unlock()
	defer close(s.done)
	defer cancel()

	var wg sync.WaitGroup
	wg.Go(func() { s.authorityLoop(ctx) })
	wg.Go(func() { s.expiryLoop(ctx) })
	wg.Wait()
	s.demote("stopped", nil)
	return nil
}

// Close stops Run (waiting for it) and fails pending calls. Idempotent.
func (s *Service) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.runMu.Lock()
	running, cancel, done := s.running, s.cancel, s.done
	s.runMu.Unlock()
	if running {
		cancel()
		<-done
	}
	s.demote("closed", nil)
	return nil
}

// WaitActive returns once this instance is the active lease authority.
func (s *Service) WaitActive(ctx context.Context) error {
	s.mu.Lock()
	c := s.activeC
	s.mu.Unlock()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Active reports whether this instance currently answers keep-alives.
func (s *Service) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.activeLocked(s.clock.Now())
}

// ErrNotReady is wrapped by Ready's errors.
var ErrNotReady = errors.New("leasesvc: not ready")

// Ready reports whether this instance does its job: the active instance
// while it answers keep-alives, a standby while it follows the authority
// record (it read it within TakeoverTimeout), so that it can take over. A
// standby is ready at once: it is a working replica, not a failed active.
func (s *Service) Ready() error {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return fmt.Errorf("%w: %w", ErrNotReady, ErrClosed)
	case s.epoch != 0 && !s.loaded:
		return fmt.Errorf("%w: loading leases after acquiring epoch %d", ErrNotReady, s.epoch)
	case s.epoch != 0 && !s.activeLocked(now):
		return fmt.Errorf("%w: lease authority epoch %d not renewed since %v", ErrNotReady, s.epoch,
			s.validUntil.Add(s.cfg.RenewInterval-s.cfg.TakeoverTimeout).Format(time.RFC3339Nano))
	case s.epoch != 0:
		return nil
	case s.lastRead.IsZero():
		return fmt.Errorf("%w: standby has not read the lease authority yet", ErrNotReady)
	case now.Sub(s.lastRead) > s.cfg.TakeoverTimeout:
		return fmt.Errorf("%w: standby last read the lease authority %v ago", ErrNotReady, now.Sub(s.lastRead))
	}
	return nil
}

// Epoch returns the authority epoch held, 0 when none.
func (s *Service) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

func (s *Service) activeLocked(now time.Time) bool {
	return !s.closed && s.epoch != 0 && s.loaded && now.Before(s.validUntil)
}

func (s *Service) notActiveErr() error {
	if s.closed {
		return ErrClosed
	}
	return ErrNotActive
}

// ---- lease API (gateway.Lease) ----

// LeaseGrant creates a lease through consensus (which picks the ID and
// raises the TTL to the minimum) and starts its deadline.
func (s *Service) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp, err := s.b.LeaseGrant(ctx, r)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	s.mu.Lock()
	if s.epoch != 0 {
		// A successful grant means the lease is new in consensus: an entry
		// left under the same ID belonged to an earlier lease.
		s.putLocked(resp.GetID(), resp.GetTTL(), now)
	}
	s.mu.Unlock()
	return resp, nil
}

// LeaseRevoke revokes a lease through consensus (a user revoke: not
// fenced) and forgets its deadline.
func (s *Service) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := s.b.LeaseRevoke(ctx, r)
	if err == nil || errors.Is(err, storage.ErrLeaseNotFound) {
		s.mu.Lock()
		if l := s.leases[r.GetID()]; l != nil {
			s.forgetLocked(l)
		}
		s.mu.Unlock()
	}
	return resp, err
}

// LeaseLeases lists the replicated leases, soonest deadline first as etcd
// lists them (leases this instance does not track come last, by ID).
func (s *Service) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	resp, err := s.b.LeaseLeases(ctx, r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	expiry := make(map[int64]time.Time, len(resp.Leases))
	for _, l := range resp.Leases {
		if tl := s.leases[l.GetID()]; tl != nil {
			expiry[l.GetID()] = tl.expiry
		}
	}
	s.mu.Unlock()
	slices.SortStableFunc(resp.Leases, func(a, b *pb.LeaseStatus) int {
		ea, oka := expiry[a.GetID()]
		eb, okb := expiry[b.GetID()]
		switch {
		case oka && okb && !ea.Equal(eb):
			return ea.Compare(eb)
		case oka != okb:
			if oka {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.GetID(), b.GetID())
	})
	return resp, nil
}

// LeaseKeepAlive renews one lease. A lease that does not exist (or expired)
// is storage.ErrLeaseNotFound; the gateway answers it with TTL 0 as etcd
// does. The header is taken before the renewal, as etcd does, so its
// revision never postdates a revoke the renewal missed.
func (s *Service) LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	ctx, span := s.cfg.Tracing.Start(ctx, "lease_renew", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int64("id", r.GetID())}
	})
	defer span.End()
	h := s.b.Header()
	ttl, err := s.KeepAlive(ctx, r.GetID())
	if err != nil {
		return nil, err
	}
	return &pb.LeaseKeepAliveResponse{Header: h, ID: r.GetID(), TTL: ttl}, nil
}

// LeaseTimeToLive reports a lease's remaining and granted TTL (and keys).
// A missing lease is storage.ErrLeaseNotFound; the gateway answers TTL -1.
func (s *Service) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	st, err := s.TimeToLive(ctx, r.GetID(), r.GetKeys())
	if err != nil {
		return nil, err
	}
	return &pb.LeaseTimeToLiveResponse{
		Header: s.b.Header(), ID: st.ID, TTL: st.TTL, GrantedTTL: st.GrantedTTL, Keys: st.Keys,
	}, nil
}

// KeepAlive renews a lease for its full granted TTL and returns that TTL.
// Renewing a lease that expired waits until its revoke completes and then
// reports storage.ErrLeaseNotFound, as etcd's lessor does, so a client
// told "not found" also sees the keys gone.
func (s *Service) KeepAlive(ctx context.Context, id int64) (int64, error) {
	for learned := false; ; learned = true {
		now := s.clock.Now()
		s.mu.Lock()
		if !s.activeLocked(now) {
			err := s.notActiveErr()
			s.mu.Unlock()
			return 0, err
		}
		l := s.leases[id]
		if l == nil {
			s.mu.Unlock()
			if learned {
				return 0, storage.ErrLeaseNotFound
			}
			if err := s.learn(ctx, id); err != nil {
				return 0, err
			}
			continue
		}
		if !now.Before(l.expiry) {
			gone, demoted := l.gone, s.demoteC
			s.mu.Unlock()
			select {
			case <-gone:
				return 0, storage.ErrLeaseNotFound
			case <-demoted:
				return 0, s.notActiveErrNow()
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		l.expiry = now.Add(time.Duration(l.ttl) * time.Second)
		l.due = l.expiry
		heap.Fix(&s.heap, l.idx)
		ttl := l.ttl
		s.mu.Unlock()
		return ttl, nil
	}
}

func (s *Service) notActiveErrNow() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notActiveErr()
}

// TimeToLive reports a lease's remaining TTL (from the deadline kept here)
// and granted TTL, and with keys the keys attached to it (from consensus).
// It always asks consensus (linearizably) whether the lease still exists:
// a lease revoked through another instance or member stays tracked here
// until the next reconciliation, and etcd, whose lessor applies every
// revoke, answers TTL -1 right after one. A lease found gone is forgotten,
// so its keep-alives fail from then on too. In the split topology the
// lookup also brings the backend's header up to date, so the response's
// revision is as current as etcd's.
func (s *Service) TimeToLive(ctx context.Context, id int64, keys bool) (LeaseStatus, error) {
	for learned := false; ; learned = true {
		now := s.clock.Now()
		s.mu.Lock()
		if !s.activeLocked(now) {
			err := s.notActiveErr()
			s.mu.Unlock()
			return LeaseStatus{}, err
		}
		l := s.leases[id]
		if l == nil {
			s.mu.Unlock()
			if learned {
				return LeaseStatus{}, storage.ErrLeaseNotFound
			}
			if err := s.learn(ctx, id); err != nil {
				return LeaseStatus{}, err
			}
			continue
		}
		st := LeaseStatus{ID: id, TTL: int64(l.expiry.Sub(now).Seconds()), GrantedTTL: l.ttl}
		s.mu.Unlock()
		li, ok, err := s.b.Lease(ctx, id)
		if err != nil {
			return LeaseStatus{}, err
		}
		if !ok {
			s.mu.Lock()
			// A grant since the lookup made a new entry: that one stays.
			if s.leases[id] == l {
				s.forgetLocked(l)
			}
			s.mu.Unlock()
			return LeaseStatus{}, storage.ErrLeaseNotFound
		}
		if keys {
			st.Keys = li.Keys
		}
		return st, nil
	}
}

// learn looks up a lease this instance does not track (granted through
// another instance, or after the last load) and tracks it with a full TTL.
func (s *Service) learn(ctx context.Context, id int64) error {
	li, ok, err := s.b.Lease(ctx, id)
	if err != nil {
		return err
	}
	// Another lease than the one asked for must not be tracked (and its
	// deadline reset) under its own ID.
	if !ok || li.ID != id {
		return storage.ErrLeaseNotFound
	}
	now := s.clock.Now()
	s.mu.Lock()
	if s.activeLocked(now) && s.leases[id] == nil {
		s.putLocked(id, li.TTL, now)
	}
	s.mu.Unlock()
	return nil
}

// putLocked tracks a lease with a full TTL from now, replacing any entry
// under the same ID.
func (s *Service) putLocked(id, ttl int64, now time.Time) {
	if old := s.leases[id]; old != nil {
		s.forgetLocked(old)
	}
	s.seq++
	exp := now.Add(time.Duration(ttl) * time.Second)
	l := &lease{id: id, ttl: ttl, expiry: exp, due: exp, seq: s.seq, gone: make(chan struct{})}
	s.leases[id] = l
	heap.Push(&s.heap, l)
}

// forgetLocked stops tracking l and wakes keep-alives waiting for it.
func (s *Service) forgetLocked(l *lease) {
	if s.leases[l.id] == l {
		delete(s.leases, l.id)
	}
	if l.idx >= 0 {
		heap.Remove(&s.heap, l.idx)
	}
	close(l.gone)
}

// refreshLocked gives every lease a full TTL from now (takeover).
func (s *Service) refreshLocked(now time.Time) {
	for _, l := range s.leases {
		l.expiry = now.Add(time.Duration(l.ttl) * time.Second)
		l.due = l.expiry
	}
	heap.Init(&s.heap)
}

// demote drops the authority and every deadline; keep-alives waiting on an
// expired lease get ErrNotActive.
func (s *Service) demote(reason string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch == 0 && len(s.leases) == 0 {
		return
	}
	if s.loaded {
		s.activeC = make(chan struct{})
	}
	close(s.demoteC)
	s.demoteC = make(chan struct{})
	s.lg.Info("lease authority given up", "epoch", s.epoch, "reason", reason, "error", err)
	s.epoch, s.loaded, s.validUntil = 0, false, time.Time{}
	s.leases = make(map[int64]*lease)
	s.heap = nil
}

// consensus.Node is the in-process backend.
var _ Backend = (*consensus.Node)(nil)

// Header returns a response header as of now (gateway.Lease).
func (s *Service) Header() *pb.ResponseHeader { return s.b.Header() }
