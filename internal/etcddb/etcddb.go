// Package etcddb writes and reads etcd's backend database: the bbolt file
// an etcd member keeps in member/snap/db and that `etcdctl snapshot save`
// downloads, in the schema of etcd 3.7 (server/storage/schema). Writing one
// from a store snapshot makes concord's backups readable by etcdutl
// (snapshot status, snapshot restore); reading one turns an etcd backup
// into a concord store.
//
// What the file holds, bucket by bucket:
//
//	key      revision (8-byte BE main, '_', 8-byte BE sub, then 't' for a
//	         tombstone) -> mvccpb.KeyValue (a tombstone holds only the key),
//	         every version since the compaction, in revision order
//	meta     consistent_index, term (8-byte BE), finishedCompactRev and
//	         scheduledCompactRev (a revision key), storageVersion ("3.7.0")
//	lease    lease id (8-byte BE) -> leasepb.Lease
//	alarm    etcdserverpb.AlarmMember -> empty
//	members  member id in hex -> JSON member; members_removed: id -> "removed"
//	cluster  clusterVersion
//	auth     authEnabled (one byte, 1 or 0), authRevision (8-byte BE)
//	authUsers  user name -> authpb.User (bcrypt password hash)
//	authRoles  role name -> authpb.Role
//
// Both directions stream: Write commits to the file in chunks and Read
// hands entries to its sink one at a time, so neither holds the history in
// memory.
package etcddb

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/server/v3/lease/leasepb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

// ErrBadDB is wrapped by every error about a file that is not a readable
// etcd database.
var ErrBadDB = errors.New("etcddb: not a valid etcd database")

// Bucket and key names of etcd's schema.
var (
	bucketKey            = []byte("key")
	bucketMeta           = []byte("meta")
	bucketLease          = []byte("lease")
	bucketAlarm          = []byte("alarm")
	bucketCluster        = []byte("cluster")
	bucketMembers        = []byte("members")
	bucketMembersRemoved = []byte("members_removed")
	bucketAuth           = []byte("auth")
	bucketAuthUsers      = []byte("authUsers")
	bucketAuthRoles      = []byte("authRoles")

	metaConsistentIndex  = []byte("consistent_index")
	metaTerm             = []byte("term")
	metaScheduledCompact = []byte("scheduledCompactRev")
	metaFinishedCompact  = []byte("finishedCompactRev")
	metaStorageVersion   = []byte("storageVersion")
	clusterVersionKey    = []byte("clusterVersion")
	authEnabledKey       = []byte("authEnabled")
	authRevisionKey      = []byte("authRevision")
)

// allBuckets is etcd's schema.AllBuckets: an etcd member creates them all.
var allBuckets = [][]byte{bucketKey, bucketMeta, bucketLease, bucketAlarm, bucketCluster,
	bucketMembers, bucketMembersRemoved, bucketAuth, bucketAuthUsers, bucketAuthRoles}

const (
	revKeyLen       = 8 + 1 + 8
	tombstoneMark   = 't'
	boltMagic       = 0xED0CDAED
	boltMagicOffset = 16 // after bbolt's page header, in the first meta page
	// writeChunk and writeChunkBytes bound the key-bucket entries (count
	// and bytes) one write transaction holds in memory before it commits.
	writeChunk      = 10000
	writeChunkBytes = 16 << 20
)

// Member is one row of the members bucket.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// MemberJSON is etcd's membership.Member as JSON, as etcd stores it and as
// its peer handler lists it: the ID as a decimal number, the raft
// attributes, then the published ones, which a member that has not started
// yet lacks.
type MemberJSON struct {
	ID         uint64   `json:"id"`
	PeerURLs   []string `json:"peerURLs"`
	IsLearner  bool     `json:"isLearner,omitempty"`
	Name       string   `json:"name,omitempty"`
	ClientURLs []string `json:"clientURLs,omitempty"`
}

// Header is what the database says besides the history and the leases.
type Header struct {
	// ConsistentIndex and Term are the raft index and term the data
	// reflects (etcdutl restore overwrites them).
	ConsistentIndex, Term uint64
	// CompactRev is the compact revision, -1 if never compacted.
	CompactRev int64
	// StorageVersion and ClusterVersion are "major.minor.0" of the etcd API.
	StorageVersion, ClusterVersion string
	Members                        []Member
	RemovedMembers                 []uint64
	Alarms                         []*pb.AlarmMember
	Auth                           Auth
}

