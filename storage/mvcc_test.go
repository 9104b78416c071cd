package storage_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

func TestRevisionsVersionsTombstones(t *testing.T) {
	x := newMem(t)
	if x.s.Rev() != 1 || x.s.CompactRev() != -1 {
		t.Fatalf("empty store: rev %d compact %d, want 1 -1", x.s.Rev(), x.s.CompactRev())
	}
	resp := x.rng(&pb.RangeRequest{Key: []byte("foo")})
	if resp.Header.Revision != 1 || resp.Count != 0 || len(resp.Kvs) != 0 {
		t.Fatalf("empty range: %v", resp)
	}

	if r := x.put("foo", "a"); r.Header.Revision != 2 || r.PrevKv != nil {
		t.Fatalf("first put: %v", r)
	}
	if r := x.putReq(&pb.PutRequest{Key: []byte("foo"), Value: []byte("b"), PrevKv: true}); r.Header.Revision != 3 {
		t.Fatalf("second put: %v", r)
	} else {
		eqKV(t, "prev_kv", r.PrevKv, kv("foo", "a", 2, 2, 1, 0))
	}
	x.put("bar", "x")
	d := x.del("foo", "")
	if d.Header.Revision != 5 || d.Deleted != 1 {
		t.Fatalf("delete: %v", d)
	}
	eqKVs(t, "delete prev_kvs", d.PrevKvs, kv("foo", "b", 2, 3, 2, 0))

	if got := x.get("foo", 0); got != nil {
		t.Fatalf("deleted key visible: %v", got)
	}
	eqKV(t, "foo@4", x.get("foo", 4), kv("foo", "b", 2, 3, 2, 0))
	eqKV(t, "foo@3", x.get("foo", 3), kv("foo", "b", 2, 3, 2, 0))
	eqKV(t, "foo@2", x.get("foo", 2), kv("foo", "a", 2, 2, 1, 0))
	if got := x.get("foo", 1); got != nil {
		t.Fatalf("foo@1: %v", got)
	}
	if got := x.get("bar", 3); got != nil {
		t.Fatalf("bar@3: %v", got)
	}

	// A new generation starts at version 1 with a new create revision.
	x.put("foo", "c")
	eqKV(t, "foo after recreate", x.get("foo", 0), kv("foo", "c", 6, 6, 1, 0))

	// Deleting nothing creates no revision.
	if d := x.del("nope", ""); d.Deleted != 0 || d.Header.Revision != 6 || len(d.PrevKvs) != 0 {
		t.Fatalf("delete of missing key: %v", d)
	}
	if d := x.del("zzz", "zzzz"); d.Deleted != 0 || d.Header.Revision != 6 {
		t.Fatalf("delete of empty range: %v", d)
	}
	if x.s.Rev() != 6 {
		t.Fatalf("rev %d, want 6", x.s.Rev())
	}
	_, err := x.s.Range(&pb.RangeRequest{Key: []byte("foo"), Revision: 7})
	wantErr(t, "future read", err, storage.ErrFutureRev)
}

// rangeFixture builds:
//
//	a=55 create 2 mod 8  ver 2
//	b=444 create 3 mod 10 ver 3
//	c=33 create 4 mod 7  ver 2
//	d=2  create 5 mod 5  ver 1
//	e=1  create 6 mod 6  ver 1
func rangeFixture(t *testing.T) *h {
	x := newMem(t)
	for _, p := range [][2]string{{"a", "5"}, {"b", "4"}, {"c", "3"}, {"d", "2"}, {"e", "1"}, {"c", "33"}, {"a", "55"}, {"b", "44"}, {"b", "444"}} {
		x.put(p[0], p[1])
	}
	if x.s.Rev() != 10 {
		t.Fatalf("fixture rev %d", x.s.Rev())
	}
	return x
}

