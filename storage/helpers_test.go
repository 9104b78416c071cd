package storage_test

import (
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// h wraps a store with helpers that fail the test on unexpected errors.
type h struct {
	t testing.TB
	s *storage.Store
}

func newMem(t testing.TB) *h {
	t.Helper()
	s, err := storage.Open("db", storage.Options{FS: vfs.NewMem(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &h{t: t, s: s}
}

// apply runs fn in a new batch and commits it.
func (x *h) apply(fn func(b *storage.Batch)) []storage.RevisionEvents {
	x.t.Helper()
	b := x.s.NewBatch()
	defer b.Close()
	fn(b)
	ev := b.Events()
	if err := b.Commit(false); err != nil {
		x.t.Fatalf("commit: %v", err)
	}
	return ev
}

func (x *h) put(key, val string) *pb.PutResponse {
	x.t.Helper()
	return x.putReq(&pb.PutRequest{Key: []byte(key), Value: []byte(val)})
}

func (x *h) putReq(r *pb.PutRequest) *pb.PutResponse {
	x.t.Helper()
	var resp *pb.PutResponse
	x.apply(func(b *storage.Batch) {
		var err error
		if resp, err = b.Put(r); err != nil {
			x.t.Fatalf("put %q: %v", r.Key, err)
		}
	})
	return resp
}

func (x *h) del(key, end string) *pb.DeleteRangeResponse {
	x.t.Helper()
	var resp *pb.DeleteRangeResponse
	x.apply(func(b *storage.Batch) {
		var err error
		r := &pb.DeleteRangeRequest{Key: []byte(key), PrevKv: true}
		if end != "" {
			r.RangeEnd = []byte(end)
		}
		if resp, err = b.DeleteRange(r); err != nil {
			x.t.Fatalf("delete %q: %v", key, err)
		}
	})
	return resp
}

func (x *h) txn(r *pb.TxnRequest) *pb.TxnResponse {
	x.t.Helper()
	var resp *pb.TxnResponse
	x.apply(func(b *storage.Batch) {
		var err error
		if resp, err = b.Txn(r); err != nil {
			x.t.Fatalf("txn: %v", err)
		}
	})
	return resp
}

func (x *h) compact(rev int64) {
	x.t.Helper()
	x.apply(func(b *storage.Batch) {
		if _, err := b.Compact(rev); err != nil {
			x.t.Fatalf("compact %d: %v", rev, err)
		}
	})
}

func (x *h) rng(r *pb.RangeRequest) *pb.RangeResponse {
	x.t.Helper()
	resp, err := x.s.Range(r)
	if err != nil {
		x.t.Fatalf("range %q-%q@%d: %v", r.Key, r.RangeEnd, r.Revision, err)
	}
	return resp
}

// get returns the key at rev (0 = current), nil if absent.
func (x *h) get(key string, rev int64) *mvccpb.KeyValue {
	x.t.Helper()
	resp := x.rng(&pb.RangeRequest{Key: []byte(key), Revision: rev})
	switch len(resp.Kvs) {
	case 0:
		return nil
	case 1:
		return resp.Kvs[0]
	}
	x.t.Fatalf("get %q returned %d kvs", key, len(resp.Kvs))
	return nil
}

func kv(key, val string, create, mod, ver, lease int64) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val), CreateRevision: create, ModRevision: mod, Version: ver, Lease: lease}
}

func eqKV(t testing.TB, what string, got, want *mvccpb.KeyValue) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

func eqKVs(t testing.TB, what string, got []*mvccpb.KeyValue, want ...*mvccpb.KeyValue) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d kvs %v, want %d %v", what, len(got), got, len(want), want)
	}
	for i := range got {
		eqKV(t, what, got[i], want[i])
	}
}

func keysOf(kvs []*mvccpb.KeyValue) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = string(kv.Key)
	}
	return out
}

func wantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

// Request builders.
func opPut(k, v string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}}
}

func opPutReq(r *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}}
}

func opGet(k, end string) *pb.RequestOp {
	r := &pb.RangeRequest{Key: []byte(k)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opGetReq(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opDel(k, end string) *pb.RequestOp {
	r := &pb.DeleteRangeRequest{Key: []byte(k), PrevKv: true}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func cmpVersion(k string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VERSION, Result: res, TargetUnion: &pb.Compare_Version{Version: v}}
}
