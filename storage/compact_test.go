package storage_test

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/storage"
)

// reopenable is a store on an in-memory filesystem that can be closed and
// opened again on the same data.
type reopenable struct {
	*h
	fs vfs.FS
}

func newReopenable(t *testing.T) *reopenable {
	t.Helper()
	r := &reopenable{h: &h{t: t}, fs: vfs.NewMem()}
	r.open()
	t.Cleanup(func() { _ = r.s.Close() })
	return r
}

func (r *reopenable) open() {
	r.t.Helper()
	s, err := storage.Open("db", storage.Options{FS: r.fs, Logger: quiet})
	if err != nil {
		r.t.Fatal(err)
	}
	r.s = s
}

func (r *reopenable) reopen() {
	r.t.Helper()
	if err := r.s.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.open()
}

// hashKV calls HashKV and fails the test on error.
func (x *h) hashKV(rev int64) (hash uint32, hashRev, compactRev int64) {
	x.t.Helper()
	hash, hashRev, compactRev, err := x.s.HashKV(rev)
	if err != nil {
		x.t.Fatalf("HashKV(%d): %v", rev, err)
	}
	return hash, hashRev, compactRev
}

func (x *h) wantHashKV(what string, rev int64, wantHash uint32, wantRev, wantCompact int64) {
	x.t.Helper()
	hash, hashRev, compactRev := x.hashKV(rev)
	if hash != wantHash || hashRev != wantRev || compactRev != wantCompact {
		x.t.Fatalf("%s: HashKV(%d) = %x rev %d compact %d, want %x rev %d compact %d",
			what, rev, hash, hashRev, compactRev, wantHash, wantRev, wantCompact)
	}
}

// TestInitialCompactRevision: as etcd's, a store that was never compacted
// has compact revision -1, also after reopening, and the first compaction
// is what persists a compact revision (0 included).
func TestInitialCompactRevision(t *testing.T) {
	x := newReopenable(t)
	check := func(what string, want int64) {
		t.Helper()
		if got := x.s.CompactRev(); got != want {
			t.Fatalf("%s: CompactRev %d, want %d", what, got, want)
		}
		if _, _, crev := x.hashKV(x.s.Rev()); crev != want {
			t.Fatalf("%s: HashKV compact revision %d, want %d", what, crev, want)
		}
	}
	check("fresh", -1)
	x.reopen()
	check("fresh, reopened", -1)

	x.put("a", "1")
	x.put("a", "2")
	x.apply(func(b *storage.Batch) { b.SetApplied(3, 1) })
	x.reopen()
	check("written, reopened", -1)
	// Nothing is below the floor: the whole history is readable.
	if got := x.get("a", 2); got == nil || string(got.Value) != "1" {
		t.Fatalf("a@2 = %v", got)
	}
	hist, err := x.s.RangeEvents(1, 0, []byte{0}, []byte{0})
	if err != nil || len(hist) != 2 {
		t.Fatalf("history %v, %v", hist, err)
	}

	x.compact(0)
	check("compacted at 0", 0)
	x.reopen()
	check("compacted at 0, reopened", 0)
	x.apply(func(b *storage.Batch) {
		_, err := b.Compact(0)
		wantErr(t, "compact 0 again after reopen", err, storage.ErrCompacted)
	})
	x.compact(2)
	x.reopen()
	check("compacted at 2, reopened", 2)
	_, err = x.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 1})
	wantErr(t, "read below 2", err, storage.ErrCompacted)
}

