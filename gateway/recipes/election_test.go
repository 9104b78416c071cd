package recipes

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"

	"github.com/concord-kv/concord/consensus"
)

func campaignCall(s *Service, name string, lease int64, value string) func(context.Context) (*v3electionpb.CampaignResponse, error) {
	return func(ctx context.Context) (*v3electionpb.CampaignResponse, error) {
		return s.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte(name), Lease: lease, Value: []byte(value)})
	}
}

func mustCampaign(t *testing.T, s *Service, name string, lease int64, value string) *v3electionpb.LeaderKey {
	t.Helper()
	resp, err := campaignCall(s, name, lease, value)(context.Background())
	if err != nil {
		t.Fatalf("Campaign(%s, %x, %s): %v", name, lease, value, err)
	}
	return resp.Leader
}

func leaderValue(t *testing.T, s *Service, name string) (string, int64) {
	t.Helper()
	resp, err := s.Leader(context.Background(), &v3electionpb.LeaderRequest{Name: []byte(name)})
	if err != nil {
		t.Fatalf("Leader(%s): %v", name, err)
	}
	return string(resp.Kv.Value), resp.Kv.CreateRevision
}

func TestElectionLifecycle(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	ctx := context.Background()
	la := b.grant(30)

	_, err := s.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("el")})
	wantWireErr(t, err, connect.CodeUnknown, "election: no leader")

	resp, err := campaignCall(s, "el", la, "v1")(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l := resp.Leader
	if string(l.Name) != "el" || string(l.Key) != fmt.Sprintf("el/%x", la) || l.Lease != la || l.Rev != resp.Header.Revision {
		t.Fatalf("leader key %+v, header rev %d", l, resp.Header.Revision)
	}
	if v, rev := leaderValue(t, s, "el"); v != "v1" || rev != l.Rev {
		t.Fatalf("leader %q@%d, want v1@%d", v, rev, l.Rev)
	}

	pr, err := s.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: l, Value: []byte("v2")})
	if err != nil {
		t.Fatal(err)
	}
	if pr.Header.Revision != l.Rev+1 {
		t.Fatalf("proclaim header rev %d, want %d", pr.Header.Revision, l.Rev+1)
	}
	if v, rev := leaderValue(t, s, "el"); v != "v2" || rev != l.Rev {
		t.Fatalf("leader %q@%d, want v2@%d", v, rev, l.Rev)
	}

	// A leader key from another leadership (wrong create revision).
	stale := &v3electionpb.LeaderKey{Name: l.Name, Key: l.Key, Rev: l.Rev - 1, Lease: la}
	_, err = s.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: stale, Value: []byte("x")})
	wantWireErr(t, err, connect.CodeUnknown, "election: not leader")
	// Resigning it changes nothing and succeeds, as in etcd.
	if _, err := s.Resign(ctx, &v3electionpb.ResignRequest{Leader: stale}); err != nil {
		t.Fatal(err)
	}
	if v, _ := leaderValue(t, s, "el"); v != "v2" {
		t.Fatalf("leader %q after a stale resign", v)
	}

	rr, err := s.Resign(ctx, &v3electionpb.ResignRequest{Leader: l})
	if err != nil {
		t.Fatal(err)
	}
	if rr.Header.Revision != l.Rev+2 {
		t.Fatalf("resign header rev %d, want %d", rr.Header.Revision, l.Rev+2)
	}
	_, err = s.Leader(ctx, &v3electionpb.LeaderRequest{Name: []byte("el")})
	wantWireErr(t, err, connect.CodeUnknown, "election: no leader")
	_, err = s.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: l, Value: []byte("v3")})
	wantWireErr(t, err, connect.CodeUnknown, "election: not leader")
}