// Auth is what the auth buckets hold.
type Auth struct {
	Enabled bool
	// Revision is the auth revision; 0 (none stored) only in a database
	// whose etcd never started its auth store.
	Revision uint64
	Users    []*authpb.User
	Roles    []*authpb.Role
}

// Source is a point-in-time store: storage.Snapshot.
type Source interface {
	History(fn func(storage.HistoryEntry) error) error
	Leases(fn func(id, ttl int64) error) error
}

// Write creates the database file at path (it must not exist) from hdr and
// src.
func Write(ctx context.Context, path string, hdr Header, src Source) (err error) {
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("etcddb: %s exists", path)
	}
	// The file is synced once, at the end; bbolt's per-commit fsyncs would
	// only slow the chunked writes down.
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("etcddb: create %s: %w", path, err)
	}
	defer func() {
		if err == nil {
			err = db.Sync()
		}
		if cerr := db.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("etcddb: close %s: %w", path, cerr)
		}
	}()
	if err := db.Update(func(tx *bolt.Tx) error { return writeHeader(tx, hdr) }); err != nil {
		return err
	}
	if err := writeLeases(db, src); err != nil {
		return err
	}
	return writeHistory(ctx, db, src)
}

func writeHeader(tx *bolt.Tx, hdr Header) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	meta := tx.Bucket(bucketMeta)
	if hdr.ConsistentIndex > 0 {
		if err := meta.Put(metaConsistentIndex, binary.BigEndian.AppendUint64(nil, hdr.ConsistentIndex)); err != nil {
			return err
		}
		if hdr.Term > 0 {
			if err := meta.Put(metaTerm, binary.BigEndian.AppendUint64(nil, hdr.Term)); err != nil {
				return err
			}
		}
	}
	if hdr.CompactRev >= 0 {
		rev := revKey(hdr.CompactRev, 0, false)
		if err := meta.Put(metaScheduledCompact, rev); err != nil {
			return err
		}
		if err := meta.Put(metaFinishedCompact, rev); err != nil {
			return err
		}
	}
	if hdr.StorageVersion != "" {
		if err := meta.Put(metaStorageVersion, []byte(hdr.StorageVersion)); err != nil {
			return err
		}
	}
	if hdr.ClusterVersion != "" {
		if err := tx.Bucket(bucketCluster).Put(clusterVersionKey, []byte(hdr.ClusterVersion)); err != nil {
			return err
		}
	}
	for _, m := range hdr.Members {
		v, err := json.Marshal(MemberJSON{ID: m.ID, PeerURLs: m.PeerURLs, IsLearner: m.IsLearner, Name: m.Name, ClientURLs: m.ClientURLs})
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketMembers).Put(memberKey(m.ID), v); err != nil {
			return err
		}
	}
	for _, id := range hdr.RemovedMembers {
		if err := tx.Bucket(bucketMembersRemoved).Put(memberKey(id), []byte("removed")); err != nil {
			return err
		}
	}
	if err := writeAuth(tx, hdr.Auth); err != nil {
		return err
	}
	for _, a := range hdr.Alarms {
		k, err := proto.Marshal(a)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketAlarm).Put(k, []byte{}); err != nil {
			return err
		}
	}
	return nil
}

func writeAuth(tx *bolt.Tx, a Auth) error {
	b := tx.Bucket(bucketAuth)
	enabled := []byte{0}
	if a.Enabled {
		enabled = []byte{1}
	}
	if err := b.Put(authEnabledKey, enabled); err != nil {
		return err
	}
	if a.Revision > 0 {
		if err := b.Put(authRevisionKey, binary.BigEndian.AppendUint64(nil, a.Revision)); err != nil {
			return err
		}
	}
	for _, u := range a.Users {
		v, err := proto.Marshal(u)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketAuthUsers).Put(u.Name, v); err != nil {
			return fmt.Errorf("etcddb: user %q: %w", u.Name, err)
		}
	}
	for _, r := range a.Roles {
		v, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketAuthRoles).Put(r.Name, v); err != nil {
			return fmt.Errorf("etcddb: role %q: %w", r.Name, err)
		}
	}
	return nil
}

