package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/tlstest"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/services/config"
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

// TestCtlAuthEnabled enables auth with etcdctl and checks, against etcd,
// what root, a limited user, a wrong password and no credentials may do.
func TestCtlAuthEnabled(t *testing.T) {
	alice := "--user=alice:alicepw"
	root := "--user=root:rootpw"
	runScenario(t, scenario{name: "auth-enabled", extra: []string{"--bcrypt-cost=4"}, steps: seq(
		ctl("put", "dir/a", "1"),
		ctl("put", "secret", "s"),
		ctl("user", "add", "root", "--new-user-password=rootpw"),
		ctl("user", "add", "alice", "--new-user-password=alicepw"),
		ctl("role", "add", "reader"),
		ctl("role", "grant-permission", "reader", "--prefix", "read", "dir/"),
		ctl("role", "grant-permission", "reader", "readwrite", "rw"),
		ctl("user", "grant-role", "alice", "reader"),
		// etcdctl grants root the root role itself, then enables.
		ctl("auth", "enable"),
		ctl("auth", "enable", root),
		ctl("get", "dir/a"),
		ctl("put", "dir/a", "2"),
		ctl("user", "list"),
		ctl(root, "get", "dir/a"),
		ctl(root, "put", "secret", "s2"),
		ctl(alice, "get", "dir/a"),
		ctl(alice, "get", "dir/", "--prefix"),
		ctl(alice, "get", "secret"),
		ctl(alice, "get", "", "--prefix"),
		ctl(alice, "put", "dir/b", "2"),
		ctl(alice, "put", "rw", "x"),
		ctl(alice, "put", "rw", "y", "--prev-kv"),
		ctl(alice, "del", "dir/a"),
		ctlIn("value(\"dir/a\") = \"1\"\n\nput rw z\n\nget secret\n\n", alice, "txn"),
		ctlIn("value(\"dir/a\") = \"1\"\n\nput rw z\n\nget dir/a\n\n", alice, "txn"),
		ctl("--user=alice:wrong", "get", "dir/a"),
		ctl("--user=nobody:pw", "get", "dir/a"),
		ctl(alice, "user", "list"),
		ctl(alice, "user", "get", "alice"),
		ctl(alice, "user", "get", "root"),
		ctl(alice, "role", "get", "reader"),
		ctl(alice, "role", "get", "root"),
		ctl(alice, "user", "add", "eve", "--new-user-password=x"),
		ctl(alice, "compaction", "2"),
		ctl(alice, "defrag"),
		ctl(alice, "alarm", "list"),
		ctl(alice, "auth", "disable"),
		ctl(root, "user", "revoke-role", "root", "root"),
		ctl(root, "user", "delete", "root"),
		ctl(root, "role", "delete", "root"),
		ctl(root, "role", "revoke-permission", "reader", "dir/", "--prefix"),
		ctl(alice, "get", "dir/a"),
		ctl(root, "auth", "status"),
		step{kind: stepRestart},
		ctl("get", "dir/a"),
		ctl(root, "get", "dir/a"),
		ctl(root, "auth", "disable"),
		ctl("get", "dir/a"),
		ctl("auth", "status"),
	)})
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
// through the other, errors keep etcd's text, and auth enable refuses
// (neither client certificates nor an internal secret here).
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
	if r.exit == 0 || !strings.Contains(r.stderr, "auth enable is not supported in the split topology") {
		t.Fatalf("auth enable: exit %d stdout %q stderr %q; want a refusal", r.exit, r.stdout, r.stderr)
	}
	if out := mustCtl(t, g2, "auth", "status"); !strings.Contains(out, "Authentication Status: false") {
		t.Fatalf("auth status after the refused enable: %q", out)
	}
}

