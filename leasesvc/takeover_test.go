package leasesvc

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/consensus"
)

// startConsensus starts a single-member consensus node with fast raft ticks
// (its minimum lease TTL is 1s).
func startConsensus(t testing.TB) *consensus.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := consensus.Start(ctx, consensus.Config{
		Name:              "n1",
		DataDir:           t.TempDir(),
		HeartbeatInterval: 10 * time.Millisecond,
		ElectionTimeout:   100 * time.Millisecond,
		Logger:            discardLogger(),
	})
	if err != nil {
		t.Fatalf("consensus.Start: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// fastConfig is a real-clock Config with short intervals.
func fastConfig(holder string) Config {
	return Config{
		Holder:              holder,
		CheckInterval:       10 * time.Millisecond,
		RenewInterval:       50 * time.Millisecond,
		TakeoverTimeout:     400 * time.Millisecond,
		RevokeRetryInterval: 200 * time.Millisecond,
		Logger:              discardLogger(),
	}
}

// runService runs s until the test ends (or it is closed earlier).
func runService(t *testing.T, s *Service) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = s.Close()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func keyExists(t *testing.T, n *consensus.Node, key string) bool {
	t.Helper()
	r, err := n.Range(context.Background(), &pb.RangeRequest{Key: []byte(key), Serializable: true})
	if err != nil {
		t.Fatalf("Range(%q): %v", key, err)
	}
	return len(r.Kvs) == 1
}

// Two leasesvc instances against one consensus: the active one is killed.
// No lease expires earlier than its holder could expect, a lease kept alive
// through the new instance survives, and an abandoned lease expires after
// the takeover, all its keys in one revision.
func TestKillActiveLeaseServiceTakeover(t *testing.T) {
	n := startConsensus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	a := newService(t, fastConfig("a"), n)
	runService(t, a)
	if err := a.WaitActive(ctx); err != nil {
		t.Fatal(err)
	}
	b := newService(t, fastConfig("b"), n)
	runService(t, b)

	grantPut := func(ttl int64, keys ...string) int64 {
		resp, err := a.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte("v"), Lease: resp.ID}); err != nil {
				t.Fatal(err)
			}
		}
		return resp.ID
	}
	const abandonedTTL, keptTTL = 2, 1
	abandoned := grantPut(abandonedTTL, "abandoned/1", "abandoned/2")
	kept := grantPut(keptTTL, "kept")

	// Both are kept alive through a for a while; b stays a standby.
	var promised time.Time // the latest deadline a promised for abandoned
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		if _, err := a.KeepAlive(ctx, kept); err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		if _, err := a.KeepAlive(ctx, abandoned); err != nil {
			t.Fatal(err)
		}
		promised = before.Add(abandonedTTL * time.Second)
	}
	if b.Active() || b.Epoch() != 0 {
		t.Fatal("standby became active while the authority was renewed")
	}
	revAtKill := n.Store().Rev()
	if err := a.Close(); err != nil { // kill the active instance
		t.Fatal(err)
	}
	killed := time.Now()

	// The client of kept retries its keep-alives until b answers; nobody
	// keeps abandoned alive any more.
	var tookOver, deleted time.Time
	lastKept := killed
	for time.Since(killed) < 4*time.Second {
		exists := keyExists(t, n, "abandoned/1")
		if exists != keyExists(t, n, "abandoned/2") {
			t.Fatal("the keys of one lease were not deleted together")
		}
		if time.Now().Before(promised) && !exists {
			t.Fatalf("abandoned lease expired %v before the deadline its holder was promised", time.Until(promised))
		}
		if !exists && deleted.IsZero() {
			deleted = time.Now()
		}
		if time.Since(lastKept) >= 300*time.Millisecond || tookOver.IsZero() {
			_, err := b.KeepAlive(ctx, kept)
			switch {
			case err == nil:
				if tookOver.IsZero() {
					tookOver = time.Now()
				}
				lastKept = time.Now()
			case errors.Is(err, ErrNotActive):
			default:
				t.Fatalf("keep-alive through b: %v", err)
			}
		}
		if !keyExists(t, n, "kept") {
			t.Fatalf("kept-alive lease expired %v after the kill (took over after %v)", time.Since(killed), tookOver.Sub(killed))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if tookOver.IsZero() || b.Epoch() != 2 {
		t.Fatalf("b did not take over (epoch %d)", b.Epoch())
	}
	if d := tookOver.Sub(killed); d < 300*time.Millisecond {
		t.Fatalf("b took over %v after the kill, before TakeoverTimeout could pass", d)
	}
	auth, err := n.LeaseAuthority(ctx)
	if err != nil || auth.Holder != "b" || auth.Epoch != 2 {
		t.Fatalf("authority = %+v, %v", auth, err)
	}
	// The abandoned lease expired after the takeover, about one TTL later,
	// both keys in a single revision.
	if keyExists(t, n, "abandoned/1") {
		t.Fatal("abandoned lease never expired after the takeover")
	}
	if _, ok := n.Store().Lease(abandoned); ok {
		t.Fatal("abandoned lease still exists")
	}
	if d := deleted.Sub(tookOver); d < abandonedTTL*time.Second-100*time.Millisecond || d > (abandonedTTL+1)*time.Second {
		t.Fatalf("abandoned lease deleted %v after the takeover, want about its TTL (%ds)", d, abandonedTTL)
	}
	evs, err := n.Store().RangeEvents(revAtKill+1, 0, []byte("abandoned/"), []byte("abandoned0"))
	if err != nil || len(evs) != 1 || len(evs[0].Events) != 2 ||
		evs[0].Events[0].Type != mvccpb.Event_DELETE || evs[0].Events[1].Type != mvccpb.Event_DELETE {
		t.Fatalf("deletion history = %v, %v; want one revision with both deletes", evs, err)
	}
	// kept has now outlived 3x its TTL through the takeover.
	if time.Since(killed) < 3*keptTTL*time.Second || !keyExists(t, n, "kept") {
		t.Fatal("kept lease did not survive 3x its TTL")
	}
}

// The deposed instance, were it to propose a revoke, is fenced at apply.
func TestDeposedInstanceRevokesNothing(t *testing.T) {
	n := startConsensus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := newService(t, fastConfig("a"), n)
	a.authorityStep(ctx)
	if !a.Active() {
		t.Fatal("a not active")
	}
	resp, err := a.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k"), Lease: resp.ID}); err != nil {
		t.Fatal(err)
	}
	// b takes epoch 2 (a is partitioned and does not know).
	if _, err := n.AcquireLeaseAuthority(ctx, "b", 2, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the lease is past its deadline on a
	// a still believes it holds the authority (its clock, say, stalled).
	a.mu.Lock()
	a.validUntil = time.Now().Add(time.Hour)
	a.mu.Unlock()
	a.expireStep(ctx)
	if !keyExists(t, n, "k") {
		t.Fatal("a deposed instance revoked a lease")
	}
	if a.Epoch() != 0 {
		t.Fatal("a did not step down after its revoke was fenced")
	}
}