// TestCompactZero: etcdctl compact 0 on a fresh etcd succeeds once; the
// second one fails as compacted. It removes nothing.
func TestCompactZero(t *testing.T) {
	x := newMem(t)
	x.apply(func(b *storage.Batch) {
		_, err := b.Compact(-1)
		wantErr(t, "compact -1 on a fresh store", err, storage.ErrCompacted)
		resp, err := b.Compact(0)
		if err != nil || resp.Header.Revision != 1 {
			t.Fatalf("compact 0: %v, %v", resp, err)
		}
		_, err = b.Compact(0)
		wantErr(t, "compact 0 twice in a batch", err, storage.ErrCompacted)
	})
	if x.s.CompactRev() != 0 || x.s.Rev() != 1 {
		t.Fatalf("rev %d compact %d, want 1 0", x.s.Rev(), x.s.CompactRev())
	}
	x.apply(func(b *storage.Batch) {
		_, err := b.Compact(0)
		wantErr(t, "second compact 0", err, storage.ErrCompacted)
	})

	// On a store with data (and so on etcd: `put a 1`, `compact 0`), history
	// is untouched.
	y := newMem(t)
	y.put("a", "1")
	y.put("a", "2")
	y.del("a", "")
	before, err := y.s.RangeEvents(1, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	hash4, _, _ := y.hashKV(0)
	y.compact(0)
	after, err := y.s.RangeEvents(1, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	eqHistory(t, "history after compact 0", after, before)
	if got := countRaw(y.s); got != [2]int64{3, 3} {
		t.Fatalf("raw versions/index entries %v, want 3 each", got)
	}
	// Revision 0 holds nothing, so the hash of revision 4 is unchanged.
	y.wantHashKV("current revision after compact 0", 4, hash4, 4, 0)
	// etcd's quirk: the compaction at 0 stored a hash keyed by revision 0,
	// and HashKV(0) looks stored hashes up before resolving 0 to the
	// current revision. It hashes nothing (no revision <= 0).
	emptyHash, _, _ := newMem(t).hashKV(0)
	y.wantHashKV("HashKV(0) after compact 0", 0, emptyHash, 0, -1)
}

// mustHash returns HashKV(rev)'s hash.
func mustHash(x *h, rev int64) uint32 {
	x.t.Helper()
	hash, _, _ := x.hashKV(rev)
	return hash
}

// TestHashStoredByCompaction: a compaction at R stores the hash HashKV(R)
// gave just before it, and HashKV(R) returns that (with the compact revision
// in force before R) while it is among the last 10; etcd's consistency
// checks compare these between members.
func TestHashStoredByCompaction(t *testing.T) {
	x := newReopenable(t)
	twin := newMem(t) // same history, compacted later
	both := func(f func(*h)) { f(x.h); f(twin) }
	// The sequence of the e2e compact transcript.
	both(func(s *h) { s.put("a", "1"); s.put("a", "2"); s.put("b", "1"); s.put("a", "3"); s.put("b", "2") })

	hash3, _, _ := x.hashKV(3)
	x.compact(3)
	x.wantHashKV("stored at 3", 3, hash3, 3, -1)
	x.wantHashKV("twin at 3", 3, mustHash(twin, 3), 3, -1)
	// Other revisions are hashed under the new compact revision.
	_, hr, crev := x.hashKV(0)
	if hr != 6 || crev != 3 {
		t.Fatalf("HashKV(0) rev %d compact %d, want 6 3", hr, crev)
	}
	if _, _, _, err := x.s.HashKV(2); err != storage.ErrCompacted {
		t.Fatalf("HashKV(2): %v, want compacted", err)
	}
	hash5 := mustHash(x.h, 5)
	if _, _, c := x.hashKV(5); c != 3 {
		t.Fatalf("HashKV(5) compact revision %d, want 3", c)
	}
	x.compact(5)
	x.wantHashKV("stored at 5", 5, hash5, 5, 3)
	// A stored hash is served even below the compact revision, as in etcd.
	x.wantHashKV("stored at 3 after compact 5", 3, hash3, 3, -1)
	if _, _, _, err := x.s.HashKV(4); err != storage.ErrCompacted {
		t.Fatalf("HashKV(4): %v, want compacted", err)
	}

	// A compaction in the same batch as writes hashes the batch's view: the
	// stored hash is the one of a twin that committed the writes first.
	twin.compact(3)
	twin.compact(5)
	twin.put("c", "1")
	twin.put("d", "1")
	hash8 := mustHash(twin, 8)
	x.apply(func(b *storage.Batch) {
		mustPut(t, b, &pb.PutRequest{Key: []byte("c"), Value: []byte("1")})
		mustPut(t, b, &pb.PutRequest{Key: []byte("d"), Value: []byte("1")})
		if _, err := b.Compact(8); err != nil {
			t.Fatal(err)
		}
	})
	x.wantHashKV("stored at 8 by a batch with writes", 8, hash8, 8, 5)

	// A compaction that does not commit stores nothing.
	x.put("e", "1") // 9
	b := x.s.NewBatch()
	if _, err := b.Compact(9); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, c := x.hashKV(9); c != 8 {
		t.Fatalf("HashKV(9) after a discarded compaction: compact revision %d, want 8", c)
	}

	// Only the last 10 are kept: compactions at 3, 5, 8 and 9..17 make 12.
	for i := range 9 {
		x.put("f", fmt.Sprint(i)) // 10..18
	}
	for rev := int64(9); rev <= 17; rev++ {
		x.compact(rev)
	}
	if _, _, _, err := x.s.HashKV(3); err != storage.ErrCompacted {
		t.Fatalf("HashKV(3) after 12 compactions: %v, want compacted (evicted)", err)
	}
	if _, _, _, err := x.s.HashKV(5); err != storage.ErrCompacted {
		t.Fatalf("HashKV(5) after 12 compactions: %v, want compacted (evicted)", err)
	}
	x.wantHashKV("8 is the oldest kept", 8, hash8, 8, 5)
	for rev := int64(9); rev <= 17; rev++ {
		if _, hr, c := x.hashKV(rev); hr != rev || c != rev-1 {
			t.Fatalf("HashKV(%d) = rev %d compact %d, want stored with compact %d", rev, hr, c, rev-1)
		}
	}
	// CompactionHashes lists the kept ones, newest first, as HashKV
	// serves them.
	kept := x.s.CompactionHashes()
	if len(kept) != 10 || kept[0].Revision != 17 || kept[9].Revision != 8 {
		t.Fatalf("CompactionHashes = %+v, want revisions 17 down to 8", kept)
	}
	for _, k := range kept {
		if hash, hr, c := x.hashKV(k.Revision); hash != k.Hash || hr != k.Revision || c != k.CompactRevision {
			t.Fatalf("CompactionHashes has %+v, HashKV(%d) = %d %d %d", k, k.Revision, hash, hr, c)
		}
	}

	// Stored hashes live in memory, as in etcd: after a reopen HashKV(17)
	// is computed under the current compact revision.
	x.reopen()
	if _, hr, c := x.hashKV(17); hr != 17 || c != 17 {
		t.Fatalf("HashKV(17) after reopen = rev %d compact %d, want 17 17", hr, c)
	}
	if _, _, _, err := x.s.HashKV(8); err != storage.ErrCompacted {
		t.Fatalf("HashKV(8) after reopen: %v, want compacted", err)
	}
}