// TestSplitAuthEnforced enables auth in the split topology with verified
// client certificates (the watch fan-out and lease service call
// consensus's internal API as the root-role user their certificate names;
// TestSplitAuthSecret runs it on an internal secret instead) and checks that clients see through its gateway what they see from etcd:
// KV, watch and lease calls of a user limited to a prefix, of root and of a
// client without a token, with etcd's errors. A direct call to consensus's
// internal API gets no history without a root-role identity.
func TestSplitAuthEnforced(t *testing.T) {
	// Clients present a certificate of their own, whose common name names
	// no existing user: the clients "without credentials" of authOutcomes
	// are that user, at etcd with the same flags as through the gateway
	// (refused with permission denied rather than user name is empty).
	certs, userCert, userKey := certsWithUser(t)
	tlsCfg := userClientTLS(t, certs, userCert, userKey)
	etcd := startServer(t, etcdImpl, serverOptions{tls: certs, clientCertAuth: true, extra: []string{"--bcrypt-cost=4"}})
	want := authOutcomesAt(t, "https://"+etcd.Endpoint(), tlsCfg)

	split := startTLSSplit(t, certs, "--bcrypt-cost=4")
	cons, gw := split.cons, split.gw

	// The processes' certificate names a root-role user.
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{gw.url()}, TLS: tlsCfg, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	procUser := "concord test client"
	if _, err := admin.UserAddWithOptions(ctx, procUser, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, procUser, "root"); err != nil {
		t.Fatal(err)
	}

	compareOutcomes(t, authOutcomesAt(t, gw.url(), tlsCfg), want)

	// authOutcomes ends with auth disabled: on again, the internal API
	// serves history only to a root-role caller, here named by the
	// processes' certificate.
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	rangeEvents := func(cfg *tls.Config) error {
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		c := concordv1connect.NewInternalServiceClient(&http.Client{Transport: tr}, cons.url())
		// authOutcomes compacted at revision 2.
		_, err := c.RangeEvents(ctx, &concordv1.RangeEventsRequest{From: 3, To: 3, Key: []byte("secret")})
		return err
	}
	if err := rangeEvents(tlsCfg); err == nil || !strings.Contains(err.Error(), "user name not found") {
		t.Errorf("internal RangeEvents with a certificate naming no user: %v, want a refusal", err)
	}
	procCfg, err := certs.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := rangeEvents(procCfg); err != nil {
		t.Errorf("internal RangeEvents as the processes' root-role user: %v", err)
	}
}

