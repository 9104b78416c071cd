package remote_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

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
// a certificate's common name never travels, and neither does anything for
// a call that is no client's.
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
// picks its cancel reasons from.
func TestAuthorizerForwardsTheClientToken(t *testing.T) {
	path, h := internalapi.Handler(fakeNode{})
	c, err := remote.NewConsensus(h2cServer(t, path, h), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a := remote.Authorizer{C: c}
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
		{"no token, a certificate's name is not forwarded", as(""), "a/x", auth.ErrUserEmpty},
		// A process's own call carries no client credentials; consensus
		// still checks it as a client without a token (fails closed).
		{"no client", context.Background(), "a/x", auth.ErrUserEmpty},
	} {
		h, err := a.AuthorizeWatch(tc.ctx, []byte(tc.key), nil)
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("watch %s: %v, want %v", tc.name, err, tc.want)
		}
		if h.GetClusterId() != hdr.GetClusterId() {
			t.Errorf("watch %s: header %v", tc.name, h)
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
	c, err := remote.NewConsensus(h2cServer(t, path, h), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := auth.WithCredentials(context.Background(), auth.Credentials{Token: "alice"})
	if _, err := (remote.Authorizer{C: c}).AuthorizeWatch(ctx, []byte("a/x"), nil); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("AuthorizeWatch: %v, want user name is empty", err)
	}
}

// The keep-alives a gateway forwards to a lease service are checked there
// for the forwarded token.
func TestKeepAliveServerChecksTheForwardedToken(t *testing.T) {
	ipath, ih := internalapi.Handler(fakeNode{})
	c, err := remote.NewConsensus(h2cServer(t, ipath, ih), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	path, h := remote.KeepAliveHandler(remote.KeepAliveServer{L: fixedLease{}, Authz: remote.Authorizer{C: c}})
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
	c, err := remote.NewConsensus(h2cServer(t, path, h), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
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
	if _, err := (remote.Authorizer{C: c}).AuthorizeWatch(as("alice"), []byte("a/x"), nil); err != nil {
		t.Errorf("Authorize for alice: %v", err)
	}
}
