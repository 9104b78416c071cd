package remote_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus/internalapi"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// rangeKV answers every Range with an empty response.
type rangeKV struct {
	etcdserverpbconnect.UnimplementedKVHandler
}

func (rangeKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	return &pb.RangeResponse{Header: hdr}, nil
}

// The gateway's client token reaches consensus as etcd's "token" metadata;
// a certificate's common name does not (without a token it travels as a
// claim: TestCertificateUserClaimIsForwarded), and nothing does for a call
// that is no client's.
func TestClientTokenIsForwarded(t *testing.T) {
	var (
		mu     sync.Mutex
		seen   []string
		marked []bool
	)
	path, h := etcdserverpbconnect.NewKVHandler(rangeKV{})
	url := h2cServer(t, path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("token"))
		marked = append(marked, r.Header.Get(gateway.ForwardedHeader) != "")
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	c, err := remote.NewConsensus(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	for _, tc := range []struct {
		name   string
		ctx    context.Context
		want   string
		client bool
	}{
		{"token", auth.WithCredentials(context.Background(), auth.Credentials{Token: "tok.42"}), "tok.42", true},
		{"token and common name", auth.WithCredentials(context.Background(), auth.Credentials{Token: "t2", CommonName: "alice"}), "t2", true},
		{"common name only", auth.WithCredentials(context.Background(), auth.Credentials{CommonName: "alice"}), "", true},
		{"no client", context.Background(), "", false},
	} {
		mu.Lock()
		seen, marked = nil, nil
		mu.Unlock()
		if _, err := c.Range(tc.ctx, &pb.RangeRequest{Key: []byte("k")}); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		mu.Lock()
		got, gotMarked := seen, marked
		mu.Unlock()
		if len(got) != 1 || got[0] != tc.want || gotMarked[0] != tc.client {
			t.Errorf("%s: consensus saw token %q forwarded %v, want [%q] %v", tc.name, got, gotMarked, tc.want, tc.client)
		}
	}
}

// Authorizer asks consensus with the token of the client it checks for, and
// the refusals come back as the auth sentinels the gateway's watch service
// picks its cancel reasons from, with the member's header.
func TestAuthorizerForwardsTheClientToken(t *testing.T) {
	path, h := internalapi.Handler(fakeNode{})
	c := dialConsensus(t, h2cServer(t, path, h))
	a := remote.NewAuthorizer(c, nil)
	as := func(tok string) context.Context {
		return auth.WithCredentials(context.Background(), auth.Credentials{Token: tok, CommonName: "root"})
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		key  string
		want error
	}{
		{"permitted", as("alice"), "a/x", nil},
		{"outside the prefix", as("alice"), "b/x", auth.ErrPermissionDenied},
		{"bad token", as("mallory"), "a/x", auth.ErrInvalidAuthToken},
		// The certificate's name travels only as a claim, which a member
		// believes from concord's processes alone, and this caller proved
		// nothing (no certificate, no secret).
		{"no token, a certificate's name is no user", as(""), "a/x", auth.ErrUserEmpty},
		// A process's own call carries no client credentials; consensus
		// still checks it as a client without a token (fails closed).
		{"no client", context.Background(), "a/x", auth.ErrUserEmpty},
	} {
		h, err := a.AuthorizeWatch(tc.ctx, []byte(tc.key), nil)
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("watch %s: %v, want %v", tc.name, err, tc.want)
		}
		// A refusal has the member's header, etcd's for a refused watch.
		want := hdr
		if tc.want != nil {
			want = refusalHdr
		}
		if !proto.Equal(h, want) {
			t.Errorf("watch %s: header %v, want %v", tc.name, h, want)
		}
	}
	if err := a.AuthorizeLease(as("alice"), 1, true); err != nil {
		t.Errorf("lease 1 for alice: %v", err)
	}
	if err := a.AuthorizeLease(as("alice"), 2, false); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("lease 2 for alice: %v, want permission denied", err)
	}
}

// Served without the forwarded token in its context (the generated handler
// alone), Authorize refuses rather than trusting the call as the member's
// own.
func TestAuthorizeFailsClosedWithoutCredentials(t *testing.T) {
	path, h := concordv1connect.NewInternalServiceHandler(internalapi.New(fakeNode{}))
	c := dialConsensus(t, h2cServer(t, path, h))
	ctx := auth.WithCredentials(context.Background(), auth.Credentials{Token: "alice"})
	if _, err := remote.NewAuthorizer(c, nil).AuthorizeWatch(ctx, []byte("a/x"), nil); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("AuthorizeWatch: %v, want user name is empty", err)
	}
}

// The keep-alives a gateway forwards to a lease service are checked there
// for the forwarded token.
func TestKeepAliveServerChecksTheForwardedToken(t *testing.T) {
	ipath, ih := internalapi.Handler(fakeNode{})
	c := dialConsensus(t, h2cServer(t, ipath, ih))
	path, h := remote.KeepAliveHandler(remote.KeepAliveServer{L: fixedLease{}, Authz: remote.NewAuthorizer(c, nil)})
	l, err := remote.NewLease(h2cServer(t, path, h), c.Header)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := auth.WithCredentials(context.Background(), auth.Credentials{Token: "alice"})
	if resp, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 1}); err != nil || resp.GetTTL() != 30 {
		t.Errorf("alice's lease 1: %v %v", resp, err)
	}
	if _, err := l.LeaseKeepAlive(ctx, &pb.LeaseKeepAliveRequest{ID: 2}); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("lease 2: %v, want permission denied", err)
	}
	if _, err := l.LeaseKeepAlive(context.Background(), &pb.LeaseKeepAliveRequest{ID: 1}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("no token: %v, want user name is empty", err)
	}
}