func TestRangeOptions(t *testing.T) {
	x := rangeFixture(t)
	A := kv("a", "55", 2, 8, 2, 0)
	B := kv("b", "444", 3, 10, 3, 0)
	C := kv("c", "33", 4, 7, 2, 0)
	D := kv("d", "2", 5, 5, 1, 0)
	E := kv("e", "1", 6, 6, 1, 0)
	all := []*mvccpb.KeyValue{A, B, C, D, E}
	r := func(key, end string) *pb.RangeRequest {
		req := &pb.RangeRequest{Key: []byte(key)}
		if end != "" {
			req.RangeEnd = []byte(end)
		}
		return req
	}
	with := func(req *pb.RangeRequest, f func(*pb.RangeRequest)) *pb.RangeRequest { f(req); return req }
	asc, desc := pb.RangeRequest_ASCEND, pb.RangeRequest_DESCEND
	cases := []struct {
		name  string
		req   *pb.RangeRequest
		want  []*mvccpb.KeyValue
		count int64
		more  bool
	}{
		{"single", r("c", ""), []*mvccpb.KeyValue{C}, 1, false},
		{"single missing", r("cc", ""), nil, 0, false},
		{"range", r("a", "f"), all, 5, false},
		{"range half open", r("b", "d"), []*mvccpb.KeyValue{B, C}, 2, false},
		{"from key", r("c", "\x00"), []*mvccpb.KeyValue{C, D, E}, 3, false},
		{"all keys", r("\x00", "\x00"), all, 5, false},
		{"end before key", r("c", "b"), nil, 0, false},
		{"end equals key", r("c", "c"), nil, 0, false},
		{"limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.Limit = 2 }), []*mvccpb.KeyValue{A, B}, 5, true},
		{"limit exact", with(r("a", "f"), func(q *pb.RangeRequest) { q.Limit = 5 }), all, 5, false},
		{"limit over", with(r("a", "f"), func(q *pb.RangeRequest) { q.Limit = 50 }), all, 5, false},
		{"key asc limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder, q.Limit = pb.RangeRequest_KEY, asc, 3 }), []*mvccpb.KeyValue{A, B, C}, 5, true},
		{"key desc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_KEY, desc }), []*mvccpb.KeyValue{E, D, C, B, A}, 5, false},
		{"key desc limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder, q.Limit = pb.RangeRequest_KEY, desc, 2 }), []*mvccpb.KeyValue{E, D}, 5, true},
		{"version asc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_VERSION, asc }), []*mvccpb.KeyValue{D, E, A, C, B}, 5, false},
		{"version none means asc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget = pb.RangeRequest_VERSION }), []*mvccpb.KeyValue{D, E, A, C, B}, 5, false},
		{"version desc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_VERSION, desc }), []*mvccpb.KeyValue{B, A, C, D, E}, 5, false},
		{"create desc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_CREATE, desc }), []*mvccpb.KeyValue{E, D, C, B, A}, 5, false},
		{"create asc limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder, q.Limit = pb.RangeRequest_CREATE, asc, 1 }), []*mvccpb.KeyValue{A}, 5, true},
		{"mod asc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_MOD, asc }), []*mvccpb.KeyValue{D, E, C, A, B}, 5, false},
		{"mod desc limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder, q.Limit = pb.RangeRequest_MOD, desc, 2 }), []*mvccpb.KeyValue{B, A}, 5, true},
		{"value asc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_VALUE, asc }), []*mvccpb.KeyValue{E, D, C, B, A}, 5, false},
		{"value desc", with(r("a", "f"), func(q *pb.RangeRequest) { q.SortTarget, q.SortOrder = pb.RangeRequest_VALUE, desc }), []*mvccpb.KeyValue{A, B, C, D, E}, 5, false},
		{"min mod", with(r("a", "f"), func(q *pb.RangeRequest) { q.MinModRevision = 7 }), []*mvccpb.KeyValue{A, B, C}, 5, false},
		{"max mod", with(r("a", "f"), func(q *pb.RangeRequest) { q.MaxModRevision = 6 }), []*mvccpb.KeyValue{D, E}, 5, false},
		{"min create", with(r("a", "f"), func(q *pb.RangeRequest) { q.MinCreateRevision = 4 }), []*mvccpb.KeyValue{C, D, E}, 5, false},
		{"max create", with(r("a", "f"), func(q *pb.RangeRequest) { q.MaxCreateRevision = 3 }), []*mvccpb.KeyValue{A, B}, 5, false},
		{"mod window", with(r("a", "f"), func(q *pb.RangeRequest) { q.MinModRevision, q.MaxModRevision = 6, 8 }), []*mvccpb.KeyValue{A, C, E}, 5, false},
		{"filter then limit", with(r("a", "f"), func(q *pb.RangeRequest) { q.MinModRevision, q.Limit = 7, 1 }), []*mvccpb.KeyValue{A}, 5, true},
		{"historic", with(r("a", "f"), func(q *pb.RangeRequest) { q.Revision = 6 }), []*mvccpb.KeyValue{
			kv("a", "5", 2, 2, 1, 0), kv("b", "4", 3, 3, 1, 0), kv("c", "3", 4, 4, 1, 0), D, E}, 5, false},
		{"historic partial", with(r("a", "f"), func(q *pb.RangeRequest) { q.Revision = 3 }), []*mvccpb.KeyValue{
			kv("a", "5", 2, 2, 1, 0), kv("b", "4", 3, 3, 1, 0)}, 2, false},
		{"historic before everything", with(r("\x00", "\x00"), func(q *pb.RangeRequest) { q.Revision = 1 }), nil, 0, false},
		{"historic single", with(r("b", ""), func(q *pb.RangeRequest) { q.Revision = 9 }), []*mvccpb.KeyValue{kv("b", "44", 3, 9, 2, 0)}, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := x.rng(tc.req)
			eqKVs(t, tc.name, resp.Kvs, tc.want...)
			if resp.Count != tc.count || resp.More != tc.more || resp.Header.Revision != 10 {
				t.Fatalf("count %d more %v rev %d, want %d %v 10", resp.Count, resp.More, resp.Header.Revision, tc.count, tc.more)
			}
		})
	}

	t.Run("keys only", func(t *testing.T) {
		resp := x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), KeysOnly: true})
		var want []*mvccpb.KeyValue
		for _, k := range all {
			c := proto.Clone(k).(*mvccpb.KeyValue)
			c.Value = nil
			want = append(want, c)
		}
		eqKVs(t, "keys only", resp.Kvs, want...)
		// Sorting by value still works with keys_only (values are read, then dropped).
		resp = x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), KeysOnly: true, SortTarget: pb.RangeRequest_VALUE, SortOrder: asc})
		if got := keysOf(resp.Kvs); !slices.Equal(got, []string{"e", "d", "c", "b", "a"}) || len(resp.Kvs[0].Value) != 0 {
			t.Fatalf("keys only by value: %v", resp.Kvs)
		}
	})
	t.Run("count only", func(t *testing.T) {
		resp := x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), CountOnly: true})
		if resp.Count != 5 || len(resp.Kvs) != 0 {
			t.Fatalf("count only: %v", resp)
		}
		resp = x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), CountOnly: true, Revision: 4})
		if resp.Count != 3 {
			t.Fatalf("count only at 4: %v", resp)
		}
	})
	t.Run("errors", func(t *testing.T) {
		_, err := x.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 11})
		wantErr(t, "future", err, storage.ErrFutureRev)
		x.compact(5)
		_, err = x.s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 4})
		wantErr(t, "compacted", err, storage.ErrCompacted)
		// Reading at exactly the compact revision works.
		resp := x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("f"), Revision: 5})
		if got := keysOf(resp.Kvs); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
			t.Fatalf("at compact rev: %v", got)
		}
	})
}

// keys_only drops the lease too, unless the range is sorted by value: etcd
// 3.7 then serves the keys from its index, which has no leases
// (mvcc.RangeOptions.FastKeysOnly). Single keys (the point path) and ranges
// alike.
func TestKeysOnlyDropsLease(t *testing.T) {
	x := newMem(t)
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(7, 100); err != nil {
			t.Fatal(err)
		}
	})
	x.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 7}) // rev 2
	for _, tc := range []struct {
		name string
		req  *pb.RangeRequest
		want *mvccpb.KeyValue
	}{
		{"point", &pb.RangeRequest{Key: []byte("k"), KeysOnly: true}, kv("k", "", 2, 2, 1, 0)},
		{"range", &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), KeysOnly: true}, kv("k", "", 2, 2, 1, 0)},
		{"range by mod", &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), KeysOnly: true, SortTarget: pb.RangeRequest_MOD}, kv("k", "", 2, 2, 1, 0)},
		{"point by value", &pb.RangeRequest{Key: []byte("k"), KeysOnly: true, SortTarget: pb.RangeRequest_VALUE}, kv("k", "", 2, 2, 1, 7)},
		{"range by value", &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), KeysOnly: true, SortTarget: pb.RangeRequest_VALUE}, kv("k", "", 2, 2, 1, 7)},
		{"not keys only", &pb.RangeRequest{Key: []byte("k")}, kv("k", "v", 2, 2, 1, 7)},
	} {
		resp := x.rng(tc.req)
		if len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v", tc.name, resp.Kvs)
		}
		eqKV(t, tc.name, resp.Kvs[0], tc.want)
	}
}

func TestKeysWithZeroAndFFBytes(t *testing.T) {
	x := newMem(t)
	keys := []string{"\x00", "\x00\x00", "\x00\xff", "a", "a\x00", "a\x00\x00", "a\x00\x01", "a\x01", "a\xff", "a\xff\xff", "b", "\xff", "\xff\x00", "\xff\xff"}
	shuffled := slices.Clone(keys)
	slices.Reverse(shuffled)
	for _, k := range shuffled {
		x.put(k, "v:"+k)
	}
	resp := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	if got := keysOf(resp.Kvs); !slices.Equal(got, keys) {
		t.Fatalf("all keys %q, want %q", got, keys)
	}
	// Prefix "a" (end "b") and single keys that are prefixes of others.
	resp = x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("b")})
	if got := keysOf(resp.Kvs); !slices.Equal(got, keys[3:10]) {
		t.Fatalf("prefix a: %q", got)
	}
	resp = x.rng(&pb.RangeRequest{Key: []byte("a\x00"), RangeEnd: []byte("a\x01")})
	if got := keysOf(resp.Kvs); !slices.Equal(got, []string{"a\x00", "a\x00\x00", "a\x00\x01"}) {
		t.Fatalf("prefix a\\x00: %q", got)
	}
	for _, k := range keys {
		if got := x.get(k, 0); got == nil || string(got.Value) != "v:"+k {
			t.Fatalf("get %q: %v", k, got)
		}
	}
	// Overwrite one key many times: neighbours are unaffected.
	for i := range 10 {
		x.put("a\x00", fmt.Sprint(i))
	}
	resp = x.rng(&pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("a\x01")})
	if got := keysOf(resp.Kvs); !slices.Equal(got, []string{"a", "a\x00", "a\x00\x00", "a\x00\x01"}) || resp.Kvs[1].Version != 11 {
		t.Fatalf("after overwrites: %v", resp.Kvs)
	}
}