// TestSplitAuthSecret runs the split topology without TLS, its processes
// sharing an internal secret (--internal-secret-file), which lets consensus
// tell their own calls from clients' where no client certificate can:
// etcdctl enables auth through a gateway, and a user with a prefix's
// permissions, root and clients without credentials see through it what
// they see from etcd (etcdctl put, get, watch, lease keep-alive, their
// refusals, then authOutcomes' clientv3 calls). The processes stay healthy
// with auth on; a gateway given another secret does not (it is a client
// without credentials to consensus), and consensus's internal API refuses
// a wrong or missing secret.
func TestSplitAuthSecret(t *testing.T) {
	dir := t.TempDir()
	secretFile, wrongFile := writeInternalSecret(t, dir, "secret"), writeInternalSecret(t, dir, "wrong")

	etcd := startServer(t, etcdImpl, serverOptions{extra: []string{"--bcrypt-cost=4"}})
	split := startSplitWith(t, []string{"--bcrypt-cost=4"}, "--internal-secret-file", secretFile)
	gw := split.gateways[0]
	// Started while auth is off, when a gateway needs no identity.
	wport := freePort(t)
	wrongGW := startProc(t, "gateway-wrong-secret", wport, "gateway", "--consensus-endpoints", split.consensus.url(),
		"--watchfanout-endpoints", split.watchfanout.url(), "--leasesvc-endpoints", split.leasesvc.url(),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport), "--internal-secret-file", wrongFile)

	want := secretCtlOutcomes(t, etcd.Endpoint())
	compareOutcomes(t, secretCtlOutcomes(t, gw.endpoint()), want)

	// Auth is on. Every process's own calls to consensus (health checks,
	// leader polls, the lease authority) still work: /health as etcd's.
	health := func(url string) (int, string) {
		t.Helper()
		code, body := httpGet(t, url+"/health")
		return code, strings.TrimSpace(body)
	}
	wantCode, wantBody := health(etcd.clientURL())
	for _, p := range []*proc{split.consensus, split.watchfanout, split.leasesvc, gw, split.gateways[1]} {
		if code, body := health(p.url()); code != wantCode || body != wantBody {
			t.Errorf("%s /health with auth on: %d %s; etcd: %d %s", p.name, code, body, wantCode, wantBody)
		}
	}
	// The gateway with another secret is a client without credentials to
	// consensus for its own calls: its health check is refused.
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := health(wrongGW.url())
		if code == http.StatusServiceUnavailable && strings.Contains(body, rpctypes.ErrUserEmpty.Error()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health of the gateway with a wrong secret: %d %s, want 503 naming %q", code, body, rpctypes.ErrUserEmpty.Error())
		}
		time.Sleep(pollInterval)
	}
	// Consensus's internal API admits only the secret.
	currentRevision := func(proof string) error {
		c := concordv1connect.NewInternalServiceClient(&http.Client{Transport: headerTransport{gateway.InternalSecretHeader, proof}},
			split.consensus.url())
		_, err := c.CurrentRevision(t.Context(), &concordv1.CurrentRevisionRequest{})
		return err
	}
	secret, err := config.ReadInternalSecret(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := config.ReadInternalSecret(wrongFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := currentRevision(gateway.InternalSecretProof(secret)); err != nil {
		t.Errorf("internal CurrentRevision with the secret: %v", err)
	}
	for what, proof := range map[string]string{"a wrong secret": gateway.InternalSecretProof(wrong), "no secret": ""} {
		if err := currentRevision(proof); err == nil || !strings.Contains(err.Error(), rpctypes.ErrUserEmpty.Error()) {
			t.Errorf("internal CurrentRevision with %s: %v, want %q", what, err, rpctypes.ErrUserEmpty.Error())
		}
	}

	// authOutcomes adds root and alice itself, with auth off.
	for _, ep := range []string{etcd.Endpoint(), gw.endpoint()} {
		mustCtl(t, ep, "--user=root:rootpw", "auth", "disable")
		mustCtl(t, ep, "user", "delete", "root")
	}
	want = authOutcomes(t, etcd)
	compareOutcomes(t, authOutcomesAt(t, gw.endpoint(), nil), want)
}

// TestSplitAuthClientCertUser: through a split gateway, as from etcd with
// --client-cert-auth, a client whose verified certificate names a user and
// that presents no token is that user: etcdctl with the certificate alone
// puts, gets and watches its key and keeps its lease alive (through the
// gateway, the watch fan-out and the lease service), and gets etcd's
// refusals outside its permissions; root's token takes precedence over the
// certificate. The processes identify themselves by their own certificate,
// which names a root-role user, or by an internal secret. A client that
// sends the gateway's
// forwarded-user headers itself gains nothing, by gRPC metadata or through
// the JSON gateway, at the gateway or at consensus.
func TestSplitAuthClientCertUser(t *testing.T) {
	t.Run("process certificates", func(t *testing.T) { testSplitAuthClientCertUser(t, false) })
	// The processes share an internal secret and present no certificate;
	// only the gateway verifies client certificates. The watch fan-out and
	// lease service take the gateway's forwarded user by the secret's
	// proof.
	t.Run("internal secret", func(t *testing.T) { testSplitAuthClientCertUser(t, true) })
}

func testSplitAuthClientCertUser(t *testing.T, withSecret bool) {
	// The user's certificate names "concord test client with addresses".
	certs, userCert, userKey := certsWithUser(t)
	const userCN, procCN = "concord test client with addresses", "concord test client"
	procDial := []string{"--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}
	userDial := []string{"--cacert", certs.CA, "--cert", userCert, "--key", userKey}
	id := ctlIdentities{name: userCN, add: []string{"--no-password"}, user: userDial, anon: userDial, admin: procDial,
		// The split processes call consensus as the user their
		// certificate names; the same user at etcd changes nothing.
		setup: [][]string{{"user", "add", procCN, "--no-password"}, {"user", "grant-role", procCN, "root"}}}

	etcd := startServer(t, etcdImpl, serverOptions{tls: certs, clientCertAuth: true, extra: []string{"--bcrypt-cost=4"}})
	opts := tlsSplitOptions{consensusArgs: []string{"--bcrypt-cost=4"}}
	if withSecret {
		opts.secretFile = writeInternalSecret(t, t.TempDir(), "secret")
	}
	split := startTLSSplitWith(t, certs, opts)
	etcdURL := "https://" + etcd.Endpoint()
	want := ctlUserOutcomes(t, etcdURL, id)
	compareOutcomes(t, ctlUserOutcomes(t, split.gw.url(), id), want)
	// A token takes precedence over the certificate.
	tokenWins := func(ep string) ctlResult {
		return runCtl(t, ep, "", append(slices.Clone(userDial), "--user=root:rootpw", "get", "secret", "--print-value-only")...)
	}
	if got, want := tokenWins(split.gw.url()), tokenWins(etcdURL); got != want || got.stdout != "s\n" {
		t.Errorf("root's token with the user's certificate: %+v; etcd: %+v", got, want)
	}

	// Forged claims. The user's certificate on a plain HTTP/2 client that
	// sets the headers itself.
	tlsCfg := userClientTLS(t, certs, userCert, userKey)
	tr := &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	with := func(h map[string]string) *http.Client {
		return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			r = r.Clone(r.Context())
			for k, v := range h {
				r.Header.Set(k, v)
			}
			return tr.RoundTrip(r)
		})}
	}
	const F, U, V = gateway.ForwardedHeader, gateway.ForwardedUserHeader, gateway.ForwardedViaHeader
	denied, empty := rpctypes.ErrPermissionDenied.Error(), rpctypes.ErrUserEmpty.Error()
	for _, tc := range []struct {
		name    string
		url     string
		headers map[string]string
		want    string // the refusal of a get and a put of secret
	}{
		{"the certificate's user", split.gw.url(), nil, denied},
		{"a claim without the forwarded mark", split.gw.url(), map[string]string{U: "root"}, denied},
		{"a claim of root", split.gw.url(), map[string]string{F: "client", U: "root"}, empty},
		{"a claim of root through the secret", split.gw.url(), map[string]string{F: "client", U: "root", V: "internal"}, empty},
		{"a claim of root through the processes' certificate", split.gw.url(), map[string]string{F: "client", U: "root", V: "cn:" + url.QueryEscape(procCN)}, empty},
		{"a claim of root at consensus", split.cons.url(), map[string]string{F: "client", U: "root"}, empty},
		{"a claim of root through the secret at consensus", split.cons.url(), map[string]string{F: "client", U: "root", V: "internal"}, empty},
	} {
		kv := etcdserverpbconnect.NewKVClient(with(tc.headers), tc.url, connect.WithGRPC())
		_, err := kv.Range(t.Context(), &pb.RangeRequest{Key: []byte("secret")})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: get secret: %v, want %q", tc.name, err, tc.want)
		}
		_, err = kv.Put(t.Context(), &pb.PutRequest{Key: []byte("secret"), Value: []byte("forged")})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: put secret: %v, want %q", tc.name, err, tc.want)
		}
	}
	// The JSON gateway passes Grpc-Metadata-* headers on as metadata.
	for _, ep := range []string{split.gw.url(), split.cons.url()} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, ep+"/v3/kv/range", strings.NewReader(`{"key":"c2VjcmV0"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Grpc-Metadata-"+F, "client")
		req.Header.Set("Grpc-Metadata-"+U, "root")
		req.Header.Set("Grpc-Metadata-"+V, "internal")
		resp, err := with(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		// "s" is "cw==" in the JSON gateway's base64.
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "cw==") || !strings.Contains(string(body), empty) {
			t.Errorf("JSON range of secret at %s with a forged claim of root: %d %s, want %q", ep, resp.StatusCode, body, empty)
		}
	}
	if out := mustCtl(t, split.gw.url(), append(slices.Clone(procDial), "--user=root:rootpw", "get", "secret", "--print-value-only")...); out != "s\n" {
		t.Errorf("secret after the forged puts: %q", out)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// writeInternalSecret writes a new random --internal-secret-file into dir
// and returns its path.
func writeInternalSecret(t *testing.T, dir, name string) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// headerTransport sets header name to value (unless empty) on every
// request.
type headerTransport struct{ name, value string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if h.value != "" {
		r = r.Clone(r.Context())
		r.Header.Set(h.name, h.value)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// secretCtlOutcomes enables auth with etcdctl at ep and returns what each
// later etcdctl call printed (lease IDs replaced): bob may read and write
// foo, put, get and watch it through ctlPutGetWatch, keep a lease alive and
// see its keys, until the lease holds a key he may not write; root may do anything;
// others get etcd's errors. Auth stays enabled, root's password is rootpw.
func secretCtlOutcomes(t *testing.T, ep string) []string {
	t.Helper()
	return ctlUserOutcomes(t, ep, ctlIdentities{name: "bob", add: []string{"--new-user-password=bobpw"}, user: []string{"--user=bob:bobpw"}})
}

// ctlIdentities are the etcdctl flags of the callers ctlUserOutcomes
// runs as.
type ctlIdentities struct {
	// name is the limited user's name; add the flags of its `user add`.
	name string
	add  []string
	// user are the flags of its calls (a password, or a client certificate
	// naming it); anon those of a client without credentials; admin those
	// of every call before auth enable and, with root's password, of
	// root's (connection flags only).
	user, anon, admin []string
	// setup are more calls made before auth enable, with admin.
	setup [][]string
}

// ctlUserOutcomes is secretCtlOutcomes for the user and flags of id.
func ctlUserOutcomes(t *testing.T, ep string, id ctlIdentities) []string {
	t.Helper()
	as := func(flags []string, args ...string) []string { return append(slices.Clone(flags), args...) }
	for _, args := range append(slices.Clone(id.setup), [][]string{
		{"user", "add", "root", "--new-user-password=rootpw"},
		append([]string{"user", "add", id.name}, id.add...),
		{"role", "add", "foo-rw"},
		{"role", "grant-permission", "foo-rw", "readwrite", "foo"},
		{"user", "grant-role", id.name, "foo-rw"},
		{"put", "secret", "s"},
	}...) {
		mustCtl(t, ep, as(id.admin, args...)...)
	}
	if out := mustCtl(t, ep, as(id.admin, "auth", "enable")...); out != "Authentication Enabled\n" {
		t.Fatalf("auth enable at %s: %q", ep, out)
	}
	root := as(id.admin, "--user=root:rootpw")
	ctlPutGetWatch(t, ep, id.user)
	grant := mustCtl(t, ep, as(id.user, "lease", "grant", "60")...)
	var lease string
	if _, err := fmt.Sscanf(grant, "lease %s granted", &lease); err != nil {
		t.Fatalf("lease grant at %s: %q", ep, grant)
	}
	n := newNormalizer()
	var out []string
	for _, c := range []struct {
		who   string
		flags []string
		args  []string
	}{
		{"user", id.user, []string{"put", "foo", "leased", "--lease=" + lease}},
		{"user", id.user, []string{"lease", "keep-alive", "--once", lease}},
		{"user", id.user, []string{"lease", "timetolive", "--keys", lease}},
		{"user", id.user, []string{"get", "foo", "--print-value-only"}},
		{"user", id.user, []string{"put", "secret", "x"}},
		{"user", id.user, []string{"get", "secret"}},
		{"user", id.user, []string{"watch", "secret"}},
		{"anon", id.anon, []string{"get", "foo"}},
		{"anon", id.anon, []string{"--user=bob:wrong", "get", "foo"}},
		{"user", id.user, []string{"user", "list"}},
		{"root", root, []string{"get", "secret", "--print-value-only"}},
		{"root", root, []string{"put", "secret2", "s", "--lease=" + lease}},
		{"user", id.user, []string{"lease", "keep-alive", "--once", lease}},
		{"user", id.user, []string{"lease", "timetolive", "--keys", lease}},
		{"root", root, []string{"lease", "keep-alive", "--once", lease}},
		{"root", root, []string{"watch", "secret", "--rev=1"}},
	} {
		args := as(c.flags, c.args...)
		var r ctlResult
		if args[len(args)-1] == "--rev=1" {
			// A live watch ends only when killed: root's sees history.
			w := startBgCtl(t, ep, false, args...)
			if !w.wait(3, 0) {
				t.Fatalf("etcdctl %s at %s: %+v", strings.Join(args, " "), ep, w.result())
			}
			w.kill()
			r = w.result()
			r.exit = 0
		} else {
			r = runCtl(t, ep, "", args...)
		}
		line := fmt.Sprintf("%s: %s: exit %d stdout %q stderr %q", c.who, strings.Join(c.args, " "), r.exit, n.stdout(r.stdout), n.stderr(r.stderr))
		// The remaining TTL timetolive prints depends on when it ran.
		out = append(out, reRemaining.ReplaceAllString(strings.ReplaceAll(line, lease, "<lease>"), "granted with TTL(${1}s), remaining(<ttl>)"))
	}
	return out
}

// TestClientAuthEnforced checks what clientv3 clients with and without
// credentials see once auth is enabled: KV, watch and lease calls, with the
// same outcomes and errors as etcd.
func TestClientAuthEnforced(t *testing.T) {
	t.Parallel()
	outcomes := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			outcomes[im.name] = authOutcomes(t, startServer(t, im, serverOptions{extra: []string{"--bcrypt-cost=4"}}))
		})
	}
	if len(outcomes["etcd"]) == 0 {
		t.Fatal("no outcomes from etcd")
	}
	compareOutcomes(t, outcomes["concord"], outcomes["etcd"])
}

// compareOutcomes fails the test for every line of got that differs from
// etcd's (want), a missing or extra line included.
func compareOutcomes(t *testing.T, got, want []string) {
	t.Helper()
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("outcome %d: %s\n  etcd: %s", i, g, w)
		}
	}
}

// authOutcomes enables auth on s and lists what each call gave.
func authOutcomes(t *testing.T, s *Server) []string {
	t.Helper()
	return authOutcomesAt(t, s.Endpoint(), nil)
}

// authOutcomesAt is authOutcomes for the server at endpoint, reached with
// tlsCfg (nil: plain) by every client; the client without credentials
// ("no credentials", "nobody") presents tlsCfg's certificate, if any, and
// nothing else.
func authOutcomesAt(t *testing.T, endpoint string, tlsCfg *tls.Config) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := func(name, pw string) *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Username: name, Password: pw, TLS: tlsCfg,
			DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("client as %q: %v", name, err)
		}
		t.Cleanup(func() { closeClientBounded(t, c) })
		return c
	}
	admin := client("", "")
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.UserAdd(ctx, "root", "rootpw"))
	must(admin.UserGrantRole(ctx, "root", "root"))
	must(admin.UserAdd(ctx, "alice", "alicepw"))
	must(admin.RoleAdd(ctx, "reader"))
	must(admin.RoleGrantPermission(ctx, "reader", "dir/", clientv3.GetPrefixRangeEnd("dir/"), clientv3.PermissionType(clientv3.PermRead)))
	must(admin.RoleGrantPermission(ctx, "reader", "rw", "", clientv3.PermissionType(clientv3.PermReadWrite)))
	must(admin.UserGrantRole(ctx, "alice", "reader"))
	must(admin.Put(ctx, "dir/a", "1"))
	must(admin.AuthEnable(ctx))

	root, alice := client("root", "rootpw"), client("alice", "alicepw")
	var out []string
	note := func(what string, err error) {
		msg := "ok"
		if err != nil {
			msg = err.Error()
		}
		out = append(out, what+": "+msg)
	}
	_, err := admin.Get(ctx, "dir/a")
	note("no credentials get", err)
	_, err = root.Put(ctx, "secret", "s")
	note("root put", err)
	_, err = alice.Get(ctx, "dir/a")
	note("alice get dir/a", err)
	_, err = alice.Get(ctx, "secret")
	note("alice get secret", err)
	_, err = alice.Put(ctx, "dir/a", "2")
	note("alice put dir/a", err)
	_, err = alice.Put(ctx, "rw", "1")
	note("alice put rw", err)
	// A change to the auth state makes alice's token old: clientv3
	// authenticates again on etcd's ErrAuthOldRevision and retries.
	_, err = root.RoleGrantPermission(ctx, "reader", "rw2", "", clientv3.PermissionType(clientv3.PermRead))
	note("root grant (new auth revision)", err)
	_, err = alice.Get(ctx, "rw2")
	note("alice get rw2 with a token of the old revision", err)

	watch := func(who string, c *clientv3.Client, key string) {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		wr := <-c.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithCreatedNotify())
		out = append(out, fmt.Sprintf("%s watch %s: created=%v canceled=%v err=%v", who, key, wr.Created, wr.Canceled, wr.Err()))
	}
	watch("alice", alice, "dir/a")
	watch("alice", alice, "secret")
	watch("root", root, "secret")
	watch("nobody", admin, "dir/a")

	l, err := alice.Grant(ctx, 100)
	note("alice grant", err)
	if err == nil {
		_, err = root.Put(ctx, "secret2", "s", clientv3.WithLease(l.ID))
		note("root put with alice's lease", err)
		_, err = alice.KeepAliveOnce(ctx, l.ID)
		note("alice keep-alive of a lease with a secret key", err)
		_, err = alice.TimeToLive(ctx, l.ID)
		note("alice ttl", err)
		_, err = alice.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
		note("alice ttl with keys", err)
		_, err = alice.Revoke(ctx, l.ID)
		note("alice revoke", err)
		_, err = root.Revoke(ctx, l.ID)
		note("root revoke", err)
	}
	_, err = alice.Compact(ctx, 2)
	note("alice compact", err)
	_, err = root.Compact(ctx, 2)
	note("root compact", err)
	_, err = alice.Status(ctx, endpoint)
	note("alice status", err)
	_, err = admin.Status(ctx, endpoint)
	note("no credentials status", err)
	_, err = alice.MemberList(ctx)
	note("alice member list", err)
	_, err = alice.AuthDisable(ctx)
	note("alice auth disable", err)
	_, err = root.AuthDisable(ctx)
	note("root auth disable", err)
	_, err = admin.Get(ctx, "secret")
	note("no credentials get after disable", err)
	return out
}

// TestJSONGatewayAuth authenticates through etcd's JSON gateway and sends
// the token in the Authorization header, as curl users of etcd do, and
// compares every answer with etcd's.
func TestJSONGatewayAuth(t *testing.T) {
	t.Parallel()
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: []string{"--bcrypt-cost=4"}})
			transcripts[im.name] = jsonAuthTranscript(t, s)
		})
	}
	compareTranscripts(t, concordImpl.name, transcripts[etcdImpl.name], transcripts[concordImpl.name])
}

func jsonAuthTranscript(t *testing.T, s *Server) []string {
	n := newNormalizer()
	var token string
	var out []string
	call := func(path, body string, auth string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "POST", s.clientURL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, b := httpDo(t, req)
		if m := reToken.FindStringSubmatch(b); m != nil {
			token = m[1]
			b = reToken.ReplaceAllString(b, `"token":"<token>"`)
		}
		out = append(out, fmt.Sprintf("POST %s %s (auth %v)\n  status %d\n  %s\n", path, body, auth != "", resp.StatusCode, normalizeJSON(n, b)))
	}
	call("/v3/kv/put", `{"key":"`+b64("k")+`","value":"`+b64("v")+`"}`, "")
	call("/v3/auth/user/add", `{"name":"root","password":"pw"}`, "")
	call("/v3/auth/user/grant", `{"user":"root","role":"root"}`, "")
	call("/v3/auth/authenticate", `{"name":"root","password":"pw"}`, "")
	call("/v3/auth/enable", `{}`, "")
	call("/v3/auth/authenticate", `{"name":"root","password":"wrong"}`, "")
	call("/v3/auth/authenticate", `{"name":"root","password":"pw"}`, "")
	call("/v3/kv/range", `{"key":"`+b64("k")+`"}`, "")
	call("/v3/kv/range", `{"key":"`+b64("k")+`"}`, token)
	call("/v3/kv/range", `{"key":"`+b64("k")+`"}`, "Bearer "+token)
	call("/v3/kv/range", `{"key":"`+b64("k")+`"}`, "not-a-token")
	call("/v3/auth/status", `{}`, token)
	call("/v3/auth/disable", `{}`, token)
	call("/v3/kv/range", `{"key":"`+b64("k")+`"}`, "")
	return out
}

// reToken finds the token of an Authenticate answer.
var reToken = regexp.MustCompile(`"token":\s*"([^"]+)"`)

