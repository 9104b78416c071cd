package consensus

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/internal/etcddb"
	"github.com/concord-kv/concord/storage"
)

// takeBackup collects what Snapshot streams into a file, as etcdctl
// snapshot save does, checking etcd's framing on the way: the remaining
// byte counts go down to 0 and the last response is the digest.
func takeBackup(t *testing.T, n *Node) (path string, data []byte) {
	t.Helper()
	var body []byte
	var digest []byte
	var last uint64 = 1 << 63
	err := n.Snapshot(ctxT(t), func(r *pb.SnapshotResponse) error {
		if digest != nil {
			t.Fatal("a response after the digest")
		}
		if r.GetVersion() != storageVersion {
			t.Fatalf("version %q, want %q", r.GetVersion(), storageVersion)
		}
		if last == 0 {
			digest = r.GetBlob()
			return nil
		}
		if r.GetRemainingBytes() >= last {
			t.Fatalf("remaining bytes %d after %d", r.GetRemainingBytes(), last)
		}
		last = r.GetRemainingBytes()
		body = append(body, r.GetBlob()...)
		return nil
	})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], digest) {
		t.Fatalf("digest %x, want %x", digest, sum)
	}
	data = append(body, digest...)
	if len(data)%backupAlign != sha256.Size {
		t.Fatalf("backup of %d bytes: not 512·n+32", len(data))
	}
	if !etcddb.LooksLikeDB(data) {
		t.Fatal("the backup is not a bbolt database")
	}
	path = filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func restoreFile(t *testing.T, path, dataDir string, skipHashCheck bool) error {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return RestoreBackup(ctxT(t), dataDir, f, fi.Size(), skipHashCheck, testLogger())
}

// TestBackupRestoreRoundTrip: a backup restored into a new data directory
// starts a member serving the same keys at the same revisions, the same
// leases and compaction, and the next write gets the next revision.
func TestBackupRestoreRoundTrip(t *testing.T) {
	n := startNode(t, testConfig(t))
	for _, k := range []string{"a", "b", "c", "a"} {
		put(t, n, k, "v-"+k)
	}
	if _, err := n.Compact(ctxT(t), &pb.CompactionRequest{Revision: 3}); err != nil {
		t.Fatal(err)
	}
	lease, err := n.LeaseGrant(ctxT(t), &pb.LeaseGrantRequest{ID: 0x77, TTL: 600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Put(ctxT(t), &pb.PutRequest{Key: []byte("leased"), Value: []byte("l"), Lease: lease.ID}); err != nil {
		t.Fatal(err)
	}
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	wantAll, err := n.Range(ctxT(t), all)
	if err != nil {
		t.Fatal(err)
	}
	path, _ := takeBackup(t, n)

	cfg := testConfig(t)
	cfg.DataDir = filepath.Join(t.TempDir(), "restored")
	if err := restoreFile(t, path, cfg.DataDir, false); err != nil {
		t.Fatalf("RestoreBackup: %v", err)
	}
	r := startNode(t, cfg)
	got, err := r.Range(ctxT(t), all)
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Revision != wantAll.Header.Revision || len(got.Kvs) != len(wantAll.Kvs) {
		t.Fatalf("restored: %d keys at %d, want %d at %d", len(got.Kvs), got.Header.Revision, len(wantAll.Kvs), wantAll.Header.Revision)
	}
	for i := range wantAll.Kvs {
		if g, w := got.Kvs[i], wantAll.Kvs[i]; string(g.Key) != string(w.Key) || string(g.Value) != string(w.Value) ||
			g.CreateRevision != w.CreateRevision || g.ModRevision != w.ModRevision || g.Version != w.Version || g.Lease != w.Lease {
			t.Fatalf("restored %v, want %v", g, w)
		}
	}
	if _, err := r.Range(ctxT(t), &pb.RangeRequest{Key: []byte("a"), Revision: 2}); !errors.Is(err, storage.ErrCompacted) {
		t.Fatalf("read below the compaction: %v", err)
	}
	leases, err := r.Leases(ctxT(t))
	if err != nil || len(leases) != 1 || leases[0].ID != 0x77 || leases[0].TTL != 600 || len(leases[0].Keys) != 1 {
		t.Fatalf("restored leases %v, %v", leases, err)
	}
	if p := put(t, r, "d", "4"); p.Header.Revision != wantAll.Header.Revision+1 {
		t.Fatalf("first put at %d, want %d", p.Header.Revision, wantAll.Header.Revision+1)
	}
}

// TestRestoreRejectsDamagedBackups: a changed byte fails the digest check,
// a truncated file has no digest (and, when the check is skipped, is a
// truncated database), a file of neither format is named as such; no data
// directory is left behind.
func TestRestoreRejectsDamagedBackups(t *testing.T) {
	n := startNode(t, testConfig(t))
	put(t, n, "a", "1")
	_, data := takeBackup(t, n)
	dir := t.TempDir()
	write := func(b []byte) string {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 0xff
	noDB := append(bytes.Repeat([]byte("x"), 512), make([]byte, 32)...)
	sum := sha256.Sum256(noDB[:512])
	copy(noDB[512:], sum[:])
	for _, c := range []struct {
		name string
		file []byte
		skip bool
		want string
	}{
		{"flipped", flipped, false, "SHA-256 digest mismatch"},
		{"truncated", data[:len(data)-1000], false, "no SHA-256 digest"},
		{"truncated-skip-hash", data[:len(data)/2], true, "truncated"},
		{"unknown-format", noDB, false, "neither an etcd database nor a concord store snapshot"},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := filepath.Join(dir, c.name)
			err := restoreFile(t, write(c.file), target, c.skip)
			if !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("restore: %v, want ErrBadBackup saying %q", err, c.want)
			}
			if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("data dir left behind: %v", err)
			}
		})
	}
}