func TestPutOptionsAndLeases(t *testing.T) {
	x := newMem(t)
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(1, 10); err != nil {
			t.Fatal(err)
		}
		if err := b.LeaseGrant(2, 20); err != nil {
			t.Fatal(err)
		}
		wantErr(t, "grant twice", b.LeaseGrant(1, 5), storage.ErrLeaseExists)
	})
	x.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), Lease: 1}) // rev 2
	eqKV(t, "with lease", x.get("k", 0), kv("k", "v", 2, 2, 1, 1))
	if li, ok := x.s.Lease(1); !ok || li.TTL != 10 || len(li.Keys) != 1 || string(li.Keys[0]) != "k" {
		t.Fatalf("lease 1: %+v %v", li, ok)
	}

	r := x.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), IgnoreLease: true, PrevKv: true}) // rev 3
	eqKV(t, "ignore_lease prev", r.PrevKv, kv("k", "v", 2, 2, 1, 1))
	eqKV(t, "ignore_lease", x.get("k", 0), kv("k", "v2", 2, 3, 2, 1))

	x.putReq(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true, Lease: 2}) // rev 4: moves to lease 2
	eqKV(t, "ignore_value", x.get("k", 0), kv("k", "v2", 2, 4, 3, 2))
	if li, _ := x.s.Lease(1); len(li.Keys) != 0 {
		t.Fatalf("lease 1 still has keys: %q", li.Keys)
	}
	if li, _ := x.s.Lease(2); len(li.Keys) != 1 {
		t.Fatalf("lease 2 keys: %q", li.Keys)
	}
	x.put("k", "v3") // rev 5: plain put detaches
	if li, _ := x.s.Lease(2); len(li.Keys) != 0 {
		t.Fatalf("lease 2 still has keys after plain put: %q", li.Keys)
	}

	// Failures write nothing and create no revision.
	x.apply(func(b *storage.Batch) {
		_, err := b.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("x"), Lease: 99})
		wantErr(t, "unknown lease", err, storage.ErrLeaseNotFound)
		_, err = b.Put(&pb.PutRequest{Key: []byte("missing"), IgnoreValue: true})
		wantErr(t, "ignore_value on missing key", err, storage.ErrKeyNotFound)
		_, err = b.Put(&pb.PutRequest{Key: []byte("missing"), Value: []byte("x"), IgnoreLease: true})
		wantErr(t, "ignore_lease on missing key", err, storage.ErrKeyNotFound)
		if len(b.Events()) != 0 {
			t.Fatalf("failed puts produced events: %v", b.Events())
		}
	})
	if x.s.Rev() != 5 {
		t.Fatalf("rev %d after failed puts, want 5", x.s.Rev())
	}
	eqKV(t, "unchanged", x.get("k", 0), kv("k", "v3", 2, 5, 4, 0))

	// Attach, detach and revoke in one batch; revoke deletes in one revision.
	var ev []storage.RevisionEvents
	ev = x.apply(func(b *storage.Batch) {
		for _, k := range []string{"z", "y", "x"} {
			if _, err := b.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(k), Lease: 1}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.Put(&pb.PutRequest{Key: []byte("y"), Value: []byte("y2"), Lease: 2}); err != nil {
			t.Fatal(err)
		}
		if err := b.LeaseRevoke(1); err != nil {
			t.Fatal(err)
		}
		wantErr(t, "revoke twice", b.LeaseRevoke(1), storage.ErrLeaseNotFound)
		wantErr(t, "put on revoked lease", func() error {
			_, err := b.Put(&pb.PutRequest{Key: []byte("w"), Lease: 1})
			return err
		}(), storage.ErrLeaseNotFound)
	})
	// revs 6,7,8 (z,y,x), 9 (y -> lease 2), 10 (revoke: x, z in key order).
	if len(ev) != 5 || ev[4].Revision != 10 || len(ev[4].Events) != 2 {
		t.Fatalf("events: %v", ev)
	}
	for i, k := range []string{"x", "z"} {
		e := ev[4].Events[i]
		if e.Type != mvccpb.Event_DELETE || string(e.Kv.Key) != k || e.Kv.ModRevision != 10 || e.PrevKv == nil || e.PrevKv.Lease != 1 {
			t.Fatalf("revoke event %d: %v", i, e)
		}
	}
	if _, ok := x.s.Lease(1); ok {
		t.Fatal("lease 1 survived revoke")
	}
	if x.get("x", 0) != nil || x.get("z", 0) != nil || x.get("y", 0) == nil {
		t.Fatal("revoke deleted the wrong keys")
	}
	leases := x.s.Leases()
	if len(leases) != 1 || leases[0].ID != 2 || leases[0].TTL != 20 || len(leases[0].Keys) != 1 || string(leases[0].Keys[0]) != "y" {
		t.Fatalf("leases: %+v", leases)
	}
	// Revoking a lease without keys creates no revision.
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(3, 1); err != nil {
			t.Fatal(err)
		}
		if err := b.LeaseRevoke(3); err != nil {
			t.Fatal(err)
		}
	})
	if x.s.Rev() != 10 {
		t.Fatalf("rev %d after empty revoke", x.s.Rev())
	}
	// Deleting a key detaches it.
	x.del("y", "")
	if li, _ := x.s.Lease(2); len(li.Keys) != 0 {
		t.Fatalf("lease 2 keys after delete: %q", li.Keys)
	}
	x.apply(func(b *storage.Batch) {
		wantErr(t, "grant id 0", b.LeaseGrant(0, 5), storage.ErrLeaseNotFound)
	})
}

func TestDeleteRange(t *testing.T) {
	x := newMem(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		x.put(k, k) // revs 2..5
	}
	d := x.del("b", "d") // rev 6
	if d.Deleted != 2 || d.Header.Revision != 6 {
		t.Fatalf("range delete: %v", d)
	}
	eqKVs(t, "prev kvs", d.PrevKvs, kv("b", "b", 3, 3, 1, 0), kv("c", "c", 4, 4, 1, 0))
	ev := x.apply(func(b *storage.Batch) {
		r, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}})
		if err != nil || r.Deleted != 2 || r.Header.Revision != 7 || r.PrevKvs != nil {
			t.Fatalf("delete from a: %v %v", r, err)
		}
	})
	if len(ev) != 1 || ev[0].Revision != 7 || len(ev[0].Events) != 2 ||
		string(ev[0].Events[0].Kv.Key) != "a" || string(ev[0].Events[1].Kv.Key) != "d" {
		t.Fatalf("events: %v", ev)
	}
	if resp := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); resp.Count != 0 {
		t.Fatalf("keys left: %v", resp.Kvs)
	}
	eqKVs(t, "history", x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 6}).Kvs,
		kv("a", "a", 2, 2, 1, 0), kv("d", "d", 5, 5, 1, 0))
}

