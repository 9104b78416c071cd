package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// mvccReader reads MVCC versions through one pebble iterator. The iterator
// is a point-in-time view (of the DB, or of the DB plus an indexed batch), so
// everything one reader returns is consistent.
type mvccReader struct {
	it      *pebble.Iterator
	seekBuf []byte
	keyBuf  []byte
}

// found is one live version located by the reader. Its slices alias
// iterator memory and are valid until the iterator moves.
type found struct {
	encKey    []byte // escaped user key + terminator
	main, sub int64
	v         version
}

// get returns the newest version of userKey whose main revision is <= atRev,
// with ok=false when there is none or it is a tombstone.
func (r *mvccReader) get(userKey []byte, atRev int64) (f found, ok bool, err error) {
	r.seekBuf = kvSeekKey(r.seekBuf[:0], userKey, atRev)
	keyPrefix := r.seekBuf[:len(r.seekBuf)-8]
	if !r.it.SeekGE(r.seekBuf) {
		return found{}, false, r.it.Error()
	}
	k := r.it.Key()
	if !bytes.HasPrefix(k, keyPrefix) {
		return found{}, false, nil
	}
	return r.current(k)
}

// current decodes the entry the iterator is positioned at.
func (r *mvccReader) current(k []byte) (found, bool, error) {
	encKey, main, sub, ok := splitKVKey(k)
	if !ok {
		return found{}, false, fmt.Errorf("%w: bad kv key %q", errCorrupt, k)
	}
	val, err := r.it.ValueAndErr()
	if err != nil {
		return found{}, false, err
	}
	v, err := decodeKVValue(val)
	if err != nil {
		return found{}, false, err
	}
	if v.tombstone {
		return found{}, false, nil
	}
	return found{encKey: encKey, main: main, sub: sub, v: v}, true, nil
}

// rangeBounds returns the encoded bounds of the user key range [key, end);
// an empty end means "to the end of the keyspace".
func rangeBounds(key, end []byte) (lo, hi []byte) {
	lo = appendEscapedBound([]byte{prefixKV}, key)
	if len(end) == 0 {
		return lo, kvUpper
	}
	return lo, appendEscapedBound([]byte{prefixKV}, end)
}

// scan calls fn for every user key in [lo, hi) (encoded bounds) that has a
// live version at atRev, in key order, until fn returns false. Tombstoned
// keys are skipped. It costs one seek per key with versions above atRev and
// a few Next calls otherwise.
func (r *mvccReader) scan(lo, hi []byte, atRev int64, fn func(f *found) bool) error {
	it := r.it
	var f found // reused: fn must not retain it
	valid := it.SeekGE(lo)
	for valid {
		k := it.Key()
		if bytes.Compare(k, hi) >= 0 {
			break
		}
		encKey, main, _, ok := splitKVKey(k)
		if !ok {
			return fmt.Errorf("%w: bad kv key %q", errCorrupt, k)
		}
		if main > atRev {
			r.seekBuf = binary.BigEndian.AppendUint64(append(r.seekBuf[:0], encKey...), ^uint64(atRev))
			if valid = it.SeekGE(r.seekBuf); !valid {
				break
			}
			k = it.Key()
			if !bytes.HasPrefix(k, r.seekBuf[:len(encKey)]) {
				continue // no version <= atRev: examine the next user key
			}
		}
		var live bool
		var err error
		if f, live, err = r.current(k); err != nil {
			return err
		}
		if live && !fn(&f) {
			return nil
		}
		valid = r.nextUserKey(k)
	}
	return it.Error()
}

// nextUserKey moves from the current entry (whose key is k) to the first
// entry of the next user key: a few Next calls (most keys have few
// versions), then a seek past all versions of the current key.
func (r *mvccReader) nextUserKey(k []byte) bool {
	encKey, _, _, _ := splitKVKey(k)
	r.keyBuf = append(r.keyBuf[:0], encKey...)
	for range 3 {
		if !r.it.Next() {
			return false
		}
		if !bytes.HasPrefix(r.it.Key(), r.keyBuf) {
			return true
		}
	}
	// escaped key + 0x00 0x02 sorts after every version of this key and
	// before the next user key.
	r.keyBuf[len(r.keyBuf)-1] = 0x02
	return r.it.SeekGE(r.keyBuf)
}

