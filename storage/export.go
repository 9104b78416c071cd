package storage

// History export and import: the store's content as a list of revisions
// (one entry per event, in revision order) plus leases, the shape of
// etcd's backend database, so a backup can be written in etcd's format and
// an etcd backup can become a store.
//
// An export reads a Snapshot, so it is point-in-time like the snapshot
// stream. An Import fills a store that holds nothing yet (a data directory
// being created by a restore) and commits in chunks: a failed import leaves
// a half-filled store that its caller throws away.

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// ErrBadHistory is wrapped by every error about imported history that a
// store could not have written: revisions out of order, versions that do
// not match their revision, a restore into a store that is not empty.
var ErrBadHistory = errors.New("storage: bad history")

// HistoryEntry is one event of the store's history: version (Main, Sub)
// of KV.Key. For a put KV carries every field (ModRevision is Main); for a
// tombstone only Key and ModRevision.
type HistoryEntry struct {
	Main, Sub int64
	Tombstone bool
	KV        *mvccpb.KeyValue
}

// CompactRev returns the compact revision of the snapshot (-1 if the store
// was never compacted).
func (sn *Snapshot) CompactRev() int64 { return sn.compactRev }

// historyChunk is how many versions History reads per visit to the store:
// fn runs between visits, so Store.Close never waits for a whole export.
const historyChunk = 1024

// History calls fn for every version the snapshot holds, in revision
// order (main, then sub), tombstones included, until fn fails. If the
// store closes meanwhile it fails with ErrClosed.
func (sn *Snapshot) History(fn func(HistoryEntry) error) error {
	from := encodeRevKey(nil, 0, 0)
	for {
		chunk, next, err := sn.historyChunk(from)
		if err != nil {
			return err
		}
		for _, e := range chunk {
			if err := fn(e); err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		from = next
	}
}

// historyChunk reads up to historyChunk versions from revision key from
// on, and the revision key to continue at (nil at the end).
func (sn *Snapshot) historyChunk(from []byte) (chunk []HistoryEntry, next []byte, err error) {
	if err := sn.s.enter(); err != nil {
		return nil, nil, err
	}
	defer sn.s.leave()
	if sn.snap == nil {
		return nil, nil, ErrClosed
	}
	revIt, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: revLower, UpperBound: revUpper})
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, revIt.Close()) }()
	kvIt, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, kvIt.Close()) }()
	var kvKey []byte
	for ok := revIt.SeekGE(from); ok; ok = revIt.Next() {
		main, sub, err := decodeRevKey(revIt.Key())
		if err != nil {
			return nil, nil, err
		}
		if len(chunk) == historyChunk {
			return chunk, encodeRevKey(nil, main, sub), nil
		}
		rv, err := revIt.ValueAndErr()
		if err != nil {
			return nil, nil, err
		}
		userKey, tomb, err := decodeRevValue(rv)
		if err != nil {
			return nil, nil, err
		}
		kvKey = encodeKVKey(kvKey[:0], userKey, main, sub)
		if !kvIt.SeekGE(kvKey) || !bytes.Equal(kvIt.Key(), kvKey) {
			if err := kvIt.Error(); err != nil {
				return nil, nil, err
			}
			return nil, nil, fmt.Errorf("%w: revision %d.%d of %q has no version", errCorrupt, main, sub, userKey)
		}
		val, err := kvIt.ValueAndErr()
		if err != nil {
			return nil, nil, err
		}
		v, err := decodeKVValue(val)
		if err != nil {
			return nil, nil, err
		}
		if v.tombstone != tomb {
			return nil, nil, fmt.Errorf("%w: revision %d.%d of %q: index and version disagree on the tombstone", errCorrupt, main, sub, userKey)
		}
		e := HistoryEntry{Main: main, Sub: sub, Tombstone: tomb, KV: &mvccpb.KeyValue{Key: bytes.Clone(userKey), ModRevision: main}}
		if !tomb {
			e.KV.CreateRevision, e.KV.Version, e.KV.Lease = v.create, v.ver, v.lease
			e.KV.Value = bytes.Clone(v.value)
		}
		chunk = append(chunk, e)
	}
	return chunk, nil, revIt.Error()
}