func TestTxnCompares(t *testing.T) {
	x := newMem(t)
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(7, 10); err != nil {
			t.Fatal(err)
		}
	})
	x.put("k", "m")                                                          // rev 2
	x.putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("m"), Lease: 7}) // rev 3: k create 2 mod 3 ver 2 lease 7
	x.put("r1", "x")                                                         // rev 4
	x.put("r2", "x")                                                         // rev 5
	x.put("r3", "y")                                                         // rev 6
	type C = pb.Compare
	val := func(k string, res pb.Compare_CompareResult, v string) *C {
		return &C{Key: []byte(k), Target: pb.Compare_VALUE, Result: res, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
	}
	create := func(k string, res pb.Compare_CompareResult, v int64) *C {
		return &C{Key: []byte(k), Target: pb.Compare_CREATE, Result: res, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: v}}
	}
	mod := func(k string, res pb.Compare_CompareResult, v int64) *C {
		return &C{Key: []byte(k), Target: pb.Compare_MOD, Result: res, TargetUnion: &pb.Compare_ModRevision{ModRevision: v}}
	}
	lease := func(k string, res pb.Compare_CompareResult, v int64) *C {
		return &C{Key: []byte(k), Target: pb.Compare_LEASE, Result: res, TargetUnion: &pb.Compare_Lease{Lease: v}}
	}
	ranged := func(c *C, end string) *C { c.RangeEnd = []byte(end); return c }
	EQ, NE, GT, LT := pb.Compare_EQUAL, pb.Compare_NOT_EQUAL, pb.Compare_GREATER, pb.Compare_LESS
	cases := []struct {
		c    *C
		want bool
	}{
		{val("k", EQ, "m"), true}, {val("k", EQ, "n"), false}, {val("k", NE, "n"), true}, {val("k", NE, "m"), false},
		{val("k", GT, "l"), true}, {val("k", GT, "m"), false}, {val("k", LT, "n"), true}, {val("k", LT, "m"), false},
		{cmpVersion("k", EQ, 2), true}, {cmpVersion("k", EQ, 1), false}, {cmpVersion("k", NE, 1), true}, {cmpVersion("k", GT, 1), true},
		{cmpVersion("k", GT, 2), false}, {cmpVersion("k", LT, 3), true}, {cmpVersion("k", LT, 2), false},
		{create("k", EQ, 2), true}, {create("k", NE, 2), false}, {create("k", GT, 1), true}, {create("k", LT, 2), false},
		{mod("k", EQ, 3), true}, {mod("k", NE, 3), false}, {mod("k", GT, 3), false}, {mod("k", LT, 4), true},
		{lease("k", EQ, 7), true}, {lease("k", NE, 7), false}, {lease("k", GT, 6), true}, {lease("k", LT, 7), false},
		// Missing key: VALUE always fails; others compare against zero.
		{val("zz", EQ, ""), false}, {val("zz", NE, "x"), false}, {val("zz", LT, "x"), false},
		{cmpVersion("zz", EQ, 0), true}, {cmpVersion("zz", LT, 1), true}, {cmpVersion("zz", GT, 0), false},
		{create("zz", EQ, 0), true}, {mod("zz", NE, 0), false}, {lease("zz", EQ, 0), true},
		// Range compares: every key must satisfy.
		{ranged(val("r1", EQ, "x"), "r3"), true}, {ranged(val("r1", EQ, "x"), "r4"), false},
		{ranged(cmpVersion("r", GT, 0), "s"), true}, {ranged(mod("r", LT, 6), "s"), false}, {ranged(mod("r", LT, 7), "s"), true},
		{ranged(create("r", GT, 3), "\x00"), true}, {ranged(create("\x00", GT, 3), "\x00"), false},
		{ranged(val("s", EQ, "x"), "t"), false}, {ranged(cmpVersion("s", EQ, 0), "t"), true},
		// A missing value operand compares against the empty value.
		{&C{Key: []byte("k"), Target: pb.Compare_VALUE, Result: GT}, true},
	}
	for i, tc := range cases {
		resp := x.txn(&pb.TxnRequest{Compare: []*C{tc.c}, Success: []*pb.RequestOp{opGet("k", "")}, Failure: []*pb.RequestOp{opGet("r1", "")}})
		if resp.Succeeded != tc.want {
			t.Fatalf("case %d %v: succeeded %v, want %v", i, tc.c, resp.Succeeded, tc.want)
		}
		if resp.Header.Revision != 6 {
			t.Fatalf("case %d: read-only txn header %d", i, resp.Header.Revision)
		}
		got := resp.Responses[0].GetResponseRange().Kvs[0].Key
		if want := map[bool]string{true: "k", false: "r1"}[tc.want]; string(got) != want {
			t.Fatalf("case %d: ran the wrong branch (%q)", i, got)
		}
	}
	// All compares must hold.
	resp := x.txn(&pb.TxnRequest{Compare: []*C{val("k", EQ, "m"), cmpVersion("k", EQ, 5)}})
	if resp.Succeeded {
		t.Fatal("conjunction with a false compare succeeded")
	}
	if x.s.Rev() != 6 {
		t.Fatalf("read-only txns changed the revision to %d", x.s.Rev())
	}
}

