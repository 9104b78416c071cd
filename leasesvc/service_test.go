package leasesvc

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.uber.org/goleak"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/internal/clocktest"
	"github.com/concord-kv/concord/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigDefaultsAndValidate(t *testing.T) {
	var c Config
	c.SetDefaults()
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("config without Holder: %v, want ErrInvalidConfig", err)
	}
	c.Holder = "h"
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.MaxRevokesPerSecond != 1000 || c.CheckInterval != DefaultCheckInterval || c.TakeoverTimeout != DefaultTakeoverTimeout {
		t.Fatalf("defaults = %+v", c)
	}
	bad := c
	bad.TakeoverTimeout = 2 * bad.RenewInterval
	if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("takeover shorter than 3 renewals: %v", err)
	}
	bad = c
	bad.MaxRevokesPerSecond = -1
	if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative revoke rate: %v", err)
	}
	if _, err := New(Config{Holder: "h"}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil backend: %v", err)
	}
}

func TestExpiryOrder(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	ttls := []int64{5, 2, 8, 3}
	ids := make([]int64, len(ttls))
	for i, ttl := range ttls {
		ids[i] = grant(t, s, ttl)
	}
	want := []int64{ids[1], ids[3], ids[0], ids[2]} // by TTL: 2, 3, 5, 8
	count := func(pred func(ttl int64) bool) int {
		n := 0
		for _, ttl := range ttls {
			if pred(ttl) {
				n++
			}
		}
		return n
	}
	for sec := int64(1); sec <= 9; sec++ {
		// A millisecond before each second nothing of that second is
		// revoked yet; at the second it is.
		advance(clk, time.Second-time.Millisecond, s)
		s.expireStep(ctx)
		if got, want := len(b.revoked()), count(func(ttl int64) bool { return ttl < sec }); got != want {
			t.Fatalf("1ms before %ds: %d revoked, want %d", sec, got, want)
		}
		advance(clk, time.Millisecond, s)
		s.expireStep(ctx)
		if got, want := len(b.revoked()), count(func(ttl int64) bool { return ttl <= sec }); got != want {
			t.Fatalf("at %ds: %d revoked, want %d", sec, got, want)
		}
	}
	if got := b.revoked(); !slices.Equal(got, want) {
		t.Fatalf("revoke order = %v, want %v", got, want)
	}
	for _, id := range ids {
		if b.exists(id) {
			t.Fatalf("lease %d still exists", id)
		}
	}
}

func TestKeepAliveRefreshesAndTimeToLive(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 5)
	b.attach(id, "k2")
	b.attach(id, "k1")

	advance(clk, 4*time.Second, s)
	st, err := s.TimeToLive(ctx, id, true)
	if err != nil || st.TTL != 1 || st.GrantedTTL != 5 || len(st.Keys) != 2 || string(st.Keys[0]) != "k1" {
		t.Fatalf("TimeToLive at 4s = %+v, %v; want TTL 1 of 5 with keys [k1 k2]", st, err)
	}
	advance(clk, 500*time.Millisecond, s)
	if st, _ := s.TimeToLive(ctx, id, false); st.TTL != 0 || st.Keys != nil {
		t.Fatalf("TimeToLive at 4.5s = %+v, want TTL 0 (truncated) without keys", st)
	}
	ttl, err := s.KeepAlive(ctx, id)
	if err != nil || ttl != 5 {
		t.Fatalf("KeepAlive = %d, %v; want 5", ttl, err)
	}
	resp, err := s.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: id})
	if err != nil || resp.TTL != 5 || resp.ID != id || resp.Header.GetClusterId() != 1 {
		t.Fatalf("LeaseKeepAlive = %v, %v", resp, err)
	}
	advance(clk, 4900*time.Millisecond, s) // 9.4s: past the original deadline
	s.expireStep(ctx)
	if !b.exists(id) {
		t.Fatal("a kept-alive lease expired at its original deadline")
	}
	if st, _ := s.TimeToLive(ctx, id, false); st.TTL != 0 {
		t.Fatalf("remaining TTL just before the renewed deadline = %d, want 0", st.TTL)
	}
	advance(clk, 100*time.Millisecond, s) // renewed deadline 4.5+5 = 9.5s
	s.expireStep(ctx)
	if b.exists(id) {
		t.Fatal("lease not revoked at its renewed deadline")
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	if _, err := s.TimeToLive(ctx, id, true); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("TimeToLive of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
	if _, err := s.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id}); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("LeaseTimeToLive of a revoked lease: %v, want ErrLeaseNotFound", err)
	}
}

