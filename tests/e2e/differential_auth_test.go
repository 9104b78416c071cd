package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/gateway/remote"
)

// Knobs of TestDifferentialAuth, as diffSeedEnv and diffOpsEnv are
// TestDifferentialKV's.
var diffAuthKnobs = diffKnobs{seedEnv: "CONCORD_DIFFAUTH_SEED", opsEnv: "CONCORD_DIFFAUTH_OPS", seed: 1, ops: 1200}

// The generator's names: a few, so that duplicates, grants to missing
// users and deletes of granted roles happen often. "np" is added without
// a password when it is added; "" and "nobody"/"nope" are never added
// successfully.
var (
	diffAuthUsers     = []string{"root", "alice", "bob", "carol", "np"}
	diffAuthRoles     = []string{"root", "r1", "r2", "r3"}
	diffAuthPasswords = []string{"pw-a", "pw-b", ""}
)

// TestDifferentialAuth runs one seeded random sequence of Auth API
// requests (users, roles, permissions, auth enable and disable,
// Authenticate; valid and invalid ones) and of KV, lease and watch
// requests sent as different users (root, users whose permissions are
// split over several roles and adjacent ranges, a user without roles, no
// token, a token no server issued, tokens made stale by a password change,
// a user delete, an auth disable or a change of permissions) against a
// real single-member etcd and against concord, all in one (single) and in
// the split topology (split), and compares every answer as
// TestDifferentialKV does (runDiffSource). Both run with --bcrypt-cost=4
// and simple tokens, etcd's default.
//
// Each Authenticate gives each server's token to the steps that send as
// its user; tokens are compared only as present or not: etcd's simple
// token is random letters and a raft index, concord's a signed blob, and
// clients treat both as opaque (normalizeOutcome). Requests go over plain
// gRPC connections (newRawDiffTarget); watches and keep-alives each open a
// stream as their sender, since both servers check the stream's token.
// After an auth enable, the split topology is given time to check
// keep-alives (settleKeepAliveAuth).
//
//	CONCORD_DIFFAUTH_SEED=7 go test -count=1 -run TestDifferentialAuth ./tests/e2e/
//	CONCORD_DIFFAUTH_SEED=random CONCORD_DIFFAUTH_OPS=20000 go test -count=1 -timeout 1h -run TestDifferentialAuth/single ./tests/e2e/
func TestDifferentialAuth(t *testing.T) {
	t.Parallel()
	seed, n := diffParams(t, diffAuthKnobs)
	flags := []string{"--bcrypt-cost=4", "--auth-token=simple"}
	t.Run("single", func(t *testing.T) {
		etcd := startServer(t, etcdImpl, serverOptions{extra: flags})
		concord := startServer(t, concordImpl, serverOptions{extra: flags})
		runDiffSource(t, diffAuthKnobs, seed, n, newRawDiffTarget(t, etcd.Endpoint(), "etcd"), newRawDiffTarget(t, concord.Endpoint(), "concord"), newDiffAuthGen(seed))
	})
	// The split topology enables auth only with an internal secret (or
	// verified client certificates) by which its processes identify
	// themselves to consensus.
	t.Run("split", func(t *testing.T) {
		etcd := startServer(t, etcdImpl, serverOptions{extra: flags})
		secret := writeInternalSecret(t, t.TempDir(), "secret")
		c := startSplitWith(t, flags, "--internal-secret-file", secret)
		split := newRawDiffTarget(t, c.gateways[0].endpoint(), "concord split")
		split.settleAuthEnable = settleKeepAliveAuth(split)
		runDiffSource(t, diffAuthKnobs, seed, max(n/2, 1), newRawDiffTarget(t, etcd.Endpoint(), "etcd"), split, newDiffAuthGen(seed))
	})
}