func TestTxnNestedOwnWritesAndHeaders(t *testing.T) {
	x := newMem(t)
	x.put("a", "1") // rev 2
	var ev []storage.RevisionEvents
	var resp *pb.TxnResponse
	ev = x.apply(func(b *storage.Batch) {
		var err error
		resp, err = b.Txn(&pb.TxnRequest{
			Compare: []*pb.Compare{cmpVersion("a", pb.Compare_EQUAL, 1)},
			Success: []*pb.RequestOp{
				opGet("a", ""),
				opPut("b", "2"),
				opGet("b", ""),
				opTxn(&pb.TxnRequest{
					// Evaluated against the state before the outer txn: b does not exist yet.
					Compare: []*pb.Compare{cmpVersion("b", pb.Compare_EQUAL, 0)},
					Success: []*pb.RequestOp{opPut("c", "3"), opGet("a", "d")},
					Failure: []*pb.RequestOp{opPut("wrong", "branch")},
				}),
				opDel("a", ""),
				opPut("b", "22"),
				opGet("\x00", "\x00"),
			},
			Failure: []*pb.RequestOp{opPut("wrong", "branch")},
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	if !resp.Succeeded || resp.Header.Revision != 3 || x.s.Rev() != 3 {
		t.Fatalf("txn: succeeded %v header %d rev %d", resp.Succeeded, resp.Header.Revision, x.s.Rev())
	}
	rs := resp.Responses
	if h := rs[0].GetResponseRange().Header.Revision; h != 2 {
		t.Fatalf("range before any write: header %d, want 2", h)
	}
	if h := rs[1].GetResponsePut().Header.Revision; h != 3 {
		t.Fatalf("put header %d", h)
	}
	got := rs[2].GetResponseRange()
	eqKVs(t, "txn sees own put", got.Kvs, kv("b", "2", 3, 3, 1, 0))
	if got.Header.Revision != 3 {
		t.Fatalf("range after write: header %d, want 3", got.Header.Revision)
	}
	nested := rs[3].GetResponseTxn()
	if !nested.Succeeded || nested.Header.Revision != 0 {
		t.Fatalf("nested txn: succeeded %v header %v", nested.Succeeded, nested.Header)
	}
	eqKVs(t, "nested range", nested.Responses[1].GetResponseRange().Kvs,
		kv("a", "1", 2, 2, 1, 0), kv("b", "2", 3, 3, 1, 0), kv("c", "3", 3, 3, 1, 0))
	if d := rs[4].GetResponseDeleteRange(); d.Deleted != 1 || d.Header.Revision != 3 {
		t.Fatalf("delete in txn: %v", d)
	}
	eqKVs(t, "final range in txn", rs[6].GetResponseRange().Kvs, kv("b", "22", 3, 3, 2, 0), kv("c", "3", 3, 3, 1, 0))
	if x.get("wrong", 0) != nil {
		t.Fatal("failure branch executed")
	}
	// One revision, sub revisions in execution order.
	if len(ev) != 1 || ev[0].Revision != 3 || len(ev[0].Events) != 4 {
		t.Fatalf("events: %v", ev)
	}
	want := []struct {
		typ  mvccpb.Event_EventType
		key  string
		prev string
	}{{mvccpb.Event_PUT, "b", ""}, {mvccpb.Event_PUT, "c", ""}, {mvccpb.Event_DELETE, "a", "1"}, {mvccpb.Event_PUT, "b", ""}}
	for i, w := range want {
		e := ev[0].Events[i]
		if e.Type != w.typ || string(e.Kv.Key) != w.key || e.Kv.ModRevision != 3 {
			t.Fatalf("event %d: %v", i, e)
		}
		if (w.prev == "") != (e.PrevKv == nil) || (e.PrevKv != nil && string(e.PrevKv.Value) != w.prev) {
			t.Fatalf("event %d prev: %v", i, e.PrevKv)
		}
	}
	// The second put of b in the same revision is version 2 whose previous
	// version (at revision 2) did not exist: etcd reports no prev_kv.
	if ev[0].Events[3].Kv.Version != 2 {
		t.Fatalf("second put version %d", ev[0].Events[3].Kv.Version)
	}
}

func TestTxnFailuresWriteNothing(t *testing.T) {
	x := newMem(t)
	x.put("a", "1") // 2
	x.put("b", "1") // 3
	before := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	cases := []struct {
		name string
		req  *pb.TxnRequest
		err  error
	}{
		{"unknown lease after a put", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "9"), opPutReq(&pb.PutRequest{Key: []byte("c"), Lease: 42})}}, storage.ErrLeaseNotFound},
		{"ignore_value after delete in same txn", &pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opPutReq(&pb.PutRequest{Key: []byte("a"), IgnoreValue: true})}}, storage.ErrKeyNotFound},
		{"ignore_lease on missing key", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "9"), opPutReq(&pb.PutRequest{Key: []byte("zz"), IgnoreLease: true})}}, storage.ErrKeyNotFound},
		// etcd validates ignore_* against the state before the txn.
		{"ignore_value on key created earlier in the txn", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("n", "1"), opPutReq(&pb.PutRequest{Key: []byte("n"), IgnoreValue: true})}}, storage.ErrKeyNotFound},
		{"future revision range", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "9"), opGetReq(&pb.RangeRequest{Key: []byte("a"), Revision: 4})}}, storage.ErrFutureRev},
		{"nested failure", &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "9"), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("b", ""), opPutReq(&pb.PutRequest{Key: []byte("x"), Lease: 5})}})}}, storage.ErrLeaseNotFound},
		{"failure branch checked", &pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("a", pb.Compare_EQUAL, 9)}, Failure: []*pb.RequestOp{opPut("b", "2"), opPutReq(&pb.PutRequest{Key: []byte("y"), Lease: 5})}}, storage.ErrLeaseNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x.apply(func(b *storage.Batch) {
				_, err := b.Txn(tc.req)
				wantErr(t, tc.name, err, tc.err)
				if len(b.Events()) != 0 {
					t.Fatalf("failed txn produced events")
				}
			})
			if x.s.Rev() != 3 {
				t.Fatalf("rev %d", x.s.Rev())
			}
			after := x.rng(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
			eqKVs(t, "state", after.Kvs, before.Kvs...)
		})
	}
	// A txn on an invalid path still passes when the bad op is on the other branch.
	resp := x.txn(&pb.TxnRequest{Compare: []*pb.Compare{cmpVersion("a", pb.Compare_EQUAL, 1)},
		Success: []*pb.RequestOp{opPut("c", "1")}, Failure: []*pb.RequestOp{opPutReq(&pb.PutRequest{Key: []byte("y"), Lease: 5})}})
	if !resp.Succeeded || resp.Header.Revision != 4 {
		t.Fatalf("txn: %v", resp)
	}
	x.compact(3)
	x.apply(func(b *storage.Batch) {
		_, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opGetReq(&pb.RangeRequest{Key: []byte("a"), Revision: 2})}})
		wantErr(t, "compacted range in txn", err, storage.ErrCompacted)
	})
}

func TestReadTxn(t *testing.T) {
	x := newMem(t)
	x.put("a", "1")
	x.put("b", "2")
	resp, err := x.s.ReadTxn(&pb.TxnRequest{
		Compare: []*pb.Compare{cmpVersion("a", pb.Compare_GREATER, 0)},
		Success: []*pb.RequestOp{opGet("a", "c"), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opGetReq(&pb.RangeRequest{Key: []byte("a"), Revision: 2})}})},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Succeeded || resp.Header.Revision != 3 || len(resp.Responses[0].GetResponseRange().Kvs) != 2 {
		t.Fatalf("read txn: %v", resp)
	}
	eqKVs(t, "nested historic", resp.Responses[1].GetResponseTxn().Responses[0].GetResponseRange().Kvs, kv("a", "1", 2, 2, 1, 0))
	for _, bad := range []*pb.TxnRequest{
		{Success: []*pb.RequestOp{opPut("a", "1")}},
		{Failure: []*pb.RequestOp{opDel("a", "")}},
		{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("a", "2")}})}},
	} {
		_, err := x.s.ReadTxn(bad)
		wantErr(t, "write op in read txn", err, storage.ErrReadOnlyTxn)
	}
	_, err = x.s.ReadTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opGetReq(&pb.RangeRequest{Key: []byte("a"), Revision: 9})}})
	wantErr(t, "future", err, storage.ErrFutureRev)
}