// arena hands out KeyValues and byte slices from shared chunks so a large
// range makes a handful of allocations instead of three per key. Chunks
// start small (a point read allocates just what it needs) and double.
type arena struct {
	kvs    []mvccpb.KeyValue
	nextKV int
	buf    []byte
}

const maxArenaChunk = 64 << 10

func (a *arena) newKV() *mvccpb.KeyValue {
	if len(a.kvs) == 0 {
		a.nextKV = min(max(1, 2*a.nextKV), 256)
		a.kvs = make([]mvccpb.KeyValue, a.nextKV)
	}
	kv := &a.kvs[0]
	a.kvs = a.kvs[1:]
	return kv
}

// reserve makes room for n more bytes in the current chunk.
func (a *arena) reserve(n int) {
	if cap(a.buf)-len(a.buf) >= n {
		return
	}
	size := min(max(2*cap(a.buf), 256), maxArenaChunk)
	a.buf = make([]byte, 0, max(size, n))
}

func (a *arena) copyBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	if len(b) > maxArenaChunk/4 {
		return append([]byte(nil), b...)
	}
	a.reserve(len(b))
	start := len(a.buf)
	a.buf = append(a.buf, b...)
	return a.buf[start:len(a.buf):len(a.buf)]
}

// toKV materializes a found version. The user key is decoded from the
// escaped form. keysOnly is etcd's FastKeysOnly (keys_only unless sorted
// by value): etcd then reads the keys from its index, which holds no
// leases, so the KeyValues carry no lease either; concord does the same.
func (a *arena) toKV(f *found, keysOnly bool) (*mvccpb.KeyValue, error) {
	kv := a.newKV()
	n := len(f.encKey)
	if !keysOnly && len(f.v.value) <= maxArenaChunk/4 {
		n += len(f.v.value)
	}
	a.reserve(n)
	start := len(a.buf)
	uk, _, err := unescape(a.buf, f.encKey[1:])
	if err != nil {
		return nil, err
	}
	a.buf = uk
	kv.Key = a.buf[start:len(a.buf):len(a.buf)]
	kv.CreateRevision = f.v.create
	kv.ModRevision = f.main
	kv.Version = f.v.ver
	if !keysOnly {
		kv.Lease = f.v.lease
		kv.Value = a.copyBytes(f.v.value)
	}
	return kv, nil
}

// rangeResult mirrors etcd's mvcc.RangeResult.
type rangeResult struct {
	kvs   []*mvccpb.KeyValue
	count int64
	rev   int64
}

// rangeKeys mirrors etcd's storeTxnCommon.rangeKeys: curRev is the revision
// of the view (reads at rev 0 use it), compactRev the lowest readable
// revision. end is nil for a single key, empty non-nil for "every key >=
// key", otherwise the exclusive end. limit <= 0 means no limit; count is
// always the total number of live keys in the range.
func (r *mvccReader) rangeKeys(key, end []byte, curRev, compactRev, atRev, limit int64, countOnly, keysOnly bool) (*rangeResult, error) {
	res := &rangeResult{rev: curRev}
	var a arena
	var emit func(f *found) error
	if !countOnly {
		emit = func(f *found) error {
			kv, err := a.toKV(f, keysOnly)
			if err != nil {
				return err
			}
			res.kvs = append(res.kvs, kv)
			return nil
		}
	}
	count, err := r.visitRange(key, end, curRev, compactRev, atRev, limit, emit)
	if err != nil {
		return nil, err
	}
	res.count = count
	return res, nil
}

// visitRange counts the live keys of a range (rangeKeys' conventions) and
// calls emit, unless it is nil, for the first limit of them (all when
// limit <= 0), in key order. The found passed to emit is valid only
// during the call.
func (r *mvccReader) visitRange(key, end []byte, curRev, compactRev, atRev, limit int64, emit func(f *found) error) (count int64, err error) {
	rev, err := readRev(atRev, curRev, compactRev)
	if err != nil {
		return 0, err
	}
	if end == nil {
		f, ok, err := r.get(key, rev)
		if err != nil || !ok {
			return 0, err
		}
		if emit != nil {
			if err := emit(&f); err != nil {
				return 0, err
			}
		}
		return 1, nil
	}
	lo, hi := rangeBounds(key, end)
	scanErr := r.scan(lo, hi, rev, func(f *found) bool {
		count++
		if emit == nil || (limit > 0 && count > limit) {
			return true
		}
		err = emit(f)
		return err == nil
	})
	if err == nil {
		err = scanErr
	}
	if err != nil {
		return 0, err
	}
	return count, nil
}