// A keep-alive for a lease past its deadline waits for the revoke and then
// reports not found, as etcd's lessor does: the client never hears "alive"
// for a lease whose keys are about to vanish.
func TestKeepAliveOfExpiredLeaseWaitsForRevoke(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 2)
	advance(clk, 2*time.Second, s)
	errc := make(chan error, 1)
	go func() { _, err := s.KeepAlive(ctx, id); errc <- err }()
	select {
	case err := <-errc:
		t.Fatalf("KeepAlive of an expired lease returned %v before its revoke", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.expireStep(ctx)
	if err := <-errc; !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive after the revoke: %v, want ErrLeaseNotFound", err)
	}

	// A waiting keep-alive also ends with the caller's context.
	id2 := grant(t, s, 2)
	advance(clk, 2*time.Second, s)
	cctx, cancel := context.WithCancel(ctx)
	go func() { _, err := s.KeepAlive(cctx, id2); errc <- err }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("KeepAlive with a canceled context: %v", err)
	}
}

func TestUserRevokeForgetsDeadline(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 10)
	b.attach(id, "k")
	if _, err := s.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	if b.exists(id) {
		t.Fatal("user revoke did not reach consensus")
	}
	if _, err := s.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v, want ErrLeaseNotFound", err)
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive after revoke: %v", err)
	}
	advance(clk, 11*time.Second, s)
	s.expireStep(ctx)
	if got := b.revoked(); len(got) != 0 {
		t.Fatalf("expiry revoked %v after a user revoke", got)
	}
	if n := len(s.heap); n != 0 {
		t.Fatalf("heap holds %d leases after revoke", n)
	}
	ll, err := s.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil || len(ll.Leases) != 0 {
		t.Fatalf("LeaseLeases = %v, %v", ll, err)
	}
}

// A re-grant of a revoked lease ID starts a new deadline (the old entry
// must not shadow it).
func TestRegrantSameID(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	if _, err := s.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 2}); !errors.Is(err, storage.ErrLeaseExists) {
		t.Fatalf("duplicate grant: %v", err)
	}
	advance(clk, 2*time.Second, s)
	s.expireStep(ctx)
	if _, err := s.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 7, TTL: 10}); err != nil {
		t.Fatal(err)
	}
	if st, err := s.TimeToLive(ctx, 7, false); err != nil || st.GrantedTTL != 10 || st.TTL != 10 {
		t.Fatalf("TimeToLive of the re-granted lease = %+v, %v", st, err)
	}
}

func TestRevokeRateLimitAndBatches(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	cfg := testConfig("a", clk)
	cfg.MaxRevokesPerSecond = 100 // burst 50
	cfg.MaxRevokeBatch = 20
	s := activeService(t, cfg, b)
	ctx := context.Background()
	for range 1000 {
		grant(t, s, 5)
	}
	advance(clk, 5*time.Second, s)
	// The burst is spent in full batches, then nothing until tokens refill.
	for i, want := range []int{20, 20, 10, 0} {
		more := s.expireStep(ctx)
		if got := len(b.revoked()); got != []int{20, 40, 50, 50}[i] || more != (want == 20) {
			t.Fatalf("step %d: %d revoked (more=%v)", i, got, more)
		}
	}
	advance(clk, 100*time.Millisecond, s)
	s.expireStep(ctx)
	if got := len(b.revoked()); got != 60 {
		t.Fatalf("after 100ms more: %d revoked, want 60 (100/s)", got)
	}
	// Over one simulated second the rate holds, then the rest drains.
	for range 10 {
		advance(clk, 100*time.Millisecond, s)
		for s.expireStep(ctx) {
		}
	}
	if got := len(b.revoked()); got != 160 {
		t.Fatalf("one second later: %d revoked, want 160 (100/s)", got)
	}
	for range 100 {
		advance(clk, 100*time.Millisecond, s)
		for s.expireStep(ctx) {
		}
	}
	if got := len(b.revoked()); got != 1000 {
		t.Fatalf("revoked %d, want all 1000", got)
	}
	for _, batch := range b.revokes {
		if len(batch) > cfg.MaxRevokeBatch {
			t.Fatalf("batch of %d > MaxRevokeBatch", len(batch))
		}
	}
}

