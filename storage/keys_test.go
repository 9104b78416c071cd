package storage

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// Internal tests: the encodings are unexported, so their tests (and fuzz
// targets) live in package storage.

var tricky = [][]byte{
	{0x00}, {0x00, 0x00}, {0x00, 0x01}, {0x00, 0xff}, {0x01}, {0xff}, {0xff, 0x00}, {0xff, 0xff},
	[]byte("a"), []byte("a\x00"), []byte("a\x00\x00"), []byte("a\x00\x01"), []byte("a\x00b"), []byte("a\x01"),
	[]byte("a\xff"), []byte("ab"), []byte("abc"), []byte("b"), []byte("foo/bar"), []byte("foo\x00bar"),
}

func TestKVKeyRoundTrip(t *testing.T) {
	revs := [][2]int64{{1, 0}, {2, 0}, {2, 1}, {255, 7}, {1 << 40, 3}, {math.MaxInt64, math.MaxInt64}}
	for _, k := range tricky {
		for _, r := range revs {
			enc := encodeKVKey(nil, k, r[0], r[1])
			if enc[0] != prefixKV {
				t.Fatalf("prefix %x", enc[0])
			}
			uk, main, sub, err := decodeKVKey(enc)
			if err != nil {
				t.Fatalf("decode %q@%v: %v", k, r, err)
			}
			if !bytes.Equal(uk, k) || main != r[0] || sub != r[1] {
				t.Fatalf("round trip %q@%v = %q@%d.%d", k, r, uk, main, sub)
			}
			ek, m2, s2, ok := splitKVKey(enc)
			if !ok || m2 != r[0] || s2 != r[1] || !bytes.Equal(ek, enc[:len(enc)-16]) {
				t.Fatalf("splitKVKey %q@%v", k, r)
			}
		}
	}
}

// TestKVKeyOrder checks that encoded keys sort by (user key asc, main desc,
// sub desc), for keys containing 0x00 and 0xff.
func TestKVKeyOrder(t *testing.T) {
	type item struct {
		k         []byte
		main, sub int64
	}
	var items []item
	rng := rand.New(rand.NewPCG(1, 2))
	keys := slices.Clone(tricky)
	for range 200 {
		k := make([]byte, rng.IntN(5))
		for i := range k {
			k[i] = []byte{0x00, 0x01, 0x02, 0x7f, 0xfe, 0xff}[rng.IntN(6)]
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		for _, r := range [][2]int64{{1, 0}, {5, 0}, {5, 3}, {9, 1}} {
			items = append(items, item{k, r[0], r[1]})
		}
	}
	want := func(a, b item) int {
		if c := bytes.Compare(a.k, b.k); c != 0 {
			return c
		}
		if a.main != b.main {
			return -cmpInt64(a.main, b.main)
		}
		return -cmpInt64(a.sub, b.sub)
	}
	for i := 0; i < len(items); i++ {
		for j := 0; j < len(items); j += 7 {
			a, b := items[i], items[j]
			got := bytes.Compare(encodeKVKey(nil, a.k, a.main, a.sub), encodeKVKey(nil, b.k, b.main, b.sub))
			if got != want(a, b) {
				t.Fatalf("order(%q@%d.%d, %q@%d.%d) = %d, want %d", a.k, a.main, a.sub, b.k, b.main, b.sub, got, want(a, b))
			}
		}
	}
	// Range bounds: enc(k) is in [bound(lo), bound(hi)) iff lo <= k < hi.
	for _, k := range keys {
		enc := encodeKVKey(nil, k, 3, 0)
		for _, lo := range tricky {
			for _, hi := range tricky {
				l, h := rangeBounds(lo, hi)
				in := bytes.Compare(enc, l) >= 0 && bytes.Compare(enc, h) < 0
				want := bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0
				if in != want {
					t.Fatalf("key %q in [%q,%q): encoded %v, want %v", k, lo, hi, in, want)
				}
			}
		}
	}
	// The seek key for revision R lands on the newest version <= R.
	for _, k := range tricky {
		seek := kvSeekKey(nil, k, 5)
		if bytes.Compare(seek, encodeKVKey(nil, k, 6, 0)) <= 0 ||
			bytes.Compare(seek, encodeKVKey(nil, k, 5, math.MaxInt64)) > 0 {
			t.Fatalf("seek key for %q misplaced", k)
		}
	}
}

func TestKVValueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		create, ver, lease int64
		val                []byte
	}{
		{1, 1, 0, nil}, {2, 3, 0x1234, []byte("v")}, {1 << 50, 1 << 40, -5, []byte{0, 0xff, 0}}, {7, 1, math.MaxInt64, bytes.Repeat([]byte("x"), 1000)},
	} {
		enc := encodeKVValue(nil, tc.create, tc.ver, tc.lease, tc.val)
		v, err := decodeKVValue(enc)
		if err != nil {
			t.Fatal(err)
		}
		if v.tombstone || v.create != tc.create || v.ver != tc.ver || v.lease != tc.lease || !bytes.Equal(v.value, tc.val) {
			t.Fatalf("round trip %+v = %+v", tc, v)
		}
	}
	v, err := decodeKVValue(tombstoneValue)
	if err != nil || !v.tombstone {
		t.Fatalf("tombstone: %+v %v", v, err)
	}
	for _, bad := range [][]byte{nil, {}, {0x00}, {0x03}, {flagTombstone, 0}, {flagPut}, {flagPut, 0, 1, 0}, {flagPut, 1, 0, 0}, {flagPut, 1, 1}, {flagPut, 0x80}} {
		if _, err := decodeKVValue(bad); err == nil {
			t.Fatalf("decodeKVValue(%x) accepted malformed input", bad)
		}
	}
}

