package etcddb_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	etcdsnapshot "go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.etcd.io/etcd/server/v3/storage/backend"
	"go.etcd.io/etcd/server/v3/storage/schema"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/internal/etcddb"
	"github.com/concord-kv/concord/storage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openStore(t *testing.T) *storage.Store {
	t.Helper()
	s, err := storage.Open(filepath.Join(t.TempDir(), "store"), storage.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func apply(t *testing.T, s *storage.Store, fn func(b *storage.Batch) error) {
	t.Helper()
	b := s.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, s *storage.Store, key, val string, lease int64) {
	t.Helper()
	apply(t, s, func(b *storage.Batch) error {
		_, err := b.Put(&pb.PutRequest{Key: []byte(key), Value: []byte(val), Lease: lease})
		return err
	})
}

// populated is a store with history across more than one write chunk,
// overwrites, deletes (a range delete: several events in one revision), a
// multi-put txn, a compaction, leases with and without keys, a key whose
// lease was revoked, and a key with a 0x00 byte.
func populated(t *testing.T) *storage.Store {
	t.Helper()
	s := openStore(t)
	apply(t, s, func(b *storage.Batch) error {
		if err := b.LeaseGrant(0x1234, 600); err != nil {
			return err
		}
		if err := b.LeaseGrant(0x99, 30); err != nil {
			return err
		}
		return b.LeaseGrant(0x55, 60)
	})
	for i := range 12000 {
		put(t, s, fmt.Sprintf("k/%05d", i%3000), fmt.Sprintf("v%d", i), 0)
	}
	put(t, s, "leased", "l", 0x1234)
	put(t, s, "leased2", "l2", 0x1234)
	put(t, s, "revoked", "r", 0x55)
	put(t, s, "nul\x00key", "z", 0)
	apply(t, s, func(b *storage.Batch) error {
		_, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("k/00010"), RangeEnd: []byte("k/00020")})
		return err
	})
	apply(t, s, func(b *storage.Batch) error { _, err := b.Compact(5000); return err })
	apply(t, s, func(b *storage.Batch) error {
		_, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("t1"), Value: []byte("a")}}},
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("t2"), Value: []byte("b")}}},
		}})
		return err
	})
	apply(t, s, func(b *storage.Batch) error { return b.LeaseRevoke(0x55) })
	put(t, s, "k/00005", "last", 0)
	return s
}

func write(t *testing.T, s *storage.Store, hdr etcddb.Header) string {
	t.Helper()
	sn, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	path := filepath.Join(t.TempDir(), "db")
	hdr.CompactRev = sn.CompactRev()
	if err := etcddb.Write(context.Background(), path, hdr, sn); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return path
}

func liveKeys(t *testing.T, s *storage.Store) int64 {
	t.Helper()
	r, err := s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, CountOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return r.Count
}

// TestWriteIsReadByEtcdutl checks the written file with etcd's own reader:
// etcdutl snapshot status runs bbolt's integrity check, hashes every
// bucket and takes the revision from the last key-bucket entry and the key
// count from replaying the history.
func TestWriteIsReadByEtcdutl(t *testing.T) {
	s := populated(t)
	path := write(t, s, etcddb.Header{ConsistentIndex: 77, Term: 3, StorageVersion: "3.7.0", ClusterVersion: "3.7.0",
		Members: []etcddb.Member{{ID: 0x8e9e05c52164694d, Name: "default", PeerURLs: []string{"http://127.0.0.1:2380"}}}})
	st, err := etcdsnapshot.NewV3(zap.NewNop()).Status(path)
	if err != nil {
		t.Fatalf("etcdutl snapshot status: %v", err)
	}
	if st.Revision != s.Rev() || int64(st.TotalKey) != liveKeys(t, s) || st.Version != "3.7.0" {
		t.Fatalf("etcdutl status: revision %d, %d keys, version %q; want %d, %d, 3.7.0", st.Revision, st.TotalKey, st.Version, s.Rev(), liveKeys(t, s))
	}
}

