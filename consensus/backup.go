package consensus

// Backups: etcd's Maintenance.Snapshot (etcdctl snapshot save) and its
// restore (etcdutl snapshot restore; here `concord snapshot restore`).
//
// A backup file is etcd's: the bbolt database of an etcd member holding
// the store's keys with their whole history, leases, compaction, members,
// alarms and auth state (users, roles, enabled, revision; never the token
// key), see internal/etcddb, followed by the SHA-256 of the database
// bytes. etcdctl accepts a download only if its size is a multiple of 512
// plus 32 (the digest), which a bbolt file of whole pages is; etcdutl
// snapshot status and restore read it, and the etcd started on what
// etcdutl restored serves the same keys, revisions, leases and auth.
//
// RestoreBackup reads such a file, from concord or from a real etcd, and
// also the format concord wrote before (the store snapshot stream of
// storage.Snapshot, zero-padded to 512, then the digest): it tells them
// apart by their first bytes.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/internal/etcddb"
	"github.com/concord-kv/concord/storage"
)

const (
	// backupAlign is the size a backup (without its digest) is a multiple of.
	backupAlign = 512
	// backupChunk is the blob size of one SnapshotResponse (etcd's 32 KiB).
	backupChunk = 32 * 1024
)

// ErrBadBackup is wrapped by every error about a malformed backup file.
var ErrBadBackup = errors.New("consensus: bad backup")

