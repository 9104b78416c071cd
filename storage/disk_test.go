package storage_test

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// TestReopenOnDisk writes every kind of state to a real directory, closes,
// reopens and checks it all survived.
func TestReopenOnDisk(t *testing.T) {
	dir := t.TempDir()
	s, err := storage.Open(dir, storage.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	x := &h{t: t, s: s}
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(9, 60); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Alarm(&pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 3, Alarm: pb.AlarmType_NOSPACE}); err != nil {
			t.Fatal(err)
		}
		b.SetMeta([]byte("cluster"), []byte("id-1"))
	})
	for i := range 20 {
		x.putReq(&pb.PutRequest{Key: []byte(fmt.Sprintf("k%02d", i%7)), Value: []byte(strconv.Itoa(i)), Lease: int64(9 * (i % 2))})
	}
	x.del("k03", "")
	x.compact(10)
	x.apply(func(b *storage.Batch) {
		mustPut(t, b, &pb.PutRequest{Key: []byte("last"), Value: []byte("x")})
		b.SetApplied(42, 7)
	})
	// An uncommitted batch at close time is lost, not half-applied.
	pending := s.NewBatch()
	mustPut(t, pending, &pb.PutRequest{Key: []byte("pending"), Value: []byte("x")})

	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	wantAll := x.rng(all)
	wantOld := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 12})
	wantHash, _, _, err := s.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	wantHist, err := s.RangeEvents(10, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	wantLeases := s.Leases()
	rev := s.Rev()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	_ = pending.Close()

	s, err = storage.Open(dir, storage.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	x = &h{t: t, s: s}
	if s.Rev() != rev || s.CompactRev() != 10 {
		t.Fatalf("rev %d compact %d, want %d 10", s.Rev(), s.CompactRev(), rev)
	}
	if i, tm := s.Applied(); i != 42 || tm != 7 {
		t.Fatalf("applied %d %d", i, tm)
	}
	if a := s.Alarms(); len(a) != 1 || a[0].MemberID != 3 || a[0].Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarms %v", a)
	}
	if v, err := s.Meta([]byte("cluster")); err != nil || string(v) != "id-1" {
		t.Fatalf("meta %q %v", v, err)
	}
	if got := s.Leases(); len(got) != len(wantLeases) || len(got[0].Keys) != len(wantLeases[0].Keys) || got[0].TTL != 60 {
		t.Fatalf("leases %+v, want %+v", got, wantLeases)
	}
	if got := x.rng(all); !proto.Equal(got, wantAll) {
		t.Fatalf("range after reopen:\n%v\nwant\n%v", got, wantAll)
	}
	if got := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 12}); !proto.Equal(got, wantOld) {
		t.Fatal("historic range changed after reopen")
	}
	if x.get("pending", 0) != nil {
		t.Fatal("uncommitted batch survived")
	}
	if h, _, _, err := s.HashKV(0); err != nil || h != wantHash {
		t.Fatalf("hash %x %v, want %x", h, err, wantHash)
	}
	gotHist, err := s.RangeEvents(10, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	eqHistory(t, "history after reopen", gotHist, wantHist)
	_, err = s.Range(&pb.RangeRequest{Key: []byte("k01"), Revision: 9})
	wantErr(t, "compacted after reopen", err, storage.ErrCompacted)
	// Revisions continue where they stopped.
	if r := x.put("after", "reopen"); r.Header.Revision != rev+1 {
		t.Fatalf("next revision %d, want %d", r.Header.Revision, rev+1)
	}
}

// TestConcurrentReadersSeeCommittedState runs readers against a writer that
// puts and compacts. Every write updates key "k" with its own revision as
// value, so a reader can check that what it sees is consistent with the
// revision in its header.
func TestConcurrentReadersSeeCommittedState(t *testing.T) {
	x := newMem(t)
	var done atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !done.Load(); i++ {
				resp, err := x.s.Range(&pb.RangeRequest{Key: []byte("k")})
				if err != nil {
					errs <- err
					return
				}
				if len(resp.Kvs) == 1 {
					kv := resp.Kvs[0]
					if kv.ModRevision != resp.Header.Revision || string(kv.Value) != strconv.FormatInt(kv.ModRevision, 10) {
						errs <- fmt.Errorf("inconsistent read: header %d kv %v", resp.Header.Revision, kv)
						return
					}
				}
				// A historic read either succeeds with the right value or
				// reports compaction.
				at := resp.Header.Revision - int64(i%5)
				if at < 2 {
					continue
				}
				old, err := x.s.Range(&pb.RangeRequest{Key: []byte("k"), Revision: at})
				if err == nil {
					if len(old.Kvs) != 1 || old.Kvs[0].ModRevision != at {
						errs <- fmt.Errorf("historic read at %d: %v", at, old.Kvs)
						return
					}
				} else if err != storage.ErrCompacted {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range 300 {
		rev := x.s.Rev() + 1
		x.put("k", strconv.FormatInt(rev, 10))
		if i%50 == 49 {
			x.compact(x.s.Rev() - 3)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestWALDir: with Options.WALDir the write-ahead log is written there; a
// store whose log was in its own directory moves it there without losing
// what only the log held, and opening it again without the WAL dir is
// refused rather than missing writes.
func TestWALDir(t *testing.T) {
	dir, walDir := t.TempDir(), t.TempDir()
	open := func(o storage.Options) (*h, error) {
		o.Logger = quiet
		s, err := storage.Open(dir, o)
		if err != nil {
			return nil, err
		}
		return &h{t: t, s: s}, nil
	}
	x, err := open(storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	x.put("a", "1") // in the memtable and the log only
	if err := x.s.Close(); err != nil {
		t.Fatal(err)
	}
	if x, err = open(storage.Options{WALDir: walDir}); err != nil {
		t.Fatal(err)
	}
	x.put("b", "2")
	if err := x.s.Close(); err != nil {
		t.Fatal(err)
	}
	if logs, _ := filepath.Glob(filepath.Join(walDir, "*.log")); len(logs) == 0 {
		t.Fatalf("no write-ahead log in %s", walDir)
	}
	if x, err = open(storage.Options{WALDir: walDir}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"a": "1", "b": "2"} {
		if kv := x.get(k, 0); kv == nil || string(kv.Value) != v {
			t.Errorf("%s after moving the log: %v, want %s", k, kv, v)
		}
	}
	if err := x.s.Close(); err != nil {
		t.Fatal(err)
	}
	if x, err = open(storage.Options{}); err == nil {
		x.s.Close()
		t.Fatal("opened without the WAL dir that holds its log")
	} else if !strings.Contains(err.Error(), "its write-ahead log is in "+walDir) {
		t.Errorf("opened without the WAL dir: %v, want it named", err)
	}
}
