package leasesvc

import (
	"container/heap"
	"context"
	"errors"

	"github.com/concord-kv/concord/consensus"
)

// expiryLoop revokes expired leases every CheckInterval, or right away
// while full batches keep coming.
func (s *Service) expiryLoop(ctx context.Context) {
	for {
		if s.expireStep(ctx) {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		select {
		case <-s.clock.After(s.cfg.CheckInterval):
		case <-ctx.Done():
			return
		}
	}
}

// expireStep proposes one fenced revoke for the leases past their deadline,
// as many as the rate limit and MaxRevokeBatch allow. It reports whether it
// sent a full batch (more may be waiting).
func (s *Service) expireStep(ctx context.Context) bool {
	now := s.clock.Now()
	s.mu.Lock()
	if !s.activeLocked(now) {
		s.mu.Unlock()
		return false
	}
	// The epsilon keeps float rounding from losing a whole token.
	budget := min(int(s.limiter.TokensAt(now)+1e-9), s.cfg.MaxRevokeBatch)
	var batch []*lease
	for len(batch) < budget && len(s.heap) > 0 && !s.heap[0].due.After(now) {
		l := s.heap[0]
		// Stays tracked (keep-alives wait for it) until the revoke is
		// applied; if it is not, it is proposed again after the retry
		// interval, as etcd's lessor does.
		l.due = now.Add(s.cfg.RevokeRetryInterval)
		heap.Fix(&s.heap, 0)
		batch = append(batch, l)
	}
	if len(batch) == 0 {
		s.mu.Unlock()
		return false
	}
	s.limiter.ReserveN(now, len(batch)) // always fits: len(batch) <= tokens <= burst
	epoch := s.epoch
	s.mu.Unlock()

	ids := make([]int64, len(batch))
	for i, l := range batch {
		ids[i] = l.id
	}
	res, err := s.b.RevokeExpiredLeases(ctx, epoch, ids)
	switch {
	case errors.Is(err, consensus.ErrStaleEpoch):
		s.demote("deposed", err)
		return false
	case err != nil:
		if ctx.Err() == nil {
			s.lg.Warn("revoking expired leases failed; will retry", "leases", len(ids), "error", err)
		}
		return false
	}
	s.mu.Lock()
	if s.epoch == epoch {
		for _, l := range batch {
			if s.leases[l.id] == l {
				s.forgetLocked(l)
			}
		}
	}
	s.mu.Unlock()
	s.lg.Debug("revoked expired leases", "revoked", len(res.Revoked), "already-gone", len(res.NotFound), "revision", res.Revision)
	return len(batch) == s.cfg.MaxRevokeBatch
}