// Leases calls fn for every lease of the snapshot, in id order.
func (sn *Snapshot) Leases(fn func(id, ttl int64) error) error {
	if err := sn.s.enter(); err != nil {
		return err
	}
	defer sn.s.leave()
	if sn.snap == nil {
		return ErrClosed
	}
	it, err := sn.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLease}, UpperBound: []byte{prefixLease + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		id, err := decodeLeaseKey(it.Key())
		if err != nil {
			return err
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		ttl, err := decodeLeaseValue(v)
		if err != nil {
			return err
		}
		if err := fn(id, ttl); err != nil {
			return err
		}
	}
	return it.Error()
}

// Meta returns the SetMeta value of key as of the snapshot, nil if none.
func (sn *Snapshot) Meta(key []byte) ([]byte, error) {
	if err := sn.s.enter(); err != nil {
		return nil, err
	}
	defer sn.s.leave()
	if sn.snap == nil {
		return nil, ErrClosed
	}
	v, closer, err := sn.snap.Get(encodeMetaKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// Alarms returns the alarms active at the snapshot.
func (sn *Snapshot) Alarms() []*pb.AlarmMember { return cloneAlarms(sn.alarms) }

// importChunk is how many bytes of writes an Import holds before it
// commits them.
const importChunk = 4 << 20

// Import fills an empty store with history and leases. Use it from one
// goroutine: Lease and Add (in any interleaving, Add in strictly increasing
// revision order), then Commit; Close discards what was not committed.
type Import struct {
	s    *Store
	b    *pebble.Batch
	last HistoryEntry // the previous Add, for the ordering check
	n    int64
	done bool
}

// NewImport starts an import into s, which must hold no keys, leases or
// history (a store just created). Nobody may read or write the store
// before Commit returns.
func (s *Store) NewImport() (*Import, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixKV}, UpperBound: []byte{prefixLeaseKey + 1}})
	if err != nil {
		return nil, err
	}
	nonEmpty := it.First()
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, err
	}
	if nonEmpty || s.Rev() != 1 {
		return nil, fmt.Errorf("%w: import into a store that is not empty", ErrBadHistory)
	}
	s.keys.Store(nil) // rebuilt by Commit
	return &Import{s: s, b: s.db.NewBatch()}, nil
}

// Lease records a lease with its granted TTL.
func (im *Import) Lease(id, ttl int64) error {
	if im.done {
		return ErrBatchDone
	}
	if id == 0 {
		return fmt.Errorf("%w: lease id 0", ErrBadHistory)
	}
	if err := im.s.enter(); err != nil {
		return err
	}
	defer im.s.leave()
	return im.set(encodeLeaseKey(id), encodeLeaseValue(ttl))
}

// Add records one event. Revisions must strictly increase; a put's
// ModRevision must be its main revision (0 is taken as it), its create
// revision at most that and its version at least 1.
func (im *Import) Add(e HistoryEntry) error {
	if im.done {
		return ErrBatchDone
	}
	if e.KV == nil || len(e.KV.Key) == 0 {
		return fmt.Errorf("%w: revision %d.%d has no key", ErrBadHistory, e.Main, e.Sub)
	}
	if e.Main <= 0 || e.Sub < 0 {
		return fmt.Errorf("%w: revision %d.%d", ErrBadHistory, e.Main, e.Sub)
	}
	if im.n > 0 && (e.Main < im.last.Main || e.Main == im.last.Main && e.Sub <= im.last.Sub) {
		return fmt.Errorf("%w: revision %d.%d after %d.%d", ErrBadHistory, e.Main, e.Sub, im.last.Main, im.last.Sub)
	}
	val := tombstoneValue
	if !e.Tombstone {
		kv := e.KV
		if kv.ModRevision != 0 && kv.ModRevision != e.Main {
			return fmt.Errorf("%w: revision %d.%d of %q has mod_revision %d", ErrBadHistory, e.Main, e.Sub, kv.Key, kv.ModRevision)
		}
		if kv.CreateRevision <= 0 || kv.CreateRevision > e.Main || kv.Version <= 0 {
			return fmt.Errorf("%w: revision %d.%d of %q has create_revision %d, version %d", ErrBadHistory, e.Main, e.Sub, kv.Key, kv.CreateRevision, kv.Version)
		}
		val = encodeKVValue(nil, kv.CreateRevision, kv.Version, kv.Lease, kv.Value)
	}
	if err := im.s.enter(); err != nil {
		return err
	}
	defer im.s.leave()
	if err := im.set(encodeKVKey(nil, e.KV.Key, e.Main, e.Sub), val); err != nil {
		return err
	}
	if err := im.set(encodeRevKey(nil, e.Main, e.Sub), encodeRevValue(nil, e.Tombstone, e.KV.Key)); err != nil {
		return err
	}
	im.last = HistoryEntry{Main: e.Main, Sub: e.Sub}
	im.n++
	return nil
}