// readAuth decodes the auth buckets, each of which may be missing.
func readAuth(tx *bolt.Tx) (Auth, error) {
	var a Auth
	if b := tx.Bucket(bucketAuth); b != nil {
		a.Enabled = bytes.Equal(b.Get(authEnabledKey), []byte{1})
		if v := b.Get(authRevisionKey); v != nil {
			if len(v) != 8 {
				return a, fmt.Errorf("%w: authRevision has %d bytes", ErrBadDB, len(v))
			}
			a.Revision = binary.BigEndian.Uint64(v)
		}
	}
	if b := tx.Bucket(bucketAuthUsers); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			u := &authpb.User{}
			if err := proto.Unmarshal(v, u); err != nil {
				return fmt.Errorf("%w: user %q: %w", ErrBadDB, k, err)
			}
			if !bytes.Equal(k, u.Name) {
				return fmt.Errorf("%w: user key %q holds user %q", ErrBadDB, k, u.Name)
			}
			a.Users = append(a.Users, u)
			return nil
		}); err != nil {
			return a, err
		}
	}
	if b := tx.Bucket(bucketAuthRoles); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			r := &authpb.Role{}
			if err := proto.Unmarshal(v, r); err != nil {
				return fmt.Errorf("%w: role %q: %w", ErrBadDB, k, err)
			}
			if !bytes.Equal(k, r.Name) {
				return fmt.Errorf("%w: role key %q holds role %q", ErrBadDB, k, r.Name)
			}
			a.Roles = append(a.Roles, r)
			return nil
		}); err != nil {
			return a, err
		}
	}
	return a, nil
}

// memberKey is etcd's types.ID.String(): hex without padding.
func memberKey(id uint64) []byte { return []byte(strconv.FormatUint(id, 16)) }

func writeLeases(db *bolt.DB, src Source) error {
	return db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLease)
		return src.Leases(func(id, ttl int64) error {
			v, err := proto.Marshal(&leasepb.Lease{ID: id, TTL: ttl})
			if err != nil {
				return err
			}
			return b.Put(binary.BigEndian.AppendUint64(nil, uint64(id)), v)
		})
	})
}

// writeHistory fills the key bucket in revision order, committing every
// writeChunk entries: the order is bbolt's own, so every page fills up.
func writeHistory(ctx context.Context, db *bolt.DB, src Source) error {
	var tx *bolt.Tx
	var b *bolt.Bucket
	n, size := 0, 0
	err := src.History(func(e storage.HistoryEntry) error {
		if tx == nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			var err error
			if tx, err = db.Begin(true); err != nil {
				return err
			}
			b = tx.Bucket(bucketKey)
			b.FillPercent = 1
		}
		kv := e.KV
		if e.Tombstone {
			kv = &mvccpb.KeyValue{Key: e.KV.Key}
		}
		v, err := proto.Marshal(kv)
		if err != nil {
			return err
		}
		if err := b.Put(revKey(e.Main, e.Sub, e.Tombstone), v); err != nil {
			return err
		}
		n++
		if size += len(v); n%writeChunk == 0 || size >= writeChunkBytes {
			err := tx.Commit()
			tx, size = nil, 0
			return err
		}
		return nil
	})
	if tx != nil {
		if err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	return err
}

// revKey is etcd's key-bucket key of revision main.sub.
func revKey(main, sub int64, tombstone bool) []byte {
	k := make([]byte, revKeyLen, revKeyLen+1)
	binary.BigEndian.PutUint64(k, uint64(main))
	k[8] = '_'
	binary.BigEndian.PutUint64(k[9:], uint64(sub))
	if tombstone {
		k = append(k, tombstoneMark)
	}
	return k
}