// newRawDiffTarget is newDiffTarget over a plain gRPC connection: clientv3's
// interceptor retries a request refused for an invalid token or an old auth
// revision (100 times, 2.7 s, to refresh a token it does not have), which
// would only slow the sequence down.
func newRawDiffTarget(t *testing.T, endpoint, name string) diffTarget {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s): %v", endpoint, err)
	}
	t.Cleanup(func() { conn.Close() })
	return diffTarget{name: name, kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn), auth: pb.NewAuthClient(conn), watch: pb.NewWatchClient(conn), kaPerCall: true}
}

// settleKeepAliveAuth waits until d refuses a keep-alive without a token
// as etcd does once auth is enabled (ErrUserEmpty). The split topology's
// lease services let keep-alives through unchecked for up to
// remote.KeepAliveRecheck after they last saw auth off (a documented
// trade-off, remote.Authorizer), so one sent right after an auth enable
// may renew a lease etcd would not.
func settleKeepAliveAuth(d diffTarget) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		deadline := time.Now().Add(10 * remote.KeepAliveRecheck)
		for {
			_, err := d.keepAliveOnce(ctx, &pb.LeaseKeepAliveRequest{ID: 0})
			if errors.Is(rpctypes.Error(err), rpctypes.ErrUserEmpty) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("a keep-alive without a token still gets %v", err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// callAuth sends an Auth service request.
func (d diffTarget) callAuth(ctx context.Context, req proto.Message) (proto.Message, error) {
	a := d.auth
	switch r := req.(type) {
	case *pb.AuthEnableRequest:
		return nilOnErr(a.AuthEnable(ctx, r))
	case *pb.AuthDisableRequest:
		return nilOnErr(a.AuthDisable(ctx, r))
	case *pb.AuthStatusRequest:
		return nilOnErr(a.AuthStatus(ctx, r))
	case *pb.AuthenticateRequest:
		return nilOnErr(a.Authenticate(ctx, r))
	case *pb.AuthUserAddRequest:
		return nilOnErr(a.UserAdd(ctx, r))
	case *pb.AuthUserGetRequest:
		return nilOnErr(a.UserGet(ctx, r))
	case *pb.AuthUserListRequest:
		return nilOnErr(a.UserList(ctx, r))
	case *pb.AuthUserDeleteRequest:
		return nilOnErr(a.UserDelete(ctx, r))
	case *pb.AuthUserChangePasswordRequest:
		return nilOnErr(a.UserChangePassword(ctx, r))
	case *pb.AuthUserGrantRoleRequest:
		return nilOnErr(a.UserGrantRole(ctx, r))
	case *pb.AuthUserRevokeRoleRequest:
		return nilOnErr(a.UserRevokeRole(ctx, r))
	case *pb.AuthRoleAddRequest:
		return nilOnErr(a.RoleAdd(ctx, r))
	case *pb.AuthRoleGetRequest:
		return nilOnErr(a.RoleGet(ctx, r))
	case *pb.AuthRoleListRequest:
		return nilOnErr(a.RoleList(ctx, r))
	case *pb.AuthRoleDeleteRequest:
		return nilOnErr(a.RoleDelete(ctx, r))
	case *pb.AuthRoleGrantPermissionRequest:
		return nilOnErr(a.RoleGrantPermission(ctx, r))
	case *pb.AuthRoleRevokePermissionRequest:
		return nilOnErr(a.RoleRevokePermission(ctx, r))
	}
	return nil, fmt.Errorf("differential test: no call for %T", req)
}

// watchCreate opens a watch stream (as ctx's user: etcd checks the token
// the stream was opened with), creates one watch and returns the first
// answer: created, or canceled as not permitted. The stream ends with ctx.
func (d diffTarget) watchCreate(ctx context.Context, r *pb.WatchCreateRequest) (proto.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws, err := d.watch.Watch(ctx, diffRecvLimit)
	if err != nil {
		return nil, err
	}
	if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}}); err != nil {
		return nil, err
	}
	resp, err := ws.Recv()
	if err == io.EOF {
		return nil, fmt.Errorf("watch stream ended without an answer")
	}
	return nilOnErr(resp, err)
}