// TestAuthClientCertCommonName: with --client-cert-auth, the common name of
// a verified client certificate is the user of a request without a token,
// as etcd does; a token takes precedence.
func TestAuthClientCertCommonName(t *testing.T) {
	t.Parallel()
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const cn = "concord test client" // tlstest's client certificate
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{tls: certs, clientCertAuth: true, extra: []string{"--bcrypt-cost=4"}})
			ep := "https://" + s.Endpoint()
			dial := []string{"--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}
			ctl := func(args ...string) ctlResult { return runCtl(t, ep, "", append(dial, args...)...) }
			for _, args := range [][]string{
				{"put", "dir/a", "1"}, {"put", "secret", "s"},
				{"user", "add", "root", "--new-user-password=rootpw"}, {"user", "grant-role", "root", "root"},
				{"user", "add", cn, "--no-password"}, {"role", "add", "reader"},
				{"role", "grant-permission", "reader", "--prefix", "read", "dir/"}, {"user", "grant-role", cn, "reader"},
				{"auth", "enable"},
			} {
				if r := ctl(args...); r.exit != 0 {
					t.Fatalf("etcdctl %v: exit %d: %s", args, r.exit, r.stderr)
				}
			}
			if r := ctl("get", "dir/a", "--print-value-only"); r.exit != 0 || r.stdout != "1\n" {
				t.Fatalf("get as the certificate's user: %+v", r)
			}
			if r := ctl("get", "secret"); r.exit == 0 || !strings.Contains(r.stderr, "Error: etcdserver: permission denied") {
				t.Fatalf("get outside the certificate user's permissions: %+v", r)
			}
			if r := ctl("--user=root:rootpw", "get", "secret", "--print-value-only"); r.exit != 0 || r.stdout != "s\n" {
				t.Fatalf("get as root with a certificate: %+v", r)
			}
			if r := ctl("--user=root:rootpw", "auth", "disable"); r.exit != 0 {
				t.Fatalf("auth disable: %+v", r)
			}
		})
	}
}

