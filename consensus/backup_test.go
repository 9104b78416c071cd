package consensus

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/auth"
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
	return RestoreBackup(ctxT(t), f, fi.Size(), RestoreOptions{DataDir: dataDir, SkipHashCheck: skipHashCheck, Logger: testLogger()})
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

// TestBackupCarriesAuth: users with their password hashes, roles with
// their permissions, the enabled flag and the auth revision travel through
// a backup. The restored member chooses a new token key through the log:
// a token issued before the backup is invalid, new ones work.
func TestBackupCarriesAuth(t *testing.T) {
	n := startNodeWithAuth(t)
	old, err := n.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "alice", Password: "alicepw"})
	if err != nil {
		t.Fatal(err)
	}
	want := n.AuthState()
	path, _ := takeBackup(t, n)

	rcfg := testConfig(t)
	rcfg.BcryptCost = bcrypt.MinCost
	rcfg.DataDir = filepath.Join(t.TempDir(), "restored")
	if err := restoreFile(t, path, rcfg.DataDir, false); err != nil {
		t.Fatalf("RestoreBackup: %v", err)
	}
	r := startNode(t, rcfg)
	waitFor(t, "the restored leader to choose a token key", func() bool { return !r.AuthState().NeedsTokenKey() })
	got := r.AuthState()
	if !got.Enabled() || got.Revision() != want.Revision() {
		t.Fatalf("restored auth: enabled %v at revision %d, want enabled at %d", got.Enabled(), got.Revision(), want.Revision())
	}
	if !slices.EqualFunc(got.Users(), want.Users(), func(a, b *authpb.User) bool { return proto.Equal(a, b) }) ||
		!slices.EqualFunc(got.Roles(), want.Roles(), func(a, b *authpb.Role) bool { return proto.Equal(a, b) }) {
		t.Fatalf("restored users %v roles %v, want %v %v", got.Users(), got.Roles(), want.Users(), want.Roles())
	}
	if _, err := r.Range(auth.WithCredentials(ctxT(t), auth.Credentials{Token: old.Token}), &pb.RangeRequest{Key: []byte("a1")}); !errors.Is(err, auth.ErrInvalidAuthToken) {
		t.Fatalf("a token from before the backup: %v, want ErrInvalidAuthToken", err)
	}
	checkAlice(t, r, r)
}

// TestRestoredClusterSharesTokenKey: every member of a cluster restored
// from one backup verifies the tokens any member issues, because the key
// is chosen once, by the leader, through the log.
func TestRestoredClusterSharesTokenKey(t *testing.T) {
	path, _ := takeBackup(t, startNodeWithAuth(t))
	dir := t.TempDir()
	c := newTestCluster(t, 3, func(cfg *Config) {
		cfg.BcryptCost = bcrypt.MinCost
		cfg.storageFS = nil
		cfg.DataDir = filepath.Join(dir, cfg.Name)
		if err := restoreFile(t, path, cfg.DataDir, false); err != nil {
			t.Fatalf("RestoreBackup: %v", err)
		}
	})
	for _, n := range c.nodes {
		waitFor(t, "the token key to reach every member", func() bool { return !n.AuthState().NeedsTokenKey() })
	}
	for _, issuer := range c.nodes {
		for _, checker := range c.nodes {
			checkAlice(t, issuer, checker)
		}
	}
}

// checkAlice logs alice in on issuer and checks her permissions, as
// startNodeWithAuth set them, on checker.
func checkAlice(t *testing.T, issuer, checker *Node) {
	t.Helper()
	tok, err := issuer.Authenticate(ctxT(t), &pb.AuthenticateRequest{Name: "alice", Password: "alicepw"})
	if err != nil {
		t.Fatalf("Authenticate with the backed-up password: %v", err)
	}
	alice := auth.WithCredentials(ctxT(t), auth.Credentials{Token: tok.Token})
	if res, err := checker.Range(alice, &pb.RangeRequest{Key: []byte("a1"), Serializable: true}); err != nil || len(res.Kvs) != 1 {
		t.Fatalf("read within alice's permission: %v, %v", res, err)
	}
	if _, err := checker.Range(alice, &pb.RangeRequest{Key: []byte("b"), Serializable: true}); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Fatalf("read outside alice's permission: %v, want ErrPermissionDenied", err)
	}
}

// startNodeWithAuth starts a member holding keys a1 and b, users root and
// alice (who may read [a, b)), with auth enabled.
func startNodeWithAuth(t *testing.T) *Node {
	t.Helper()
	cfg := testConfig(t)
	cfg.BcryptCost = bcrypt.MinCost
	n := startNode(t, cfg)
	put(t, n, "a1", "x")
	put(t, n, "b", "y")
	for _, r := range []*pb.InternalRaftRequest{
		{AuthUserAdd: &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"}},
		{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}},
		{AuthUserAdd: &pb.AuthUserAddRequest{Name: "alice", Password: "alicepw"}},
		{AuthRoleAdd: &pb.AuthRoleAddRequest{Name: "r"}},
		{AuthRoleGrantPermission: &pb.AuthRoleGrantPermissionRequest{Name: "r",
			Perm: &authpb.Permission{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READ}}},
		{AuthUserGrantRole: &pb.AuthUserGrantRoleRequest{User: "alice", Role: "r"}},
	} {
		var err error
		switch {
		case r.AuthUserAdd != nil:
			_, err = n.UserAdd(ctxT(t), r.AuthUserAdd)
		case r.AuthUserGrantRole != nil:
			_, err = n.UserGrantRole(ctxT(t), r.AuthUserGrantRole)
		case r.AuthRoleAdd != nil:
			_, err = n.RoleAdd(ctxT(t), r.AuthRoleAdd)
		case r.AuthRoleGrantPermission != nil:
			_, err = n.RoleGrantPermission(ctxT(t), r.AuthRoleGrantPermission)
		}
		if err != nil {
			t.Fatalf("%v: %v", r, err)
		}
	}
	if _, err := n.AuthEnable(ctxT(t), &pb.AuthEnableRequest{}); err != nil {
		t.Fatal(err)
	}
	return n
}
