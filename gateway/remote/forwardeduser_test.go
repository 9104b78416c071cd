package remote_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// A call for a client without a token forwards the user its certificate
// names (or the claim this process received) with the hops so far; a token
// takes precedence. WithInternalSecret presents the proof on every call,
// WithClaimSecret only on those that carry a claim.
func TestCertificateUserClaimIsForwarded(t *testing.T) {
	type seenReq struct{ forwarded, user, via, token, proof string }
	var (
		mu   sync.Mutex
		seen []seenReq
	)
	path, h := etcdserverpbconnect.NewKVHandler(rangeKV{})
	url := h2cServer(t, path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, seenReq{r.Header.Get(gateway.ForwardedHeader), r.Header.Get(gateway.ForwardedUserHeader),
			r.Header.Get(gateway.ForwardedViaHeader), r.Header.Get("token"), r.Header.Get(gateway.InternalSecretHeader)})
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	secret := []byte(strings.Repeat("k", gateway.MinInternalSecretBytes))
	proof := gateway.InternalSecretProof(secret)
	bg := context.Background()
	as := func(c auth.Credentials) context.Context { return auth.WithCredentials(bg, c) }
	claim := &auth.ForwardedUser{Name: "alice", Via: []auth.Hop{{CommonName: "gw 1"}}}
	secrets := secretsOf(t, secret)
	for _, tc := range []struct {
		name      string
		opt       remote.DialOption
		ctx       context.Context
		want      seenReq
		wantProof bool
	}{
		{"certificate", remote.WithClaimSecret(secrets), as(auth.Credentials{CommonName: "alice"}), seenReq{forwarded: "client", user: "alice"}, true},
		{"certificate with a token", remote.WithClaimSecret(secrets), as(auth.Credentials{CommonName: "alice", Token: "t"}), seenReq{forwarded: "client", token: "t"}, false},
		{"claim passed on", remote.WithClaimSecret(secrets), as(auth.Credentials{Forwarded: claim}), seenReq{forwarded: "client", user: "alice", via: "cn:gw+1"}, true},
		{"claim and a token", remote.WithClaimSecret(secrets), as(auth.Credentials{Forwarded: claim, Token: "t"}), seenReq{forwarded: "client", token: "t"}, false},
		{"a process's secret is not a user", remote.WithClaimSecret(secrets), as(auth.Credentials{Internal: true}), seenReq{forwarded: "client"}, false},
		{"own call, claims only", remote.WithClaimSecret(secrets), bg, seenReq{}, false},
		{"own call, every call", remote.WithInternalSecret(secrets), bg, seenReq{}, true},
		{"certificate, every call", remote.WithInternalSecret(secrets), as(auth.Credentials{CommonName: "alice"}), seenReq{forwarded: "client", user: "alice"}, true},
		{"token, every call", remote.WithInternalSecret(secrets), as(auth.Credentials{Token: "t"}), seenReq{forwarded: "client", token: "t"}, true},
	} {
		c, err := remote.NewConsensus(url, nil, tc.opt)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		seen = nil
		mu.Unlock()
		_, err = c.Range(tc.ctx, &pb.RangeRequest{Key: []byte("k")})
		_ = c.Close()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		mu.Lock()
		got := seen
		mu.Unlock()
		want := tc.want
		if tc.wantProof {
			want.proof = proof
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("%s: the next hop saw %+v, want %+v", tc.name, got, want)
		}
	}
}

// Against a member served with an internal secret: a client's certificate
// user forwarded by a process with the secret (a gateway; a fan-out or
// lease service asking Authorize for a claim it received from one) runs
// with that user's permissions; a process without the secret, or a claim a
// client made, names nobody; a token takes precedence.
func TestCertificateUserAgainstAMember(t *testing.T) {
	secret := []byte(strings.Repeat("k", gateway.MinInternalSecretBytes))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, url := startSecretMember(t, ctx, secret)

	for _, u := range []string{"root", "alice"} {
		if _, err := n.UserAdd(ctx, &pb.AuthUserAddRequest{Name: u, Password: "pw"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{Name: "a",
		Perm: &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READWRITE}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "alice", Role: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AuthEnable(ctx, &pb.AuthEnableRequest{}); err != nil {
		t.Fatal(err)
	}
	tok, err := n.Authenticate(ctx, &pb.AuthenticateRequest{Name: "alice", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}

	dial := func(opts ...remote.DialOption) *remote.Consensus { return dialMember(t, url, opts...) }
	withSecret, without := dial(remote.WithInternalSecret(secretsOf(t, secret))), dial()
	other := dial(remote.WithInternalSecret(secretsOf(t, []byte(strings.Repeat("x", gateway.MinInternalSecretBytes)))))
	as := func(c auth.Credentials) context.Context { return auth.WithCredentials(ctx, c) }
	gatewayHop := auth.Hop{Internal: true}
	for _, tc := range []struct {
		name          string
		c             *remote.Consensus
		cr            auth.Credentials
		inside, other error // keys in alice's range and outside it
	}{
		{"alice's certificate, through a process with the secret", withSecret, auth.Credentials{CommonName: "alice"}, nil, auth.ErrPermissionDenied},
		{"root's certificate, through a process with the secret", withSecret, auth.Credentials{CommonName: "root"}, nil, nil},
		{"alice's claim from a gateway, passed on", withSecret, auth.Credentials{Forwarded: &auth.ForwardedUser{Name: "alice", Via: []auth.Hop{gatewayHop}}}, nil, auth.ErrPermissionDenied},
		{"root claimed by a client, passed on", withSecret, auth.Credentials{Forwarded: &auth.ForwardedUser{Name: "root", Via: []auth.Hop{{CommonName: "alice"}}}}, auth.ErrUserEmpty, auth.ErrUserEmpty},
		{"root's certificate, alice's token", withSecret, auth.Credentials{CommonName: "root", Token: tok.Token}, nil, auth.ErrPermissionDenied},
		{"root's certificate, through a process without the secret", without, auth.Credentials{CommonName: "root"}, auth.ErrUserEmpty, auth.ErrUserEmpty},
		{"root's certificate, through a process with another secret", other, auth.Credentials{CommonName: "root"}, auth.ErrUserEmpty, auth.ErrUserEmpty},
	} {
		check := func(what string, err, want error) {
			t.Helper()
			if !errors.Is(err, want) || (err == nil) != (want == nil) {
				t.Errorf("%s, %s: %v, want %v", tc.name, what, err, want)
			}
		}
		_, err := tc.c.Put(as(tc.cr), &pb.PutRequest{Key: []byte("a1"), Value: []byte("v")})
		check("put a1", err, tc.inside)
		_, err = tc.c.Put(as(tc.cr), &pb.PutRequest{Key: []byte("b"), Value: []byte("v")})
		check("put b", err, tc.other)
		// What a watch fan-out asks for the claim (or certificate) its
		// client's call carried.
		a := remote.NewAuthorizer(tc.c, nil)
		_, err = a.AuthorizeWatch(as(tc.cr), []byte("a1"), nil)
		check("authorize a watch on a1", err, tc.inside)
		_, err = a.AuthorizeWatch(as(tc.cr), []byte("b"), nil)
		check("authorize a watch on b", err, tc.other)
	}
}
