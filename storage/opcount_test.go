package storage_test

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/storage"
)

// TestOpCounts checks each request's effect on OpCounts against what etcd
// 3.7.3's metricsTxnWrite counts for it (server/storage/mvcc/metrics_txn.go
// wrapping the reads and writes of server/etcdserver/txn).
func TestOpCounts(t *testing.T) {
	x := newMem(t)
	step := func(name string, want storage.OpCounts, fn func(b *storage.Batch)) {
		t.Helper()
		before := x.s.OpCounts()
		x.apply(fn)
		after := x.s.OpCounts()
		got := storage.OpCounts{
			Ranges: after.Ranges - before.Ranges, Puts: after.Puts - before.Puts,
			Deletes: after.Deletes - before.Deletes, Txns: after.Txns - before.Txns,
			PutBytes: after.PutBytes - before.PutBytes, Keys: after.Keys - before.Keys,
		}
		if got != want {
			t.Errorf("%s: counts changed by %+v, want %+v", name, got, want)
		}
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	step("put", storage.OpCounts{Puts: 1, PutBytes: 2, Keys: 1}, func(b *storage.Batch) {
		must(b.Put(&pb.PutRequest{Key: []byte("a"), Value: []byte("1")}))
	})
	// A put that reads the previous version is a range and a put: a txn.
	step("put --prev-kv", storage.OpCounts{Ranges: 1, Puts: 1, Txns: 1, PutBytes: 3}, func(b *storage.Batch) {
		must(b.Put(&pb.PutRequest{Key: []byte("a"), Value: []byte("22"), PrevKv: true}))
	})
	step("put --ignore-value", storage.OpCounts{Ranges: 1, Puts: 1, Txns: 1, PutBytes: 3}, func(b *storage.Batch) {
		must(b.Put(&pb.PutRequest{Key: []byte("a"), IgnoreValue: true}))
	})
	step("put --ignore-value of a missing key", storage.OpCounts{Ranges: 1}, func(b *storage.Batch) {
		if _, err := b.Put(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true}); err == nil {
			t.Error("ignore_value put of a missing key succeeded")
		}
	})
	step("put with a missing lease", storage.OpCounts{}, func(b *storage.Batch) {
		if _, err := b.Put(&pb.PutRequest{Key: []byte("a"), Lease: 99}); err == nil {
			t.Error("put with a missing lease succeeded")
		}
	})
	for _, end := range []string{"", "\x00"} {
		before := x.s.OpCounts()
		x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte(end)})
		if d := x.s.OpCounts().Ranges - before.Ranges; d != 1 {
			t.Errorf("range to %q: ranges changed by %d, want 1", end, d)
		}
	}
	step("delete of nothing", storage.OpCounts{Deletes: 1}, func(b *storage.Batch) {
		must(b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("nothing")}))
	})
	step("delete --prev-kv", storage.OpCounts{Ranges: 1, Deletes: 1, Txns: 1, Keys: -1}, func(b *storage.Batch) {
		must(b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("a"), PrevKv: true}))
	})
	// Compares and checks are one store txn, the ops another: two compares
	// (the second fails and ends the evaluation), then a put and a range.
	step("txn", storage.OpCounts{Ranges: 3, Puts: 1, Txns: 2, PutBytes: 2, Keys: 1}, func(b *storage.Batch) {
		must(b.Txn(&pb.TxnRequest{
			Compare: []*pb.Compare{cmpVersion("a", pb.Compare_EQUAL, 0), cmpVersion("c", pb.Compare_GREATER, 0),
				cmpVersion("d", pb.Compare_EQUAL, 0)},
			Failure: []*pb.RequestOp{opPut("c", "v"), opGet("c", "")},
		}))
	})
	step("txn of one compare and one put", storage.OpCounts{Ranges: 1, Puts: 1, PutBytes: 2}, func(b *storage.Batch) {
		must(b.Txn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("c", pb.Compare_EQUAL, 1)},
			Success: []*pb.RequestOp{opPut("c", "w")}}))
	})
	// A put with prev_kv in a txn reads in the checks and again in the ops.
	step("txn put --prev-kv", storage.OpCounts{Ranges: 2, Puts: 1, Txns: 1, PutBytes: 2}, func(b *storage.Batch) {
		must(b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
			opPutReq(&pb.PutRequest{Key: []byte("c"), Value: []byte("x"), PrevKv: true})}}))
	})
	step("nested txn", storage.OpCounts{Ranges: 2, Deletes: 1, Txns: 1, Keys: -1}, func(b *storage.Batch) {
		must(b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{
			Compare: []*pb.Compare{cmpVersion("c", pb.Compare_GREATER, 0)},
			Success: []*pb.RequestOp{opDel("c", "")},
		})}}))
	})
	// A member that does not answer the txn skips its range ops, as etcd.
	step("replica txn", storage.OpCounts{Ranges: 1, Puts: 1, PutBytes: 2, Keys: 1}, func(b *storage.Batch) {
		must(b.ReplicaTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("e", pb.Compare_EQUAL, 0)},
			Success: []*pb.RequestOp{opGet("e", ""), opPut("e", "1")}}))
	})
	before := x.s.OpCounts()
	if _, err := x.s.ReadTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("e", pb.Compare_EQUAL, 1)},
		Success: []*pb.RequestOp{opGet("e", ""), opGet("a", "b")}}); err != nil {
		t.Fatal(err)
	}
	if c := x.s.OpCounts(); c.Ranges-before.Ranges != 3 || c.Txns-before.Txns != 1 {
		t.Errorf("read-only txn: ranges +%d, txns +%d; want +3, +1", c.Ranges-before.Ranges, c.Txns-before.Txns)
	}
	step("lease grant and puts", storage.OpCounts{Puts: 2, PutBytes: 6, Keys: 2}, func(b *storage.Batch) {
		must(nil, b.LeaseGrant(7, 60))
		must(b.Put(&pb.PutRequest{Key: []byte("l1"), Value: []byte("v"), Lease: 7}))
		must(b.Put(&pb.PutRequest{Key: []byte("l2"), Value: []byte("v"), Lease: 7}))
	})
	// A revoke deletes each key with its own delete, in one store txn.
	step("lease revoke", storage.OpCounts{Deletes: 2, Txns: 1, Keys: -2}, func(b *storage.Batch) {
		must(nil, b.LeaseRevoke(7))
	})
	step("compaction", storage.OpCounts{Ranges: 1}, func(b *storage.Batch) {
		must(b.Compact(3))
	})
	step("compaction below the compact revision", storage.OpCounts{}, func(b *storage.Batch) {
		if _, err := b.Compact(2); err == nil {
			t.Error("compaction below the compact revision succeeded")
		}
	})
	if k := x.s.OpCounts().Keys; k != 1 {
		t.Errorf("keys: %d, want 1 (e)", k)
	}
}

// TestOpCountsKeysAtOpen checks that the live key count is rebuilt from the
// data when a store opens, as etcd's is when it rebuilds its index.
func TestOpCountsKeysAtOpen(t *testing.T) {
	fs := vfs.NewMem()
	s, err := storage.Open("db", storage.Options{FS: fs, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	x := &h{t: t, s: s}
	for _, k := range []string{"a", "b", "c"} {
		x.put(k, "v")
	}
	x.put("a", "v2")
	x.del("b", "")
	if k := s.OpCounts().Keys; k != 2 {
		t.Errorf("keys before reopen: %d, want 2", k)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = storage.Open("db", storage.Options{FS: fs, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c := s.OpCounts(); c.Keys != 2 || c.Puts != 0 {
		t.Errorf("after reopen: keys %d, puts %d; want 2, 0", c.Keys, c.Puts)
	}
}
