package storage

import (
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// rangePoint (the single-key fast path) must answer exactly as the generic
// range path does, on random histories of puts, deletes and compactions,
// for every key (live, deleted, never written, with 0x00 bytes), revision
// (current, past, compacted, future) and request option.
func TestRangePointMatchesGeneric(t *testing.T) {
	for seed := range uint64(8) {
		checkRangePoint(t, seed, 300)
	}
}

// FuzzRangePoint explores more histories than the fixed seeds.
func FuzzRangePoint(f *testing.F) {
	f.Add(uint64(1), uint16(50))
	f.Fuzz(func(t *testing.T, seed uint64, steps uint16) {
		checkRangePoint(t, seed, int(steps%400))
	})
}

func checkRangePoint(t *testing.T, seed uint64, steps int) {
	t.Helper()
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	keys := [][]byte{[]byte("a"), []byte("a\x00"), []byte("a\x00b"), []byte("b"), {0x00}, {0xff}, []byte("k/1"), []byte("k/2")}
	missing := []byte("never")
	for range steps {
		b := s.NewBatch()
		switch x := rng.IntN(20); {
		case x < 13:
			val := make([]byte, rng.IntN(3)*rng.IntN(200))
			for i := range val {
				val[i] = byte(rng.IntN(256))
			}
			if _, err := b.Put(&pb.PutRequest{Key: keys[rng.IntN(len(keys))], Value: val}); err != nil {
				t.Fatal(err)
			}
		case x < 18:
			req := &pb.DeleteRangeRequest{Key: keys[rng.IntN(len(keys))]}
			if rng.IntN(3) == 0 {
				req.RangeEnd = keys[rng.IntN(len(keys))]
			}
			if _, err := b.DeleteRange(req); err != nil {
				t.Fatal(err)
			}
		default:
			rev := s.Rev()
			if c := s.CompactRev(); rev > c+1 {
				if _, err := b.Compact(c + 1 + rng.Int64N(rev-c-1)); err != nil && !errors.Is(err, ErrCompacted) {
					t.Fatal(err)
				}
			}
		}
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(10) == 0 {
			// Part of the history in sstables, part in the memtable.
			if err := s.DB().Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	cur, compacted := s.Rev(), s.CompactRev()
	revs := []int64{0, cur, cur + 1, max(compacted-1, 1), max(compacted, 1), -1}
	for range 20 {
		revs = append(revs, 1+rng.Int64N(cur))
	}
	for _, key := range append(keys, missing) {
		for _, rev := range revs {
			for range 4 {
				req := &pb.RangeRequest{Key: key, Revision: rev}
				// Filter bounds at, just below and just above the
				// version the key has at rev, so the boundaries are hit.
				var mod, create int64 = 1 + rng.Int64N(cur), 1 + rng.Int64N(cur)
				if resp, err := s.Range(&pb.RangeRequest{Key: key, Revision: rev}); err == nil && len(resp.Kvs) == 1 {
					mod, create = resp.Kvs[0].ModRevision, resp.Kvs[0].CreateRevision
				}
				near := func(r int64) int64 { return r - 1 + rng.Int64N(3) }
				switch rng.IntN(10) {
				case 6:
					if rng.IntN(2) == 0 {
						req.MinModRevision = near(mod)
					} else {
						req.MaxModRevision = near(mod)
					}
				case 7:
					if rng.IntN(2) == 0 {
						req.MinCreateRevision = near(create)
					} else {
						req.MaxCreateRevision = near(create)
					}
				case 0:
					req.KeysOnly = true
				case 1:
					req.CountOnly = true
				case 2:
					req.Limit = 1 + rng.Int64N(2)
				case 3:
					req.SortOrder = pb.RangeRequest_DESCEND
					req.SortTarget = pb.RangeRequest_SortTarget(rng.IntN(5))
					req.KeysOnly = rng.IntN(2) == 0
				case 4:
					req.MinModRevision = 1 + rng.Int64N(cur)
					req.MaxModRevision = rng.Int64N(cur + 1)
				case 5:
					req.MinCreateRevision = 1 + rng.Int64N(cur)
					req.MaxCreateRevision = rng.Int64N(cur + 1)
				}
				got, gerr := s.Range(req)
				if err := s.enter(); err != nil {
					t.Fatal(err)
				}
				want, werr := s.rangeGeneric(req)
				s.leave()
				if !errors.Is(gerr, werr) || (gerr == nil) != (werr == nil) {
					t.Fatalf("seed %d, %v: error %v, generic %v", seed, req, gerr, werr)
				}
				if gerr == nil && (!proto.Equal(got, want) || (got.Kvs == nil) != (want.Kvs == nil)) {
					t.Fatalf("seed %d, %v:\n point   %v\n generic %v", seed, req, got, want)
				}
			}
		}
	}
}
