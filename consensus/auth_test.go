package consensus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
)

// TestAuthReplicatedThroughSnapshotAndRestart checks that auth changes
// reach every member through the log, reach a member that was down through
// a store snapshot and survive a restart, and that once enabled a token
// issued by one member is checked the same way on every member.
func TestAuthReplicatedThroughSnapshotAndRestart(t *testing.T) {
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.SnapshotCount = 20
		cfg.SnapshotCatchUpEntries = 5
		cfg.BcryptCost = bcrypt.MinCost
	})
	lead := c.leader()
	behind := c.followers(lead)[0]
	n := c.nodes[lead]
	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "early", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	c.converged()
	c.stop(behind)

	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatal(err)
	}
	grantRole(t, n, "early", &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READ})
	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "root", Password: "x"}); !errors.Is(err, auth.ErrUserAlreadyExist) {
		t.Fatalf("second root: %v, want ErrUserAlreadyExist", err)
	}
	// Enough entries to truncate the log past the stopped member.
	for i := range 60 {
		if _, err := putCtx(ctxT(t), n, fmt.Sprintf("k/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	c.start(behind)
	c.converged()
	if got := c.nodes[behind].snapshotsInstalled.Load(); got < 1 {
		t.Fatalf("member caught up without a snapshot (%d installed)", got)
	}
	want := n.AuthState().Revision()
	for _, i := range c.running() {
		waitFor(t, "auth state to replicate", func() bool { return c.nodes[i].AuthState().Revision() == want })
		st := c.nodes[i].AuthState()
		if !st.HasRootRole("root") || st.User("early") == nil {
			t.Errorf("member %d: auth state lacks users", i+1)
		}
		if !st.RangePermitted("early", []byte("a1"), nil, authpb.Permission_READ) || st.RangePermitted("early", []byte("b"), nil, authpb.Permission_READ) {
			t.Errorf("member %d: early's permissions are not r's [a, b)", i+1)
		}
	}

	c.stop(behind)
	c.start(behind)
	b := c.nodes[behind]
	if b.AuthState().Revision() != want {
		t.Fatalf("restarted member at auth revision %d, want %d", b.AuthState().Revision(), want)
	}
	list, err := b.UserList(ctxT(t), &pb.AuthUserListRequest{})
	if err != nil || !slices.Equal(list.Users, []string{"early", "root"}) {
		t.Fatalf("UserList on the restarted member: %v, %v", list, err)
	}
	st, err := b.AuthStatus(ctxT(t), &pb.AuthStatusRequest{})
	if err != nil || st.Enabled || st.AuthRevision != want || st.Header.GetMemberId() != b.MemberID() {
		t.Fatalf("AuthStatus: %v, %v", st, err)
	}
	if _, err := b.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "root", Password: "rootpw"}); !errors.Is(err, auth.ErrAuthNotEnabled) {
		t.Fatalf("Authenticate before enable: %v, want ErrAuthNotEnabled", err)
	}
	// A client request without credentials, once auth is enabled.
	client := auth.WithCredentials(ctxT(t), auth.Credentials{})
	if _, err := b.AuthEnable(ctxT(t), &pb.AuthEnableRequest{}); err != nil {
		t.Fatalf("AuthEnable: %v", err)
	}
	if !b.AuthState().Enabled() {
		t.Fatal("auth not enabled after AuthEnable")
	}
	if _, err := b.Put(client, &pb.PutRequest{Key: []byte("a1"), Value: []byte("v")}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("put without credentials: %v, want ErrUserEmpty", err)
	}
	// A token issued by one member works on every other: the key is
	// replicated.
	if _, err := b.UserChangePassword(ctxT(t), &pb.AuthUserChangePasswordRequest{Name: "early", Password: "earlypw"}); err != nil {
		t.Fatal(err)
	}
	old, err := b.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "early", Password: "earlypw"})
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	// Another auth change leaves a simple token valid, at the new auth
	// revision, as in etcd; a new password invalidates it.
	if _, err := b.RoleAdd(ctxT(t), &pb.AuthRoleAddRequest{Name: "later"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Range(auth.WithCredentials(ctxT(t), auth.Credentials{Token: old.Token}), &pb.RangeRequest{Key: []byte("a1")}); err != nil {
		t.Fatalf("read with a token from before a role add: %v", err)
	}
	if _, err := b.UserChangePassword(ctxT(t), &pb.AuthUserChangePasswordRequest{Name: "early", Password: "earlypw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Range(auth.WithCredentials(ctxT(t), auth.Credentials{Token: old.Token}), &pb.RangeRequest{Key: []byte("a1")}); !errors.Is(err, auth.ErrInvalidAuthToken) {
		t.Fatalf("read with a token from before a password change: %v, want ErrInvalidAuthToken", err)
	}
	if _, err := b.Put(auth.WithCredentials(ctxT(t), auth.Credentials{Token: old.Token}), &pb.PutRequest{Key: []byte("a1")}); !errors.Is(err, auth.ErrInvalidAuthToken) {
		t.Fatalf("write with a token from before a password change: %v, want ErrInvalidAuthToken", err)
	}
	tok, err := b.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "early", Password: "earlypw"})
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	for _, i := range c.running() {
		waitFor(t, "the password change to replicate", func() bool { return c.nodes[i].AuthState().Revision() == b.AuthState().Revision() })
		early := auth.WithCredentials(ctxT(t), auth.Credentials{Token: tok.Token})
		waitFor(t, "the enable to replicate", func() bool { return c.nodes[i].AuthState().Enabled() })
		if _, err := c.nodes[i].Range(early, &pb.RangeRequest{Key: []byte("a1")}); err != nil {
			t.Errorf("member %d: read within early's permissions: %v", i+1, err)
		}
		if _, err := c.nodes[i].Range(early, &pb.RangeRequest{Key: []byte("b")}); !errors.Is(err, auth.ErrPermissionDenied) {
			t.Errorf("member %d: read outside early's permissions: %v, want ErrPermissionDenied", i+1, err)
		}
		if _, err := c.nodes[i].Put(early, &pb.PutRequest{Key: []byte("a1")}); !errors.Is(err, auth.ErrPermissionDenied) {
			t.Errorf("member %d: write with read permission only: %v, want ErrPermissionDenied", i+1, err)
		}
		if _, err := c.nodes[i].Compact(early, &pb.CompactionRequest{Revision: 2}); !errors.Is(err, auth.ErrPermissionDenied) {
			t.Errorf("member %d: compact as non-root: %v, want ErrPermissionDenied", i+1, err)
		}
		bad := auth.WithCredentials(ctxT(t), auth.Credentials{Token: tok.Token + "x"})
		if _, err := c.nodes[i].Range(bad, &pb.RangeRequest{Key: []byte("a1")}); !errors.Is(err, auth.ErrInvalidAuthToken) {
			t.Errorf("member %d: forged token: %v, want ErrInvalidAuthToken", i+1, err)
		}
	}
}

