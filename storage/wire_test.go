package storage_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// TestRangeWireMatchesRange checks that what RangeWire's response marshals
// to decodes to Range's response, for random requests over a store with
// overwritten, deleted and leased keys, keys holding 0x00 and 0xFF bytes,
// empty values, and a compaction, and that the wire encoding served every
// request it applies to that found keys. Each response's buffer is
// recycled, so later ones are encoded into buffers used before.
func TestRangeWireMatchesRange(t *testing.T) {
	x := newMem(t)
	rng := rand.New(rand.NewPCG(7, 11))
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(1<<40, 100); err != nil {
			t.Fatal(err)
		}
	})
	keys := []string{"a", "a\x00", "a\x00b", "a\xff", "b", "b/1", "b/2", "b/3", "c", "d\x00\x00", "e"}
	for range 200 {
		k := keys[rng.IntN(len(keys))]
		switch rng.IntN(6) {
		case 0:
			x.del(k, "")
		case 1:
			x.putReq(&pb.PutRequest{Key: []byte(k), Value: nil})
		case 2:
			x.putReq(&pb.PutRequest{Key: []byte(k), Value: []byte(fmt.Sprint(rng.Int())), Lease: 1 << 40})
		default:
			x.put(k, string(make([]byte, rng.IntN(300))))
		}
	}
	x.compact(x.s.Rev() / 2)

	ends := []string{"", "\x00", "b", "b0", "d", "zz", "a"}
	wire := 0
	for i := range 2000 {
		k := keys[rng.IntN(len(keys))]
		r := &pb.RangeRequest{Key: []byte(k), RangeEnd: []byte(ends[rng.IntN(len(ends))])}
		if len(r.RangeEnd) == 0 {
			r.RangeEnd = nil
		}
		r.Limit = rng.Int64N(4)
		r.Revision = rng.Int64N(x.s.Rev() + 2)
		r.KeysOnly = rng.IntN(3) == 0
		r.CountOnly = rng.IntN(8) == 0
		if rng.IntN(3) == 0 {
			// Every target and order, including a target without an order
			// (ascending by the target, in etcd) and ascending by key
			// (the read order).
			r.SortTarget = pb.RangeRequest_SortTarget(rng.IntN(5))
			r.SortOrder = pb.RangeRequest_SortOrder(rng.IntN(3))
		}
		if rng.IntN(8) == 0 {
			r.MinModRevision = x.s.Rev() / 2
		}
		what := fmt.Sprintf("request %d %v", i, r)

		want, wantErr := x.s.Range(r)
		got, gotErr := x.s.RangeWire(r)
		if !errors.Is(gotErr, wantErr) || (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("%s: error %v, Range's %v", what, gotErr, wantErr)
		}
		if wantErr != nil {
			continue
		}
		keyOrder := r.SortTarget == pb.RangeRequest_KEY && r.SortOrder != pb.RangeRequest_DESCEND
		eligible := r.RangeEnd != nil && !r.CountOnly && keyOrder && r.MinModRevision == 0
		if encoded := len(got.Kvs) == 0 && len(got.ProtoReflect().GetUnknown()) > 0; encoded != (eligible && len(want.Kvs) > 0) {
			t.Fatalf("%s: encoded %v, want %v", what, encoded, !encoded)
		} else if encoded {
			wire++
		}
		b, err := proto.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		// The buffer goes back for the next requests, as the gateway's
		// codec hands it back; Range's responses are left alone.
		storage.RecycleWire(got)
		storage.RecycleWire(want)
		if len(got.ProtoReflect().GetUnknown()) > 0 {
			t.Fatalf("%s: RecycleWire left the encoded kvs", what)
		}
		var decoded pb.RangeResponse
		if err := proto.Unmarshal(b, &decoded); err != nil {
			t.Fatalf("%s: decoding: %v", what, err)
		}
		if !proto.Equal(&decoded, want) {
			t.Fatalf("%s:\n got %v\nwant %v", what, &decoded, want)
		}
	}
	if wire < 300 {
		t.Fatalf("only %d of 2000 requests took the wire encoding", wire)
	}
}
