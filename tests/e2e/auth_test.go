package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestCtlAuthManagement drives etcdctl's user, role and auth commands
// (everything but a successful auth enable) against etcd and concord.
func TestCtlAuthManagement(t *testing.T) {
	runScenario(t, scenario{name: "auth-mgmt", extra: []string{"--bcrypt-cost=4"}, steps: seq(
		ctl("auth", "status"),
		ctl("auth", "enable"),
		ctl("user", "add", "root", "--new-user-password=rootpw"),
		ctl("user", "add", "root", "--new-user-password=other"),
		// No second auth enable: etcdctl's would grant root the root role
		// and enable auth (TestClientAuthManagement checks the server's
		// ErrRootRoleNotExist).
		ctl("user", "add", "alice", "--new-user-password=alicepw"),
		ctl("user", "add", "np", "--no-password"),
		ctl("user", "list"),
		ctl("user", "get", "root"),
		ctl("user", "get", "nobody"),
		ctl("role", "add", "root"),
		ctl("role", "add", "reader"),
		ctl("role", "add", "reader"),
		ctl("user", "grant-role", "root", "root"),
		ctl("user", "grant-role", "root", "root"),
		ctl("user", "grant-role", "alice", "nope"),
		ctl("user", "grant-role", "nobody", "reader"),
		ctl("role", "grant-permission", "reader", "read", "foo"),
		ctl("role", "grant-permission", "reader", "--prefix", "readwrite", "dir/"),
		ctl("role", "grant-permission", "reader", "--from-key", "read", "z"),
		ctl("role", "grant-permission", "reader", "write", "k1", "k5"),
		ctl("role", "grant-permission", "reader", "write", "b", "a"),
		ctl("role", "grant-permission", "reader", "write", "foo"),
		ctl("role", "grant-permission", "nope", "read", "foo"),
		ctl("role", "get", "reader"),
		ctl("role", "get", "reader", "-w", "json"),
		ctl("role", "get", "root"),
		ctl("role", "get", "nope"),
		ctl("role", "list"),
		ctl("user", "grant-role", "alice", "reader"),
		ctl("user", "get", "alice"),
		ctl("user", "get", "alice", "--detail"),
		ctl("user", "get", "alice", "-w", "json"),
		ctl("user", "revoke-role", "alice", "root"),
		ctl("role", "revoke-permission", "reader", "foo"),
		ctl("role", "revoke-permission", "reader", "foo"),
		ctl("role", "revoke-permission", "reader", "dir/", "--prefix"),
		ctl("role", "revoke-permission", "nope", "foo"),
		ctl("role", "get", "reader"),
		ctlIn("newpw\n", "user", "passwd", "alice", "--interactive=false"),
		ctlIn("newpw\n", "user", "passwd", "nobody", "--interactive=false"),
		ctl("auth", "status", "-w", "json"),
		ctl("auth", "disable"),
		step{kind: stepRestart},
		ctl("user", "list"),
		ctl("role", "get", "reader"),
		ctl("auth", "status"),
		ctl("role", "delete", "reader"),
		ctl("role", "delete", "reader"),
		ctl("user", "get", "alice"),
		ctl("user", "delete", "alice"),
		ctl("user", "delete", "alice"),
		ctl("user", "revoke-role", "root", "root"),
		ctl("user", "list"),
		ctl("role", "list"),
		ctl("auth", "status"),
	)})
}

// TestAuthEnableRefused checks that concord, which does not enforce
// permissions yet, never reports auth as enabled: with a root user holding
// the root role, where etcd would enable auth, AuthEnable fails and keys
// stay readable without credentials.
func TestAuthEnableRefused(t *testing.T) {
	t.Parallel()
	s := startServer(t, concordImpl, serverOptions{extra: []string{"--bcrypt-cost=4"}})
	mustCtl(t, s.Endpoint(), "user", "add", "root", "--new-user-password=pw")
	mustCtl(t, s.Endpoint(), "user", "grant-role", "root", "root")
	r := runCtl(t, s.Endpoint(), "", "auth", "enable")
	if r.exit == 0 || !strings.Contains(r.stderr, "auth enable is not supported yet") {
		t.Fatalf("auth enable: exit %d, stdout %q, stderr %q; want a refusal", r.exit, r.stdout, r.stderr)
	}
	if out := mustCtl(t, s.Endpoint(), "auth", "status"); !strings.Contains(out, "Authentication Status: false") {
		t.Fatalf("auth status after refused enable: %q", out)
	}

	c := newClient(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.AuthEnable(ctx); err == nil {
		t.Fatal("clientv3 AuthEnable succeeded")
	}
	if _, err := c.Authenticate(ctx, "root", "pw"); err == nil || err.Error() != rpctypes.ErrAuthNotEnabled.Error() {
		t.Fatalf("Authenticate: %v, want %v", err, rpctypes.ErrAuthNotEnabled)
	}
	// clientv3 with credentials authenticates when it connects; auth being
	// off, etcd's client goes on without a token, and so must concord's.
	cc, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint()}, Username: "root", Password: "pw", DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("clientv3 with credentials: %v", err)
	}
	defer cc.Close()
	if _, err := cc.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with credentials while auth is off: %v", err)
	}
}