// diffAuthUser is the generator's model of a user, from etcd's answers.
type diffAuthUser struct {
	password   string
	noPassword bool
}

// diffAuthGen generates TestDifferentialAuth's requests. Its KV, lease and
// watch requests are diffGen's; it follows etcd's answers for the auth
// state (enabled, users and their passwords, roles and their permissions,
// the auth revision) and for the users of the tokens.
type diffAuthGen struct {
	*diffGen
	enabled bool
	users   map[string]*diffAuthUser
	perms   map[string][]*authpb.Permission // by role
	authRev uint64
	// sessions[k-1] is the user of the k-th successful Authenticate;
	// latest the newest session of each user.
	sessions []string
	latest   map[string]int
	// thenAs sent the grant of the short lease diffGen.then revokes.
	thenAs int
	// finalSteps are the end-state checks left (nil: not built yet).
	finalSteps []diffStep
	finalBuilt bool
}

func newDiffAuthGen(seed uint64) *diffAuthGen {
	return &diffAuthGen{diffGen: newDiffGen(seed), users: map[string]*diffAuthUser{}, perms: map[string][]*authpb.Permission{}, latest: map[string]int{}}
}

func (g *diffAuthGen) user() string { return g.name(diffAuthUsers, "nobody") }

func (g *diffAuthGen) role() string { return g.name(diffAuthRoles, "nope") }

// password picks a password for user: never none for root, who could
// then never authenticate (nothing more could be administered once auth
// is enabled, and the final checks authenticate as root).
func (g *diffAuthGen) password(user string) string {
	pw := diffAuthPasswords[g.pick(len(diffAuthPasswords))]
	if user == "root" && pw == "" {
		pw = diffAuthPasswords[0]
	}
	return pw
}

// name picks one of names, sometimes the empty name or missing, which is
// never added.
func (g *diffAuthGen) name(names []string, missing string) string {
	switch x := g.pick(100); {
	case x < 2:
		return ""
	case x < 6:
		return missing
	}
	return names[g.pick(len(names))]
}

// who picks the sender of a KV, lease or watch request: mostly the newest
// session of some user (root among them), sometimes an older, possibly
// stale one, no token or a bogus one.
func (g *diffAuthGen) who() int {
	switch x := g.pick(100); {
	case x < 8 || len(g.sessions) == 0:
		return 0
	case x < 11:
		return diffAsBogus
	case x < 25 || len(g.latest) == 0:
		return 1 + g.pick(len(g.sessions))
	}
	names := slices.Sorted(maps.Keys(g.latest))
	return g.latest[names[g.pick(len(names))]]
}

// admin picks the sender of an auth management request: mostly root's
// newest session.
func (g *diffAuthGen) admin() int {
	if s, ok := g.latest["root"]; ok && g.chance(80) {
		return s
	}
	return g.who()
}

func (g *diffAuthGen) perm() *authpb.Permission {
	p := &authpb.Permission{PermType: authpb.Permission_Type(g.pick(3)), Key: g.key()}
	p.RangeEnd = g.rangeEnd(p.Key)
	if g.chance(3) {
		p.Key = nil
	}
	return p
}

