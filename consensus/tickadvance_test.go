package consensus

import (
	"fmt"
	"testing"
)

// A member of several fast-forwards its election clock by the election
// timeout less two ticks once more than one peer is active and no leader
// is known (etcd's initial election tick advance), unless it is turned off;
// with one peer (a cluster of two) it never does, as in etcd. The election
// timeout is long (100 ticks) so that members starting a moment apart all
// find their peers before any of them could campaign.
func TestInitialElectionTickAdvance(t *testing.T) {
	for _, tc := range []struct {
		size    int
		disable bool
		want    bool
	}{{3, false, true}, {3, true, false}, {2, false, false}} {
		t.Run(fmt.Sprintf("members=%d,disabled=%v", tc.size, tc.disable), func(t *testing.T) {
			c := newTestCluster(t, tc.size, func(cfg *Config) {
				cfg.ElectionTimeout = 100 * testHeartbeat
				cfg.DisableInitialElectionTickAdvance = tc.disable
			})
			// The advance is decided at the latest when a leader is known or
			// its wait runs out; the cluster elects a leader either way.
			c.leader()
			advanced := 0
			for _, n := range c.nodes {
				got := make(chan int, 1)
				n.execC <- func() { got <- n.advancedTicks }
				switch a := <-got; a {
				case 0:
				case 98:
					advanced++
				default:
					t.Fatalf("a member advanced %d ticks, want 0 or 98", a)
				}
			}
			if (advanced > 0) != tc.want {
				t.Fatalf("%d of %d members advanced their election clock, want some: %v", advanced, tc.size, tc.want)
			}
		})
	}
}