// A revoke that fails (consensus unavailable) is retried after the retry
// interval; the lease stays expired meanwhile.
func TestFailedRevokeIsRetried(t *testing.T) {
	clk := clocktest.New()
	b := &failingRevokes{fakeBackend: newFakeBackend(), fail: 1}
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 2)
	advance(clk, 2*time.Second, s)
	s.expireStep(ctx)
	if !b.exists(id) {
		t.Fatal("failed revoke removed the lease")
	}
	advance(clk, time.Second, s)
	s.expireStep(ctx)
	if b.attempts != 1 {
		t.Fatalf("revoke retried after 1s (attempts %d), want after RevokeRetryInterval", b.attempts)
	}
	advance(clk, 2*time.Second, s)
	s.expireStep(ctx)
	if b.exists(id) || b.attempts != 2 {
		t.Fatalf("lease not revoked on retry (attempts %d)", b.attempts)
	}
}

type failingRevokes struct {
	*fakeBackend
	fail, attempts int
}

func (f *failingRevokes) RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error) {
	f.attempts++
	if f.attempts <= f.fail {
		return consensus.RevokeExpiredResult{}, errInjected
	}
	return f.fakeBackend.RevokeExpiredLeases(ctx, epoch, ids)
}

func TestStandbyForwardsGrantsButRefusesKeepAlives(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	b.auth = consensus.LeaseAuthority{Holder: "other", Epoch: 1, RenewedIndex: 1}
	s := newService(t, testConfig("a", clk), b)
	ctx := context.Background()
	s.authorityStep(ctx)
	if s.Active() || s.Epoch() != 0 {
		t.Fatal("a standby took a held authority at once")
	}
	id := grant(t, s, 10)
	if !b.exists(id) {
		t.Fatal("grant through a standby did not reach consensus")
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, ErrNotActive) {
		t.Fatalf("KeepAlive on a standby: %v, want ErrNotActive", err)
	}
	if _, err := s.TimeToLive(ctx, id, false); !errors.Is(err, ErrNotActive) {
		t.Fatalf("TimeToLive on a standby: %v, want ErrNotActive", err)
	}
	if s.expireStep(ctx) || len(b.revoked()) != 0 {
		t.Fatal("a standby revoked leases")
	}
}

// A lease granted elsewhere (another instance, before this one's load) is
// learned on its first keep-alive or TimeToLive, with a full TTL.
func TestUnknownLeaseIsLearned(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	resp, _ := b.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 7})
	advance(clk, 3*time.Second, s)
	if st, err := s.TimeToLive(ctx, resp.ID, false); err != nil || st.TTL != 7 || st.GrantedTTL != 7 {
		t.Fatalf("TimeToLive of a lease granted elsewhere = %+v, %v", st, err)
	}
	if ttl, err := s.KeepAlive(ctx, 999); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive of a lease nobody granted = %d, %v", ttl, err)
	}
}

// A lease revoked through another instance (or member) is gone for
// TimeToLive at once, as in etcd, not only after the next reconciliation;
// and forgotten, so keep-alives fail too.
func TestTimeToLiveOfLeaseRevokedElsewhere(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 100)
	if st, err := s.TimeToLive(ctx, id, false); err != nil || st.TTL != 100 {
		t.Fatalf("TimeToLive before the revoke = %+v, %v", st, err)
	}
	if _, err := b.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}); err != nil { // through another instance
		t.Fatal(err)
	}
	for _, keys := range []bool{false, true} {
		if st, err := s.TimeToLive(ctx, id, keys); !errors.Is(err, storage.ErrLeaseNotFound) {
			t.Fatalf("TimeToLive (keys %v) after a revoke elsewhere = %+v, %v, want ErrLeaseNotFound", keys, st, err)
		}
	}
	if ttl, err := s.KeepAlive(ctx, id); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive after a revoke elsewhere = %d, %v, want ErrLeaseNotFound", ttl, err)
	}
}

// wrongLease answers every lookup with lease 5, as the split topology's
// consensus client once answered lease 0 with the first of every lease.
type wrongLease struct{ *fakeBackend }

func (w wrongLease) Lease(ctx context.Context, _ int64) (storage.LeaseInfo, bool, error) {
	return w.fakeBackend.Lease(ctx, 5)
}

// A TimeToLive or keep-alive of a lease the backend answers with another
// one finds nothing and leaves the other's deadline alone.
func TestLearnIgnoresAnotherLease(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), wrongLease{b})
	ctx := context.Background()
	resp, err := s.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 5, TTL: 100})
	if err != nil {
		t.Fatal(err)
	}
	advance(clk, 10*time.Second, s)
	if st, err := s.TimeToLive(ctx, 0, false); !errors.Is(err, storage.ErrLeaseNotFound) {
		t.Fatalf("TimeToLive of lease 0 = %+v, %v, want ErrLeaseNotFound", st, err)
	}
	if st, err := s.TimeToLive(ctx, resp.ID, false); err != nil || st.TTL != 90 {
		t.Fatalf("TimeToLive of lease 5 after a lookup of lease 0 = %+v, %v, want TTL 90", st, err)
	}
}

