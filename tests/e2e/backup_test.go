package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// backupState is what a backup must carry from one server to another, as
// a client sees it.
type backupState struct {
	rev        int64
	compactRev int64
	kvs        []*mvccpb.KeyValue
	// atCompact is every key as of the compact revision: history, not
	// the current state.
	atCompact []*mvccpb.KeyValue
	lease     clientv3.LeaseID
	leaseKeys []string
}

// fillForBackup writes history worth backing up: overwrites (versions), a
// delete and a re-create (create revisions), a txn of two puts (one
// revision, two events), a lease with two keys, a compaction, then one
// more write so the compaction is below the current revision.
func fillForBackup(ctx context.Context, t *testing.T, c *clientv3.Client) backupState {
	t.Helper()
	for i := range 20 {
		must(c.Put(ctx, fmt.Sprintf("k%02d", i%7), fmt.Sprintf("v%d", i)))(t)
	}
	must(c.Delete(ctx, "k03"))(t)
	must(c.Put(ctx, "k03", "again"))(t)
	must(c.Txn(ctx).Then(clientv3.OpPut("t1", "a"), clientv3.OpPut("t2", "b")).Commit())(t)
	lease := must(c.Grant(ctx, 900))(t)
	must(c.Put(ctx, "leased/1", "x", clientv3.WithLease(lease.ID)))(t)
	must(c.Put(ctx, "leased/2", "y", clientv3.WithLease(lease.ID)))(t)
	compactRev := must(c.Put(ctx, "k05", "at-compaction"))(t).Header.Revision
	must(c.Compact(ctx, compactRev))(t)
	must(c.Put(ctx, "k06", "after"))(t)
	must(c.Delete(ctx, "k00"))(t)
	return readBackupState(ctx, t, c, lease.ID, compactRev)
}

func readBackupState(ctx context.Context, t *testing.T, c *clientv3.Client, lease clientv3.LeaseID, compactRev int64) backupState {
	t.Helper()
	all := must(c.Get(ctx, "", clientv3.WithPrefix()))(t)
	old := must(c.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(compactRev)))(t)
	st := backupState{rev: all.Header.Revision, compactRev: compactRev, kvs: all.Kvs, atCompact: old.Kvs, lease: lease}
	ttl := must(c.TimeToLive(ctx, lease, clientv3.WithAttachedKeys()))(t)
	if ttl.GrantedTTL != 900 || ttl.TTL <= 0 {
		t.Fatalf("lease %x: granted %d, remaining %d; want 900 granted, alive", lease, ttl.GrantedTTL, ttl.TTL)
	}
	for _, k := range ttl.Keys {
		st.leaseKeys = append(st.leaseKeys, string(k))
	}
	slices.Sort(st.leaseKeys) // etcd lists them in no particular order
	// The compaction is in force: below it, reads fail; at it, they work.
	if _, err := c.Get(ctx, "k05", clientv3.WithRev(compactRev-1)); err == nil || err.Error() != rpctypes.ErrCompacted.Error() {
		t.Fatalf("read below the compaction at %d: %v, want %v", compactRev, err, rpctypes.ErrCompacted)
	}
	if r := must(c.Get(ctx, "k05", clientv3.WithRev(compactRev)))(t); len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "at-compaction" {
		t.Fatalf("read at the compaction: %v", r.Kvs)
	}
	return st
}

// checkRestored compares what a server restored from a backup serves with
// what the backed-up server served, key by key with every revision field,
// and checks that the next write gets the next revision.
func checkRestored(ctx context.Context, t *testing.T, c *clientv3.Client, want backupState) {
	t.Helper()
	got := readBackupState(ctx, t, c, want.lease, want.compactRev)
	if got.rev != want.rev || len(got.kvs) != len(want.kvs) {
		t.Fatalf("restored %d keys at revision %d, want %d at %d", len(got.kvs), got.rev, len(want.kvs), want.rev)
	}
	sameKVs(t, "current", got.kvs, want.kvs)
	sameKVs(t, fmt.Sprintf("at revision %d", want.compactRev), got.atCompact, want.atCompact)
	if strings.Join(got.leaseKeys, ",") != strings.Join(want.leaseKeys, ",") || len(want.leaseKeys) != 2 {
		t.Errorf("restored lease keys %v, want %v", got.leaseKeys, want.leaseKeys)
	}
	if p := must(c.Put(ctx, "new", "1"))(t); p.Header.Revision != want.rev+1 {
		t.Errorf("first put after the restore at revision %d, want %d", p.Header.Revision, want.rev+1)
	}
}

func sameKVs(t *testing.T, what string, got, want []*mvccpb.KeyValue) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: restored %d keys, want %d", what, len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if string(g.Key) != string(w.Key) || string(g.Value) != string(w.Value) || g.CreateRevision != w.CreateRevision ||
			g.ModRevision != w.ModRevision || g.Version != w.Version || g.Lease != w.Lease {
			t.Errorf("%s: restored %s, want %s", what, g, w)
		}
	}
}

// Who the backed-up auth setup has: root, and alice who may only read
// leased/.
const (
	backupRoot  = "--user=root:rootpw"
	backupAlice = "--user=alice:alicepw"
)

// setUpBackupAuth adds root and alice (a role granting read on the prefix
// leased/) and enables auth, as etcdctl does; the keyspace revision does
// not change.
func setUpBackupAuth(t *testing.T, endpoint string) {
	t.Helper()
	for _, args := range [][]string{
		{"user", "add", "root", "--new-user-password=rootpw"},
		{"user", "grant-role", "root", "root"},
		{"user", "add", "alice", "--new-user-password=alicepw"},
		{"role", "add", "leased-reader"},
		{"role", "grant-permission", "leased-reader", "--prefix", "read", "leased/"},
		{"user", "grant-role", "alice", "leased-reader"},
		{"auth", "enable"},
	} {
		mustCtl(t, endpoint, args...)
	}
}