func TestAuthEnableRefusedWhenConfigured(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *Config) {
		cfg.BcryptCost = bcrypt.MinCost
		cfg.RefuseAuthEnable = true
	})
	n := c.nodes[c.leader()]
	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "root", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AuthEnable(ctxT(t), &pb.AuthEnableRequest{}); !errors.Is(err, ErrAuthEnableUnsupported) {
		t.Fatalf("AuthEnable: %v, want ErrAuthEnableUnsupported", err)
	}
	if n.AuthState().Enabled() {
		t.Fatal("auth enabled after a refused AuthEnable")
	}
}

// TestAuthJWTTokens checks that --auth-token jwt makes Authenticate issue
// JWTs (the same HS256 secret verifies them) that the member accepts.
func TestAuthJWTTokens(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("jwt-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCluster(t, 1, func(cfg *Config) {
		cfg.BcryptCost = bcrypt.MinCost
		cfg.AuthToken = "jwt,sign-method=HS256,priv-key=" + secret + ",ttl=1m"
	})
	n := c.nodes[c.leader()]
	if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: "root", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.AuthEnable(ctxT(t), &pb.AuthEnableRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := n.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "root", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.Parse(resp.Token, func(*jwt.Token) (any, error) { return []byte("jwt-secret"), nil })
	if err != nil || parsed.Claims.(jwt.MapClaims)["username"] != "root" {
		t.Fatalf("token %q is not an HS256 JWT for root: %v", resp.Token, err)
	}
	ctx := auth.WithCredentials(ctxT(t), auth.Credentials{Token: resp.Token})
	if _, err := n.Put(ctx, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("put with the JWT: %v", err)
	}
}