// Snapshot streams a consistent backup of the store as etcd's
// Maintenance.Snapshot does: blobs with the bytes remaining after each, then
// a last response holding the SHA-256 digest. The database is built in a
// temporary file from one store snapshot, so the size is known before the
// first blob (etcd reports it), memory stays flat whatever the store's
// size, and a slow client never holds a store snapshot open.
func (n *Node) Snapshot(ctx context.Context, send func(*pb.SnapshotResponse) error) error {
	if n.stopped() {
		return ErrStopped
	}
	if err := n.requireAdmin(ctx); err != nil {
		return err
	}
	sn, err := n.store.NewSnapshot()
	if err != nil {
		return n.storeErr(err)
	}
	dir, err := os.MkdirTemp("", "concord-backup-*")
	if err != nil {
		sn.Close()
		return fmt.Errorf("consensus: backup spool: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "db")
	rev := sn.Rev()
	hdr, err := backupHeader(sn)
	if err == nil {
		err = etcddb.Write(ctx, path, hdr, sn)
	}
	sn.Close()
	if err != nil {
		return fmt.Errorf("consensus: backup: %w", err)
	}
	img, err := etcddb.OpenImage(path)
	if err != nil {
		return fmt.Errorf("consensus: backup: %w", err)
	}
	defer img.Close()
	size := img.Size()
	total := size + padding(size)
	n.lg.Info("sending a backup of the store", "size", total, "revision", rev)
	out := &blobSender{ctx: ctx, send: send, hdr: n.header(nil), h: sha256.New(), total: total}
	if _, err := img.WriteTo(out); err != nil {
		return err
	}
	// A bbolt file is whole pages, which 512 divides on every platform
	// etcd runs on; zeros after the last page are ignored by bbolt.
	if _, err := out.Write(make([]byte, padding(size))); err != nil {
		return err
	}
	if err := out.flush(); err != nil {
		return err
	}
	if out.sent != total {
		return fmt.Errorf("consensus: backup: sent %d of %d bytes", out.sent, total)
	}
	return send(&pb.SnapshotResponse{Header: out.hdr, Blob: out.h.Sum(nil), Version: storageVersion})
}

// backupHeader is what the etcd database says besides keys and leases:
// the raft position, compaction, versions, members, alarms and auth state
// (without the token key) of the snapshot.
func backupHeader(sn *storage.Snapshot) (etcddb.Header, error) {
	index, term := sn.Applied()
	hdr := etcddb.Header{
		ConsistentIndex: index,
		Term:            term,
		CompactRev:      sn.CompactRev(),
		StorageVersion:  storageVersion,
		ClusterVersion:  storageVersion,
		Alarms:          sn.Alarms(),
	}
	rawAuth, err := sn.Meta(metaAuth)
	if err != nil {
		return hdr, err
	}
	st, err := auth.Unmarshal(rawAuth)
	if err != nil {
		return hdr, err
	}
	hdr.Auth = etcddb.Auth{Enabled: st.Enabled(), Revision: st.Revision(), Users: st.Users(), Roles: st.Roles()}
	raw, err := sn.Meta(metaClusterKey)
	if err != nil || len(raw) == 0 {
		return hdr, err
	}
	var meta clusterMeta
	if err := json.Unmarshal(raw, &meta); err != nil {
		return hdr, fmt.Errorf("decode cluster metadata: %w", err)
	}
	for _, m := range meta.Members {
		hdr.Members = append(hdr.Members, etcddb.Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	hdr.RemovedMembers = meta.Removed
	return hdr, nil
}

// blobSender cuts what is written to it into SnapshotResponse blobs of
// backupChunk bytes, hashing them as they go.
type blobSender struct {
	ctx         context.Context
	send        func(*pb.SnapshotResponse) error
	hdr         *pb.ResponseHeader
	h           hash.Hash
	total, sent int64
	buf         []byte
}

func (s *blobSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(backupChunk-len(s.buf), len(p))
		s.buf = append(s.buf, p[:k]...)
		p = p[k:]
		if len(s.buf) == backupChunk {
			if err := s.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (s *blobSender) flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	if err := s.ctx.Err(); err != nil {
		return err
	}
	s.h.Write(s.buf)
	s.sent += int64(len(s.buf))
	blob := s.buf
	s.buf = nil // the stream may still hold blob
	return s.send(&pb.SnapshotResponse{Header: s.hdr, RemainingBytes: uint64(s.total - s.sent), Blob: blob, Version: storageVersion})
}

// padding is the number of zero bytes that align size to backupAlign.
func padding(size int64) int64 { return (backupAlign - size%backupAlign) % backupAlign }

// RestoreBackup creates a member's data directory dataDir from a backup of
// size bytes: what etcdctl snapshot save wrote from concord or from etcd,
// or an etcd member's member/snap/db copied as it is (with skipHashCheck).
// dataDir must not exist. The member started on it bootstraps a new
// cluster from its flags (--name, --initial-cluster, ...) around the
// restored keys, leases and revisions, as etcd does after etcdutl snapshot
// restore; every member of the new cluster is restored from the same
// backup.
func RestoreBackup(ctx context.Context, backup io.ReaderAt, size int64, opts RestoreOptions) error {
	dataDir, skipHashCheck, log := opts.DataDir, opts.SkipHashCheck, opts.Logger
	if _, err := os.Stat(dataDir); err == nil {
		return fmt.Errorf("consensus: data-dir %q exists", dataDir)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if log == nil {
		log = slog.Default()
	}
	bodySize := size
	hasDigest := size%backupAlign == sha256.Size
	switch {
	case hasDigest:
		bodySize = size - sha256.Size
		if !skipHashCheck {
			if err := verifyDigest(backup, bodySize); err != nil {
				return err
			}
		}
	case !skipHashCheck:
		return fmt.Errorf("%w: no SHA-256 digest at the end (%d bytes); --skip-hash-check restores anyway", ErrBadBackup, size)
	}
	prefix := make([]byte, 32)
	n, err := backup.ReadAt(prefix, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("consensus: read backup: %w", err)
	}
	prefix = prefix[:min(int64(n), bodySize)]
	var restore func(*storage.Store) error
	switch {
	case storage.IsSnapshotStream(prefix):
		restore = func(store *storage.Store) error {
			if err := restoreInto(store, io.NewSectionReader(backup, 0, bodySize)); err != nil {
				return err
			}
			st, err := loadAuth(store)
			if err != nil {
				return err
			}
			return restoreAuth(store, etcddb.Auth{Enabled: st.Enabled(), Revision: st.Revision(), Users: st.Users(), Roles: st.Roles()}, log)
		}
	case etcddb.LooksLikeDB(prefix):
		restore = func(store *storage.Store) error {
			return restoreEtcdDB(ctx, store, filepath.Dir(dataDir), io.NewSectionReader(backup, 0, bodySize), log)
		}
	default:
		return fmt.Errorf("%w: neither an etcd database nor a concord store snapshot", ErrBadBackup)
	}
	store, err := storage.Open(dataDir, storage.Options{Logger: log, WALDir: opts.WALDir})
	if err != nil {
		return err
	}
	err = restore(store)
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dataDir)
	}
	return err
}

// RestoreOptions are RestoreBackup's: where to restore, and how.
type RestoreOptions struct {
	// DataDir is the data directory to create; it must not exist.
	DataDir string
	// WALDir, if set, receives the store's write-ahead log (etcd's
	// --wal-dir); start the member with the same --wal-dir.
	WALDir string
	// SkipHashCheck accepts a file without the digest.
	SkipHashCheck bool
	// Logger is nil for slog.Default().
	Logger *slog.Logger
}

// verifyDigest checks that the SHA-256 of the backup's first bodySize bytes
// is the digest after them, reading the file once without holding it.
func verifyDigest(backup io.ReaderAt, bodySize int64) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(backup, 0, bodySize)); err != nil {
		return fmt.Errorf("consensus: read backup: %w", err)
	}
	sum := make([]byte, sha256.Size)
	if _, err := backup.ReadAt(sum, bodySize); err != nil {
		return fmt.Errorf("consensus: read backup: %w", err)
	}
	if string(h.Sum(nil)) != string(sum) {
		return fmt.Errorf("%w: SHA-256 digest mismatch", ErrBadBackup)
	}
	return nil
}

// restoreInto decodes the store snapshot stream body into store.
func restoreInto(store *storage.Store, body io.Reader) error {
	r, err := store.NewRestore()
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.ReadFrom(body); err != nil {
		return fmt.Errorf("%w: %w", ErrBadBackup, err)
	}
	return r.Commit()
}

// restoreEtcdDB imports an etcd database into store. bbolt reads a file of
// its own, so the database is first copied (without the digest) next to
// the new data directory, in tmpDir.
func restoreEtcdDB(ctx context.Context, store *storage.Store, tmpDir string, db io.Reader, log *slog.Logger) error {
	f, err := os.CreateTemp(tmpDir, ".concord-restore-*.db")
	if err != nil {
		return fmt.Errorf("consensus: restore: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, db)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("consensus: restore: copy the database: %w", err)
	}
	imp, err := store.NewImport()
	if err != nil {
		return err
	}
	defer imp.Close()
	info, err := etcddb.Read(ctx, f.Name(), imp)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadBackup, err)
	}
	if err := imp.Commit(info.Rev, info.CompactRev); err != nil {
		return fmt.Errorf("%w: %w", ErrBadBackup, err)
	}
	if info.ScheduledCompactRev > 0 {
		// etcd finishes an interrupted compaction when it starts; so does
		// the restore.
		b := store.NewBatch()
		_, err := b.Compact(info.ScheduledCompactRev)
		if err == nil {
			err = b.Commit(true)
		}
		b.Close()
		if err != nil {
			return fmt.Errorf("consensus: restore: finish the compaction at %d: %w", info.ScheduledCompactRev, err)
		}
	}
	if err := restoreAuth(store, info.Auth, log); err != nil {
		return err
	}
	log.Info("restored an etcd database", "revision", info.Rev, "compact-revision", max(info.CompactRev, info.ScheduledCompactRev),
		"events", info.Revisions, "leases", info.Leases, "storage-version", info.StorageVersion)
	return nil
}

// restoreAuth stores the users, roles, enabled flag and auth revision of a
// backup as the store's auth state, without a token key: tokens issued
// before the backup do not work on the restored cluster (etcd's simple
// tokens die with the process too), and its leader chooses a new key when
// it starts (proposeTokenKey), one key for every member.
func restoreAuth(store *storage.Store, a etcddb.Auth, log *slog.Logger) error {
	st, err := auth.Restored(a.Enabled, a.Revision, a.Users, a.Roles)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadBackup, err)
	}
	data, err := st.Marshal()
	if err != nil {
		return err
	}
	b := store.NewBatch()
	defer b.Close()
	b.SetMeta(metaAuth, data)
	if err := b.Commit(true); err != nil {
		return fmt.Errorf("consensus: restore: auth state: %w", err)
	}
	if len(a.Users) > 0 || len(a.Roles) > 0 || a.Enabled {
		log.Info("restored auth", "auth-enabled", st.Enabled(), "auth-revision", st.Revision(),
			"users", len(a.Users), "roles", len(a.Roles))
	}
	return nil
}
