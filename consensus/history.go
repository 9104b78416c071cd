package consensus

import (
	"context"
	"fmt"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/storage"
)

// RangeEvents returns the committed history of keys selected by key/end
// (Range conventions) for revisions [from, to], grouped by revision. It is
// what watchers and lease services repair from when the event bus loses or
// reorders messages, so it never returns a shorter history than asked: when
// to is beyond what this member has applied, it first waits for a
// linearizable read barrier, and fails with storage.ErrFutureRev if to is
// beyond the cluster's revision. Below the compaction revision it fails with
// storage.ErrCompacted.
func (n *Node) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	if to > n.store.Rev() {
		if err := n.linearizableReadNotify(ctx); err != nil {
			return nil, err
		}
		if cur := n.store.Rev(); to > cur {
			return nil, fmt.Errorf("consensus: history up to %d requested at revision %d: %w", to, cur, storage.ErrFutureRev)
		}
	}
	if to <= 0 {
		to = n.store.Rev()
	}
	revs, err := n.store.RangeEvents(from, to, key, end)
	if err != nil {
		return nil, err
	}
	return busRevisions(revs), nil
}

// CurrentRevision returns this member's current and compaction revisions.
func (n *Node) CurrentRevision(context.Context) (rev, compactRev int64, err error) {
	if n.stopped() {
		return 0, 0, ErrStopped
	}
	return n.store.Rev(), n.store.CompactRev(), nil
}