// parseRevKey decodes a key-bucket key.
func parseRevKey(k []byte) (main, sub int64, tombstone bool, err error) {
	if len(k) != revKeyLen && len(k) != revKeyLen+1 || k[8] != '_' {
		return 0, 0, false, fmt.Errorf("%w: bad revision key %q", ErrBadDB, k)
	}
	if len(k) == revKeyLen+1 {
		if k[revKeyLen] != tombstoneMark {
			return 0, 0, false, fmt.Errorf("%w: bad revision mark %q", ErrBadDB, k)
		}
		tombstone = true
	}
	main, sub = int64(binary.BigEndian.Uint64(k)), int64(binary.BigEndian.Uint64(k[9:]))
	if main < 0 || sub < 0 {
		return 0, 0, false, fmt.Errorf("%w: negative revision %d.%d", ErrBadDB, main, sub)
	}
	return main, sub, tombstone, nil
}

// Image is a read-only view of a database file, to copy it out as etcd's
// snapshot does (the used pages only).
type Image struct {
	db *bolt.DB
	tx *bolt.Tx
}

// OpenImage opens the database at path for copying.
func OpenImage(path string) (*Image, error) {
	if err := checkFile(path); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("etcddb: open %s: %w", path, err)
	}
	tx, err := db.Begin(false)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &Image{db: db, tx: tx}, nil
}

// Size is the number of bytes WriteTo writes.
func (im *Image) Size() int64 { return im.tx.Size() }

// WriteTo writes the database (Size bytes) to w.
func (im *Image) WriteTo(w io.Writer) (int64, error) { return im.tx.WriteTo(w) }

// Close releases the file.
func (im *Image) Close() error {
	return errors.Join(im.tx.Rollback(), im.db.Close())
}

// checkFile checks, before bbolt maps the file, that it is a bbolt
// database as long as its newest valid meta page says: bbolt reads a page
// past the end of a truncated file through its memory map, which kills the
// process instead of failing.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	readMeta := func(off int64) (boltMeta, bool) {
		buf := make([]byte, boltMetaLen)
		if _, err := f.ReadAt(buf, off); err != nil {
			return boltMeta{}, false
		}
		return parseBoltMeta(buf)
	}
	// The second meta page is one page in: the first says how long a page
	// is; if it is damaged, bbolt looks at the usual sizes.
	var best *boltMeta
	pageSizes := []int64{int64(os.Getpagesize()), 4096, 8192, 16384, 65536}
	if m, ok := readMeta(0); ok {
		best, pageSizes = &m, []int64{int64(m.pageSize)}
	}
	for _, ps := range pageSizes {
		if m, ok := readMeta(ps); ok && int64(m.pageSize) == ps {
			if best == nil || m.txid > best.txid {
				best = &m
			}
			break
		}
	}
	if best == nil {
		return fmt.Errorf("%w: %s: no valid bbolt meta page", ErrBadDB, path)
	}
	if need := int64(best.pgid) * int64(best.pageSize); need > fi.Size() {
		return fmt.Errorf("%w: %s is truncated: the database has %d bytes, the file %d", ErrBadDB, path, need, fi.Size())
	}
	return nil
}

// boltMeta is what checkFile reads of a bbolt meta page: a 16-byte page
// header, then magic, version, page size, flags (4 bytes each), the root
// bucket (16), the freelist page, the high-water page id, the txid and an
// FNV-64a checksum of the meta before it (8 each), in the machine's byte
// order (bbolt files are not portable across byte orders).
type boltMeta struct {
	pageSize   uint32
	pgid, txid uint64
}

const (
	boltPageHeaderLen = 16
	boltMetaLen       = boltPageHeaderLen + 64
)