func (g *diffAuthGen) next() diffStep {
	if len(g.then) > 0 {
		// The revoke of a short lease, sent by whoever granted it (it
		// has no keys, on which etcd would check write permission), so
		// that it is revoked before it could expire.
		s := g.diffGen.next()
		s.as = g.thenAs
		return s
	}
	// While auth is off, mostly build users and roles; while it is on,
	// mostly use them.
	mgmt := 25
	if !g.enabled {
		mgmt = 60
	}
	if g.pick(100) < mgmt {
		return g.mgmt()
	}
	s := diffStep{as: g.who()}
	g.raftExtra = g.headerExtra(s.as)
	switch x := g.pick(100); {
	case x < 10:
		s.what = "authenticate"
		u := g.user()
		pw := diffAuthPasswords[g.pick(len(diffAuthPasswords))]
		if m, ok := g.users[u]; ok && g.chance(75) {
			pw = m.password
		}
		s.req, s.as = &pb.AuthenticateRequest{Name: u, Password: pw}, 0
	case x < 18:
		s.what = "watch"
		w := &pb.WatchCreateRequest{Key: g.key(), PrevKv: g.chance(20)}
		w.RangeEnd = g.rangeEnd(w.Key)
		if g.chance(3) {
			w.Key = nil
		}
		if g.chance(20) {
			// etcd refuses it as compacted before checking permissions.
			w.StartRevision = -1
		}
		s.req = w
	default:
		s.what, s.req = g.diffGen.nextReq()
	}
	return s
}

// headerExtra is what etcd's raft request header holds for the sender
// who on top of the request ID while auth is enabled: the user name
// (field 2) and the auth revision (field 3); etcd fills them from a valid
// token (EtcdServer.processInternalRaftRequestOnce).
func (g *diffAuthGen) headerExtra(who int) int {
	if !g.enabled || who <= 0 {
		return 0
	}
	u := g.sessions[who-1]
	return 1 + protowire.SizeBytes(len(u)) + 1 + protowire.SizeVarint(g.authRev)
}

func (g *diffAuthGen) mgmt() diffStep {
	s := diffStep{as: g.admin()}
	if !g.enabled && g.chance(85) {
		s.as = 0
	}
	switch x := g.pick(100); {
	case x < 14:
		s.what = "user add"
		r := &pb.AuthUserAddRequest{Name: g.user()}
		r.Password = g.password(r.Name)
		if (r.Name == "np" || g.chance(5)) && r.Name != "root" {
			r.Options = &authpb.UserAddOptions{NoPassword: true}
		}
		s.req = r
	case x < 17:
		s.what = "user delete"
		s.req = &pb.AuthUserDeleteRequest{Name: g.user()}
	case x < 22:
		s.what = "user get"
		s.req = &pb.AuthUserGetRequest{Name: g.user()}
	case x < 24:
		s.what = "user list"
		s.req = &pb.AuthUserListRequest{}
	case x < 29:
		s.what = "user passwd"
		r := &pb.AuthUserChangePasswordRequest{Name: g.user()}
		r.Password = g.password(r.Name)
		s.req = r
	case x < 41:
		s.what = "user grant"
		s.req = &pb.AuthUserGrantRoleRequest{User: g.user(), Role: g.role()}
	case x < 45:
		s.what = "user revoke"
		s.req = &pb.AuthUserRevokeRoleRequest{Name: g.user(), Role: g.role()}
	case x < 52:
		s.what = "role add"
		s.req = &pb.AuthRoleAddRequest{Name: g.role()}
	case x < 54:
		s.what = "role delete"
		s.req = &pb.AuthRoleDeleteRequest{Role: g.role()}
	case x < 58:
		s.what = "role get"
		s.req = &pb.AuthRoleGetRequest{Role: g.role()}
	case x < 60:
		s.what = "role list"
		s.req = &pb.AuthRoleListRequest{}
	case x < 76:
		s.what = "role grant"
		s.req = &pb.AuthRoleGrantPermissionRequest{Name: g.role(), Perm: g.perm()}
	case x < 84:
		s.what = "role revoke"
		r := &pb.AuthRoleRevokePermissionRequest{Role: g.role()}
		if ps := g.perms[r.Role]; len(ps) > 0 && g.chance(70) {
			p := ps[g.pick(len(ps))]
			r.Key, r.RangeEnd = slices.Clone(p.Key), slices.Clone(p.RangeEnd)
		} else {
			p := g.perm()
			r.Key, r.RangeEnd = p.Key, p.RangeEnd
		}
		s.req = r
	case x < 91:
		s.what = "auth enable"
		s.req = &pb.AuthEnableRequest{}
	case x < 94:
		s.what = "auth disable"
		s.req = &pb.AuthDisableRequest{}
	default:
		s.what = "auth status"
		s.req = &pb.AuthStatusRequest{}
	}
	return s
}