func TestCompaction(t *testing.T) {
	x := newMem(t)
	x.put("a", "1") // 2
	x.put("b", "1") // 3
	x.put("a", "2") // 4
	x.del("b", "")  // 5
	x.put("c", "1") // 6
	x.put("a", "3") // 7
	x.del("c", "")  // 8
	x.put("d", "1") // 9
	all := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}
	before := map[int64]*pb.RangeResponse{}
	for rev := int64(1); rev <= 9; rev++ {
		q := proto.Clone(all).(*pb.RangeRequest)
		q.Revision = rev
		before[rev] = x.rng(q)
	}
	hist, err := x.s.RangeEvents(1, 0, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	if v, r := countRaw(x.s), int64(8); v[0] != r || v[1] != r {
		t.Fatalf("raw versions/index entries %v, want %d", v, r)
	}

	check := func(compactRev int64, wantRaw int64) {
		t.Helper()
		if x.s.CompactRev() != compactRev {
			t.Fatalf("compact rev %d", x.s.CompactRev())
		}
		for rev := int64(1); rev <= 9; rev++ {
			q := proto.Clone(all).(*pb.RangeRequest)
			q.Revision = rev
			resp, err := x.s.Range(q)
			if rev < compactRev {
				wantErr(t, fmt.Sprintf("read at %d", rev), err, storage.ErrCompacted)
				continue
			}
			if err != nil {
				t.Fatalf("read at %d: %v", rev, err)
			}
			eqKVs(t, fmt.Sprintf("read at %d", rev), resp.Kvs, before[rev].Kvs...)
		}
		if v := countRaw(x.s); v[0] != wantRaw || v[1] != wantRaw {
			t.Fatalf("after compact %d: raw versions/index entries %v, want %d", compactRev, v, wantRaw)
		}
		_, err := x.s.RangeEvents(compactRev-1, 0, []byte{0}, []byte{0})
		wantErr(t, "history below compact rev", err, storage.ErrCompacted)
		got, err := x.s.RangeEvents(compactRev, 0, []byte{0}, []byte{0})
		if err != nil {
			t.Fatal(err)
		}
		// Above the compact revision history is intact; at it, prev_kv is gone.
		var want []storage.RevisionEvents
		for _, re := range hist {
			if re.Revision >= compactRev {
				want = append(want, re)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("history from %d: %d revisions, want %d", compactRev, len(got), len(want))
		}
		for i := range got {
			if got[i].Revision != want[i].Revision || len(got[i].Events) != len(want[i].Events) {
				t.Fatalf("history %d: %v, want %v", i, got[i], want[i])
			}
			for j := range got[i].Events {
				w := proto.Clone(want[i].Events[j]).(*mvccpb.Event)
				if got[i].Revision == compactRev {
					w.PrevKv = nil
				}
				if !proto.Equal(got[i].Events[j], w) {
					t.Fatalf("event %d.%d: %v, want %v", i, j, got[i].Events[j], w)
				}
			}
		}
	}
	// compact(5): a@2 and b@3 go; the tombstone of b at exactly 5 stays.
	x.compact(5)
	check(5, 6)
	// compact(8): a@4, b's tombstone (< 8) and c@6 go; c's tombstone at 8 stays.
	x.compact(8)
	check(8, 3)

	x.apply(func(b *storage.Batch) {
		_, err := b.Compact(8)
		wantErr(t, "compact same", err, storage.ErrCompacted)
		_, err = b.Compact(7)
		wantErr(t, "compact lower", err, storage.ErrCompacted)
		_, err = b.Compact(10)
		wantErr(t, "compact future", err, storage.ErrFutureRev)
		resp, err := b.Compact(9)
		if err != nil || resp.Header.Revision != 9 {
			t.Fatalf("compact 9: %v %v", resp, err)
		}
		// Within the batch, reads see the new compact revision.
		_, err = b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opGetReq(&pb.RangeRequest{Key: []byte("a"), Revision: 8})}})
		wantErr(t, "read below compact in batch", err, storage.ErrCompacted)
	})
	// c's tombstone (8 < 9) is gone now.
	check(9, 2)
	eqKV(t, "a survives", x.get("a", 0), kv("a", "3", 2, 7, 3, 0))
	// A fresh store can be compacted at its first revision (as etcd's can).
	y := newMem(t)
	y.apply(func(b *storage.Batch) {
		_, err := b.Compact(2)
		wantErr(t, "compact 2 on empty", err, storage.ErrFutureRev)
		if _, err := b.Compact(1); err != nil {
			t.Fatal(err)
		}
	})
	if y.s.CompactRev() != 1 {
		t.Fatalf("compact rev %d", y.s.CompactRev())
	}
}

// countRaw counts the stored MVCC versions and revision index entries.
func countRaw(s *storage.Store) [2]int64 {
	var n [2]int64
	it, err := s.DB().NewIter(nil)
	if err != nil {
		panic(err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		switch it.Key()[0] {
		case 0x10:
			n[0]++
		case 0x11:
			n[1]++
		}
	}
	return n
}

func TestEventsAndRangeEvents(t *testing.T) {
	x := newMem(t)
	var all []storage.RevisionEvents
	all = append(all, x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(5, 30); err != nil {
			t.Fatal(err)
		}
		mustPut(t, b, &pb.PutRequest{Key: []byte("a"), Value: []byte("1")})
		mustPut(t, b, &pb.PutRequest{Key: []byte("a"), Value: []byte("2"), Lease: 5})
		if _, err := b.DeleteRange(&pb.DeleteRangeRequest{Key: []byte("nothing")}); err != nil {
			t.Fatal(err)
		}
		mustPut(t, b, &pb.PutRequest{Key: []byte("b\x00"), Value: []byte("x")})
	})...)
	all = append(all, x.apply(func(b *storage.Batch) {
		if _, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opDel("a", "b"), opPut("a", "3")}}); err != nil {
			t.Fatal(err)
		}
		if err := b.LeaseRevoke(5); err != nil { // a was re-put without lease: nothing to delete
			t.Fatal(err)
		}
		mustPut(t, b, &pb.PutRequest{Key: []byte("c"), Value: []byte("2")})
	})...)
	revs := make([]int64, len(all))
	for i, re := range all {
		revs[i] = re.Revision
	}
	if !slices.Equal(revs, []int64{2, 3, 4, 5, 6}) {
		t.Fatalf("event revisions %v", revs)
	}
	e := all[1].Events[0]
	if e.Type != mvccpb.Event_PUT || !proto.Equal(e.Kv, kv("a", "2", 2, 3, 2, 5)) || !proto.Equal(e.PrevKv, kv("a", "1", 2, 2, 1, 0)) {
		t.Fatalf("put event with prev: %v", e)
	}
	if all[0].Events[0].PrevKv != nil {
		t.Fatal("create event has prev_kv")
	}
	txnEv := all[3].Events
	if len(txnEv) != 3 || txnEv[1].Type != mvccpb.Event_DELETE || !proto.Equal(txnEv[1].Kv, &mvccpb.KeyValue{Key: []byte("a"), ModRevision: 5}) ||
		!proto.Equal(txnEv[1].PrevKv, kv("a", "2", 2, 3, 2, 5)) || !proto.Equal(txnEv[2].Kv, kv("a", "3", 5, 5, 1, 0)) || txnEv[2].PrevKv != nil {
		t.Fatalf("txn events: %v", txnEv)
	}
	got, err := x.s.RangeEvents(1, 100, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	eqHistory(t, "all history", got, all)

	filter := func(key, end string) []storage.RevisionEvents {
		m := func(k []byte) bool {
			switch {
			case end == "":
				return string(k) == key
			case end == "\x00":
				return string(k) >= key
			}
			return string(k) >= key && string(k) < end
		}
		var out []storage.RevisionEvents
		for _, re := range all {
			var evs []*mvccpb.Event
			for _, e := range re.Events {
				if m(e.Kv.Key) {
					evs = append(evs, e)
				}
			}
			if len(evs) > 0 {
				out = append(out, storage.RevisionEvents{Revision: re.Revision, Events: evs})
			}
		}
		return out
	}
	for _, r := range [][2]string{{"a", ""}, {"b", "\x00"}, {"b", "c"}, {"b\x00", ""}, {"a", "c"}, {"zz", ""}} {
		got, err := x.s.RangeEvents(1, 0, []byte(r[0]), []byte(r[1]))
		if err != nil {
			t.Fatal(err)
		}
		eqHistory(t, fmt.Sprintf("history %q-%q", r[0], r[1]), got, filter(r[0], r[1]))
	}
	got, err = x.s.RangeEvents(3, 4, []byte{0}, []byte{0})
	if err != nil {
		t.Fatal(err)
	}
	eqHistory(t, "window", got, all[1:3])
	if got, err := x.s.RangeEvents(7, 0, []byte{0}, []byte{0}); err != nil || len(got) != 0 {
		t.Fatalf("future window: %v %v", got, err)
	}
}

