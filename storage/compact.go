package storage

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// compactChunk bounds how many distinct keys one compaction pass holds in
// memory at a time.
const compactChunk = 4096

// Compact removes, inside this batch, every version that no read at a
// revision >= rev can see: for each key, all versions older than its newest
// version <= rev, and that newest version too if it is a tombstone older
// than rev. As in etcd (>= 3.5.16), a tombstone at exactly rev is kept so a
// watch starting at the compact revision still sees the delete. rev <=
// CompactRev fails with ErrCompacted, rev > current with ErrFutureRev; a
// store never compacted has CompactRev -1, so it accepts rev 0 once.
// The response header carries the current revision.
//
// Before removing anything it hashes the history at rev (what HashKV(rev)
// returns at that moment) and, once the batch commits, the store keeps that
// hash for HashKV(rev), as etcd does. Like etcd's compaction this reads the
// whole keyspace.
func (b *Batch) Compact(rev int64) (resp *pb.CompactionResponse, err error) {
	o, err := b.begin()
	if err != nil {
		return nil, err
	}
	defer func() { b.finish(o, err) }()
	if rev <= b.compactRev {
		return nil, ErrCompacted
	}
	if rev > b.rev {
		return nil, ErrFutureRev
	}
	h, err := b.hashAt(rev)
	if err != nil {
		return nil, err
	}
	if err := o.compact(b.compactRev, rev); err != nil {
		return nil, err
	}
	b.hashes = append(b.hashes, h)
	b.compactRev = rev
	b.compactDirty, b.stateful = true, true
	// etcd reads its store's revision for the response with a range, which
	// shows in etcd_mvcc_range_total.
	o.ops.ranges++
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: b.rev}}, nil
}

// hashAt hashes the batch's view of the history at rev under the current
// compact revision, before a compaction at rev changes it.
func (b *Batch) hashAt(rev int64) (CompactionHash, error) {
	it, err := b.pb.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return CompactionHash{}, err
	}
	defer it.Close()
	h, err := hashKVs(it, rev, b.compactRev)
	if err != nil {
		return CompactionHash{}, err
	}
	return CompactionHash{Hash: h, Revision: rev, CompactRevision: b.compactRev}, nil
}

// compact visits every key written at a revision in [prev, rev] (the only
// keys that can have new garbage: a key untouched since the previous
// compaction has a single version <= prev, which is live, or a tombstone at
// exactly prev that must go now) and prunes its versions. prev is -1 on a
// store never compacted; revisions start at 1.
func (o *writeOp) compact(prev, rev int64) error {
	b := o.b
	revIt, err := b.pb.NewIter(&pebble.IterOptions{
		LowerBound: encodeRevKey(nil, max(prev, 0), 0),
		UpperBound: encodeRevKey(nil, rev+1, 0),
	})
	if err != nil {
		return err
	}
	defer revIt.Close()
	seen := make(map[string]struct{}, 64)
	var keys [][]byte
	removed := 0
	flush := func() error {
		n, err := o.compactKeys(keys, rev)
		removed += n
		clear(seen)
		keys = keys[:0]
		return err
	}
	for ok := revIt.First(); ok; ok = revIt.Next() {
		v, err := revIt.ValueAndErr()
		if err != nil {
			return err
		}
		uk, _, err := decodeRevValue(v)
		if err != nil {
			return err
		}
		if _, dup := seen[string(uk)]; dup {
			continue
		}
		seen[string(uk)] = struct{}{}
		keys = append(keys, slices.Clone(uk))
		if len(keys) >= compactChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := revIt.Error(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	b.s.logger.Info("compacted", "revision", rev, "previous", prev, "versions-removed", removed)
	return nil
}

// compactKeys prunes the versions of keys. It uses its own iterator so the
// deletions it makes do not disturb it.
func (o *writeOp) compactKeys(keys [][]byte, rev int64) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	it, err := o.b.pb.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	removed := 0
	var seek, revKey []byte
	for _, k := range keys {
		seek = kvSeekKey(seek[:0], k, rev)
		keyPrefix := seek[:len(seek)-8]
		first := true
		for ok := it.SeekGE(seek); ok && bytes.HasPrefix(it.Key(), keyPrefix); ok = it.Next() {
			ik := it.Key()
			_, main, sub, valid := splitKVKey(ik)
			if !valid {
				return removed, fmt.Errorf("%w: bad kv key %q", errCorrupt, ik)
			}
			if first {
				first = false
				v, err := it.ValueAndErr()
				if err != nil {
					return removed, err
				}
				if main == rev || len(v) == 0 || v[0] != flagTombstone {
					continue // the version visible at rev stays
				}
			}
			if err := o.delete(ik); err != nil {
				return removed, err
			}
			revKey = encodeRevKey(revKey[:0], main, sub)
			if err := o.delete(revKey); err != nil {
				return removed, err
			}
			removed++
		}
		if err := it.Error(); err != nil {
			return removed, err
		}
	}
	return removed, nil
}