// final: as root (authenticated anew if auth is on), the auth state in
// full (every user and role, the status), then diffGen's end state.
func (g *diffAuthGen) final() (diffStep, bool) {
	if !g.finalBuilt {
		g.finalBuilt = true
		if g.enabled {
			g.finalSteps = append(g.finalSteps, diffStep{what: "final authenticate", req: &pb.AuthenticateRequest{Name: "root", Password: g.users["root"].password}})
			g.finalAs = len(g.sessions) + 1
		}
		add := func(what string, req proto.Message) {
			g.finalSteps = append(g.finalSteps, diffStep{what: what, req: req, as: g.finalAs})
		}
		add("final auth status", &pb.AuthStatusRequest{})
		add("final user list", &pb.AuthUserListRequest{})
		add("final role list", &pb.AuthRoleListRequest{})
		for _, u := range diffAuthUsers {
			add("final user get", &pb.AuthUserGetRequest{Name: u})
		}
		for _, r := range diffAuthRoles {
			add("final role get", &pb.AuthRoleGetRequest{Role: r})
		}
	}
	if len(g.finalSteps) > 0 {
		s := g.finalSteps[0]
		g.finalSteps = g.finalSteps[1:]
		return s, true
	}
	return g.diffGen.final()
}

// observe follows etcd's answer to s.
func (g *diffAuthGen) observe(s diffStep, resp proto.Message, err error) {
	g.diffGen.observe(s, resp, err)
	if err != nil {
		return
	}
	mutated := true
	switch r := s.req.(type) {
	case *pb.LeaseGrantRequest:
		mutated, g.thenAs = false, s.as
	case *pb.AuthenticateRequest:
		mutated = false
		g.sessions = append(g.sessions, r.Name)
		g.latest[r.Name] = len(g.sessions)
	case *pb.AuthEnableRequest:
		// etcd's AuthEnable keeps the auth revision.
		mutated, g.enabled = false, true
	case *pb.AuthDisableRequest:
		// Every token is gone.
		mutated = g.enabled
		g.enabled = false
		clear(g.latest)
	case *pb.AuthStatusRequest:
		mutated = false
		g.authRev = resp.(*pb.AuthStatusResponse).AuthRevision
	case *pb.AuthUserAddRequest:
		u := &diffAuthUser{password: r.Password}
		if r.Options != nil && r.Options.NoPassword {
			u.noPassword, u.password = true, ""
		}
		g.users[r.Name] = u
	case *pb.AuthUserDeleteRequest:
		delete(g.users, r.Name)
		delete(g.latest, r.Name)
	case *pb.AuthUserChangePasswordRequest:
		g.users[r.Name].password = r.Password
		delete(g.latest, r.Name)
	case *pb.AuthRoleAddRequest:
		g.perms[r.Name] = nil
	case *pb.AuthRoleDeleteRequest:
		delete(g.perms, r.Role)
	case *pb.AuthRoleGrantPermissionRequest:
		g.perms[r.Name] = append(g.perms[r.Name], r.Perm)
	case *pb.AuthRoleRevokePermissionRequest:
		g.perms[r.Role] = slices.DeleteFunc(g.perms[r.Role], func(p *authpb.Permission) bool {
			return string(p.Key) == string(r.Key) && string(p.RangeEnd) == string(r.RangeEnd)
		})
	case *pb.AuthUserGrantRoleRequest, *pb.AuthUserRevokeRoleRequest:
	default:
		mutated = false
	}
	if mutated {
		g.authRev++
	}
}
