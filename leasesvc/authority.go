package leasesvc

import (
	"context"
	"errors"
	"time"

	"github.com/concord-kv/concord/consensus"
)

// authorityLoop acquires, renews and, when deposed, drops the lease
// authority. The holder renews every RenewInterval, counted from the start
// of the previous renewal so a slow one does not stretch the cadence; a
// standby looks at the record every RenewInterval and, besides, wakes at
// the exact moment the record it watches has gone unrenewed for
// TakeoverTimeout, so a takeover is not delayed by a coarse poll.
func (s *Service) authorityLoop(ctx context.Context) {
	for {
		start := s.clock.Now()
		s.authorityStep(ctx)
		select {
		case <-s.clock.After(s.nextStep(start)):
		case <-ctx.Done():
			return
		}
	}
}

// nextStep is how long the authority loop waits after a round that started
// at start.
func (s *Service) nextStep(start time.Time) time.Duration {
	now := s.clock.Now()
	wait := start.Add(s.cfg.RenewInterval).Sub(now)
	s.mu.Lock()
	standby := s.epoch == 0
	s.mu.Unlock()
	if standby && s.observed && s.lastSeen.Epoch != 0 {
		wait = min(wait, s.lastChange.Add(s.cfg.TakeoverTimeout).Sub(now))
	}
	return max(wait, 0)
}

// authorityStep is one round of the authority loop.
func (s *Service) authorityStep(ctx context.Context) {
	s.mu.Lock()
	epoch, loaded := s.epoch, s.loaded
	s.mu.Unlock()
	if epoch == 0 {
		s.standbyStep(ctx)
		return
	}
	if !s.renew(ctx, epoch) {
		return
	}
	if !loaded {
		s.load(ctx, epoch)
		return
	}
	if now := s.clock.Now(); now.Sub(s.lastReconcile) >= s.cfg.ReconcileInterval {
		s.reconcile(ctx, epoch)
	}
}

// standbyStep watches the authority record and takes the authority over
// when nobody holds it, when it names this instance at start (a restart),
// or when it has not been renewed for TakeoverTimeout. Only raft-applied
// state is compared (the record changes with every renewal), and elapsed
// time is measured on this instance's own clock, never across machines.
func (s *Service) standbyStep(ctx context.Context) {
	a, err := s.b.LeaseAuthority(ctx)
	if err != nil {
		s.lg.Debug("reading the lease authority failed", "error", err)
		return
	}
	now := s.clock.Now()
	s.mu.Lock()
	s.lastRead = now
	s.mu.Unlock()
	first := !s.observed
	if first || a != s.lastSeen {
		s.observed, s.lastSeen, s.lastChange = true, a, now
	}
	switch {
	case a.Epoch == 0:
	case first && a.Holder == s.cfg.Holder:
	case now.Sub(s.lastChange) >= s.cfg.TakeoverTimeout:
		s.lg.Warn("lease authority not renewed; taking over",
			"holder", a.Holder, "epoch", a.Epoch, "unrenewed-for", now.Sub(s.lastChange))
	default:
		return
	}
	start := s.clock.Now()
	// Conditional on the record being the one watched: a renewal this
	// instance did not see makes the acquisition fail (consensus
	// AcquireLeaseAuthority). So the holder's last successful renewal began
	// before lastChange, and its last answered keep-alive (before that
	// start plus TakeoverTimeout-RenewInterval) precedes this takeover by at
	// least RenewInterval.
	na, err := s.b.AcquireLeaseAuthority(ctx, s.cfg.Holder, a.Epoch+1, a.RenewedIndex)
	if err != nil {
		// Lost a race or missed a renewal (ErrStaleEpoch), or consensus is
		// unavailable; the next round observes the record again.
		s.lg.Info("acquiring the lease authority failed", "epoch", a.Epoch+1, "error", err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.epoch, s.loaded = na.Epoch, false
	s.validUntil = start.Add(s.cfg.TakeoverTimeout - s.cfg.RenewInterval)
	s.mu.Unlock()
	s.lg.Info("lease authority acquired", "epoch", na.Epoch, "previous-holder", a.Holder, "previous-epoch", a.Epoch)
	s.load(ctx, na.Epoch)
}

// renew renews the authority; it reports false when the authority is lost.
func (s *Service) renew(ctx context.Context, epoch uint64) bool {
	start := s.clock.Now()
	// A renewal that completes after the validity it would grant has ended
	// is no use; bounding it lets the next round try again (consensus may
	// have a new leader by then) instead of hanging on a lost proposal.
	rctx, cancel := context.WithTimeout(ctx, s.cfg.TakeoverTimeout-s.cfg.RenewInterval)
	_, err := s.b.RenewLeaseAuthority(rctx, s.cfg.Holder, epoch)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, consensus.ErrStaleEpoch):
		s.demote("deposed", err)
		return false
	default:
		// Keep-alives stop being answered when validUntil passes; expiries
		// pause too, since fencing would reject them if a standby took over.
		s.lg.Warn("renewing the lease authority failed", "epoch", epoch, "error", err)
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != epoch {
		return false
	}
	now := s.clock.Now()
	lapsed := s.loaded && !now.Before(s.validUntil)
	s.validUntil = start.Add(s.cfg.TakeoverTimeout - s.cfg.RenewInterval)
	if lapsed {
		// Keep-alives were refused for a while: nobody could keep a lease
		// alive, so every lease starts over, as after a takeover.
		s.refreshLocked(now)
		s.lg.Info("lease authority renewed after a lapse; every lease refreshed", "epoch", epoch, "leases", len(s.leases))
	}
	return true
}

// load reads every lease from consensus after the authority was acquired
// and gives each a full TTL from now, then starts serving.
func (s *Service) load(ctx context.Context, epoch uint64) {
	ls, err := s.b.Leases(ctx)
	if err != nil {
		s.lg.Warn("loading leases failed; retrying", "epoch", epoch, "error", err)
		return
	}
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != epoch || s.loaded {
		return
	}
	for _, li := range ls {
		// Grants forwarded since the acquisition are tracked already.
		if s.leases[li.ID] == nil {
			s.putLocked(li.ID, li.TTL, now)
		}
	}
	s.loaded = true
	s.lastReconcile = now
	close(s.activeC)
	s.lg.Info("lease authority active; every lease refreshed", "epoch", epoch, "leases", len(s.leases))
}

// reconcile compares the tracked leases with the replicated ones: leases
// granted through another instance are tracked (full TTL), and leases
// revoked elsewhere are dropped, unless they were added after the listing
// started.
func (s *Service) reconcile(ctx context.Context, epoch uint64) {
	s.mu.Lock()
	seq := s.seq
	s.mu.Unlock()
	ls, err := s.b.Leases(ctx)
	if err != nil {
		s.lg.Debug("reconciling leases failed", "error", err)
		return
	}
	now := s.clock.Now()
	s.lastReconcile = now
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epoch != epoch || !s.loaded {
		return
	}
	present := make(map[int64]struct{}, len(ls))
	added, dropped := 0, 0
	for _, li := range ls {
		present[li.ID] = struct{}{}
		if s.leases[li.ID] == nil {
			s.putLocked(li.ID, li.TTL, now)
			added++
		}
	}
	for id, l := range s.leases {
		if _, ok := present[id]; !ok && l.seq <= seq {
			s.forgetLocked(l)
			dropped++
		}
	}
	if added+dropped > 0 {
		s.lg.Info("reconciled leases with consensus", "added", added, "dropped", dropped)
	}
}