// Leadership passes to the oldest candidate when the leader resigns and
// when its lease expires; the winner's header is that of its campaign txn.
func TestElectionHandover(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb, lc := b.grant(30), b.grant(30), b.grant(30)
	a := mustCampaign(t, s, "h", la, "a")
	bc, _ := async(t, campaignCall(s, "h", lb, "b"))
	waitKeys(t, b, "h/", string(a.Key), fmt.Sprintf("h/%x", lb))
	pending(t, bc, "B's Campaign while A leads")
	if v, _ := leaderValue(t, s, "h"); v != "a" {
		t.Fatalf("leader %q, want a", v)
	}

	if _, err := s.Resign(context.Background(), &v3electionpb.ResignRequest{Leader: a}); err != nil {
		t.Fatal(err)
	}
	rb := await(t, bc)
	if rb.err != nil {
		t.Fatal(rb.err)
	}
	if rb.v.Leader.Rev != rb.v.Header.Revision || string(rb.v.Leader.Key) != fmt.Sprintf("h/%x", lb) {
		t.Fatalf("B's campaign: %+v", rb.v)
	}
	if v, _ := leaderValue(t, s, "h"); v != "b" {
		t.Fatalf("leader %q, want b", v)
	}

	cc, _ := async(t, campaignCall(s, "h", lc, "c"))
	waitKeys(t, b, "h/", fmt.Sprintf("h/%x", lb), fmt.Sprintf("h/%x", lc))
	pending(t, cc, "C's Campaign while B leads")
	b.revoke(lb) // B's session expires
	if rc := await(t, cc); rc.err != nil {
		t.Fatal(rc.err)
	}
	if v, _ := leaderValue(t, s, "h"); v != "c" {
		t.Fatalf("leader %q, want c", v)
	}
}

// Campaigning again with the same lease keeps the candidacy and proclaims
// the new value.
func TestCampaignAgainProclaims(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la := b.grant(30)
	first := mustCampaign(t, s, "r", la, "x")
	second := mustCampaign(t, s, "r", la, "y")
	if second.Rev != first.Rev || string(second.Key) != string(first.Key) {
		t.Fatalf("second campaign %+v, first %+v", second, first)
	}
	if v, rev := leaderValue(t, s, "r"); v != "y" || rev != first.Rev {
		t.Fatalf("leader %q@%d, want y@%d", v, rev, first.Rev)
	}
}

// A candidate that gives up withdraws; one whose wait fails otherwise
// stays (its lease removes it), as in etcd.
func TestCampaignGivingUp(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb, lc := b.grant(30), b.grant(30), b.grant(30)
	a := mustCampaign(t, s, "g", la, "a")
	bc, cancelB := async(t, campaignCall(s, "g", lb, "b"))
	waitKeys(t, b, "g/", string(a.Key), fmt.Sprintf("g/%x", lb))
	cancelB()
	wantWireErr(t, await(t, bc).err, connect.CodeCanceled, "context canceled")
	waitKeys(t, b, "g/", string(a.Key))

	cc, _ := async(t, campaignCall(s, "g", lc, "c"))
	kc := fmt.Sprintf("g/%x", lc)
	waitKeys(t, b, "g/", string(a.Key), kc)
	b.setFailRange(fmt.Errorf("injected: %w", consensus.ErrTimeout))
	if _, err := s.Resign(context.Background(), &v3electionpb.ResignRequest{Leader: a}); err != nil {
		t.Fatal(err)
	}
	wantWireErr(t, await(t, cc).err, connect.CodeUnknown, "etcdserver: request timed out")
	waitKeys(t, b, "g/", kc)
}