// TestRoundTrip writes a store's snapshot as an etcd database and imports
// it into a new store: every read at every revision the source can serve,
// the whole event history, leases and their keys, the revision and the
// compact revision are the same.
func TestRoundTrip(t *testing.T) {
	src := populated(t)
	path := write(t, src, etcddb.Header{StorageVersion: "3.7.0"})

	dst := openStore(t)
	imp, err := dst.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	info, err := etcddb.Read(context.Background(), path, imp)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if err := imp.Commit(info.Rev, info.CompactRev); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if info.Rev != src.Rev() || info.CompactRev != 5000 || info.Leases != 2 || info.StorageVersion != "3.7.0" {
		t.Fatalf("info %+v: want revision %d, compact revision 5000, 2 leases", info, src.Rev())
	}
	if dst.Rev() != src.Rev() || dst.CompactRev() != src.CompactRev() {
		t.Fatalf("imported revision %d/%d, want %d/%d", dst.Rev(), dst.CompactRev(), src.Rev(), src.CompactRev())
	}
	for rev := src.CompactRev(); rev <= src.Rev(); rev += 97 {
		req := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev}
		want, err := src.Range(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dst.Range(req)
		if err != nil {
			t.Fatalf("range at %d: %v", rev, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("range at %d differs: %d keys, want %d", rev, len(got.Kvs), len(want.Kvs))
		}
	}
	if _, err := dst.Range(&pb.RangeRequest{Key: []byte("a"), Revision: src.CompactRev() - 1}); !errors.Is(err, storage.ErrCompacted) {
		t.Fatalf("read below the compact revision: %v, want ErrCompacted", err)
	}
	wantEv, err := src.RangeEvents(src.CompactRev(), 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	gotEv, err := dst.RangeEvents(src.CompactRev(), 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	if len(gotEv) != len(wantEv) {
		t.Fatalf("%d revisions of history, want %d", len(gotEv), len(wantEv))
	}
	for i := range wantEv {
		if gotEv[i].Revision != wantEv[i].Revision || len(gotEv[i].Events) != len(wantEv[i].Events) {
			t.Fatalf("history revision %d differs", wantEv[i].Revision)
		}
		for j := range wantEv[i].Events {
			if !proto.Equal(gotEv[i].Events[j], wantEv[i].Events[j]) {
				t.Fatalf("event %d of revision %d: %v, want %v", j, wantEv[i].Revision, gotEv[i].Events[j], wantEv[i].Events[j])
			}
		}
	}
	wantL, gotL := src.Leases(), dst.Leases()
	if fmt.Sprint(gotL) != fmt.Sprint(wantL) || len(gotL) != 2 || len(gotL[1].Keys) != 2 {
		t.Fatalf("leases %v, want %v (0x1234 with 2 keys)", gotL, wantL)
	}
	// The imported store takes writes at the next revision.
	put(t, dst, "after", "x", 0x1234)
	if dst.Rev() != src.Rev()+1 {
		t.Fatalf("revision after a put: %d, want %d", dst.Rev(), src.Rev()+1)
	}
}

// TestEmptyStore: a store with nothing in it round-trips at revision 1.
func TestEmptyStore(t *testing.T) {
	path := write(t, openStore(t), etcddb.Header{})
	st, err := etcdsnapshot.NewV3(zap.NewNop()).Status(path)
	if err != nil || st.TotalKey != 0 {
		t.Fatalf("etcdutl status of an empty store: %+v, %v", st, err)
	}
	dst := openStore(t)
	imp, err := dst.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	info, err := etcddb.Read(context.Background(), path, imp)
	if err != nil {
		t.Fatal(err)
	}
	if err := imp.Commit(info.Rev, info.CompactRev); err != nil {
		t.Fatal(err)
	}
	if dst.Rev() != 1 || dst.CompactRev() != -1 {
		t.Fatalf("empty import at %d/%d, want 1/-1", dst.Rev(), dst.CompactRev())
	}
}

// discard is a Sink that keeps nothing.
type discard struct{}

func (discard) Lease(int64, int64) error       { return nil }
func (discard) Add(storage.HistoryEntry) error { return nil }

// TestReadRejectsDamagedFiles: a truncated database, a file that is no
// database and one whose meta pages are damaged fail with ErrBadDB, never
// with a crash (bbolt would read a truncated file past its end).
func TestReadRejectsDamagedFiles(t *testing.T) {
	path := write(t, populated(t), etcddb.Header{})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	img, err := etcddb.OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	used := img.Size()
	img.Close()
	if used > fi.Size() || used < 3*4096 {
		t.Fatalf("image of %d bytes in a file of %d", used, fi.Size())
	}
	cases := map[string][]byte{
		"truncated":      data[:used/2],
		"truncated-page": data[:used-4096],
		"not-a-database": []byte("concord-snapshot-1\n and more bytes than a page header holds"),
		"damaged-meta":   append(append([]byte{}, make([]byte, 2*4096)...), data[2*4096:]...),
		"empty":          {},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "db")
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if etcddb.LooksLikeDB(b) && name != "truncated" && name != "truncated-page" {
				t.Fatalf("LooksLikeDB(%s) = true", name)
			}
			_, err := etcddb.Read(context.Background(), p, discard{})
			if !errors.Is(err, etcddb.ErrBadDB) {
				t.Fatalf("Read: %v, want ErrBadDB", err)
			}
		})
	}
	if !etcddb.LooksLikeDB(data) {
		t.Fatal("LooksLikeDB of a database = false")
	}
}