// TestCtlAuthJWT runs etcdctl with auth enabled and JWT tokens
// (--auth-token jwt,...) against etcd and concord.
func TestCtlAuthJWT(t *testing.T) {
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	priv, pub := filepath.Join(dir, "jwt.key"), filepath.Join(dir, "jwt.pub")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	root := "--user=root:rootpw"
	runScenario(t, scenario{name: "auth-jwt", extra: []string{"--bcrypt-cost=4",
		"--auth-token=jwt,pub-key=" + pub + ",priv-key=" + priv + ",sign-method=RS256,ttl=10m"}, steps: seq(
		ctl("user", "add", "root", "--new-user-password=rootpw"),
		ctl("user", "add", "bob", "--new-user-password=bobpw"),
		ctl("auth", "enable"),
		ctl("put", "k", "v"),
		ctl(root, "put", "k", "v"),
		ctl(root, "get", "k"),
		ctl("--user=bob:bobpw", "get", "k"),
		ctl("--user=bob:wrong", "get", "k"),
		ctl(root, "auth", "status"),
		step{kind: stepRestart},
		ctl(root, "get", "k"),
		ctl(root, "auth", "disable"),
		ctl("get", "k"),
	)})
}

// certsWithUser generates the test CA and certificates, and a second client
// certificate (common name "concord test client with addresses") for a
// user, returned as its certificate and key files.
// userClientTLS is a client configuration that trusts certs' CA and
// presents the user's certificate.
func userClientTLS(t *testing.T, certs *tlstest.Files, userCert, userKey string) *tls.Config {
	t.Helper()
	userTLS, err := tls.LoadX509KeyPair(userCert, userKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := certs.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{userTLS}
	return cfg
}

func certsWithUser(t *testing.T) (certs *tlstest.Files, userCert, userKey string) {
	t.Helper()
	dir := t.TempDir()
	certs, err := tlstest.Generate(dir)
	if err != nil {
		t.Fatal(err)
	}
	userCert, userKey = filepath.Join(dir, "user.pem"), filepath.Join(dir, "user-key.pem")
	if err := certs.IssueClient(userCert, userKey); err != nil {
		t.Fatal(err)
	}
	return certs, userCert, userKey
}
