package e2e

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestAutoCompactionPeriodic starts etcd and concord with
// --auto-compaction-mode=periodic --auto-compaction-retention=1s and
// requires both to compact old revisions on their own, keeping the recent
// ones.
func TestAutoCompactionPeriodic(t *testing.T) {
	forEachImpl(t, serverOptions{extra: []string{"--auto-compaction-mode=periodic", "--auto-compaction-retention=1s"}}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		first := must(c.Put(ctx, "k", "0"))(t).Header.Revision
		deadline := time.Now().Add(20 * time.Second)
		for i := 1; ; i++ {
			last := must(c.Put(ctx, "k", fmt.Sprint(i)))(t).Header.Revision
			_, err := c.Get(ctx, "k", clientv3.WithRev(first))
			if errors.Is(err, rpctypes.ErrCompacted) {
				// The newest revision stays readable.
				if r := must(c.Get(ctx, "k", clientv3.WithRev(last)))(t); len(r.Kvs) != 1 || r.Kvs[0].ModRevision != last {
					t.Fatalf("latest revision %d after compaction: %v", last, r.Kvs)
				}
				return
			}
			if err != nil {
				t.Fatalf("get at revision %d: %v", first, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("revision %d still readable %v after start, %d revisions later", first, 20*time.Second, last-first)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
