package storage

import (
	"bytes"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/encoding/protowire"
)

// RangeWire serves r like Range, for a caller that only marshals the
// response to the protobuf binary format (a gRPC or Connect reply). A range
// of several keys in key order without revision filters, the shape of a
// large read, then comes back with its KeyValues already encoded, straight
// from the store's entries: the response's Kvs is empty and its unknown
// fields hold the encoded kvs entries (field 2), which proto.Marshal writes
// unchanged and every decoder reads as Kvs. That skips a KeyValue per key
// and protobuf's reflective encoding of each, which took about two fifths
// of the server's CPU for a range of thousands of keys.
//
// Anything that reads the response's Kvs must call Range instead. Other
// requests (single keys, count only, sorted or filtered) are served by
// Range.
func (s *Store) RangeWire(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return s.readRange(r, true)
}

// encodable reports whether RangeWire encodes r's KeyValues (a range of
// several keys is told apart by readRange): its result is every live key
// in key order up to its limit, with nothing to filter or sort after.
func encodable(r *pb.RangeRequest) bool {
	return !r.CountOnly && inKeyOrder(r) && !hasRevisionFilters(r)
}

// rangeEncoded serves an encodable range of several keys for RangeWire.
// The caller has entered the store.
func (s *Store) rangeEncoded(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	end := normEnd(r.RangeEnd)
	rd, rev, compactRev, its, err := s.rangeView(r.Key, end)
	if err != nil {
		return nil, err
	}
	defer closeAll(its)
	kvs := WireBuffer()
	count, err := rd.visitRange(r.Key, end, rev, compactRev, r.Revision, r.Limit, func(f *found) (err error) {
		kvs, err = appendKVField(kvs, f, r.KeysOnly)
		return err
	})
	if err != nil {
		putWireBuffer(kvs)
		return nil, err
	}
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rev}, Count: count, More: r.Limit > 0 && count > r.Limit}
	if len(kvs) > 0 {
		resp.ProtoReflect().SetUnknown(kvs)
	} else {
		putWireBuffer(kvs)
	}
	return resp, nil
}

// RecycleWire takes back the buffer of a response RangeWire encoded, for
// the next one: a caller that has marshaled the response and will not read
// it again calls it, and the response is left without its KeyValues.
// Without it the buffer is garbage like any other; with it a large range
// costs no allocation, and none of the page faults a fresh buffer of
// megabytes takes on its first write.
func RecycleWire(r *pb.RangeResponse) {
	if r == nil || len(r.Kvs) > 0 {
		return // not RangeWire's
	}
	m := r.ProtoReflect()
	if b := m.GetUnknown(); len(b) > 0 {
		m.SetUnknown(nil)
		putWireBuffer(b)
	}
}

// wireBuffers holds the buffers of recycled responses.
var wireBuffers sync.Pool

// maxWireBuffer bounds the buffers wireBuffers keeps, so one huge range
// does not pin its size in memory.
const maxWireBuffer = 8 << 20

// WireBuffer returns an empty buffer, one RecycleWire took back when there
// is one (nil otherwise): RangeWire encodes into it, and so does a caller
// that builds a response RecycleWire will take back (the kvs entries of a
// RangeResponse relayed from another process).
func WireBuffer() []byte {
	if b, ok := wireBuffers.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

func putWireBuffer(b []byte) {
	if cap(b) > 0 && cap(b) <= maxWireBuffer {
		wireBuffers.Put(&b)
	}
}

// appendKVField appends f as one kvs entry of a RangeResponse: the field's
// tag and length, then the mvccpb.KeyValue fields in field order, zero
// values omitted, as proto.Marshal writes them. keysOnly leaves out the
// value and the lease, as toKV does.
func appendKVField(dst []byte, f *found, keysOnly bool) ([]byte, error) {
	escaped := f.encKey[1 : len(f.encKey)-2] // prefix and terminator off
	keyLen := len(escaped) - bytes.Count(escaped, []byte{0})
	var value []byte
	var lease int64
	if !keysOnly {
		value, lease = f.v.value, f.v.lease
	}
	n := bytesFieldSize(keyLen) + varintFieldSize(f.v.create) + varintFieldSize(f.main) +
		varintFieldSize(f.v.ver) + bytesFieldSize(len(value)) + varintFieldSize(lease)
	if need := 1 + protowire.SizeVarint(uint64(n)) + n; cap(dst)-len(dst) < need {
		grown := make([]byte, len(dst), max(2*cap(dst), len(dst)+need, 4<<10))
		dst = grown[:copy(grown, dst)]
	}
	dst = protowire.AppendTag(dst, 2, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(n))
	if keyLen > 0 {
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(keyLen))
		var err error
		if dst, _, err = unescape(dst, f.encKey[1:]); err != nil {
			return nil, err
		}
	}
	dst = appendVarintField(dst, 2, f.v.create)
	dst = appendVarintField(dst, 3, f.main)
	dst = appendVarintField(dst, 4, f.v.ver)
	if len(value) > 0 {
		dst = protowire.AppendTag(dst, 5, protowire.BytesType)
		dst = protowire.AppendBytes(dst, value)
	}
	return appendVarintField(dst, 6, lease), nil
}

func bytesFieldSize(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(uint64(n)) + n
}

func varintFieldSize(v int64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(uint64(v))
}

func appendVarintField(dst []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return dst
	}
	return protowire.AppendVarint(protowire.AppendTag(dst, num, protowire.VarintType), uint64(v))
}
