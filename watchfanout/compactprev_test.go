package watchfanout_test

import (
	"testing"

	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// TestPrevKVAtCompactionRevision: a prev_kv watch from exactly the compaction
// revision, caught up from the hub's cache, gets that revision's event
// without prev_kv (etcd reads it at revision-1, which is compacted) and the
// later ones with it. k8s's etcd3 watcher relies on it: its WatchFromZero
// conformance test expects an error event, not a MODIFIED one, for a watch
// from a compacted resource version (tests/k8s).
func TestPrevKVAtCompactionRevision(t *testing.T) {
	e := newEnv(t, envOpt{})
	var revs []int64
	for range 4 {
		revs = append(revs, e.model.Put("k", "v"))
	}
	crev := revs[2]
	if err := e.model.Compact(crev); err != nil {
		t.Fatal(err)
	}
	c := e.client()
	cr := c.createWait(watchtest.Watch{Key: []byte("k"), StartRevision: crev, PrevKV: true})
	if cr.Canceled {
		t.Fatalf("watch at the compaction revision canceled: %v", cr)
	}
	c.waitEventRev(cr.WatchId, revs[3])
	prev := map[int64]bool{}
	for _, r := range c.Responses() {
		for _, ev := range r.Events {
			prev[ev.Kv.ModRevision] = ev.PrevKv != nil
		}
	}
	if len(prev) != 2 || prev[crev] || !prev[revs[3]] {
		t.Fatalf("prev_kv present by revision = %v; want none at %d (compacted revision-1), one at %d", prev, crev, revs[3])
	}
}