// pointResponse is a single-key RangeResponse with everything it points to
// except the key and value bytes, allocated together.
type pointResponse struct {
	resp pb.RangeResponse
	hdr  pb.ResponseHeader
	kv   mvccpb.KeyValue
	kvs  [1]*mvccpb.KeyValue
}

// rangePoint serves a RangeRequest without RangeEnd, the most common read,
// with the semantics of rangeKeys + assembleRange and a few allocations
// instead of a dozen: one buffer for the iterator bounds and the seek key,
// one for the response structs, one for the key and value bytes. The caller
// has entered the store.
func (s *Store) rangePoint(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	// buf holds lo (encoded key + terminator), hi (lo with the terminator's
	// last byte raised: past every version of the key) and the seek key
	// (lo + inverted revision). Pebble requires the bounds to stay
	// unmodified while the iterator is open; nothing writes to buf after.
	n := 1 + len(r.Key) + bytes.Count(r.Key, []byte{0}) + 2
	buf := make([]byte, 0, 3*n+8)
	lo := appendEscaped(append(buf, prefixKV), r.Key)
	hi := append(lo[len(lo):len(lo)], lo...)
	hi[len(hi)-1] = 0x02
	seek := append(hi[len(hi):len(hi)], lo...)

	s.stateMu.RLock()
	curRev, compactRev := s.rev, s.compactRev
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	s.stateMu.RUnlock()
	if err != nil {
		return nil, err
	}
	defer it.Close()

	rev, err := readRev(r.Revision, curRev, compactRev)
	if err != nil {
		return nil, err
	}
	seek = binary.BigEndian.AppendUint64(seek, ^uint64(rev))
	pr := &pointResponse{}
	pr.hdr.Revision = curRev
	pr.resp.Header = &pr.hdr
	pr.resp.Kvs = pr.kvs[:0]
	if !it.SeekGE(seek) {
		return &pr.resp, it.Error() // no version at or below rev
	}
	rd := mvccReader{it: it}
	f, live, err := rd.current(it.Key())
	if err != nil {
		return nil, err
	}
	if !live {
		return &pr.resp, nil
	}
	pr.resp.Count = 1
	if r.CountOnly || !pointPassesFilters(&f, r) {
		return &pr.resp, nil
	}
	kv := &pr.kv
	size := len(f.encKey)
	if !r.KeysOnly {
		size += len(f.v.value)
	}
	b := make([]byte, 0, size)
	uk, _, err := unescape(b, f.encKey[1:])
	if err != nil {
		return nil, err
	}
	kv.Key = uk[:len(uk):len(uk)]
	if !r.KeysOnly && len(f.v.value) > 0 {
		kv.Value = append(uk[len(uk):len(uk)], f.v.value...)
	}
	kv.CreateRevision = f.v.create
	kv.ModRevision = f.main
	kv.Version = f.v.ver
	if !r.KeysOnly || r.SortTarget == pb.RangeRequest_VALUE { // see toKV
		kv.Lease = f.v.lease
	}
	pr.kvs[0] = kv
	pr.resp.Kvs = pr.kvs[:]
	return &pr.resp, nil
}

// pointPassesFilters applies filterRange's revision filters to one version.
func pointPassesFilters(f *found, r *pb.RangeRequest) bool {
	return (r.MaxModRevision == 0 || f.main <= r.MaxModRevision) &&
		(r.MinModRevision == 0 || f.main >= r.MinModRevision) &&
		(r.MaxCreateRevision == 0 || f.v.create <= r.MaxCreateRevision) &&
		(r.MinCreateRevision == 0 || f.v.create >= r.MinCreateRevision)
}

// mkGteRange mirrors etcd: a range end of "\x00" means "every key >= key",
// represented here as a non-nil empty slice distinct from nil (single key).
func mkGteRange(rangeEnd []byte) []byte {
	if len(rangeEnd) == 1 && rangeEnd[0] == 0 {
		return []byte{}
	}
	return rangeEnd
}

// normEnd converts a request's range end into rangeKeys' convention:
// nil = single key, empty non-nil = to the end, otherwise exclusive end.
func normEnd(rangeEnd []byte) []byte {
	if len(rangeEnd) == 0 {
		return nil
	}
	return mkGteRange(rangeEnd)
}