// TestRestoreOldFormat: backups concord wrote before it wrote etcd's
// database (its store snapshot stream, zero-padded to 512, then the
// digest) still restore.
func TestRestoreOldFormat(t *testing.T) {
	n := startNode(t, testConfig(t))
	put(t, n, "a", "1")
	last := put(t, n, "b", "2").Header.Revision
	sn, err := n.store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(sn)
	sn.Close()
	if err != nil {
		t.Fatal(err)
	}
	body = append(body, make([]byte, padding(int64(len(body))))...)
	sum := sha256.Sum256(body)
	path := filepath.Join(t.TempDir(), "old.db")
	if err := os.WriteFile(path, append(body, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DataDir = filepath.Join(t.TempDir(), "restored")
	if err := restoreFile(t, path, cfg.DataDir, false); err != nil {
		t.Fatalf("restore of the old format: %v", err)
	}
	r := startNode(t, cfg)
	if got := get(t, r, "b", false); len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "2" || got.Header.Revision != last {
		t.Fatalf("restored: %v", got)
	}
}

// TestRestoreDatabaseWithoutDigest: an etcd database without the digest
// (an etcd member's member/snap/db copied as it is) restores with
// skipHashCheck and is refused without it.
func TestRestoreDatabaseWithoutDigest(t *testing.T) {
	n := startNode(t, testConfig(t))
	last := put(t, n, "a", "1").Header.Revision
	_, data := takeBackup(t, n)
	path := filepath.Join(t.TempDir(), "db")
	if err := os.WriteFile(path, data[:len(data)-sha256.Size], 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DataDir = filepath.Join(t.TempDir(), "restored")
	if err := restoreFile(t, path, cfg.DataDir, false); !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "no SHA-256 digest") {
		t.Fatalf("restore without a digest: %v", err)
	}
	if err := restoreFile(t, path, cfg.DataDir, true); err != nil {
		t.Fatalf("restore with --skip-hash-check: %v", err)
	}
	r := startNode(t, cfg)
	if got := get(t, r, "a", false); len(got.Kvs) != 1 || got.Kvs[0].ModRevision != last {
		t.Fatalf("restored: %v", got)
	}
}