// set adds a write, committing the chunk when it is full. The caller is
// inside enter.
func (im *Import) set(k, v []byte) error {
	if err := im.b.Set(k, v, nil); err != nil {
		return err
	}
	if im.b.Len() >= importChunk {
		return im.flush()
	}
	return nil
}

// flush commits the writes so far (not synced: Commit syncs the last one,
// and a crash before it leaves a store the caller discards). The caller is
// inside enter.
func (im *Import) flush() error {
	if err := im.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("storage: import: %w", err)
	}
	_ = im.b.Close()
	im.b = im.s.db.NewBatch()
	return nil
}

// Commit attaches every key whose newest version is live and names an
// imported lease to that lease, sets the current revision to the largest
// of rev and the last imported one, and the compact revision to
// compactRev (-1: never compacted), and syncs. The store then serves the
// imported state.
func (im *Import) Commit(rev, compactRev int64) error {
	if im.done {
		return ErrBatchDone
	}
	defer im.Close()
	s := im.s
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	rev = max(rev, im.last.Main, compactRev, 1)
	if err := im.flush(); err != nil {
		return err
	}
	if err := im.attachLeases(); err != nil {
		return err
	}
	if err := im.b.Set(stateKeyRev, encodeInt64(rev), nil); err != nil {
		return err
	}
	if compactRev != noCompaction {
		if err := im.b.Set(stateKeyCompactRev, encodeInt64(compactRev), nil); err != nil {
			return err
		}
	}
	return s.commitReplacement(im.b, "import")
}

// attachLeases reads the committed versions, newest first for each key,
// and attaches each key's newest live version to its lease if that lease
// was imported (etcd logs and skips the others too). The iterator is a
// point-in-time view, so the chunks committed meanwhile do not disturb it.
// The caller is inside enter.
func (im *Import) attachLeases() (err error) {
	it, err := im.s.db.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, it.Close()) }()
	r := &mvccReader{it: it}
	for valid := it.First(); valid; valid = r.nextUserKey(it.Key()) {
		f, live, err := r.current(it.Key())
		if err != nil {
			return err
		}
		if !live || f.v.lease == 0 {
			continue
		}
		uk, _, err := unescape(nil, f.encKey[1:]) // encKey starts with prefixKV
		if err != nil {
			return err
		}
		lease, err := im.s.get(encodeLeaseKey(f.v.lease))
		if err != nil {
			return err
		}
		if lease == nil {
			im.s.logger.Warn("imported key names a lease that does not exist; not attached",
				"key", string(uk), "lease", fmt.Sprintf("%016x", f.v.lease))
			continue
		}
		if err := im.set(encodeLeaseKeyKey(f.v.lease, uk), nil); err != nil {
			return err
		}
	}
	return it.Error()
}

// Close discards what the import did not commit. Idempotent.
func (im *Import) Close() error {
	if im.done {
		return nil
	}
	im.done = true
	err := im.b.Close()
	im.s.rebuildKeyFilter()
	return err
}
