package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSnapshotSaveRestore takes a backup with the real `etcdctl snapshot
// save` from etcd and from concord (same output, a file of 512·n+32 bytes),
// then restores concord's with `concord snapshot restore` and starts a new
// concord on it: keys, values, revisions and leases are back, and the new
// cluster takes writes.
func TestSnapshotSaveRestore(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		must(c.Put(ctx, "a", "1"))(t)
		must(c.Put(ctx, "b", "2"))(t)
		lease := must(c.Grant(ctx, 600))(t)
		last := must(c.Put(ctx, "c", "3", clientv3.WithLease(lease.ID)))(t).Header.Revision

		file := filepath.Join(t.TempDir(), "backup.db")
		out := mustCtl(t, s.Endpoint(), "snapshot", "save", file)
		if !strings.Contains(out, "Snapshot saved at "+file) {
			t.Fatalf("snapshot save printed %q", out)
		}
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size()%512 != 32 {
			t.Fatalf("backup of %d bytes: not 512·n plus a SHA-256 digest", fi.Size())
		}
		if s.impl != concordImpl {
			return // etcd's backups restored into concord, and concord's into etcd: backup_test.go
		}
		s.Stop()

		dir := filepath.Join(t.TempDir(), "restored")
		if out, err := exec.Command(concordImpl.bin, "snapshot", "restore", file, "--data-dir", dir).CombinedOutput(); err != nil {
			t.Fatalf("concord snapshot restore: %v\n%s", err, out)
		}
		// A data directory that exists is refused, as etcdutl does.
		if out, err := exec.Command(concordImpl.bin, "snapshot", "restore", file, "--data-dir", dir).CombinedOutput(); err == nil || !strings.Contains(string(out), "exists") {
			t.Fatalf("restore over an existing data dir: %v\n%s", err, out)
		}
		// A damaged backup is refused.
		bad := filepath.Join(t.TempDir(), "bad.db")
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(bad, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(concordImpl.bin, "snapshot", "restore", bad, "--data-dir", filepath.Join(t.TempDir(), "x")).CombinedOutput(); err == nil || !strings.Contains(string(out), "digest mismatch") {
			t.Fatalf("restore of a damaged backup: %v\n%s", err, out)
		}

		r := startServer(t, concordImpl, serverOptions{dataDir: dir})
		rc := newClient(t, r)
		got := must(rc.Get(ctx, "", clientv3.WithPrefix()))(t)
		if len(got.Kvs) != 3 || string(got.Kvs[0].Value) != "1" || string(got.Kvs[2].Value) != "3" || got.Header.Revision != last {
			t.Fatalf("restored store: %v at revision %d, want a, b, c at revision %d", got.Kvs, got.Header.Revision, last)
		}
		if got.Kvs[2].Lease != int64(lease.ID) {
			t.Fatalf("restored c has lease %x, want %x", got.Kvs[2].Lease, lease.ID)
		}
		ttl := must(rc.TimeToLive(ctx, lease.ID))(t)
		if ttl.TTL <= 0 || ttl.GrantedTTL != 600 {
			t.Fatalf("restored lease: %+v", ttl)
		}
		if p := must(rc.Put(ctx, "d", "4"))(t); p.Header.Revision != last+1 {
			t.Fatalf("first put after the restore at revision %d, want %d", p.Header.Revision, last+1)
		}
	})
}
