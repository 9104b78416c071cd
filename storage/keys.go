package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Key prefixes. Every storage key starts with one of these bytes; none of
// them is 0x01, which consensus owns for the raft log (see Batch.Pebble).
const (
	prefixKV       = 0x10 // MVCC versions, ordered by user key then newest revision first
	prefixRev      = 0x11 // revision index: (main, sub) -> tombstone flag + user key
	prefixLease    = 0x12 // lease id -> ttl
	prefixLeaseKey = 0x13 // lease id + user key -> empty (keys attached to a lease)
	prefixState    = 0x14 // internal state: current rev, compact rev, applied index/term
	prefixAlarm    = 0x15 // member id + alarm type -> empty
	prefixMeta     = 0x16 // arbitrary metadata blobs (SetMeta/Meta)
)

// Internal state keys (prefixState + one byte).
var (
	stateKeyRev        = []byte{prefixState, 'r'}
	stateKeyCompactRev = []byte{prefixState, 'c'}
	stateKeyApplied    = []byte{prefixState, 'a'}
)

// Bounds of the two MVCC keyspaces; package-level so iterators can keep
// referring to them (pebble requires bounds to stay unmodified).
var (
	kvLower  = []byte{prefixKV}
	kvUpper  = []byte{prefixKV + 1}
	revLower = []byte{prefixRev}
	revUpper = []byte{prefixRev + 1}
)

// kvSuffixLen is the length of the version suffix after the escaped user key:
// terminator (2) + inverted main revision (8) + inverted sub revision (8).
const kvSuffixLen = 2 + 8 + 8

// Value flags of an MVCC version (first byte of the stored value) and of a
// revision index entry (first byte of its value).
const (
	flagPut       = 0x01
	flagTombstone = 0x02
)

var errCorrupt = errors.New("storage: corrupt stored data")

// appendEscaped appends the order-preserving escaped form of userKey
// (0x00 -> 0x00 0xFF) followed by the terminator 0x00 0x01. For any two keys
// a < b (bytewise), escaped(a)+terminator < escaped(b)+terminator, and no
// escaped key is a prefix of another's escaped form plus terminator, so a
// range scan over user keys is a scan over encoded keys.
func appendEscaped(dst, userKey []byte) []byte {
	for {
		i := indexByte0(userKey)
		if i < 0 {
			dst = append(dst, userKey...)
			break
		}
		dst = append(dst, userKey[:i+1]...)
		dst = append(dst, 0xFF)
		userKey = userKey[i+1:]
	}
	return append(dst, 0x00, 0x01)
}

// appendEscapedBound appends the escaped key without terminator: a lower or
// upper bound such that enc(k) >= bound iff k >= userKey.
func appendEscapedBound(dst, userKey []byte) []byte {
	dst = appendEscaped(dst, userKey)
	return dst[:len(dst)-2]
}

func indexByte0(b []byte) int { return bytes.IndexByte(b, 0) }

// unescape decodes an escaped user key up to and including its terminator.
// It returns the user key (appended to dst) and the number of input bytes
// consumed.
func unescape(dst, enc []byte) ([]byte, int, error) {
	i := 0
	for {
		j := bytes.IndexByte(enc[i:], 0)
		if j < 0 || i+j+1 >= len(enc) {
			return nil, 0, fmt.Errorf("%w: unterminated key", errCorrupt)
		}
		dst = append(dst, enc[i:i+j]...)
		i += j
		switch enc[i+1] {
		case 0xFF:
			dst = append(dst, 0)
			i += 2
		case 0x01:
			return dst, i + 2, nil
		default:
			return nil, 0, fmt.Errorf("%w: bad escape 0x00 0x%02x", errCorrupt, enc[i+1])
		}
	}
}

// encodeKVKey appends the storage key of version (main, sub) of userKey:
// prefixKV | escaped(userKey) 0x00 0x01 | ^main (8, BE) | ^sub (8, BE).
// Inverting the revisions orders a key's versions newest first, so the
// newest version <= R is the first entry >= (userKey, R).
func encodeKVKey(dst, userKey []byte, main, sub int64) []byte {
	dst = append(dst, prefixKV)
	dst = appendEscaped(dst, userKey)
	return appendRevInverted(dst, main, sub)
}

func appendRevInverted(dst []byte, main, sub int64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, ^uint64(main))
	return binary.BigEndian.AppendUint64(dst, ^uint64(sub))
}