func TestOtherEncodings(t *testing.T) {
	for _, r := range [][2]int64{{1, 0}, {300, 2}, {math.MaxInt64, 9}} {
		main, sub, err := decodeRevKey(encodeRevKey(nil, r[0], r[1]))
		if err != nil || main != r[0] || sub != r[1] {
			t.Fatalf("rev key %v: %d %d %v", r, main, sub, err)
		}
	}
	if bytes.Compare(encodeRevKey(nil, 2, 5), encodeRevKey(nil, 3, 0)) >= 0 {
		t.Fatal("revision keys out of order")
	}
	for _, tomb := range []bool{false, true} {
		uk, tb, err := decodeRevValue(encodeRevValue(nil, tomb, []byte("k\x00")))
		if err != nil || tb != tomb || string(uk) != "k\x00" {
			t.Fatalf("rev value: %q %v %v", uk, tb, err)
		}
	}
	ids := []int64{math.MinInt64, -1, 1, 2, 1 << 40, math.MaxInt64}
	for i, id := range ids {
		got, err := decodeLeaseKey(encodeLeaseKey(id))
		if err != nil || got != id {
			t.Fatalf("lease key %d: %d %v", id, got, err)
		}
		if i > 0 && bytes.Compare(encodeLeaseKey(ids[i-1]), encodeLeaseKey(id)) >= 0 {
			t.Fatalf("lease keys out of order at %d", id)
		}
		gid, k, err := decodeLeaseKeyKey(encodeLeaseKeyKey(id, []byte("x\x00y")))
		if err != nil || gid != id || string(k) != "x\x00y" {
			t.Fatalf("lease attachment key %d: %d %q %v", id, gid, k, err)
		}
	}
	for _, ttl := range []int64{0, 1, 5, -3, math.MaxInt64} {
		got, err := decodeLeaseValue(encodeLeaseValue(ttl))
		if err != nil || got != ttl {
			t.Fatalf("lease value %d: %d %v", ttl, got, err)
		}
	}
	m, a, err := decodeAlarmKey(encodeAlarmKey(0xdeadbeef, 2))
	if err != nil || m != 0xdeadbeef || a != 2 {
		t.Fatalf("alarm key: %x %d %v", m, a, err)
	}
	i, tm, err := decodeApplied(encodeApplied(77, 3))
	if err != nil || i != 77 || tm != 3 {
		t.Fatalf("applied: %d %d %v", i, tm, err)
	}
	if v, err := decodeInt64(encodeInt64(-9)); err != nil || v != -9 {
		t.Fatalf("int64: %d %v", v, err)
	}
	if !bytes.Equal(prefixEnd([]byte{1, 2, 0xff}), []byte{1, 3}) || prefixEnd([]byte{0xff}) != nil {
		t.Fatal("prefixEnd")
	}
}

// checkKVKey is shared by the fuzz target and its seed test: any input
// either fails to decode or decodes to something that re-encodes to it.
func checkKVKey(t *testing.T, data []byte) {
	uk, main, sub, err := decodeKVKey(data)
	if err != nil {
		return
	}
	if re := encodeKVKey(nil, uk, main, sub); !bytes.Equal(re, data) {
		t.Fatalf("decodeKVKey(%x) = %q@%d.%d re-encodes to %x", data, uk, main, sub, re)
	}
}

func FuzzDecodeKVKey(f *testing.F) {
	for _, k := range tricky {
		f.Add(encodeKVKey(nil, k, 3, 1))
	}
	f.Add([]byte{prefixKV, 0x00})
	f.Add([]byte{prefixKV, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		checkKVKey(t, data)
		// splitKVKey must not panic on anything either.
		splitKVKey(data)
	})
}