// TestImportRejectsBadHistory: revisions out of order and a put whose
// mod_revision is not its revision are refused, so a damaged database
// cannot make a store that contradicts itself.
func TestImportRejectsBadHistory(t *testing.T) {
	s := openStore(t)
	imp, err := s.NewImport()
	if err != nil {
		t.Fatal(err)
	}
	defer imp.Close()
	kv := func(k string, create, mod, ver int64) storage.HistoryEntry {
		return storage.HistoryEntry{Main: mod, KV: &mvccpb.KeyValue{Key: []byte(k), CreateRevision: create, ModRevision: mod, Version: ver}}
	}
	if err := imp.Add(kv("a", 2, 2, 1)); err != nil {
		t.Fatal(err)
	}
	if err := imp.Add(kv("b", 2, 2, 1)); !errors.Is(err, storage.ErrBadHistory) {
		t.Fatalf("same revision twice: %v", err)
	}
	e := kv("b", 3, 4, 1)
	e.Main = 3
	if err := imp.Add(e); !errors.Is(err, storage.ErrBadHistory) {
		t.Fatalf("mod_revision 4 at revision 3: %v", err)
	}
	if err := imp.Add(kv("c", 5, 4, 1)); !errors.Is(err, storage.ErrBadHistory) {
		t.Fatalf("create_revision after mod_revision: %v", err)
	}
	// A store that is not empty takes no import.
	full := openStore(t)
	put(t, full, "x", "y", 0)
	if _, err := full.NewImport(); !errors.Is(err, storage.ErrBadHistory) {
		t.Fatalf("import into a store with keys: %v", err)
	}
}