// TestAuthorizeInternal checks who may call the internal API: anyone while
// auth is disabled, then only processes that presented the internal secret
// and root-role users, by token or by the common name of a verified client
// certificate.
func TestAuthorizeInternal(t *testing.T) {
	n := authTestNode(t)
	as := func(cr auth.Credentials) context.Context { return auth.WithCredentials(ctxT(t), cr) }
	if err := n.AuthorizeInternal(as(auth.Credentials{})); err != nil {
		t.Fatalf("auth disabled: %v", err)
	}
	addUsers(t, n, []string{"root"}, "alice")
	token := enableAuth(t, n)
	for _, tc := range []struct {
		name string
		cr   auth.Credentials
		want error
	}{
		{"root token", auth.Credentials{Token: token("root")}, nil},
		{"root certificate", auth.Credentials{CommonName: "root"}, nil},
		{"alice's certificate, root's token", auth.Credentials{CommonName: "alice", Token: token("root")}, nil},
		{"alice token", auth.Credentials{Token: token("alice")}, auth.ErrPermissionDenied},
		{"alice certificate", auth.Credentials{CommonName: "alice"}, auth.ErrPermissionDenied},
		{"unknown certificate", auth.Credentials{CommonName: "mallory"}, auth.ErrUserNotFound},
		{"forged token", auth.Credentials{Token: token("root") + "x"}, auth.ErrInvalidAuthToken},
		{"nothing", auth.Credentials{}, auth.ErrUserEmpty},
		{"internal secret", auth.Credentials{Internal: true}, nil},
		{"internal secret, alice's certificate", auth.Credentials{Internal: true, CommonName: "alice"}, nil},
	} {
		err := n.AuthorizeInternal(as(tc.cr))
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}

	// On etcd's services a process that presented the internal secret is
	// root, as one whose certificate names a root-role user (its own
	// calls: status polls, member lists, a lock waiter's cleanup); a token
	// still takes precedence, as over a certificate.
	for _, tc := range []struct {
		name string
		cr   auth.Credentials
		want error
	}{
		{"internal secret", auth.Credentials{Internal: true}, nil},
		{"root certificate", auth.Credentials{CommonName: "root"}, nil},
		{"alice's token, internal secret", auth.Credentials{Token: token("alice"), Internal: true}, auth.ErrPermissionDenied},
		{"nothing", auth.Credentials{}, auth.ErrUserEmpty},
	} {
		_, err := n.UserList(as(tc.cr), &pb.AuthUserListRequest{})
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("user list, %s: %v, want %v", tc.name, err, tc.want)
		}
		_, err = n.Put(as(tc.cr), &pb.PutRequest{Key: []byte("k"), Value: []byte("v")})
		if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("put, %s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestForwardedCertificateUser: a call a split process forwarded for a
// client without a token runs as the user the client's certificate names
// only when every process it went through is concord's own (the internal
// secret, or a certificate naming a root-role user); a claim a client
// makes itself names nobody, a token takes precedence, and a claim never
// admits a caller to the internal API.
func TestForwardedCertificateUser(t *testing.T) {
	n := authTestNode(t)
	as := func(cr auth.Credentials) context.Context { return auth.WithCredentials(ctxT(t), cr) }
	addUsers(t, n, []string{"root", "proc"}, "alice")
	if _, err := n.RoleAdd(ctxT(t), &pb.AuthRoleAddRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RoleGrantPermission(ctxT(t), &pb.AuthRoleGrantPermissionRequest{Name: "a",
		Perm: &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READWRITE}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: "alice", Role: "a"}); err != nil {
		t.Fatal(err)
	}
	token := enableAuth(t, n)
	fwd := func(user string, via ...auth.Hop) *auth.ForwardedUser {
		return &auth.ForwardedUser{Name: user, Via: via}
	}
	proc, secret, aliceHop := auth.Hop{CommonName: "proc"}, auth.Hop{Internal: true}, auth.Hop{CommonName: "alice"}
	for _, tc := range []struct {
		name          string
		cr            auth.Credentials
		inside, other error // a put in alice's range, and outside it
		admin         error // UserList
	}{
		{"alice through a gateway's certificate", auth.Credentials{Forwarded: fwd("alice", proc)}, nil, auth.ErrPermissionDenied, auth.ErrPermissionDenied},
		{"alice through a gateway and a fan-out", auth.Credentials{Forwarded: fwd("alice", proc, secret)}, nil, auth.ErrPermissionDenied, auth.ErrPermissionDenied},
		{"root through a process with the secret", auth.Credentials{Forwarded: fwd("root", secret)}, nil, nil, nil},
		{"root claimed by alice's certificate", auth.Credentials{Forwarded: fwd("root", aliceHop)}, auth.ErrUserEmpty, auth.ErrUserEmpty, auth.ErrUserEmpty},
		{"root claimed by alice, passed on by a gateway", auth.Credentials{Forwarded: fwd("root", aliceHop, proc)}, auth.ErrUserEmpty, auth.ErrUserEmpty, auth.ErrUserEmpty},
		{"root claimed by a caller that proved nothing", auth.Credentials{Forwarded: fwd("root", auth.Hop{})}, auth.ErrUserEmpty, auth.ErrUserEmpty, auth.ErrUserEmpty},
		{"alice's token over a root claim", auth.Credentials{Token: token("alice"), Forwarded: fwd("root", secret)}, nil, auth.ErrPermissionDenied, auth.ErrPermissionDenied},
		{"root's token over alice's claim", auth.Credentials{Token: token("root"), Forwarded: fwd("alice", proc)}, nil, nil, nil},
	} {
		if _, err := n.Put(as(tc.cr), &pb.PutRequest{Key: []byte("a1"), Value: []byte("v")}); !errors.Is(err, tc.inside) || (err == nil) != (tc.inside == nil) {
			t.Errorf("%s: put a1: %v, want %v", tc.name, err, tc.inside)
		}
		if _, err := n.Range(as(tc.cr), &pb.RangeRequest{Key: []byte("a1"), Serializable: true}); !errors.Is(err, tc.inside) || (err == nil) != (tc.inside == nil) {
			t.Errorf("%s: get a1: %v, want %v", tc.name, err, tc.inside)
		}
		if _, err := n.AuthorizeWatch(as(tc.cr), []byte("a1"), nil); !errors.Is(err, tc.inside) || (err == nil) != (tc.inside == nil) {
			t.Errorf("%s: watch a1: %v, want %v", tc.name, err, tc.inside)
		}
		if _, err := n.Put(as(tc.cr), &pb.PutRequest{Key: []byte("b"), Value: []byte("v")}); !errors.Is(err, tc.other) || (err == nil) != (tc.other == nil) {
			t.Errorf("%s: put b: %v, want %v", tc.name, err, tc.other)
		}
		if _, err := n.UserList(as(tc.cr), &pb.AuthUserListRequest{}); !errors.Is(err, tc.admin) || (err == nil) != (tc.admin == nil) {
			t.Errorf("%s: user list: %v, want %v", tc.name, err, tc.admin)
		}
	}
	// The internal API admits the calling process itself, never whom it
	// forwards for.
	if err := n.AuthorizeInternal(as(auth.Credentials{Forwarded: fwd("root", secret)})); !errors.Is(err, auth.ErrUserEmpty) {
		t.Errorf("internal API for a forwarded root: %v, want ErrUserEmpty", err)
	}
}

// addUsers adds users with password "pw": roots with the root role, others
// without a role.
func addUsers(t *testing.T, n *Node, roots []string, others ...string) {
	t.Helper()
	for _, u := range append(append([]string(nil), roots...), others...) {
		if _, err := n.UserAdd(ctxT(t), &pb.AuthUserAddRequest{Name: u, Password: "pw"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range roots {
		if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: u, Role: "root"}); err != nil {
			t.Fatal(err)
		}
	}
}

// authTestNode is the leader of a one-member cluster with the cheapest
// bcrypt cost, for auth tests.
func authTestNode(t *testing.T) *Node {
	t.Helper()
	c := newTestCluster(t, 1, func(cfg *Config) { cfg.BcryptCost = bcrypt.MinCost })
	return c.nodes[c.leader()]
}

// grantRole adds role "r" with perm and grants it to user.
func grantRole(t *testing.T, n *Node, user string, perm *authpb.Permission) {
	t.Helper()
	if _, err := n.RoleAdd(ctxT(t), &pb.AuthRoleAddRequest{Name: "r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.RoleGrantPermission(ctxT(t), &pb.AuthRoleGrantPermissionRequest{Name: "r", Perm: perm}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.UserGrantRole(ctxT(t), &pb.AuthUserGrantRoleRequest{User: user, Role: "r"}); err != nil {
		t.Fatal(err)
	}
}

// enableAuth enables auth on n and returns a function that authenticates a
// user added by addUsers and returns its token.
func enableAuth(t *testing.T, n *Node) func(user string) string {
	t.Helper()
	if _, err := n.AuthEnable(ctxT(t), &pb.AuthEnableRequest{}); err != nil {
		t.Fatal(err)
	}
	return func(u string) string {
		t.Helper()
		r, err := n.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: u, Password: "pw"})
		if err != nil {
			t.Fatal(err)
		}
		return r.Token
	}
}

// TestAuthLeaseLeases: once auth is enabled, LeaseLeases needs a user, as
// etcd's checkLeaseLeases: root lists everything; another user only while
// it may read every key attached to a lease.
func TestAuthLeaseLeases(t *testing.T) {
	n := authTestNode(t)
	addUsers(t, n, []string{"root"}, "alice")
	grantRole(t, n, "alice", &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READ})
	l, err := n.LeaseGrant(ctxT(t), &pb.LeaseGrantRequest{TTL: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte("a1"), Lease: l.ID}); err != nil {
		t.Fatal(err)
	}
	token := enableAuth(t, n)
	as := func(cr auth.Credentials) context.Context { return auth.WithCredentials(ctxT(t), cr) }
	root, alice := as(auth.Credentials{Token: token("root")}), as(auth.Credentials{Token: token("alice")})
	check := func(what string, ctx context.Context, want error) {
		t.Helper()
		_, err := n.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
		if !errors.Is(err, want) || (err == nil) != (want == nil) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	check("no token", as(auth.Credentials{}), auth.ErrUserEmpty)
	check("root", root, nil)
	check("alice, who may read a1", alice, nil)
	if _, err := n.Put(root, &pb.PutRequest{Key: []byte("secret"), Lease: l.ID}); err != nil {
		t.Fatal(err)
	}
	check("alice, who may not read secret", alice, auth.ErrPermissionDenied)
	check("root", root, nil)
}

// TestAuthLeaseNeedsUser: once auth is enabled, LeaseGrant and LeaseRevoke
// need a user before anything else, as etcd's EtcdServer.LeaseGrant and
// LeaseRevoke (requireAuthInfo): a grant without a token fails with
// ErrUserEmpty even with a TTL above the maximum, a revoke even of a lease
// without keys.
func TestAuthLeaseNeedsUser(t *testing.T) {
	n := authTestNode(t)
	addUsers(t, n, []string{"root"}, "alice")
	token := enableAuth(t, n)
	none := auth.WithCredentials(ctxT(t), auth.Credentials{})
	alice := auth.WithCredentials(ctxT(t), auth.Credentials{Token: token("alice")})
	if _, err := n.LeaseGrant(none, &pb.LeaseGrantRequest{TTL: 3600}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("grant without a token: %v, want ErrUserEmpty", err)
	}
	if _, err := n.LeaseGrant(none, &pb.LeaseGrantRequest{TTL: maxLeaseTTL + 1}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("grant of a too long TTL without a token: %v, want ErrUserEmpty", err)
	}
	l, err := n.LeaseGrant(alice, &pb.LeaseGrantRequest{TTL: 3600})
	if err != nil {
		t.Fatalf("grant as alice: %v", err)
	}
	if _, err := n.LeaseRevoke(none, &pb.LeaseRevokeRequest{ID: l.ID}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("revoke without a token: %v, want ErrUserEmpty", err)
	}
	if _, err := n.LeaseRevoke(alice, &pb.LeaseRevokeRequest{ID: l.ID}); err != nil {
		t.Fatalf("revoke of a lease without keys as alice: %v", err)
	}
}

// TestAuthRequestSizeCountsHeader: with MaxRequestBytes set, a write is
// refused when the raft request etcd would build from it is too large,
// counting the user name and auth revision its header carries once auth
// is enabled (etcd's processInternalRaftRequestOnce), and only after the
// token is checked: an invalid token gets ErrInvalidAuthToken, as from
// etcd, however large the write.
func TestAuthRequestSizeCountsHeader(t *testing.T) {
	const limit = 1000
	c := newTestCluster(t, 1, func(cfg *Config) {
		cfg.BcryptCost = bcrypt.MinCost
		cfg.MaxRequestBytes = limit
	})
	n := c.nodes[c.leader()]
	if !n.ChecksRequestSize(ctxT(t)) {
		t.Fatal("ChecksRequestSize is false with MaxRequestBytes set")
	}
	// put returns a put whose raft request, as etcd builds it with the
	// largest request ID and header h, takes size bytes.
	put := func(h *pb.RequestHeader, size int) *pb.PutRequest {
		t.Helper()
		h = proto.Clone(h).(*pb.RequestHeader)
		h.ID = math.MaxUint64
		p := &pb.PutRequest{Key: []byte("k")}
		for range size {
			if n := proto.Size(&pb.InternalRaftRequest{Header: h, Put: p}); n >= size {
				if n != size {
					t.Fatalf("no put of raft size %d", size)
				}
				return p
			}
			p.Value = append(p.Value, 'v')
		}
		t.Fatalf("no put of raft size %d", size)
		return nil
	}
	ctx := ctxT(t)
	if _, err := n.Put(ctx, put(&pb.RequestHeader{}, limit)); err != nil {
		t.Fatalf("put of the limit without auth: %v", err)
	}
	if _, err := n.Put(ctx, put(&pb.RequestHeader{}, limit+1)); !errors.Is(err, ErrRequestTooLarge) {
		t.Fatalf("put over the limit without auth: %v, want ErrRequestTooLarge", err)
	}

	addUsers(t, n, []string{"root"})
	token := enableAuth(t, n)
	root := auth.WithCredentials(ctx, auth.Credentials{Token: token("root")})
	h := &pb.RequestHeader{Username: "root", AuthRevision: n.AuthState().Revision()}
	if _, err := n.Put(root, put(h, limit)); err != nil {
		t.Fatalf("put of the limit as root: %v", err)
	}
	// Within the limit but for the header's user and revision.
	over := put(h, limit+1)
	if s := proto.Size(&pb.InternalRaftRequest{Header: &pb.RequestHeader{ID: math.MaxUint64}, Put: over}); s > limit {
		t.Fatalf("test put takes %d bytes without the auth header", s)
	}
	if _, err := n.Put(root, over); !errors.Is(err, ErrRequestTooLarge) {
		t.Fatalf("put over the limit with root's header: %v, want ErrRequestTooLarge", err)
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: over}}}}
	if _, err := n.Txn(root, txn); !errors.Is(err, ErrRequestTooLarge) {
		t.Fatalf("txn over the limit as root: %v, want ErrRequestTooLarge", err)
	}
	bogus := auth.WithCredentials(ctx, auth.Credentials{Token: "bogus"})
	if _, err := n.Put(bogus, put(h, 2*limit)); !errors.Is(err, auth.ErrInvalidAuthToken) {
		t.Fatalf("put over the limit with an invalid token: %v, want ErrInvalidAuthToken", err)
	}
}