func TestElectionErrors(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	ctx := context.Background()
	_, err := s.Proclaim(ctx, &v3electionpb.ProclaimRequest{Value: []byte("v")})
	wantWireErr(t, err, connect.CodeUnknown, `"leader" field must be provided`)
	_, err = s.Resign(ctx, &v3electionpb.ResignRequest{})
	wantWireErr(t, err, connect.CodeUnknown, `"leader" field must be provided`)
	_, err = s.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: &v3electionpb.LeaderKey{Name: []byte("x"), Lease: 1}})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: key is not provided")
	_, err = s.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("x"), Lease: 0x5555, Value: []byte("v")})
	wantWireErr(t, err, connect.CodeUnknown, "etcdserver: requested lease not found")
	// A campaign without a lease runs under a fresh 60 s lease.
	l := mustCampaign(t, s, "nl", 0, "v")
	if li, ok := b.store.Lease(l.Lease); !ok || li.TTL != 60 || string(l.Key) != fmt.Sprintf("nl/%x", l.Lease) {
		t.Fatalf("leader %+v, lease %+v %v", l, li, ok)
	}
}

// observed collects what observe sends.
type observed struct {
	c chan *v3electionpb.LeaderResponse
}

func (o observed) send(r *v3electionpb.LeaderResponse) error {
	o.c <- r
	return nil
}

func (o observed) next(t *testing.T) *v3electionpb.LeaderResponse {
	t.Helper()
	select {
	case r := <-o.c:
		return r
	case <-time.After(testTimeout):
		t.Fatal("no observation")
		return nil
	}
}

func (o observed) want(t *testing.T, key, value string) *v3electionpb.LeaderResponse {
	t.Helper()
	r := o.next(t)
	if string(r.Kv.Key) != key || string(r.Kv.Value) != value {
		t.Fatalf("observed %q=%q, want %q=%q", r.Kv.Key, r.Kv.Value, key, value)
	}
	return r
}

func TestObserve(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	la, lb := b.grant(30), b.grant(30)
	ka, kb := fmt.Sprintf("o/%x", la), fmt.Sprintf("o/%x", lb)
	o := observed{c: make(chan *v3electionpb.LeaderResponse, 16)}
	done, cancel := async(t, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.observe(ctx, []byte("o"), o.send)
	})

	// No leader yet: the first put on the prefix, with its revision.
	a := mustCampaign(t, s, "o", la, "a1")
	r := o.want(t, ka, "a1")
	if r.Header.Revision != a.Rev || r.Kv.ModRevision != a.Rev {
		t.Fatalf("first observation header rev %d, kv %+v, campaign rev %d", r.Header.Revision, r.Kv, a.Rev)
	}
	if _, err := s.Proclaim(context.Background(), &v3electionpb.ProclaimRequest{Leader: a, Value: []byte("a2")}); err != nil {
		t.Fatal(err)
	}
	r = o.want(t, ka, "a2")
	if r.Header.Revision != r.Kv.ModRevision {
		t.Fatalf("proclamation header rev %d, kv mod rev %d", r.Header.Revision, r.Kv.ModRevision)
	}

	bc, _ := async(t, campaignCall(s, "o", lb, "b1"))
	waitKeys(t, b, "o/", ka, kb)
	if _, err := s.Resign(context.Background(), &v3electionpb.ResignRequest{Leader: a}); err != nil {
		t.Fatal(err)
	}
	r = o.want(t, kb, "b1")
	// Read by a range: the header has the revision of the read.
	if r.Header.Revision < r.Kv.ModRevision+1 {
		t.Fatalf("new leader header rev %d", r.Header.Revision)
	}
	if rb := await(t, bc); rb.err != nil {
		t.Fatal(rb.err)
	}
	select {
	case r := <-o.c:
		t.Fatalf("unexpected observation %q=%q", r.Kv.Key, r.Kv.Value)
	default:
	}
	cancel()
	if err := await(t, done).err; !errors.Is(err, context.Canceled) {
		t.Fatalf("observe after cancel: %v", err)
	}
}

// A backend failure ends Observe without an error, as etcd's stream ends.
func TestObserveEndsOnBackendFailure(t *testing.T) {
	b := newMemBackend(t)
	s := newService(t, b)
	b.setFailRange(consensus.ErrTimeout)
	err := s.observe(context.Background(), []byte("x"), func(*v3electionpb.LeaderResponse) error {
		t.Error("sent something")
		return nil
	})
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
}
