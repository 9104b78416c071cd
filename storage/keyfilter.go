package storage

import (
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// keyFilter is an in-memory Bloom filter of the user keys that have a
// version in the store. A put reads the key's live version first (for its
// create revision, version and lease); for a key the filter has never seen
// that read is a seek through the memtables and every level that ends on
// another key, and it is skipped. etcd answers the same question from its
// in-memory tree index; the filter costs a fixed 1 MiB (up to ~800,000 keys
// at under 2% false positives; past that it only gets less useful) plus
// one scan of the key versions when the store opens.
//
// It may contain keys the store does not (deleted or never committed:
// those cost a seek, as before), never the reverse: every write of a
// version adds its key before the write can be read, and a restore, which
// rewrites the store, switches the filter off until it is rebuilt from the
// restored data. Bits are set atomically, so batches on several goroutines
// may add keys concurrently.
type keyFilter struct {
	seed  maphash.Seed
	words []atomic.Uint64
	mask  uint64 // bit count - 1 (a power of two)
}

const (
	keyFilterMinBits = 1 << 23
	keyFilterBitsPer = 10 // bits per key at open, when the store is already big
	keyFilterHashes  = 3
)

func newKeyFilter(keys int) *keyFilter {
	n := uint64(max(keyFilterMinBits, keys*keyFilterBitsPer))
	n = 1 << bits.Len64(n-1) // round up to a power of two
	return &keyFilter{seed: maphash.MakeSeed(), words: make([]atomic.Uint64, n/64), mask: n - 1}
}

// add records encKey, a kv key's prefix (prefixKV, escaped user key,
// terminator: what splitKVKey returns).
func (f *keyFilter) add(encKey []byte) {
	h1, h2 := f.hash(encKey)
	for i := range uint64(keyFilterHashes) {
		b := (h1 + i*h2) & f.mask
		f.words[b/64].Or(1 << (b % 64))
	}
}

// mayContain reports false only if encKey was never added.
func (f *keyFilter) mayContain(encKey []byte) bool {
	h1, h2 := f.hash(encKey)
	for i := range uint64(keyFilterHashes) {
		b := (h1 + i*h2) & f.mask
		if f.words[b/64].Load()&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func (f *keyFilter) hash(k []byte) (uint64, uint64) {
	h := maphash.Bytes(f.seed, k)
	return h, h>>32 | 1 // odd step: the probes of one key are distinct
}

// buildKeyFilter scans every kv version key of db into a new filter: one
// pass, or two when the store has more keys than the smallest filter is
// sized for. It also returns how many keys have a live version (the same
// scan serves etcd_debugging_mvcc_keys_total, which etcd counts when it
// rebuilds its index at start).
func buildKeyFilter(db *pebble.DB) (*keyFilter, int64, error) {
	f := newKeyFilter(0)
	n, live, err := fillKeyFilter(db, f)
	if err != nil || n <= keyFilterMinBits/keyFilterBitsPer {
		return f, live, err
	}
	f = newKeyFilter(n)
	_, live, err = fillKeyFilter(db, f)
	return f, live, err
}

// fillKeyFilter adds every key with a version in db to f and returns how
// many distinct keys it saw and how many of them are live (their newest
// version, the first one seen, is not a tombstone).
func fillKeyFilter(db *pebble.DB, f *keyFilter) (n int, live int64, err error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return 0, 0, err
	}
	var last []byte
	for ok := it.First(); ok; ok = it.Next() {
		enc, _, _, valid := splitKVKey(it.Key())
		if !valid {
			_ = it.Close()
			return 0, 0, fmt.Errorf("%w: bad kv key %q", errCorrupt, it.Key())
		}
		if n > 0 && string(enc) == string(last) {
			continue // another version of the same key
		}
		last = append(last[:0], enc...)
		f.add(enc)
		n++
		// A live version's value is at least 4 bytes (encodeKVValue), a
		// tombstone's 1: the length needs no value fetch.
		if lv := it.LazyValue(); lv.Len() > len(tombstoneValue) {
			live++
		}
	}
	return n, live, it.Close()
}

// rebuildKeyFilter replaces the filter with one built from the store's
// data; on failure the filter stays off (puts then always read).
func (s *Store) rebuildKeyFilter() {
	if err := s.enter(); err != nil {
		return
	}
	defer s.leave()
	f, live, err := buildKeyFilter(s.db)
	if err != nil {
		s.logger.Warn("key filter not rebuilt; puts read every key's previous version", "error", err)
		return
	}
	s.keys.Store(f)
	s.ops.keys.Store(live)
}

// appendKVKeyPrefix appends what splitKVKey returns as encKey for userKey.
func appendKVKeyPrefix(dst, userKey []byte) []byte {
	return appendEscaped(append(dst, prefixKV), userKey)
}