func mustPut(t *testing.T, b *storage.Batch, r *pb.PutRequest) {
	t.Helper()
	if _, err := b.Put(r); err != nil {
		t.Fatal(err)
	}
}

func eqHistory(t *testing.T, what string, got, want []storage.RevisionEvents) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d revisions, want %d\n got %v\nwant %v", what, len(got), len(want), got, want)
	}
	for i := range got {
		if got[i].Revision != want[i].Revision || len(got[i].Events) != len(want[i].Events) {
			t.Fatalf("%s: revision %d: %v, want %v", what, i, got[i], want[i])
		}
		for j := range got[i].Events {
			if !proto.Equal(got[i].Events[j], want[i].Events[j]) {
				t.Fatalf("%s: event %d.%d: %v, want %v", what, i, j, got[i].Events[j], want[i].Events[j])
			}
		}
	}
}

func TestUncommittedBatchInvisible(t *testing.T) {
	x := newMem(t)
	x.put("a", "1")
	raftKey := []byte{0x01, 'r', 'a', 'f', 't'}
	b := x.s.NewBatch()
	mustPut(t, b, &pb.PutRequest{Key: []byte("a"), Value: []byte("2")})
	mustPut(t, b, &pb.PutRequest{Key: []byte("n"), Value: []byte("new")})
	if err := b.Pebble().Set(raftKey, []byte("entry"), nil); err != nil {
		t.Fatal(err)
	}
	// The batch reads its own writes...
	resp, err := b.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opGet("a", "z")}})
	if err != nil {
		t.Fatal(err)
	}
	eqKVs(t, "batch view", resp.Responses[0].GetResponseRange().Kvs, kv("a", "2", 2, 3, 2, 0), kv("n", "new", 4, 4, 1, 0))
	// ...the store does not.
	if x.s.Rev() != 2 || x.get("n", 0) != nil || string(x.get("a", 0).Value) != "1" {
		t.Fatal("uncommitted writes visible")
	}
	if _, closer, err := x.s.DB().Get(raftKey); err == nil {
		closer.Close()
		t.Fatal("uncommitted raft write visible")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	wantErr(t, "commit after close", b.Commit(false), storage.ErrBatchDone)
	_, err = b.Put(&pb.PutRequest{Key: []byte("x")})
	wantErr(t, "put after close", err, storage.ErrBatchDone)
	if x.s.Rev() != 2 || x.get("n", 0) != nil {
		t.Fatal("discarded batch applied")
	}
	// The same writes committed: everything appears at once.
	b = x.s.NewBatch()
	mustPut(t, b, &pb.PutRequest{Key: []byte("n"), Value: []byte("new")})
	if err := b.Pebble().Set(raftKey, []byte("entry"), nil); err != nil {
		t.Fatal(err)
	}
	b.SetApplied(10, 2)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	if x.s.Rev() != 3 || x.get("n", 0) == nil {
		t.Fatal("committed batch not visible")
	}
	if i, tm := x.s.Applied(); i != 10 || tm != 2 {
		t.Fatalf("applied %d %d", i, tm)
	}
	v, closer, err := x.s.DB().Get(raftKey)
	if err != nil || string(v) != "entry" {
		t.Fatalf("raft key: %q %v", v, err)
	}
	closer.Close()
	wantErr(t, "commit twice", b.Commit(false), storage.ErrBatchDone)
}

func TestBatchConflict(t *testing.T) {
	x := newMem(t)
	b1 := x.s.NewBatch()
	b2 := x.s.NewBatch()
	raftOnly := x.s.NewBatch()
	mustPut(t, b1, &pb.PutRequest{Key: []byte("a"), Value: []byte("1")})
	mustPut(t, b2, &pb.PutRequest{Key: []byte("b"), Value: []byte("1")})
	if err := raftOnly.Pebble().Set([]byte{0x01, 1}, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	raftOnly.SetMeta([]byte("member"), []byte("m1"))
	if err := b1.Commit(false); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "second batch", b2.Commit(false), storage.ErrBatchConflict)
	if err := raftOnly.Commit(false); err != nil {
		t.Fatalf("raft-only batch: %v", err)
	}
	if x.s.Rev() != 2 || x.get("b", 0) != nil {
		t.Fatal("conflicting batch applied")
	}
	if v, err := x.s.Meta([]byte("member")); err != nil || string(v) != "m1" {
		t.Fatalf("meta %q %v", v, err)
	}
	if v, err := x.s.Meta([]byte("absent")); err != nil || v != nil {
		t.Fatalf("absent meta %q %v", v, err)
	}
	x.apply(func(b *storage.Batch) { b.SetMeta([]byte("member"), nil) })
	if v, _ := x.s.Meta([]byte("member")); v != nil {
		t.Fatal("meta not deleted")
	}
}

func TestAlarms(t *testing.T) {
	x := newMem(t)
	act := func(b *storage.Batch, a pb.AlarmRequest_AlarmAction, m uint64, typ pb.AlarmType) *pb.AlarmResponse {
		resp, err := b.Alarm(&pb.AlarmRequest{Action: a, MemberID: m, Alarm: typ})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	x.apply(func(b *storage.Batch) {
		if r := act(b, pb.AlarmRequest_ACTIVATE, 2, pb.AlarmType_NOSPACE); len(r.Alarms) != 1 || r.Alarms[0].MemberID != 2 {
			t.Fatalf("activate: %v", r)
		}
		if r := act(b, pb.AlarmRequest_ACTIVATE, 2, pb.AlarmType_NOSPACE); len(r.Alarms) != 1 {
			t.Fatalf("activate again returns the existing alarm: %v", r)
		}
		act(b, pb.AlarmRequest_ACTIVATE, 1, pb.AlarmType_CORRUPT)
		if r := act(b, pb.AlarmRequest_ACTIVATE, 1, pb.AlarmType_NONE); len(r.Alarms) != 0 {
			t.Fatalf("activate NONE: %v", r)
		}
		if r := act(b, pb.AlarmRequest_GET, 0, pb.AlarmType_NONE); len(r.Alarms) != 2 {
			t.Fatalf("get in batch: %v", r)
		}
		if len(x.s.Alarms()) != 0 {
			t.Fatal("uncommitted alarms visible")
		}
	})
	got := x.s.Alarms()
	if len(got) != 2 || got[0].MemberID != 1 || got[0].Alarm != pb.AlarmType_CORRUPT || got[1].Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarms %v", got)
	}
	x.apply(func(b *storage.Batch) {
		if r := act(b, pb.AlarmRequest_GET, 0, pb.AlarmType_NOSPACE); len(r.Alarms) != 1 || r.Alarms[0].MemberID != 2 {
			t.Fatalf("get NOSPACE: %v", r)
		}
		if r := act(b, pb.AlarmRequest_DEACTIVATE, 2, pb.AlarmType_NOSPACE); len(r.Alarms) != 1 {
			t.Fatalf("deactivate: %v", r)
		}
		if r := act(b, pb.AlarmRequest_DEACTIVATE, 2, pb.AlarmType_NOSPACE); len(r.Alarms) != 0 {
			t.Fatalf("deactivate inactive: %v", r)
		}
	})
	if got := x.s.Alarms(); len(got) != 1 || got[0].Alarm != pb.AlarmType_CORRUPT {
		t.Fatalf("alarms after deactivate %v", got)
	}
}

