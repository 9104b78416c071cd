package consensus

import (
	"github.com/cockroachdb/pebble/v2/vfs"
)

// storageFS is the filesystem the member's store is opened on: the real
// disk (nil) or the tests' one, with fsync turned off for UnsafeNoFsync.
func storageFS(cfg Config) vfs.FS {
	if !cfg.UnsafeNoFsync {
		return cfg.storageFS
	}
	fs := cfg.storageFS
	if fs == nil {
		fs = vfs.Default
	}
	return noSyncFS{fs}
}

// noSyncFS is an FS whose files ignore every request to sync, as etcd's
// --unsafe-no-fsync skips its WAL and bbolt fsyncs: everything else about
// writes (order, batching, what an acknowledgement waits for) is unchanged.
type noSyncFS struct{ vfs.FS }

func (fs noSyncFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return noSync(fs.FS.Create(name, c))
}

func (fs noSyncFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return noSync(fs.FS.Open(name, opts...))
}

func (fs noSyncFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return noSync(fs.FS.OpenReadWrite(name, c, opts...))
}

func (fs noSyncFS) OpenDir(name string) (vfs.File, error) { return noSync(fs.FS.OpenDir(name)) }

func (fs noSyncFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return noSync(fs.FS.ReuseForWrite(oldname, newname, c))
}

func (fs noSyncFS) Unwrap() vfs.FS { return fs.FS }

func noSync(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

type noSyncFile struct{ vfs.File }

func (noSyncFile) Sync() error                { return nil }
func (noSyncFile) SyncData() error            { return nil }
func (noSyncFile) SyncTo(int64) (bool, error) { return true, nil }