// fixedLease renews every lease to 30s.
type fixedLease struct{ gateway.Lease }

func (fixedLease) LeaseKeepAlive(_ context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	return &pb.LeaseKeepAliveResponse{Header: hdr, ID: r.GetID(), TTL: 30}, nil
}

// The internal API serves its history only to callers the member admits;
// Authorize stays open to anyone (it only answers about the caller's own
// token).
func TestInternalAPIRequiresAnAdmittedCaller(t *testing.T) {
	path, h := internalapi.Handler(fakeNode{})
	c := dialConsensus(t, h2cServer(t, path, h))
	as := func(tok string) context.Context {
		return auth.WithCredentials(context.Background(), auth.Credentials{Token: tok})
	}
	if _, err := c.RangeEvents(context.Background(), 5, 6, []byte("k"), nil); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("RangeEvents without credentials: %v, want user name is empty", err)
	}
	if _, err := c.RangeEvents(as("alice"), 5, 6, []byte("k"), nil); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Errorf("RangeEvents as alice: %v, want permission denied", err)
	}
	if revs, err := c.RangeEvents(as("root"), 5, 6, []byte("k"), nil); err != nil || len(revs) != 2 {
		t.Errorf("RangeEvents as root: %v %v", revs, err)
	}
	if _, err := c.LeaseAuthority(context.Background()); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("LeaseAuthority without credentials: %v, want user name is empty", err)
	}
	if _, err := remote.NewAuthorizer(c, nil).AuthorizeWatch(as("alice"), []byte("a/x"), nil); err != nil {
		t.Errorf("Authorize for alice: %v", err)
	}
}

// authToggleNode is fakeNode with auth switched on and off, counting the
// lease checks it is asked for (a member with auth off allows them all).
type authToggleNode struct {
	fakeNode
	on     *atomic.Bool
	checks *atomic.Int32
}

func (n authToggleNode) AuthEnabled() bool { return n.on.Load() }

func (n authToggleNode) AuthorizeLease(ctx context.Context, id int64, write bool) error {
	n.checks.Add(1)
	if !n.on.Load() {
		return nil
	}
	return n.fakeNode.AuthorizeLease(ctx, id, write)
}

// Keep-alives skip the round trip for KeepAliveRecheck after a member said
// auth is off, and never while it is on; TimeToLive is always checked.
func TestAuthorizerKeepAliveRecheck(t *testing.T) {
	n := authToggleNode{on: new(atomic.Bool), checks: new(atomic.Int32)}
	path, h := internalapi.Handler(n)
	c := dialConsensus(t, h2cServer(t, path, h))
	now := time.Unix(1000, 0)
	a := remote.NewAuthorizer(c, func() time.Time { return now })
	mallory := auth.WithCredentials(context.Background(), auth.Credentials{Token: "mallory"})
	step := func(what string, write bool, wantChecks int32, wantErr error) {
		t.Helper()
		if err := a.AuthorizeLease(mallory, 1, write); !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Errorf("%s: %v, want %v", what, err, wantErr)
		}
		if got := n.checks.Load(); got != wantChecks {
			t.Errorf("%s: %d checks asked of consensus, want %d", what, got, wantChecks)
		}
	}
	step("first keep-alive, auth off", true, 1, nil)
	step("keep-alive within the recheck", true, 1, nil)
	step("TimeToLive within the recheck", false, 2, nil)
	n.on.Store(true)
	now = now.Add(remote.KeepAliveRecheck / 2)
	// The documented window: auth was just enabled, the last answer said off.
	step("keep-alive, auth just enabled", true, 2, nil)
	now = now.Add(remote.KeepAliveRecheck)
	step("keep-alive after the recheck", true, 3, auth.ErrInvalidAuthToken)
	step("keep-alive, auth on", true, 4, auth.ErrInvalidAuthToken)
	n.on.Store(false)
	step("keep-alive, auth off again", true, 5, nil)
	step("keep-alive, still off", true, 5, nil)
}

// A write with a token is size-checked by the member, after the token, as
// etcd does; one without is checked by the gateway.
func TestConsensusLeavesTheSizeOfTokenWritesToTheMember(t *testing.T) {
	var c *remote.Consensus // ChecksRequestSize looks at the request alone
	if !c.ChecksRequestSize(auth.WithCredentials(context.Background(), auth.Credentials{Token: "t"})) {
		t.Error("a write with a token is checked in the gateway")
	}
	if c.ChecksRequestSize(auth.WithCredentials(context.Background(), auth.Credentials{CommonName: "alice"})) || c.ChecksRequestSize(context.Background()) {
		t.Error("a write without a token is left to the member")
	}
}