func FuzzDecodeKVValue(f *testing.F) {
	f.Add(encodeKVValue(nil, 2, 1, 0, []byte("v")))
	f.Add(encodeKVValue(nil, 1<<40, 9, -4, nil))
	f.Add(tombstoneValue)
	f.Add([]byte{flagPut, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeKVValue(data)
		if err != nil {
			return
		}
		var re []byte
		if v.tombstone {
			re = tombstoneValue
		} else {
			re = encodeKVValue(nil, v.create, v.ver, v.lease, v.value)
		}
		// Varints have non-canonical encodings (e.g. padded 0x80 bytes), so
		// compare decoded forms rather than bytes.
		v2, err := decodeKVValue(re)
		if err != nil || v2.tombstone != v.tombstone || v2.create != v.create || v2.ver != v.ver ||
			v2.lease != v.lease || !bytes.Equal(v2.value, v.value) {
			t.Fatalf("decodeKVValue(%x) = %+v does not round-trip: %+v %v", data, v, v2, err)
		}
	})
}

func FuzzDecodeRevEntry(f *testing.F) {
	f.Add(encodeRevKey(nil, 5, 2), encodeRevValue(nil, true, []byte("k")))
	f.Add([]byte{prefixRev}, []byte{flagPut})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		if main, sub, err := decodeRevKey(k); err == nil {
			if re := encodeRevKey(nil, main, sub); !bytes.Equal(re, k) {
				t.Fatalf("decodeRevKey(%x) re-encodes to %x", k, re)
			}
		}
		if uk, tomb, err := decodeRevValue(v); err == nil {
			if re := encodeRevValue(nil, tomb, uk); !bytes.Equal(re, v) {
				t.Fatalf("decodeRevValue(%x) re-encodes to %x", v, re)
			}
		}
	})
}

func FuzzDecodeLeaseAndState(f *testing.F) {
	f.Add(encodeLeaseKey(7), encodeLeaseValue(30), encodeLeaseKeyKey(7, []byte("k")))
	f.Add(encodeAlarmKey(1, 1), encodeApplied(1, 2), encodeInt64(5))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		for _, in := range [][]byte{a, b, c} {
			if id, err := decodeLeaseKey(in); err == nil && !bytes.Equal(encodeLeaseKey(id), in) {
				t.Fatalf("lease key %x", in)
			}
			if ttl, err := decodeLeaseValue(in); err == nil {
				if got, err := decodeLeaseValue(encodeLeaseValue(ttl)); err != nil || got != ttl {
					t.Fatalf("lease value %x", in)
				}
			}
			if id, k, err := decodeLeaseKeyKey(in); err == nil && !bytes.Equal(encodeLeaseKeyKey(id, k), in) {
				t.Fatalf("lease attachment key %x", in)
			}
			if m, al, err := decodeAlarmKey(in); err == nil && !bytes.Equal(encodeAlarmKey(m, al), in) {
				t.Fatalf("alarm key %x", in)
			}
			if i, tm, err := decodeApplied(in); err == nil && !bytes.Equal(encodeApplied(i, tm), in) {
				t.Fatalf("applied %x", in)
			}
			if v, err := decodeInt64(in); err == nil && !bytes.Equal(encodeInt64(v), in) {
				t.Fatalf("int64 %x", in)
			}
		}
	})
}

func TestDecodeRejectsMalformedKeys(t *testing.T) {
	good := encodeKVKey(nil, []byte("a\x00b"), 4, 1)
	bad := [][]byte{
		nil, {prefixKV}, good[:len(good)-1], append(slices.Clone(good), 0),
		append([]byte{prefixRev}, good[1:]...),
		{prefixKV, 'a', 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		encodeKVKey(nil, []byte("a"), 0, 0),  // revision 0 never exists
		encodeKVKey(nil, []byte("a"), -1, 0), // negative
	}
	for _, k := range bad {
		if _, _, _, err := decodeKVKey(k); err == nil {
			t.Fatalf("decodeKVKey(%x) accepted malformed input", k)
		}
	}
	for _, k := range [][]byte{nil, {prefixRev}, encodeRevKey(nil, 0, 0), encodeRevKey(nil, 1, -1)[:16]} {
		if _, _, err := decodeRevKey(k); err == nil {
			t.Fatalf("decodeRevKey(%x) accepted malformed input", k)
		}
	}
	for _, v := range [][]byte{nil, {}, {0x09, 'k'}} {
		if _, _, err := decodeRevValue(v); err == nil {
			t.Fatalf("decodeRevValue(%x) accepted malformed input", v)
		}
	}
	for _, v := range [][]byte{nil, {0x80}, {0x02, 0x00}} {
		if _, err := decodeLeaseValue(v); err == nil {
			t.Fatalf("decodeLeaseValue(%x) accepted malformed input", v)
		}
	}
}
