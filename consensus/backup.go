package consensus

// Backups: etcd's Maintenance.Snapshot (etcdctl snapshot save) and its
// restore (etcdutl snapshot restore; here `concord snapshot restore`).
//
// A backup file is the store snapshot stream (storage.Snapshot), padded with
// zero bytes to a multiple of 512, followed by the SHA-256 of everything
// before it. The padding and the digest are etcd's framing: etcdctl accepts
// a download only if its size is a multiple of 512 plus 32 (the digest),
// and a restore checks the digest. The stream itself ends with its own
// record count and CRC, so the padding is never read as data.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/storage"
)

const (
	// backupAlign is the size a backup (without its digest) is padded to.
	backupAlign = 512
	// backupChunk is the blob size of one SnapshotResponse (etcd's 32 KiB).
	backupChunk = 32 * 1024
)

// ErrBadBackup is wrapped by every error about a malformed backup file.
var ErrBadBackup = errors.New("consensus: bad backup")

// Snapshot streams a consistent backup of the store as etcd's
// Maintenance.Snapshot does: blobs with the bytes remaining after each, then
// a last response holding the SHA-256 digest. The snapshot is spooled to a
// temporary file first, so the size is known before the first blob (etcd
// reports it) and a slow client never holds a store snapshot open.
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
	f, err := os.CreateTemp("", "concord-backup-*")
	if err != nil {
		sn.Close()
		return fmt.Errorf("consensus: backup spool: %w", err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	rev := sn.Rev()
	size, err := io.Copy(f, sn)
	sn.Close()
	if err != nil {
		return fmt.Errorf("consensus: backup spool: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("consensus: backup spool: %w", err)
	}
	total := size + padding(size)
	body := io.MultiReader(f, bytes.NewReader(make([]byte, padding(size))))
	n.lg.Info("sending a backup of the store", "size", total, "revision", rev)
	h := sha256.New()
	hdr := n.header(nil)
	for sent := int64(0); sent < total; {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf := make([]byte, min(backupChunk, total-sent))
		if _, err := io.ReadFull(body, buf); err != nil {
			return fmt.Errorf("consensus: backup spool: %w", err)
		}
		h.Write(buf)
		sent += int64(len(buf))
		if err := send(&pb.SnapshotResponse{Header: hdr, RemainingBytes: uint64(total - sent), Blob: buf, Version: storageVersion}); err != nil {
			return err
		}
	}
	return send(&pb.SnapshotResponse{Header: hdr, Blob: h.Sum(nil), Version: storageVersion})
}

// padding is the number of zero bytes that align size to backupAlign.
func padding(size int64) int64 { return (backupAlign - size%backupAlign) % backupAlign }

// RestoreBackup creates a member's data directory dataDir from a backup of
// size bytes (what etcdctl snapshot save wrote). dataDir must not exist.
// The member started on it bootstraps a new cluster from its flags (--name,
// --initial-cluster, ...) around the restored keys, leases and revisions,
// as etcd does after etcdutl snapshot restore; every member of the new
// cluster is restored from the same backup.
// skipHashCheck accepts a file without the digest (a store snapshot copied
// some other way).
func RestoreBackup(dataDir string, backup io.ReaderAt, size int64, skipHashCheck bool, log *slog.Logger) error {
	if _, err := os.Stat(dataDir); err == nil {
		return fmt.Errorf("consensus: data-dir %q exists", dataDir)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	bodySize := size
	if !skipHashCheck {
		if size%backupAlign != sha256.Size {
			return fmt.Errorf("%w: no SHA-256 digest at the end (%d bytes); --skip-hash-check restores anyway", ErrBadBackup, size)
		}
		bodySize = size - sha256.Size
		if err := verifyDigest(backup, bodySize); err != nil {
			return err
		}
	}
	store, err := storage.Open(dataDir, storage.Options{Logger: log})
	if err != nil {
		return err
	}
	err = restoreInto(store, io.NewSectionReader(backup, 0, bodySize))
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.RemoveAll(dataDir)
	}
	return err
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
	if !bytes.Equal(h.Sum(nil), sum) {
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
