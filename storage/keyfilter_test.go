package storage

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

func TestKeyFilterHasNoFalseNegatives(t *testing.T) {
	f := newKeyFilter(0)
	var keys [][]byte
	for i := range 50000 {
		// Keys with 0x00 bytes exercise the escaping of the filter's key.
		keys = append(keys, appendKVKeyPrefix(nil, fmt.Appendf(nil, "k\x00%d", i)))
	}
	for _, k := range keys {
		f.add(k)
	}
	for _, k := range keys {
		if !f.mayContain(k) {
			t.Fatalf("added key %q not found", k)
		}
	}
	fp := 0
	for i := range 50000 {
		if f.mayContain(appendKVKeyPrefix(nil, fmt.Appendf(nil, "other/%d", i))) {
			fp++
		}
	}
	if fp > 500 { // ~1e-4 expected at this load
		t.Fatalf("%d false positives in 50000", fp)
	}
}

func putKey(t *testing.T, s *Store, k, v string) *pb.PutResponse {
	t.Helper()
	b := s.NewBatch()
	defer b.Close()
	resp, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v), PrevKv: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	return resp
}

func getKey(t *testing.T, s *Store, k string) (create, mod, ver int64) {
	t.Helper()
	resp, err := s.Range(&pb.RangeRequest{Key: []byte(k)})
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get %q: %v, %v", k, resp, err)
	}
	kv := resp.Kvs[0]
	return kv.CreateRevision, kv.ModRevision, kv.Version
}

// TestKeyFilterAcrossReopenAndRestore: a put of a key written before a
// reopen, or brought in by a restore, continues that key's generation
// (create revision, version, prev_kv), so the filter knew the key; a new
// key is ruled out without a read.
func TestKeyFilterAcrossReopenAndRestore(t *testing.T) {
	fs := vfs.NewMem()
	open := func() *Store {
		s, err := Open("db", Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	for i := range 2000 {
		putKey(t, s, fmt.Sprintf("a/%04d", i), "1")
	}
	putKey(t, s, "a/\x00zero", "1")
	if b := s.NewBatch(); b.mayExist([]byte("never/written")) {
		t.Error("the filter does not rule out a key never written")
	} else {
		_ = b.Close()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open()
	for _, k := range []string{"a/0000", "a/1999", "a/\x00zero"} {
		create, _, _ := getKey(t, s, k)
		resp := putKey(t, s, k, "2")
		if resp.PrevKv == nil || string(resp.PrevKv.Value) != "1" {
			t.Fatalf("put %q after reopen: prev_kv %v, want the first version", k, resp.PrevKv)
		}
		if c, _, v := getKey(t, s, k); c != create || v != 2 {
			t.Fatalf("put %q after reopen: create %d version %d, want %d and 2", k, c, v, create)
		}
	}

	// A snapshot of another store, with keys this one never had.
	other, err := Open("other", Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	putKey(t, other, "b/restored", "x")
	sn, err := other.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var data bytes.Buffer
	if _, err := data.ReadFrom(sn); err != nil {
		t.Fatal(err)
	}
	_ = sn.Close()
	_ = other.Close()
	r, err := s.NewRestore()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadFrom(&data); err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	if s.keys.Load() == nil {
		t.Fatal("key filter still off after the restore")
	}
	create, _, _ := getKey(t, s, "b/restored")
	if resp := putKey(t, s, "b/restored", "y"); resp.PrevKv == nil || string(resp.PrevKv.Value) != "x" {
		t.Fatalf("put of a restored key: prev_kv %v", resp.PrevKv)
	}
	if c, _, v := getKey(t, s, "b/restored"); c != create || v != 2 {
		t.Fatalf("put of a restored key: create %d version %d, want %d and 2", c, v, create)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