// TestClientAuthManagement checks clientv3's auth API against etcd's
// answers and errors.
func TestClientAuthManagement(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: []string{"--bcrypt-cost=4"}})
			c := newClient(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			want := func(what string, err, target error) {
				t.Helper()
				if err == nil || err.Error() != target.Error() {
					t.Fatalf("%s: %v, want %v", what, err, target)
				}
			}
			_, err := c.UserAdd(ctx, "", "pw")
			want("UserAdd empty", err, rpctypes.ErrUserEmpty)
			_, err = c.RoleAdd(ctx, "")
			want("RoleAdd empty", err, rpctypes.ErrRoleEmpty)
			if _, err := c.UserAdd(ctx, "u", "pw"); err != nil {
				t.Fatal(err)
			}
			_, err = c.UserAdd(ctx, "u", "pw")
			want("UserAdd twice", err, rpctypes.ErrUserAlreadyExist)
			_, err = c.RoleGrantPermission(ctx, "r", "a", "", clientv3.PermissionType(clientv3.PermRead))
			want("grant to missing role", err, rpctypes.ErrRoleNotFound)
			if _, err := c.RoleAdd(ctx, "r"); err != nil {
				t.Fatal(err)
			}
			_, err = c.RoleAdd(ctx, "r")
			want("RoleAdd twice", err, rpctypes.ErrRoleAlreadyExist)
			_, err = c.RoleGrantPermission(ctx, "r", "", "", clientv3.PermissionType(clientv3.PermRead))
			want("grant empty key", err, rpctypes.ErrInvalidAuthMgmt)
			if _, err := c.RoleGrantPermission(ctx, "r", "a", clientv3.GetPrefixRangeEnd("a"), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
				t.Fatal(err)
			}
			_, err = c.UserRevokeRole(ctx, "u", "r")
			want("revoke ungranted", err, rpctypes.ErrRoleNotGranted)
			_, err = c.RoleRevokePermission(ctx, "r", "b", "")
			want("revoke missing perm", err, rpctypes.ErrPermissionNotGranted)
			if _, err := c.UserGrantRole(ctx, "u", "r"); err != nil {
				t.Fatal(err)
			}
			ug, err := c.UserGet(ctx, "u")
			if err != nil || len(ug.Roles) != 1 || ug.Roles[0] != "r" {
				t.Fatalf("UserGet: %v, %v", ug, err)
			}
			rg, err := c.RoleGet(ctx, "r")
			if err != nil || len(rg.Perm) != 1 || string(rg.Perm[0].Key) != "a" || string(rg.Perm[0].RangeEnd) != "b" {
				t.Fatalf("RoleGet: %v, %v", rg, err)
			}
			st, err := c.AuthStatus(ctx)
			if err != nil || st.Enabled || st.AuthRevision != 5 {
				t.Fatalf("AuthStatus: %v, %v (want disabled, revision 5)", st, err)
			}
			_, err = c.AuthEnable(ctx)
			want("AuthEnable without root", err, rpctypes.ErrRootUserNotExist)
			if _, err := c.UserAdd(ctx, "root", "pw"); err != nil {
				t.Fatal(err)
			}
			_, err = c.AuthEnable(ctx)
			want("AuthEnable without root role", err, rpctypes.ErrRootRoleNotExist)
			_, err = c.UserDelete(ctx, "nobody")
			want("UserDelete missing", err, rpctypes.ErrUserNotFound)
			_, err = c.RoleDelete(ctx, "nobody")
			want("RoleDelete missing", err, rpctypes.ErrRoleNotFound)
		})
	}
}

// TestSplitAuthManagement checks that the split topology's gateways forward
// the Auth service to consensus: a user added through one gateway is seen
// through the other, errors keep etcd's text, and auth enable refuses.
func TestSplitAuthManagement(t *testing.T) {
	c := startSplit(t)
	g1, g2 := c.gateways[0].endpoint(), c.gateways[1].endpoint()
	mustCtl(t, g1, "user", "add", "root", "--new-user-password=pw")
	mustCtl(t, g1, "role", "add", "reader")
	mustCtl(t, g1, "role", "grant-permission", "reader", "--prefix", "read", "dir/")
	mustCtl(t, g2, "user", "grant-role", "root", "root")
	if got := mustCtl(t, g2, "user", "get", "root"); got != "User: root\nRoles: root\n" {
		t.Fatalf("user get through the other gateway = %q", got)
	}
	if got := mustCtl(t, g2, "role", "get", "reader"); got != "Role reader\nKV Read:\n\t[dir/, dir0) (prefix dir/)\nKV Write:\n" {
		t.Fatalf("role get through the other gateway = %q", got)
	}
	r := runCtl(t, g2, "", "user", "add", "root", "--new-user-password=x")
	if r.exit == 0 || !strings.Contains(r.stderr, "Error: etcdserver: user name already exists") {
		t.Fatalf("second root: exit %d stderr %q", r.exit, r.stderr)
	}
	r = runCtl(t, g1, "", "auth", "enable")
	if r.exit == 0 || !strings.Contains(r.stderr, "auth enable is not supported yet") {
		t.Fatalf("auth enable: exit %d stdout %q stderr %q; want a refusal", r.exit, r.stdout, r.stderr)
	}
}