// kvSeekKey appends the smallest storage key among the versions of userKey
// whose main revision is <= atRev.
func kvSeekKey(dst, userKey []byte, atRev int64) []byte {
	dst = append(dst, prefixKV)
	dst = appendEscaped(dst, userKey)
	return binary.BigEndian.AppendUint64(dst, ^uint64(atRev))
}

// decodeKVKey fully validates and decodes a version key.
func decodeKVKey(k []byte) (userKey []byte, main, sub int64, err error) {
	if len(k) < 1+kvSuffixLen || k[0] != prefixKV {
		return nil, 0, 0, fmt.Errorf("%w: bad kv key", errCorrupt)
	}
	uk, n, err := unescape(make([]byte, 0, len(k)-1-kvSuffixLen), k[1:])
	if err != nil {
		return nil, 0, 0, err
	}
	rest := k[1+n:]
	if len(rest) != 16 {
		return nil, 0, 0, fmt.Errorf("%w: bad kv key suffix length %d", errCorrupt, len(rest))
	}
	main = int64(^binary.BigEndian.Uint64(rest))
	sub = int64(^binary.BigEndian.Uint64(rest[8:]))
	if main <= 0 || sub < 0 {
		return nil, 0, 0, fmt.Errorf("%w: bad revision %d.%d", errCorrupt, main, sub)
	}
	return uk, main, sub, nil
}

// splitKVKey is the fast path used while iterating keys this package wrote:
// it returns the encoded user key including terminator (a prefix of k) and
// the revision, relying on the fixed-width suffix.
func splitKVKey(k []byte) (encKey []byte, main, sub int64, ok bool) {
	n := len(k) - 16
	if n < 3 || k[n-2] != 0 || k[n-1] != 1 {
		return nil, 0, 0, false
	}
	return k[:n], int64(^binary.BigEndian.Uint64(k[n:])), int64(^binary.BigEndian.Uint64(k[n+8:])), true
}

// version is a decoded MVCC version value.
type version struct {
	tombstone bool
	create    int64
	ver       int64
	lease     int64
	value     []byte // aliases the input of decodeKVValue
}

// encodeKVValue appends the stored form of a live version:
// flagPut | uvarint(create_revision) | uvarint(version) | varint(lease) | value.
// A tombstone is the single byte flagTombstone.
func encodeKVValue(dst []byte, create, ver, lease int64, value []byte) []byte {
	dst = append(dst, flagPut)
	dst = binary.AppendUvarint(dst, uint64(create))
	dst = binary.AppendUvarint(dst, uint64(ver))
	dst = binary.AppendVarint(dst, lease)
	return append(dst, value...)
}

var tombstoneValue = []byte{flagTombstone}

func decodeKVValue(v []byte) (version, error) {
	if len(v) == 0 {
		return version{}, fmt.Errorf("%w: empty kv value", errCorrupt)
	}
	switch v[0] {
	case flagTombstone:
		if len(v) != 1 {
			return version{}, fmt.Errorf("%w: tombstone with payload", errCorrupt)
		}
		return version{tombstone: true}, nil
	case flagPut:
	default:
		return version{}, fmt.Errorf("%w: bad kv value flag 0x%02x", errCorrupt, v[0])
	}
	p := v[1:]
	create, n := binary.Uvarint(p)
	if n <= 0 || create == 0 || create > 1<<62 {
		return version{}, fmt.Errorf("%w: bad create revision", errCorrupt)
	}
	p = p[n:]
	ver, n := binary.Uvarint(p)
	if n <= 0 || ver == 0 || ver > 1<<62 {
		return version{}, fmt.Errorf("%w: bad version", errCorrupt)
	}
	p = p[n:]
	lease, n := binary.Varint(p)
	if n <= 0 {
		return version{}, fmt.Errorf("%w: bad lease", errCorrupt)
	}
	p = p[n:]
	return version{create: int64(create), ver: int64(ver), lease: lease, value: p}, nil
}

// encodeRevKey appends prefixRev | main (8, BE) | sub (8, BE).
func encodeRevKey(dst []byte, main, sub int64) []byte {
	dst = append(dst, prefixRev)
	dst = binary.BigEndian.AppendUint64(dst, uint64(main))
	return binary.BigEndian.AppendUint64(dst, uint64(sub))
}