func parseBoltMeta(page []byte) (boltMeta, bool) {
	m := page[boltPageHeaderLen:boltMetaLen]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != 2 {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// LooksLikeDB reports whether prefix, the first bytes of a file, is the
// start of a bbolt database (its first meta page's magic number).
func LooksLikeDB(prefix []byte) bool {
	return len(prefix) >= boltMagicOffset+4 &&
		binary.LittleEndian.Uint32(prefix[boltMagicOffset:]) == boltMagic
}

// Sink receives what Read finds: storage.Import.
type Sink interface {
	Lease(id, ttl int64) error
	Add(storage.HistoryEntry) error
}

// Info is what Read found besides the history and the leases.
type Info struct {
	// Rev is etcd's current revision of the database: the last revision of
	// the key bucket, or the compact revision if that is larger.
	Rev int64
	// CompactRev is the finished compaction (-1: none) and
	// ScheduledCompactRev a compaction etcd had started but not finished
	// (0: none), which etcd completes when it starts.
	CompactRev, ScheduledCompactRev int64
	ConsistentIndex, Term           uint64
	StorageVersion                  string
	// Revisions and Leases count what went to the sink.
	Revisions, Leases int64
	// Auth is the content of the auth buckets, in name order.
	Auth Auth
}

// Read reads the database at path into dst: leases first, then every
// key-bucket entry in revision order.
func Read(ctx context.Context, path string, dst Sink) (info Info, err error) {
	info = Info{CompactRev: -1}
	if err := checkFile(path); err != nil {
		return info, err
	}
	// bbolt trusts the page references it follows: in a damaged file they
	// can point outside the mapping or make it panic. Both become errors
	// here instead of killing the process. (bbolt's tx.Check is not run: in
	// a read-only database without a stored freelist it walks the pages on
	// a goroutine of its own, where a damaged page panics beyond recovery.)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: reading the database failed: %v", ErrBadDB, path, r)
		}
	}()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return info, fmt.Errorf("%w: %s: %w", ErrBadDB, path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		meta, keys := tx.Bucket(bucketMeta), tx.Bucket(bucketKey)
		if meta == nil || keys == nil {
			return fmt.Errorf("%w: no %q or %q bucket", ErrBadDB, bucketMeta, bucketKey)
		}
		if err := readMeta(meta, &info); err != nil {
			return err
		}
		var err error
		if info.Auth, err = readAuth(tx); err != nil {
			return err
		}
		if b := tx.Bucket(bucketLease); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				var l leasepb.Lease
				if err := proto.Unmarshal(v, &l); err != nil {
					return fmt.Errorf("%w: lease %x: %w", ErrBadDB, k, err)
				}
				if len(k) != 8 || int64(binary.BigEndian.Uint64(k)) != l.ID {
					return fmt.Errorf("%w: lease key %x holds lease %x", ErrBadDB, k, l.ID)
				}
				info.Leases++
				return dst.Lease(l.ID, l.TTL)
			}); err != nil {
				return err
			}
		}
		c := keys.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if info.Revisions%writeChunk == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			main, sub, tomb, err := parseRevKey(k)
			if err != nil {
				return err
			}
			kv := &mvccpb.KeyValue{}
			if err := proto.Unmarshal(v, kv); err != nil {
				return fmt.Errorf("%w: revision %d.%d: %w", ErrBadDB, main, sub, err)
			}
			if len(kv.Key) == 0 {
				// etcdutl restore --bump-revision marks the bumped
				// revision with an empty entry; it is no event.
				info.Rev = main
				continue
			}
			if tomb {
				kv = &mvccpb.KeyValue{Key: kv.Key, ModRevision: main}
			}
			if err := dst.Add(storage.HistoryEntry{Main: main, Sub: sub, Tombstone: tomb, KV: kv}); err != nil {
				return err
			}
			info.Rev = main
			info.Revisions++
		}
		return nil
	})
	info.Rev = max(info.Rev, info.CompactRev, info.ScheduledCompactRev, 1)
	return info, err
}

func readMeta(meta *bolt.Bucket, info *Info) error {
	if v := meta.Get(metaConsistentIndex); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("%w: consistent_index has %d bytes", ErrBadDB, len(v))
		}
		info.ConsistentIndex = binary.BigEndian.Uint64(v)
	}
	if v := meta.Get(metaTerm); v != nil {
		if len(v) != 8 {
			return fmt.Errorf("%w: term has %d bytes", ErrBadDB, len(v))
		}
		info.Term = binary.BigEndian.Uint64(v)
	}
	if v := meta.Get(metaFinishedCompact); v != nil {
		main, _, _, err := parseRevKey(v)
		if err != nil {
			return fmt.Errorf("finishedCompactRev: %w", err)
		}
		info.CompactRev = main
	}
	if v := meta.Get(metaScheduledCompact); v != nil {
		main, _, _, err := parseRevKey(v)
		if err != nil {
			return fmt.Errorf("scheduledCompactRev: %w", err)
		}
		if main > info.CompactRev {
			info.ScheduledCompactRev = main
		}
	}
	info.StorageVersion = string(meta.Get(metaStorageVersion))
	return nil
}