func TestReconcile(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	tracked := grant(t, s, 100)
	dropped := grant(t, s, 100)
	b.mu.Lock()
	b.revokeLocked(dropped) // revoked through another instance
	b.mu.Unlock()
	other, _ := b.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 3}) // granted through another instance
	clk.Advance(time.Minute)
	s.authorityStep(ctx) // renews, then reconciles (ReconcileInterval 1m)
	s.mu.Lock()
	_, hasTracked := s.leases[tracked]
	_, hasDropped := s.leases[dropped]
	_, hasOther := s.leases[other.ID]
	s.mu.Unlock()
	if !hasTracked || hasDropped || !hasOther {
		t.Fatalf("after reconcile: tracked=%v dropped=%v other=%v", hasTracked, hasDropped, hasOther)
	}
	advance(clk, 3*time.Second, s)
	s.expireStep(ctx)
	if b.exists(other.ID) {
		t.Fatal("lease learned by reconcile never expires")
	}
}

func TestTakeoverWithNewEpochRefreshesEveryLease(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	ctx := context.Background()
	a := activeService(t, testConfig("a", clk), b)
	sb := newService(t, testConfig("b", clk), b)
	sb.authorityStep(ctx) // first look: a holds epoch 1
	if sb.Active() || a.Epoch() != 1 {
		t.Fatalf("standby active=%v, a epoch %d", sb.Active(), a.Epoch())
	}
	short := grant(t, a, 3)
	long := grant(t, a, 10)
	kept := grant(t, a, 4)

	// a renews for 2s, answering keep-alives.
	for range 2 {
		clk.Advance(time.Second)
		a.authorityStep(ctx)
		sb.authorityStep(ctx)
	}
	if _, err := a.KeepAlive(ctx, kept); err != nil { // kept: promised until 6s
		t.Fatal(err)
	}
	// a stops (crashed or partitioned): no more renewals. It keeps
	// answering keep-alives only until TakeoverTimeout-RenewInterval after
	// its last renewal began (2s + 4s = 6s).
	var takeover time.Duration = 2 * time.Second
	for sb.Epoch() == 0 {
		clk.Advance(time.Second)
		takeover += time.Second
		if takeover < 6*time.Second {
			if _, err := a.KeepAlive(ctx, kept); err != nil {
				t.Fatalf("a refused a keep-alive at %v while still valid: %v", takeover, err)
			}
		} else if _, err := a.KeepAlive(ctx, kept); !errors.Is(err, ErrNotActive) {
			t.Fatalf("a answered a keep-alive at %v, after its validity: %v", takeover, err)
		}
		sb.authorityStep(ctx)
		if takeover > 20*time.Second {
			t.Fatal("standby never took over")
		}
	}
	// The standby watched the record stay unchanged for TakeoverTimeout.
	if takeover < 2*time.Second+5*time.Second {
		t.Fatalf("took over at %v, before the record was unrenewed for TakeoverTimeout", takeover)
	}
	if sb.Epoch() != 2 || !sb.Active() {
		t.Fatalf("new authority epoch %d active=%v", sb.Epoch(), sb.Active())
	}
	if b.auth.Holder != "b" || b.auth.Epoch != 2 {
		t.Fatalf("record = %+v", b.auth)
	}
	// Every lease has a full TTL from the takeover: nothing expires before
	// its holder could expect (kept was promised until 6s, a's last
	// answered keep-alive was before 6s).
	for _, id := range []int64{short, long, kept} {
		st, err := sb.TimeToLive(ctx, id, false)
		granted := map[int64]int64{short: 3, long: 10, kept: 4}[id]
		if err != nil || st.TTL != granted {
			t.Fatalf("after takeover lease %d: %+v, %v; want a full TTL %d", id, st, err, granted)
		}
	}
	// The deposed a: its fenced revokes are rejected and it steps down.
	clk.Advance(3 * time.Second)
	a.mu.Lock()
	a.validUntil = clk.Now().Add(time.Hour) // pretend it still believes it is active
	a.mu.Unlock()
	a.expireStep(ctx)
	if !b.exists(short) {
		t.Fatal("a deposed instance revoked a lease")
	}
	if a.Epoch() != 0 || a.Active() {
		t.Fatal("a deposed instance did not step down after a stale-epoch rejection")
	}
	// The new authority expires abandoned leases on its own schedule.
	sb.authorityStep(ctx)
	sb.expireStep(ctx)
	if b.exists(short) {
		t.Fatal("abandoned lease not expired by the new authority")
	}
	if !b.exists(kept) || !b.exists(long) {
		t.Fatal("a lease expired before its refreshed deadline")
	}
	// a, back, finds itself deposed when it renews.
	a.authorityStep(ctx)
	if a.Epoch() != 0 {
		t.Fatal("deposed instance still holds an epoch")
	}
}

