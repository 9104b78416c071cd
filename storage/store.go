package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Sentinel errors. The messages of ErrCompacted, ErrFutureRev, ErrKeyNotFound,
// ErrLeaseNotFound and ErrLeaseExists are etcd's, so a gateway can map them
// to rpctypes errors by identity and logs read the same as etcd's.
var (
	ErrCompacted     = errors.New("mvcc: required revision has been compacted")
	ErrFutureRev     = errors.New("mvcc: required revision is a future revision")
	ErrLeaseNotFound = errors.New("lease not found")
	ErrLeaseExists   = errors.New("lease already exists")
	ErrKeyNotFound   = errors.New("etcdserver: key not found")
	ErrClosed        = errors.New("storage: closed")
	// ErrBatchConflict is returned by Commit when another batch that changed
	// the store committed after this batch was created: the batch was
	// computed against a stale state and is discarded.
	ErrBatchConflict = errors.New("storage: concurrent write batch committed first")
	// ErrBatchDone is returned when a batch is used after Commit or Close.
	ErrBatchDone = errors.New("storage: batch already committed or closed")
	// ErrReadOnlyTxn is returned by ReadTxn for a txn that contains write ops.
	ErrReadOnlyTxn = errors.New("storage: ReadTxn given a txn with write operations")

	errNilRequest = errors.New("storage: nil request")
)

// storeFormat identifies the key/value encoding documented in doc.go.
const storeFormat = "concord-mvcc-1"

var stateKeyFormat = []byte{prefixState, 'f'}

// Options configures Open. The zero value is valid.
type Options struct {
	// FS is the filesystem; nil means the real disk (vfs.Default).
	FS vfs.FS
	// Logger receives pebble's and the store's logs; nil means slog.Default().
	Logger *slog.Logger
	// CacheBytes is the block cache size; 0 means 64 MiB.
	CacheBytes int64
	// WALDir, if set, holds Pebble's write-ahead log instead of the store's
	// directory (etcd's --wal-dir: the log every write is fsynced to, on
	// a disk of its own). The store's directory is still searched for
	// write-ahead logs, so a store may move its log there; moving it back
	// is refused by Pebble while the WAL dir may hold logs it needs.
	WALDir string
}

// DefaultCacheBytes is the block cache size used when Options.CacheBytes is 0.
const DefaultCacheBytes = 64 << 20

// Validate reports whether the options are usable.
func (o Options) Validate() error {
	if o.CacheBytes < 0 {
		return fmt.Errorf("storage: CacheBytes must be >= 0, got %d", o.CacheBytes)
	}
	return nil
}

// Store is the MVCC store. Reads are safe for concurrent use and see only
// committed batches; writes go through Batch.
type Store struct {
	db     *pebble.DB
	logger *slog.Logger

	// closeMu is held shared by every operation that touches pebble and
	// exclusively by Close, so Close waits for in-flight operations and no
	// iterator outlives the DB.
	closeMu sync.RWMutex
	closed  bool

	// commitMu serializes Batch.Commit.
	commitMu sync.Mutex

	// stateMu guards the committed state below. Readers hold it shared
	// while capturing the state and creating their pebble iterators, so the
	// revision they read at and the data they see belong together. A commit
	// that compacts holds it exclusively across the pebble commit (compaction
	// removes versions a reader at an older revision could still need); other
	// commits only append versions above the current revision, so they
	// publish the new state after the pebble commit.
	stateMu      sync.RWMutex
	rev          int64
	compactRev   int64
	appliedIndex uint64
	appliedTerm  uint64
	alarms       []*pb.AlarmMember // sorted by member id, then type
	seq          uint64            // bumped by every commit of a state-changing batch
	// hashes are the hashes computed by the latest compactions (see
	// CompactionHash), oldest first. Like etcd's they live in memory only.
	hashes []CompactionHash
	// keys is the filter of keys with a version (keyfilter.go); nil while
	// it is off (during a restore).
	keys atomic.Pointer[keyFilter]
	// ops are the operation counters (opcount.go).
	ops opCounters

	// snaps are the open Snapshots, released by Close at the latest.
	snapMu sync.Mutex
	snaps  map[*Snapshot]struct{}
}