// newRootClient is newClient authenticated as the backed-up root.
func newRootClient(t *testing.T, s *Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    "root",
		Password:    "rootpw",
	})
	if err != nil {
		t.Fatalf("clientv3.New(%s) as root: %v", s.Endpoint(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// checkAuthRestored checks with etcdctl that the restored server enforces
// the backed-up auth: alice logs in with her password and reads within
// leased/, is denied outside it and cannot write; a wrong password and no
// user at all are refused. A restored concord chooses its token key just
// after it starts, so the first login is retried until a deadline.
func checkAuthRestored(t *testing.T, endpoint string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	r := runCtl(t, endpoint, "", backupAlice, "get", "leased/", "--prefix", "--keys-only")
	for r.exit != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		r = runCtl(t, endpoint, "", backupAlice, "get", "leased/", "--prefix", "--keys-only")
	}
	if r.exit != 0 || strings.Join(strings.Fields(r.stdout), ",") != "leased/1,leased/2" {
		t.Fatalf("alice reads leased/: exit %d, stdout %q, stderr %q; want leased/1, leased/2", r.exit, r.stdout, r.stderr)
	}
	for _, c := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{backupAlice, "get", "k01"}, "permission denied"},
		{[]string{backupAlice, "put", "leased/1", "z"}, "permission denied"},
		{[]string{"--user=alice:wrong", "get", "leased/1"}, "authentication failed"},
		{[]string{"get", "leased/1"}, "user name is empty"},
	} {
		r := runCtl(t, endpoint, "", c.args...)
		if r.exit == 0 || !strings.Contains(r.stderr, c.wantErr) {
			t.Errorf("etcdctl %s: exit %d, stderr %q; want an error with %q", strings.Join(c.args, " "), r.exit, r.stderr, c.wantErr)
		}
	}
	if out := mustCtl(t, endpoint, backupRoot, "role", "get", "leased-reader"); !strings.Contains(out, "[leased/, leased0) (prefix leased/)") {
		t.Errorf("role get leased-reader printed %q", out)
	}
}

// runTool runs one of the built binaries and fails the test unless it exits 0.
func runTool(t *testing.T, b *impl, args ...string) string {
	t.Helper()
	requireBinary(t, b)
	cmd := exec.Command(b.bin, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", b.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestBackupConcordToEtcd: a backup `etcdctl snapshot save` takes from
// concord is an etcd backup. `etcdutl snapshot status` reads it (the
// revision and the number of keys are concord's), `etcdutl snapshot
// restore` turns it into an etcd data directory, and the real etcd started
// on it serves the same keys with the same create/mod revisions and
// versions, the same lease with its keys, and the same compaction, and
// enforces concord's users, roles and permissions (auth enabled).
func TestBackupConcordToEtcd(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	src := startServer(t, concordImpl, serverOptions{})
	want := fillForBackup(ctx, t, newClient(t, src))
	setUpBackupAuth(t, src.Endpoint())

	file := filepath.Join(t.TempDir(), "backup.db")
	if out := mustCtl(t, src.Endpoint(), backupRoot, "snapshot", "save", file); !strings.Contains(out, "Snapshot saved at "+file) {
		t.Fatalf("snapshot save printed %q", out)
	}
	src.Stop()

	var status struct {
		Revision  int64  `json:"revision"`
		TotalKey  int    `json:"totalKey"`
		TotalSize int64  `json:"totalSize"`
		Version   string `json:"version"`
	}
	out := runTool(t, etcdutlBin, "snapshot", "status", file, "-w", "json")
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		t.Fatalf("etcdutl snapshot status printed %q: %v", out, err)
	}
	if status.Revision != want.rev || status.TotalKey != len(want.kvs) || status.Version != "3.7.0" || status.TotalSize <= 0 {
		t.Fatalf("etcdutl snapshot status: %+v; want revision %d, %d keys, version 3.7.0", status, want.rev, len(want.kvs))
	}

	dir := filepath.Join(t.TempDir(), "etcd-restored")
	runTool(t, etcdutlBin, "snapshot", "restore", file, "--data-dir", dir, "--name", "e2e",
		"--initial-cluster", "e2e=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380")
	etcd := startServer(t, etcdImpl, serverOptions{dataDir: dir})
	checkRestored(ctx, t, newRootClient(t, etcd), want)
	checkAuthRestored(t, etcd.Endpoint())
}

// TestBackupEtcdToConcord: a backup `etcdctl snapshot save` takes from the
// real etcd restores with `concord snapshot restore`, and concord started
// on it serves etcd's keys with their create/mod revisions and versions,
// the lease with its TTL and keys, and etcd's compaction, and enforces
// etcd's users, roles and permissions (auth enabled): alice logs in with
// the password she had on etcd.
func TestBackupEtcdToConcord(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	src := startServer(t, etcdImpl, serverOptions{})
	want := fillForBackup(ctx, t, newClient(t, src))
	setUpBackupAuth(t, src.Endpoint())

	file := filepath.Join(t.TempDir(), "backup.db")
	mustCtl(t, src.Endpoint(), backupRoot, "snapshot", "save", file)
	src.Stop()

	dir := filepath.Join(t.TempDir(), "concord-restored")
	if out := runTool(t, concordImpl, "snapshot", "restore", file, "--data-dir", dir); !strings.Contains(out, "restored "+file) {
		t.Fatalf("concord snapshot restore printed %q", out)
	}
	concord := startServer(t, concordImpl, serverOptions{dataDir: dir})
	checkAuthRestored(t, concord.Endpoint())
	checkRestored(ctx, t, newRootClient(t, concord), want)
}