// executeRange mirrors etcd's txn.executeRange (with total count).
func executeRange(r *mvccReader, curRev, compactRev int64, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	keysOnly := req.KeysOnly && req.SortTarget != pb.RangeRequest_VALUE
	rr, err := r.rangeKeys(req.Key, normEnd(req.RangeEnd), curRev, compactRev, req.Revision, rangeLimit(req), req.CountOnly, keysOnly)
	if err != nil {
		return nil, err
	}
	return assembleRange(rr, req), nil
}

func assembleRange(rr *rangeResult, req *pb.RangeRequest) *pb.RangeResponse {
	filterRange(rr, req)
	sortRange(rr, req)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rr.rev}}
	if req.Limit > 0 && int64(len(rr.kvs)) > req.Limit {
		rr.kvs = rr.kvs[:req.Limit]
		resp.More = true
	}
	resp.Count = rr.count
	resp.Kvs = rr.kvs
	if resp.Kvs == nil {
		resp.Kvs = []*mvccpb.KeyValue{}
	}
	if req.KeysOnly {
		for _, kv := range resp.Kvs {
			kv.Value = nil
		}
	}
	return resp
}

// rangeLimit mirrors etcd: fetch one extra key to compute More; fetch
// everything when the result is re-sorted or filtered afterwards.
func rangeLimit(r *pb.RangeRequest) int64 {
	limit := r.Limit
	if !isDefaultOrdering(r.SortTarget, r.SortOrder) || hasRevisionFilters(r) {
		limit = 0
	}
	if limit > 0 && limit < math.MaxInt64 {
		limit++
	}
	return limit
}

// inKeyOrder reports whether r's result is in key order, the order ranges
// are read in, so that sortRange leaves it as it is.
func inKeyOrder(r *pb.RangeRequest) bool {
	return isDefaultOrdering(r.SortTarget, effectiveSortOrder(r))
}

// effectiveSortOrder mirrors etcd: a sort target other than the key without
// an order sorts ascending.
func effectiveSortOrder(r *pb.RangeRequest) pb.RangeRequest_SortOrder {
	if r.SortTarget != pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_NONE {
		return pb.RangeRequest_ASCEND
	}
	return r.SortOrder
}

func isDefaultOrdering(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) bool {
	return order == pb.RangeRequest_NONE || (target == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

func filterRange(rr *rangeResult, r *pb.RangeRequest) {
	if r.MaxModRevision != 0 {
		prune(rr, func(kv *mvccpb.KeyValue) bool { return kv.ModRevision > r.MaxModRevision })
	}
	if r.MinModRevision != 0 {
		prune(rr, func(kv *mvccpb.KeyValue) bool { return kv.ModRevision < r.MinModRevision })
	}
	if r.MaxCreateRevision != 0 {
		prune(rr, func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision > r.MaxCreateRevision })
	}
	if r.MinCreateRevision != 0 {
		prune(rr, func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision < r.MinCreateRevision })
	}
}

func prune(rr *rangeResult, drop func(*mvccpb.KeyValue) bool) {
	j := 0
	for _, kv := range rr.kvs {
		if !drop(kv) {
			rr.kvs[j] = kv
			j++
		}
	}
	rr.kvs = rr.kvs[:j]
}

// sortRange mirrors etcd's sortRangeResults, including its use of the
// (unstable) sort.Sort so ties come out in the same order as etcd's.
func sortRange(rr *rangeResult, r *pb.RangeRequest) {
	if inKeyOrder(r) {
		return
	}
	order := effectiveSortOrder(r)
	var less func(a, b *mvccpb.KeyValue) bool
	switch r.SortTarget {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version-b.Version < 0 }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision-b.CreateRevision < 0 }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision-b.ModRevision < 0 }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return // unknown targets are rejected by the gateway; leave key order
	}
	s := kvSorter{kvs: rr.kvs, less: less}
	switch order {
	case pb.RangeRequest_ASCEND:
		sort.Sort(s)
	case pb.RangeRequest_DESCEND:
		sort.Sort(sort.Reverse(s))
	}
}

type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }

// readRev is the revision a read asked for at atRev (0 or less: the
// current one) reads, or etcd's error for a future or compacted one.
func readRev(atRev, curRev, compactRev int64) (int64, error) {
	switch {
	case atRev > curRev:
		return 0, ErrFutureRev
	case atRev <= 0:
		return curRev, nil
	case atRev < compactRev:
		return 0, ErrCompacted
	}
	return atRev, nil
}