// noCompaction is the compact revision of a store that was never compacted.
// It is etcd's value: a first compaction at revision 0 is then valid.
const noCompaction = -1

// maxCompactionHashes bounds Store.hashes (etcd keeps the same number).
const maxCompactionHashes = 10

// CompactionHash is the hash a compaction at Revision computed of the
// history it was about to remove: HashKV(Revision) as it was just before the
// compaction, so CompactRevision is the compact revision in force before it.
// HashKV returns it for that exact revision, as etcd's HashByRev does, so
// members can compare hashes of revisions they have compacted at.
type CompactionHash struct {
	Hash                      uint32
	Revision, CompactRevision int64
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("subsystem", "storage")
	fs := opts.FS
	if fs == nil {
		fs = vfs.Default
	}
	cacheBytes := opts.CacheBytes
	if cacheBytes == 0 {
		cacheBytes = DefaultCacheBytes
	}
	cache := pebble.NewCache(cacheBytes)
	defer cache.Unref()
	po := &pebble.Options{
		FS:                 fs,
		Cache:              cache,
		Logger:             pebbleLogger{logger},
		FormatMajorVersion: pebble.FormatNewest,
		// 2-core target: one background compaction normally, a second one
		// only when compaction debt builds up.
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
		// Every memtable is allocated at its full size and, once written,
		// stays resident: at 32 MiB the memtables were the largest item in
		// a loaded server's RSS. 16 MiB measured the same CPU per put as
		// 32 MiB; 8 MiB cost about 8% more (more flushes and L0
		// compactions) for 8 MiB less RSS (docs/benchmarks.md).
		MemTableSize: 16 << 20,
		MaxOpenFiles: 1000,
	}
	if opts.WALDir != "" {
		po.WALDir = opts.WALDir
		po.WALRecoveryDirs = []wal.Dir{{FS: fs, Dirname: dir}}
	}
	db, err := pebble.Open(dir, po)
	if missing := (pebble.ErrMissingWALRecoveryDir{}); errors.As(err, &missing) {
		return nil, fmt.Errorf("storage: open %s: its write-ahead log is in %s, which is not its WAL dir (--wal-dir): %w", dir, missing.Dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	s := &Store{db: db, logger: logger, rev: 1, compactRev: noCompaction}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	f, live, err := buildKeyFilter(db)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: build key filter: %w", err)
	}
	s.keys.Store(f)
	s.ops.keys.Store(live)
	logger.Info("opened store", "dir", dir, "revision", s.rev, "compact-revision", s.compactRev,
		"applied-index", s.appliedIndex, "applied-term", s.appliedTerm)
	return s, nil
}

// load reads the persisted state written by the last committed batch.
func (s *Store) load() error {
	format, err := s.get(stateKeyFormat)
	if err != nil {
		return err
	}
	switch {
	case format == nil:
		if err := s.db.Set(stateKeyFormat, []byte(storeFormat), pebble.Sync); err != nil {
			return fmt.Errorf("storage: write format marker: %w", err)
		}
	case string(format) != storeFormat:
		return fmt.Errorf("%w: unknown store format %q", errCorrupt, format)
	}
	st, err := s.readState()
	if err != nil {
		return err
	}
	s.rev, s.compactRev, s.appliedIndex, s.appliedTerm, s.alarms = st.rev, st.compactRev, st.appliedIndex, st.appliedTerm, st.alarms
	return nil
}

// get returns a copy of the value of a raw pebble key, nil if absent.
func (s *Store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte{}, v...), nil
}

// Close closes the store; it waits for in-flight operations. Idempotent.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.closeSnapshots()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("storage: close: %w", err)
	}
	return nil
}

// enter marks the start of an operation that uses pebble.
func (s *Store) enter() error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *Store) leave() { s.closeMu.RUnlock() }