func TestStaleRenewalDemotesAndFailsWaiters(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 2)
	clk.Advance(2 * time.Second)
	errc := make(chan error, 1)
	go func() { _, err := s.KeepAlive(ctx, id); errc <- err }()
	// Someone else takes epoch 2.
	if _, err := b.AcquireLeaseAuthority(ctx, "b", 2, 0); err != nil {
		t.Fatal(err)
	}
	s.authorityStep(ctx)
	if err := <-errc; !errors.Is(err, ErrNotActive) {
		t.Fatalf("waiting keep-alive after demotion: %v, want ErrNotActive", err)
	}
	if s.Epoch() != 0 || !b.exists(id) {
		t.Fatalf("after demotion epoch=%d lease exists=%v", s.Epoch(), b.exists(id))
	}
}

// While renewals fail, keep-alives are refused and nothing expires; once a
// renewal succeeds again every lease gets a full TTL.
func TestRenewalLapseRefreshesLeases(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	id := grant(t, s, 10)
	b.setRenewErr(errInjected)
	for range 12 { // past the validity (4s) and the TTL (10s)
		clk.Advance(time.Second)
		s.authorityStep(ctx)
		s.expireStep(ctx)
	}
	if s.Active() {
		t.Fatal("active after renewals failed for longer than the validity")
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, ErrNotActive) {
		t.Fatalf("KeepAlive during a lapse: %v", err)
	}
	if !b.exists(id) {
		t.Fatal("a lease expired while keep-alives were refused")
	}
	b.setRenewErr(nil)
	s.authorityStep(ctx)
	if st, err := s.TimeToLive(ctx, id, false); err != nil || st.TTL != 10 {
		t.Fatalf("after the lapse: %+v, %v; want a full TTL", st, err)
	}
	advance(clk, 10*time.Second, s)
	s.expireStep(ctx)
	if b.exists(id) {
		t.Fatal("lease not expired after its refreshed TTL")
	}
}

func TestRestartedHolderAcquiresAtOnce(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	b.auth = consensus.LeaseAuthority{Holder: "a", Epoch: 3, RenewedIndex: 9}
	id, _ := b.LeaseGrant(context.Background(), &pb.LeaseGrantRequest{TTL: 5})
	other := newService(t, testConfig("b", clk), b)
	other.authorityStep(context.Background())
	if other.Epoch() != 0 {
		t.Fatal("another holder took a held authority at once")
	}
	s := activeService(t, testConfig("a", clk), b)
	if s.Epoch() != 4 {
		t.Fatalf("restarted holder epoch = %d, want 4", s.Epoch())
	}
	if st, err := s.TimeToLive(context.Background(), id.ID, false); err != nil || st.TTL != 5 {
		t.Fatalf("lease loaded at start: %+v, %v", st, err)
	}
}

func TestRunWithFakeClock(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s, err := New(testConfig("a", clk), b)
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitActive(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v", err)
	}
	id := grant(t, s, 2)
	for b.exists(id) {
		waitUntil(t, "loops parked on the clock", 10*time.Second, func() bool { return clk.Waiters() >= 2 })
		clk.Advance(100 * time.Millisecond)
		if clk.Now().Sub(time.Unix(1_000_000, 0)) > 10*time.Second {
			t.Fatal("lease not revoked by Run")
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.KeepAlive(ctx, id); !errors.Is(err, ErrClosed) {
		t.Fatalf("KeepAlive after Close: %v", err)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrRunning) && !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
}

// Leases are listed soonest deadline first, as etcd lists them.
func TestLeaseLeasesSoonestFirst(t *testing.T) {
	clk, b := clocktest.New(), newFakeBackend()
	s := activeService(t, testConfig("a", clk), b)
	ctx := context.Background()
	l10, l5, l7 := grant(t, s, 10), grant(t, s, 5), grant(t, s, 7)
	untracked, _ := b.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 1})
	if _, err := s.KeepAlive(ctx, l5); err != nil { // same deadline, renewed
		t.Fatal(err)
	}
	ll, err := s.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, l := range ll.Leases {
		got = append(got, l.ID)
	}
	if want := []int64{l5, l7, l10, untracked.ID}; !slices.Equal(got, want) {
		t.Fatalf("LeaseLeases order = %v, want %v", got, want)
	}
}