func decodeRevKey(k []byte) (main, sub int64, err error) {
	if len(k) != 17 || k[0] != prefixRev {
		return 0, 0, fmt.Errorf("%w: bad revision key", errCorrupt)
	}
	main = int64(binary.BigEndian.Uint64(k[1:]))
	sub = int64(binary.BigEndian.Uint64(k[9:]))
	if main <= 0 || sub < 0 {
		return 0, 0, fmt.Errorf("%w: bad revision %d.%d", errCorrupt, main, sub)
	}
	return main, sub, nil
}

// encodeRevValue appends flag (flagPut or flagTombstone) | user key.
func encodeRevValue(dst []byte, tombstone bool, userKey []byte) []byte {
	if tombstone {
		dst = append(dst, flagTombstone)
	} else {
		dst = append(dst, flagPut)
	}
	return append(dst, userKey...)
}

// decodeRevValue returns the user key (aliasing v) and the tombstone flag.
func decodeRevValue(v []byte) (userKey []byte, tombstone bool, err error) {
	if len(v) < 1 || (v[0] != flagPut && v[0] != flagTombstone) {
		return nil, false, fmt.Errorf("%w: bad revision value", errCorrupt)
	}
	return v[1:], v[0] == flagTombstone, nil
}

// Lease ids are signed; flipping the sign bit makes the big-endian encoding
// sort in numeric order.
func leaseIDBytes(dst []byte, id int64) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(id)^(1<<63))
}

func encodeLeaseKey(id int64) []byte {
	return leaseIDBytes([]byte{prefixLease}, id)
}

func decodeLeaseKey(k []byte) (int64, error) {
	if len(k) != 9 || k[0] != prefixLease {
		return 0, fmt.Errorf("%w: bad lease key", errCorrupt)
	}
	return int64(binary.BigEndian.Uint64(k[1:]) ^ (1 << 63)), nil
}

func encodeLeaseValue(ttl int64) []byte { return binary.AppendVarint(nil, ttl) }

func decodeLeaseValue(v []byte) (int64, error) {
	ttl, n := binary.Varint(v)
	if n <= 0 || n != len(v) {
		return 0, fmt.Errorf("%w: bad lease value", errCorrupt)
	}
	return ttl, nil
}

// encodeLeaseKeyKey appends prefixLeaseKey | id (8) | user key (raw: it is
// the last component, so no escaping is needed).
func encodeLeaseKeyKey(id int64, userKey []byte) []byte {
	dst := make([]byte, 0, 9+len(userKey))
	dst = append(dst, prefixLeaseKey)
	dst = leaseIDBytes(dst, id)
	return append(dst, userKey...)
}

func decodeLeaseKeyKey(k []byte) (id int64, userKey []byte, err error) {
	if len(k) < 9 || k[0] != prefixLeaseKey {
		return 0, nil, fmt.Errorf("%w: bad lease attachment key", errCorrupt)
	}
	return int64(binary.BigEndian.Uint64(k[1:]) ^ (1 << 63)), k[9:], nil
}

func encodeAlarmKey(member uint64, alarm int32) []byte {
	dst := make([]byte, 0, 13)
	dst = append(dst, prefixAlarm)
	dst = binary.BigEndian.AppendUint64(dst, member)
	return binary.BigEndian.AppendUint32(dst, uint32(alarm))
}

func decodeAlarmKey(k []byte) (member uint64, alarm int32, err error) {
	if len(k) != 13 || k[0] != prefixAlarm {
		return 0, 0, fmt.Errorf("%w: bad alarm key", errCorrupt)
	}
	return binary.BigEndian.Uint64(k[1:]), int32(binary.BigEndian.Uint32(k[9:])), nil
}

func encodeMetaKey(key []byte) []byte {
	return append([]byte{prefixMeta}, key...)
}

func encodeInt64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func decodeInt64(v []byte) (int64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: bad int64 value", errCorrupt)
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}

func encodeApplied(index, term uint64) []byte {
	dst := binary.BigEndian.AppendUint64(make([]byte, 0, 16), index)
	return binary.BigEndian.AppendUint64(dst, term)
}

func decodeApplied(v []byte) (index, term uint64, err error) {
	if len(v) != 16 {
		return 0, 0, fmt.Errorf("%w: bad applied value", errCorrupt)
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil
}