// FuzzRead: whatever the file holds, Read returns an error wrapping ErrBadDB
// (or the sink's) or succeeds; it never crashes. The seeds are a database
// and damaged copies of it.
func FuzzRead(f *testing.F) {
	s, err := storage.Open(filepath.Join(f.TempDir(), "store"), storage.Options{Logger: quiet})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	b := s.NewBatch()
	if err := b.LeaseGrant(5, 60); err != nil {
		f.Fatal(err)
	}
	if _, err := b.Put(&pb.PutRequest{Key: []byte("a"), Value: []byte("1"), Lease: 5}); err != nil {
		f.Fatal(err)
	}
	if err := b.Commit(false); err != nil {
		f.Fatal(err)
	}
	sn, err := s.NewSnapshot()
	if err != nil {
		f.Fatal(err)
	}
	path := filepath.Join(f.TempDir(), "db")
	err = etcddb.Write(context.Background(), path, etcddb.Header{CompactRev: -1, StorageVersion: "3.7.0"}, sn)
	sn.Close()
	if err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	for _, off := range []int{20, 4096 + 20, 2*4096 + 30, 3*4096 + 100, len(data) - 10} {
		if off < len(data) {
			d := bytes.Clone(data)
			d[off] ^= 0x5a
			f.Add(d)
		}
	}
	f.Add(data[:len(data)/2])
	f.Fuzz(func(t *testing.T, file []byte) {
		p := filepath.Join(t.TempDir(), "db")
		if err := os.WriteFile(p, file, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := etcddb.Read(context.Background(), p, discard{}); err != nil && !errors.Is(err, etcddb.ErrBadDB) {
			t.Fatalf("Read: %v, not ErrBadDB", err)
		}
	})
}

// TestAuthRoundTrip writes users (bcrypt hashes, roles, a no-password
// user), roles with key permissions, the enabled flag and the auth
// revision, reads them back, and checks that etcd's own schema reader
// decodes the same from the file.
func TestAuthRoundTrip(t *testing.T) {
	want := etcddb.Auth{
		Enabled:  true,
		Revision: 42,
		Users: []*authpb.User{
			{Name: []byte("alice"), Password: []byte("$2a$04$abcdefghijklmnopqrstuuKq7M0oVnW2hRDR0Sm8mK3b6Fhwp8yuG"), Roles: []string{"reader", "writer"}},
			{Name: []byte("bot"), Options: &authpb.UserAddOptions{NoPassword: true}, Roles: []string{"reader"}},
			{Name: []byte("root"), Password: []byte("$2a$04$0123456789012345678901uTTeg1SuDkmsFsvREsJw7Z2O5T8AiTa"), Roles: []string{"root"}},
		},
		Roles: []*authpb.Role{
			{Name: []byte("reader"), KeyPermission: []*authpb.Permission{
				{PermType: authpb.Permission_READ, Key: []byte("app/"), RangeEnd: []byte("app0")},
				{PermType: authpb.Permission_READWRITE, Key: []byte("one")},
			}},
			{Name: []byte("root")},
			{Name: []byte("writer"), KeyPermission: []*authpb.Permission{
				{PermType: authpb.Permission_WRITE, Key: []byte("w"), RangeEnd: []byte{0}},
			}},
		},
	}
	path := write(t, populated(t), etcddb.Header{StorageVersion: "3.7.0", Auth: want})
	info, err := etcddb.Read(context.Background(), path, discard{})
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	sameAuth(t, "etcddb.Read", info.Auth, want)

	be := backend.NewDefaultBackend(zap.NewNop(), path)
	defer be.Close()
	ab := schema.NewAuthBackend(zap.NewNop(), be)
	tx := ab.ReadTx()
	tx.RLock()
	got := etcddb.Auth{Enabled: tx.UnsafeReadAuthEnabled(), Revision: tx.UnsafeReadAuthRevision()}
	tx.RUnlock()
	got.Users, got.Roles = ab.GetAllUsers(), ab.GetAllRoles()
	sameAuth(t, "etcd's schema", got, want)

	// A database without auth settings reads as auth disabled at revision 0.
	info, err = etcddb.Read(context.Background(), write(t, openStore(t), etcddb.Header{}), discard{})
	if err != nil {
		t.Fatal(err)
	}
	sameAuth(t, "no auth", info.Auth, etcddb.Auth{})
}

func sameAuth(t *testing.T, what string, got, want etcddb.Auth) {
	t.Helper()
	if got.Enabled != want.Enabled || got.Revision != want.Revision || len(got.Users) != len(want.Users) || len(got.Roles) != len(want.Roles) {
		t.Fatalf("%s: enabled %v revision %d, %d users, %d roles; want %v %d, %d, %d", what, got.Enabled, got.Revision,
			len(got.Users), len(got.Roles), want.Enabled, want.Revision, len(want.Users), len(want.Roles))
	}
	for i := range want.Users {
		if !proto.Equal(got.Users[i], want.Users[i]) {
			t.Errorf("%s: user %d: %v, want %v", what, i, got.Users[i], want.Users[i])
		}
	}
	for i := range want.Roles {
		if !proto.Equal(got.Roles[i], want.Roles[i]) {
			t.Errorf("%s: role %d: %v, want %v", what, i, got.Roles[i], want.Roles[i])
		}
	}
}