// snapshotState captures the committed revisions and opens iterators in the
// same critical section, so they agree.
func (s *Store) snapshotState(bounds ...[2][]byte) (rev, compactRev int64, its []*pebble.Iterator, err error) {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	its = make([]*pebble.Iterator, 0, len(bounds))
	for _, b := range bounds {
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: b[0], UpperBound: b[1]})
		if err != nil {
			closeAll(its)
			return 0, 0, nil, err
		}
		its = append(its, it)
	}
	return s.rev, s.compactRev, its, nil
}

func closeAll(its []*pebble.Iterator) {
	for _, it := range its {
		_ = it.Close()
	}
}

// Rev returns the current (last committed) revision; 1 on an empty store.
func (s *Store) Rev() int64 {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	return s.rev
}

// CompactRev returns the last compaction revision; -1 (etcd's value) if the
// store was never compacted.
func (s *Store) CompactRev() int64 {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	return s.compactRev
}

// Applied returns the raft index and term of the last committed SetApplied.
func (s *Store) Applied() (index, term uint64) {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	return s.appliedIndex, s.appliedTerm
}

// Alarms returns the active alarms, sorted by member id and type.
func (s *Store) Alarms() []*pb.AlarmMember {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	return cloneAlarms(s.alarms)
}

func cloneAlarms(in []*pb.AlarmMember) []*pb.AlarmMember {
	out := make([]*pb.AlarmMember, len(in))
	for i, a := range in {
		out[i] = &pb.AlarmMember{MemberID: a.MemberID, Alarm: a.Alarm}
	}
	return out
}

// DB exposes the pebble instance (consensus persists the raft log in it,
// under keys starting with 0x01).
func (s *Store) DB() *pebble.DB { return s.db }

// Range serves a RangeRequest at a point-in-time view of the committed
// store. resp.Header carries only Revision (the current revision).
func (s *Store) Range(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return s.readRange(r, false)
}

