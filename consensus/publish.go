package consensus

import (
	"time"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/storage"
)

// publish hands the revisions a committed batch produced to the event bus.
// It runs on the raft loop after the batch is durable, so the bus only ever
// carries committed history, in order.
func (n *Node) publish(revs []storage.RevisionEvents) {
	if !n.publishes() || len(revs) == 0 {
		return
	}
	out := busRevisions(revs)
	if err := n.cfg.Events.Publish(n.busCtx, out); err != nil {
		// Watchers and leases repair lost revisions from history; a lost
		// message costs latency, not correctness.
		n.lg.Warn("publishing committed events failed", "first-revision", out[0].Rev, "error", err)
	}
	n.lastBeat = time.Now()
}

// maybeBeat publishes the current revision when nothing was published for
// ProgressInterval, so consumers notice a lost last message quickly.
func (n *Node) maybeBeat(now time.Time) {
	if !n.publishes() || now.Sub(n.lastBeat) < n.cfg.ProgressInterval {
		return
	}
	n.lastBeat = now
	if err := n.cfg.Events.PublishProgress(n.busCtx, n.store.Rev()); err != nil {
		n.lg.Debug("publishing a progress beat failed", "error", err)
	}
}

// publishes tells whether this member publishes now (Config.Events,
// Config.EventsFromLeaderOnly). Raft loop only: the leader it reads is the
// one of the Ready being handled.
func (n *Node) publishes() bool {
	return n.cfg.Events != nil && (!n.cfg.EventsFromLeaderOnly || n.leader.Load() == n.memberID)
}

// busRevisions converts the store's revision groups to the bus's; the events
// themselves are shared, not copied.
func busRevisions(revs []storage.RevisionEvents) []eventbus.Revision {
	out := make([]eventbus.Revision, len(revs))
	for i, r := range revs {
		out[i] = eventbus.Revision{Rev: r.Revision, Events: r.Events}
	}
	return out
}
