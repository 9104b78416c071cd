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

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
// versions, the same lease with its keys, and the same compaction.
func TestBackupConcordToEtcd(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	src := startServer(t, concordImpl, serverOptions{})
	want := fillForBackup(ctx, t, newClient(t, src))

	file := filepath.Join(t.TempDir(), "backup.db")
	if out := mustCtl(t, src.Endpoint(), "snapshot", "save", file); !strings.Contains(out, "Snapshot saved at "+file) {
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
	checkRestored(ctx, t, newClient(t, etcd), want)
}

// TestBackupEtcdToConcord: a backup `etcdctl snapshot save` takes from the
// real etcd restores with `concord snapshot restore`, and concord started
// on it serves etcd's keys with their create/mod revisions and versions,
// the lease with its TTL and keys, and etcd's compaction.
func TestBackupEtcdToConcord(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	src := startServer(t, etcdImpl, serverOptions{})
	want := fillForBackup(ctx, t, newClient(t, src))

	file := filepath.Join(t.TempDir(), "backup.db")
	mustCtl(t, src.Endpoint(), "snapshot", "save", file)
	src.Stop()

	dir := filepath.Join(t.TempDir(), "concord-restored")
	if out := runTool(t, concordImpl, "snapshot", "restore", file, "--data-dir", dir); !strings.Contains(out, "restored "+file) {
		t.Fatalf("concord snapshot restore printed %q", out)
	}
	concord := startServer(t, concordImpl, serverOptions{dataDir: dir})
	checkRestored(ctx, t, newClient(t, concord), want)
}