// readRange serves Range, and RangeWire when encode is set.
func (s *Store) readRange(r *pb.RangeRequest, encode bool) (*pb.RangeResponse, error) {
	if r == nil {
		return nil, errNilRequest
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	s.ops.ranges.Add(1) // one range, so never a txn of etcd's
	switch {
	case len(r.RangeEnd) == 0:
		return s.rangePoint(r)
	case encode && encodable(r):
		return s.rangeEncoded(r)
	}
	return s.rangeGeneric(r)
}

// rangeGeneric serves any RangeRequest through rangeKeys and assembleRange;
// Range uses it for everything but single keys (rangePoint), and the tests
// check rangePoint against it.
func (s *Store) rangeGeneric(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	rd, rev, compactRev, its, err := s.rangeView(r.Key, normEnd(r.RangeEnd))
	if err != nil {
		return nil, err
	}
	defer closeAll(its)
	return executeRange(&rd, rev, compactRev, r)
}

// rangeView opens a point-in-time reader of the committed store for a range
// of [key, end) (normEnd's convention), with the current and compaction
// revisions of the view. The caller closes its.
func (s *Store) rangeView(key, end []byte) (rd mvccReader, rev, compactRev int64, its []*pebble.Iterator, err error) {
	// Tight iterator bounds let pebble skip unrelated sstables.
	lo, hi := kvLower, kvUpper
	switch {
	case end == nil:
		lo = appendEscaped([]byte{prefixKV}, key)
		hi = append(slices.Clip(lo[:len(lo)-1]), 0x02) // past every version of the key
	case len(end) == 0 || bytes.Compare(end, key) > 0:
		lo, hi = rangeBounds(key, end)
	}
	rev, compactRev, its, err = s.snapshotState([2][]byte{lo, hi})
	if err != nil {
		return mvccReader{}, 0, 0, nil, err
	}
	return mvccReader{it: its[0]}, rev, compactRev, its, nil
}

// ReadTxn serves a txn whose branches (nested txns included) contain only
// range ops, at one point-in-time view of the committed store.
func (s *Store) ReadTxn(r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if r == nil {
		return nil, errNilRequest
	}
	if !isTxnReadOnly(r) {
		return nil, ErrReadOnlyTxn
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	rev, compactRev, its, err := s.snapshotState([2][]byte{kvLower, kvUpper})
	if err != nil {
		return nil, err
	}
	defer closeAll(its)
	rd := &mvccReader{it: its[0]}
	tx := &readTxn{r: rd, rev: rev, compactRev: compactRev}
	// etcd counts a read-only txn's compares and ranges as one store
	// transaction.
	defer s.endTally(&tx.ops)
	return runTxn(tx, r)
}

// readTxn executes a read-only txn against a store snapshot.
type readTxn struct {
	r               *mvccReader
	rev, compactRev int64
	ops             opTally
}

func (t *readTxn) view() (*mvccReader, int64, int64, error) { return t.r, t.rev, t.compactRev, nil }
func (t *readTxn) baseRev() int64                           { return t.rev }
func (t *readTxn) leaseExists(int64) (bool, error)          { return false, nil }
func (t *readTxn) changed() bool                            { return false }
func (t *readTxn) tally() *opTally                          { return &t.ops }
func (t *readTxn) endChecks()                               {}
func (t *readTxn) countsRangeOps() bool                     { return true }
func (t *readTxn) put(*pb.PutRequest) (*pb.PutResponse, error) {
	return nil, ErrReadOnlyTxn
}

func (t *readTxn) deleteRange(*pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return nil, ErrReadOnlyTxn
}

// Size returns the disk space used by pebble (total) and the part of it that
// holds live data (inUse: total minus obsolete and zombie files that pebble
// deletes on its own). Space held by compacted-away versions is reclaimed by
// pebble's background compactions or by Defragment.
func (s *Store) Size() (total, inUse int64) {
	if err := s.enter(); err != nil {
		return 0, 0
	}
	defer s.leave()
	m := s.db.Metrics()
	t := m.DiskSpaceUsage()
	garbage := m.WAL.ObsoletePhysicalSize + m.Table.Local.ObsoleteSize + m.Table.Local.ZombieSize +
		m.BlobFiles.Local.ObsoleteSize + m.BlobFiles.Local.ZombieSize
	if garbage > t {
		garbage = t
	}
	return int64(t), int64(t - garbage)
}

// Defragment compacts the whole pebble keyspace, dropping deleted and
// overwritten data from disk. Reads and writes proceed concurrently.
func (s *Store) Defragment(ctx context.Context) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	if err := s.db.Compact(ctx, []byte{0x00}, []byte{0xff, 0xff}, false); err != nil {
		return fmt.Errorf("storage: defragment: %w", err)
	}
	return nil
}

// Meta returns the value stored by SetMeta, or nil if there is none.
func (s *Store) Meta(key []byte) ([]byte, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	return s.get(encodeMetaKey(key))
}

// LeaseInfo describes a granted lease and the keys attached to it (sorted).
type LeaseInfo struct {
	ID, TTL int64
	Keys    [][]byte
}

// Lease returns the lease with the given id.
func (s *Store) Lease(id int64) (LeaseInfo, bool) {
	if err := s.enter(); err != nil {
		return LeaseInfo{}, false
	}
	defer s.leave()
	_, _, its, err := s.snapshotState([2][]byte{{prefixLease}, {prefixLeaseKey + 1}})
	if err != nil {
		s.logger.Error("lease lookup failed", "lease", id, "error", err)
		return LeaseInfo{}, false
	}
	defer closeAll(its)
	li, ok, err := readLease(its[0], id)
	if err != nil {
		s.logger.Error("lease lookup failed", "lease", id, "error", err)
		return LeaseInfo{}, false
	}
	return li, ok
}

// readLease reads one lease and its keys through an iterator spanning the
// lease and attachment prefixes.
func readLease(it *pebble.Iterator, id int64) (LeaseInfo, bool, error) {
	lk := encodeLeaseKey(id)
	if !it.SeekGE(lk) || !bytes.Equal(it.Key(), lk) {
		return LeaseInfo{}, false, it.Error()
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return LeaseInfo{}, false, err
	}
	ttl, err := decodeLeaseValue(v)
	if err != nil {
		return LeaseInfo{}, false, err
	}
	li := LeaseInfo{ID: id, TTL: ttl}
	ap := encodeLeaseKeyKey(id, nil)
	for ok := it.SeekGE(ap); ok && bytes.HasPrefix(it.Key(), ap); ok = it.Next() {
		_, k, err := decodeLeaseKeyKey(it.Key())
		if err != nil {
			return LeaseInfo{}, false, err
		}
		li.Keys = append(li.Keys, append([]byte{}, k...))
	}
	return li, true, it.Error()
}

// Leases returns every lease, ordered by id, with their keys.
func (s *Store) Leases() []LeaseInfo {
	if err := s.enter(); err != nil {
		return nil
	}
	defer s.leave()
	_, _, its, err := s.snapshotState([2][]byte{{prefixLease}, {prefixLeaseKey + 1}})
	if err != nil {
		s.logger.Error("lease listing failed", "error", err)
		return nil
	}
	defer closeAll(its)
	out, err := readLeases(its[0])
	if err != nil {
		s.logger.Error("lease listing failed", "error", err)
		return nil
	}
	return out
}

func readLeases(it *pebble.Iterator) ([]LeaseInfo, error) {
	var out []LeaseInfo
	idx := map[int64]int{}
	for ok := it.SeekGE([]byte{prefixLease}); ok && it.Key()[0] == prefixLease; ok = it.Next() {
		id, err := decodeLeaseKey(it.Key())
		if err != nil {
			return nil, err
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		ttl, err := decodeLeaseValue(v)
		if err != nil {
			return nil, err
		}
		idx[id] = len(out)
		out = append(out, LeaseInfo{ID: id, TTL: ttl})
	}
	for ok := it.SeekGE([]byte{prefixLeaseKey}); ok && it.Key()[0] == prefixLeaseKey; ok = it.Next() {
		id, k, err := decodeLeaseKeyKey(it.Key())
		if err != nil {
			return nil, err
		}
		if i, ok := idx[id]; ok {
			out[i].Keys = append(out[i].Keys, append([]byte{}, k...))
		}
	}
	return out, it.Error()
}

// RevisionEvents are the events of one revision, in sub-revision order.
type RevisionEvents struct {
	Revision int64
	Events   []*mvccpb.Event
}

// RangeEvents returns the history of keys in [key, end) for revisions in
// [from, to], grouped by revision, for watch catch-up. end follows the
// RangeRequest convention: empty = only key, "\x00" = every key >= key.
// from < CompactRev() fails with ErrCompacted; to <= 0 or to > Rev() means
// up to the current revision. Delete events carry Kv{Key, ModRevision}.
// PrevKv is set as etcd's watch sets it: for every event that is not a
// creation, the key's version at ModRevision-1 if the key existed then and
// that revision is not compacted.
func (s *Store) RangeEvents(from, to int64, key, end []byte) ([]RevisionEvents, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	rev, compactRev, its, err := s.snapshotState([2][]byte{revLower, revUpper}, [2][]byte{kvLower, kvUpper})
	if err != nil {
		return nil, err
	}
	defer closeAll(its)
	if from < 1 {
		from = 1
	}
	if from < compactRev {
		return nil, ErrCompacted
	}
	if to <= 0 || to > rev {
		to = rev
	}
	if from > to {
		return nil, nil
	}
	m := newKeyMatcher(key, end)
	revIt := its[0]
	rd := &mvccReader{it: its[1]}
	var out []RevisionEvents
	hi := encodeRevKey(nil, to+1, 0)
	for ok := revIt.SeekGE(encodeRevKey(nil, from, 0)); ok && bytes.Compare(revIt.Key(), hi) < 0; ok = revIt.Next() {
		main, sub, err := decodeRevKey(revIt.Key())
		if err != nil {
			return nil, err
		}
		v, err := revIt.ValueAndErr()
		if err != nil {
			return nil, err
		}
		uk, tomb, err := decodeRevValue(v)
		if err != nil {
			return nil, err
		}
		if !m.match(uk) {
			continue
		}
		ev, err := readEvent(rd, slices.Clone(uk), main, sub, tomb, compactRev)
		if err != nil {
			return nil, err
		}
		if n := len(out); n > 0 && out[n-1].Revision == main {
			out[n-1].Events = append(out[n-1].Events, ev)
		} else {
			out = append(out, RevisionEvents{Revision: main, Events: []*mvccpb.Event{ev}})
		}
	}
	return out, revIt.Error()
}

// readEvent rebuilds the event of version (main, sub) of key.
func readEvent(rd *mvccReader, key []byte, main, sub int64, tomb bool, compactRev int64) (*mvccpb.Event, error) {
	ev := &mvccpb.Event{}
	if tomb {
		ev.Type = mvccpb.Event_DELETE
		ev.Kv = &mvccpb.KeyValue{Key: key, ModRevision: main}
	} else {
		k := encodeKVKey(nil, key, main, sub)
		if !rd.it.SeekGE(k) || !bytes.Equal(rd.it.Key(), k) {
			if err := rd.it.Error(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: revision %d.%d of %q missing", errCorrupt, main, sub, key)
		}
		f, live, err := rd.current(rd.it.Key())
		if err != nil {
			return nil, err
		}
		if !live {
			return nil, fmt.Errorf("%w: revision %d.%d of %q is a tombstone in the kv space", errCorrupt, main, sub, key)
		}
		ev.Type = mvccpb.Event_PUT
		ev.Kv = &mvccpb.KeyValue{Key: key, Value: slices.Clone(f.v.value), CreateRevision: f.v.create,
			ModRevision: main, Version: f.v.ver, Lease: f.v.lease}
		if f.v.ver == 1 {
			return ev, nil // a creation has no previous version
		}
	}
	if main-1 < compactRev {
		return ev, nil
	}
	var a arena
	f, ok, err := rd.get(key, main-1)
	if err != nil || !ok {
		return ev, err
	}
	if ev.PrevKv, err = a.toKV(&f, false); err != nil {
		return nil, err
	}
	return ev, nil
}

// keyMatcher tests membership in a RangeRequest-style key range.
type keyMatcher struct {
	key, end []byte // end: nil = single key, empty = to the end
}

func newKeyMatcher(key, end []byte) keyMatcher { return keyMatcher{key: key, end: normEnd(end)} }

func (m keyMatcher) match(k []byte) bool {
	if m.end == nil {
		return bytes.Equal(k, m.key)
	}
	if bytes.Compare(k, m.key) < 0 {
		return false
	}
	return len(m.end) == 0 || bytes.Compare(k, m.end) < 0
}

// HashKV hashes the MVCC history visible between the compact revision and
// rev (0 = current), with etcd's meaning: two members with equal histories
// and the same compact revision produce equal hashes, whether or not older
// versions have been physically removed, and the hash is stable across
// restarts. See hashKVs for what is hashed; the numeric value differs from
// etcd's.
//
// As etcd's HashByRev, it first looks rev up among the hashes stored by the
// latest compactions (in memory, so not after a reopen) and returns a stored
// one as is: HashKV(R) after a compaction at R reports the compact revision
// in force before R. The lookup precedes every check, also as in etcd: a
// stored revision below the compact revision is still served, and after a
// compaction at revision 0, HashKV(0) returns that stored hash with
// hashRev 0 instead of hashing the current revision.
func (s *Store) HashKV(rev int64) (hash uint32, hashRev, compactRev int64, err error) {
	if err := s.enter(); err != nil {
		return 0, 0, 0, err
	}
	defer s.leave()
	if h, ok := s.compactionHash(rev); ok {
		return h.Hash, h.Revision, h.CompactRevision, nil
	}
	cur, crev, its, err := s.snapshotState([2][]byte{kvLower, kvUpper})
	if err != nil {
		return 0, 0, 0, err
	}
	defer closeAll(its)
	if rev > 0 && rev < crev {
		return 0, 0, crev, ErrCompacted
	}
	if rev > cur {
		return 0, 0, crev, ErrFutureRev
	}
	if rev <= 0 {
		rev = cur
	}
	hash, err = hashKVs(its[0], rev, crev)
	if err != nil {
		return 0, 0, crev, err
	}
	return hash, rev, crev, nil
}

// CompactionHashes returns the hashes kept from the latest compactions,
// newest first (etcd's HashStorage.Hashes, for its compaction hash check).
func (s *Store) CompactionHashes() []CompactionHash {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	out := slices.Clone(s.hashes)
	slices.Reverse(out)
	return out
}

// compactionHash returns the hash stored by a compaction at rev, if kept.
func (s *Store) compactionHash(rev int64) (CompactionHash, bool) {
	s.stateMu.RLock()
	defer s.stateMu.RUnlock()
	for _, h := range s.hashes {
		if h.Revision == rev {
			return h, true
		}
	}
	return CompactionHash{}, false
}

// hashKVs hashes, through it (spanning the kv keyspace), the history visible
// at rev for a store compacted at crev (CRC-32C, in storage key order): for
// each user key, the stored key and value of every version with crev < mod
// <= rev, and, if the key has no such version, its newest version <= crev
// unless that is a tombstone (that version is the one etcd's keep set
// retains). The result does not depend on whether versions older than crev
// were physically removed yet.
func hashKVs(it *pebble.Iterator, rev, crev int64) (uint32, error) {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	h.Write([]byte(storeFormat))
	var curKey []byte
	var hashedAbove, doneBelow bool
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		encKey, main, _, valid := splitKVKey(k)
		if !valid {
			return 0, fmt.Errorf("%w: bad kv key %q", errCorrupt, k)
		}
		if !bytes.Equal(encKey, curKey) {
			curKey = append(curKey[:0], encKey...)
			hashedAbove, doneBelow = false, false
		}
		if main > rev {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, err
		}
		if main > crev {
			h.Write(k)
			h.Write(v)
			hashedAbove = true
			continue
		}
		if doneBelow {
			continue
		}
		doneBelow = true
		if !hashedAbove && (len(v) == 0 || v[0] != flagTombstone) {
			h.Write(k)
			h.Write(v)
		}
	}
	if err := it.Error(); err != nil {
		return 0, err
	}
	return h.Sum32(), nil
}

// pebbleLogger routes pebble's logs to slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Info(fmt.Sprintf(format, args...), "source", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

// Fatalf is called by pebble on unrecoverable corruption or invariant
// violations and must not return (pebble's own logger exits the process).
// Panicking keeps that guarantee while letting the owner of the process
// decide how to die.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "source", "pebble", "fatal", true)
	panic("pebble: " + msg)
}

// Hash is etcd's Maintenance.Hash for this store: a CRC-32C of everything
// the members replicate (the MVCC history visible at the current revision,
// hashed as HashKV hashes it so that members agree whether or not compacted
// versions are physically gone yet; the compact revision; the leases with
// their keys; the alarms) and the revision it was taken at. As etcd's, it is
// meant for comparing members in tests; its value differs from etcd's.
func (s *Store) Hash() (hash uint32, rev int64, err error) {
	if err := s.enter(); err != nil {
		return 0, 0, err
	}
	defer s.leave()
	cur, crev, its, err := s.snapshotState(
		[2][]byte{kvLower, kvUpper},
		[2][]byte{{prefixLease}, {prefixLeaseKey + 1}},
		[2][]byte{{prefixAlarm}, {prefixAlarm + 1}},
	)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(its)
	kvHash, err := hashKVs(its[0], cur, crev)
	if err != nil {
		return 0, 0, err
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	var buf [12]byte
	binary.BigEndian.PutUint32(buf[:4], kvHash)
	binary.BigEndian.PutUint64(buf[4:], uint64(crev))
	h.Write(buf[:])
	for _, it := range its[1:] {
		for ok := it.First(); ok; ok = it.Next() {
			h.Write(it.Key())
			v, err := it.ValueAndErr()
			if err != nil {
				return 0, 0, err
			}
			h.Write(v)
		}
		if err := it.Error(); err != nil {
			return 0, 0, err
		}
	}
	return h.Sum32(), cur, nil
}