func TestHashKV(t *testing.T) {
	ops := func(x *h, last string) {
		x.put("a", "1")
		x.put("b", "2")
		x.put("a", "3")
		x.del("b", "")
		x.put("c", last)
	}
	x, y, z := newMem(t), newMem(t), newMem(t)
	ops(x, "4")
	ops(y, "4")
	ops(z, "5")
	hash := func(x *h, rev int64) uint32 {
		t.Helper()
		hv, hr, _, err := x.s.HashKV(rev)
		if err != nil {
			t.Fatal(err)
		}
		if rev != 0 && hr != rev {
			t.Fatalf("hash rev %d, want %d", hr, rev)
		}
		return hv
	}
	if hash(x, 0) != hash(y, 0) {
		t.Fatal("equal histories, different hashes")
	}
	if hash(x, 0) == hash(z, 0) {
		t.Fatal("different histories, equal hashes")
	}
	if hash(x, 5) != hash(z, 5) {
		t.Fatal("equal prefixes, different hashes at the shared revision")
	}
	h5 := hash(x, 5)
	x.put("d", "later")
	if hash(x, 5) != h5 {
		t.Fatal("hash of a past revision changed with new writes")
	}
	x.compact(4)
	y.compact(4)
	if hash(x, 6) != hash(y, 6) || hash(x, 4) == 0 {
		t.Fatal("equal histories after equal compactions, different hashes")
	}
	_, _, crev, err := x.s.HashKV(3)
	wantErr(t, "hash below compact", err, storage.ErrCompacted)
	if crev != 4 {
		t.Fatalf("compact rev %d", crev)
	}
	_, _, _, err = x.s.HashKV(100)
	wantErr(t, "future hash", err, storage.ErrFutureRev)
}

func TestClosed(t *testing.T) {
	x := newMem(t)
	x.put("a", "1")
	open := x.s.NewBatch()
	if err := x.s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := x.s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	_, err := x.s.Range(&pb.RangeRequest{Key: []byte("a")})
	wantErr(t, "range", err, storage.ErrClosed)
	_, err = x.s.ReadTxn(&pb.TxnRequest{})
	wantErr(t, "read txn", err, storage.ErrClosed)
	_, err = x.s.RangeEvents(1, 0, []byte("a"), nil)
	wantErr(t, "range events", err, storage.ErrClosed)
	_, _, _, err = x.s.HashKV(0)
	wantErr(t, "hash", err, storage.ErrClosed)
	_, err = x.s.Meta([]byte("m"))
	wantErr(t, "meta", err, storage.ErrClosed)
	_, err = open.Put(&pb.PutRequest{Key: []byte("a")})
	wantErr(t, "put on open batch", err, storage.ErrClosed)
	wantErr(t, "commit on open batch", open.Commit(true), storage.ErrClosed)
	if err := open.Close(); err != nil {
		t.Fatal(err)
	}
	b := x.s.NewBatch()
	_, err = b.Put(&pb.PutRequest{Key: []byte("a")})
	wantErr(t, "put on new batch", err, storage.ErrClosed)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "defragment", x.s.Defragment(t.Context()), storage.ErrClosed)
	if _, ok := x.s.Lease(1); ok {
		t.Fatal("lease after close")
	}
}

func TestStorageKeysAvoidRaftPrefix(t *testing.T) {
	x := newMem(t)
	x.apply(func(b *storage.Batch) {
		if err := b.LeaseGrant(1, 5); err != nil {
			t.Fatal(err)
		}
		mustPut(t, b, &pb.PutRequest{Key: []byte{0x01}, Value: []byte{0x01}, Lease: 1})
		mustPut(t, b, &pb.PutRequest{Key: []byte{0x00}, Value: []byte{0x00}})
		if _, err := b.Alarm(&pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 1, Alarm: pb.AlarmType_NOSPACE}); err != nil {
			t.Fatal(err)
		}
		b.SetApplied(1, 1)
		b.SetMeta([]byte{0x01}, []byte("m"))
	})
	x.del("\x00", "\x00")
	x.compact(3)
	it, err := x.s.DB().NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
		if k := it.Key(); k[0] < 0x10 || k[0] > 0x16 {
			t.Fatalf("storage key %x outside the storage prefixes", k)
		}
	}
	if n == 0 {
		t.Fatal("no keys")
	}
}

func TestSizeAndDefragment(t *testing.T) {
	x := newMem(t)
	big := strings.Repeat("x", 4096)
	for i := range 200 {
		x.put(fmt.Sprintf("k%03d", i%20), big)
	}
	x.compact(x.s.Rev())
	if err := x.s.Defragment(t.Context()); err != nil {
		t.Fatal(err)
	}
	total, inUse := x.s.Size()
	if total <= 0 || inUse <= 0 || inUse > total {
		t.Fatalf("size %d in use %d", total, inUse)
	}
	if resp := x.rng(&pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), CountOnly: true}); resp.Count != 20 {
		t.Fatalf("count after defragment %d", resp.Count)
	}
}

// TestHash: Hash covers what members replicate (history, compaction, leases, alarms) and nothing
// member-local (the applied raft index), and reports the revision it hashed.
func TestHash(t *testing.T) {
	build := func(ttl int64, applied uint64) *h {
		x := newMem(t)
		x.put("a", "1")
		x.put("a", "2")
		x.apply(func(b *storage.Batch) {
			if err := b.LeaseGrant(7, ttl); err != nil {
				t.Fatal(err)
			}
			b.SetApplied(applied, 1)
		})
		x.putReq(&pb.PutRequest{Key: []byte("l"), Value: []byte("v"), Lease: 7})
		return x
	}
	hash := func(x *h) (uint32, int64) {
		t.Helper()
		hv, rev, err := x.s.Hash()
		if err != nil {
			t.Fatal(err)
		}
		return hv, rev
	}
	x, y, z := build(60, 10), build(60, 99), build(61, 10)
	hx, rx := hash(x)
	if hy, _ := hash(y); hy != hx {
		t.Fatal("equal replicated state, different applied index: different hashes")
	}
	if rx != x.s.Rev() {
		t.Fatalf("hash revision %d, store at %d", rx, x.s.Rev())
	}
	if hz, _ := hash(z); hz == hx {
		t.Fatal("different lease TTLs, equal hashes")
	}
	x.apply(func(b *storage.Batch) {
		if _, err := b.Alarm(&pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, MemberID: 1, Alarm: pb.AlarmType_NOSPACE}); err != nil {
			t.Fatal(err)
		}
	})
	if ha, _ := hash(x); ha == hx {
		t.Fatal("an alarm did not change the hash")
	}
	y.compact(2)
	if hc, _ := hash(y); hc == hx {
		t.Fatal("a compaction did not change the hash")
	}
}