// TestAuthWatchEmptyKey: a watch of the empty key is checked as one of
// "\x00", which etcd's watch server puts in its place before the check.
func TestAuthWatchEmptyKey(t *testing.T) {
	n := authTestNode(t)
	addUsers(t, n, []string{"root"}, "alice")
	grantRole(t, n, "alice", &authpb.Permission{Key: []byte{0}, PermType: authpb.Permission_READ})
	token := enableAuth(t, n)
	alice := auth.WithCredentials(ctxT(t), auth.Credentials{Token: token("alice")})
	if _, err := n.AuthorizeWatch(alice, nil, nil); err != nil {
		t.Fatalf("watch of the empty key: %v, want allowed (checked as \"\\x00\")", err)
	}
	if _, err := n.AuthorizeWatch(alice, []byte("a"), nil); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Fatalf("watch of a: %v, want permission denied", err)
	}
}

// TestAuthMemberListNeedsUser: once auth is enabled, MemberList needs a
// user (any), as etcd's EtcdServer.MemberList (requireAuthInfo).
func TestAuthMemberListNeedsUser(t *testing.T) {
	n := authTestNode(t)
	addUsers(t, n, []string{"root"}, "alice")
	token := enableAuth(t, n)
	none := auth.WithCredentials(ctxT(t), auth.Credentials{})
	alice := auth.WithCredentials(ctxT(t), auth.Credentials{Token: token("alice")})
	if _, err := n.MemberList(none, &pb.MemberListRequest{}); !errors.Is(err, auth.ErrUserEmpty) {
		t.Fatalf("member list without a token: %v, want ErrUserEmpty", err)
	}
	if ml, err := n.MemberList(alice, &pb.MemberListRequest{Linearizable: true}); err != nil || len(ml.Members) != 1 {
		t.Fatalf("member list as alice = %v, %v", ml, err)
	}
}
