// Package storage is concord's MVCC key-value store: etcd's v3 MVCC
// semantics (revisions, versions, tombstones, leases, compaction, txns) on a
// single Pebble instance that it shares with the raft log of consensus.
//
// # Semantics (etcd is the spec)
//
//   - The store starts at revision 1. Every request that changes the
//     keyspace (Put, a DeleteRange that deletes something, a Txn that writes,
//     a LeaseRevoke that deletes keys) gets exactly one new main revision;
//     its events get sub revisions 0..n-1. Revisions are contiguous.
//   - A key's create_revision is the revision of the put that created its
//     current generation, version counts puts in that generation and a
//     delete ends the generation (a tombstone); the next put starts over at
//     version 1.
//   - Reads below the compact revision fail with ErrCompacted, above the
//     current revision with ErrFutureRev. A store never compacted has
//     compact revision -1 (etcd's), so Compact(0) succeeds once on it.
//   - Each compaction hashes the history it is about to remove; HashKV
//     returns that hash for the compaction's revision while it is among the
//     last 10 (in memory, as in etcd).
//   - Writes happen in a Batch; nothing is visible to Store readers until
//     Batch.Commit, which is one atomic pebble batch (raft log writes added
//     by consensus through Batch.Pebble included). Readers use one pebble
//     iterator per request, so each read is point-in-time.
//   - After a crash, Rev, CompactRev and Applied are exactly those of the
//     last committed batch: they are persisted in the same pebble batch.
//
// # Encoding
//
// Every key starts with a one-byte prefix. 0x01 is never used: consensus
// writes the raft log under it.
//
//	0x10 | esc(userKey) 0x00 0x01 | ^main (8 bytes BE) | ^sub (8 bytes BE)
//	        -> MVCC version. Value: 0x01 | uvarint(create_revision) |
//	           uvarint(version) | varint(lease) | value bytes;
//	           a tombstone is the single byte 0x02.
//	0x11 | main (8 BE) | sub (8 BE)
//	        -> revision index. Value: 0x01 (put) or 0x02 (tombstone) | userKey.
//	0x12 | leaseID^(1<<63) (8 BE)              -> varint(ttl)
//	0x13 | leaseID^(1<<63) (8 BE) | userKey    -> empty (key attached to lease)
//	0x14 'f'  -> store format ("concord-mvcc-1")
//	0x14 'r'  -> current revision (8 BE)
//	0x14 'c'  -> compact revision (8 BE); absent = never compacted (-1)
//	0x14 'a'  -> applied raft index (8 BE) | term (8 BE)
//	0x15 | memberID (8 BE) | alarmType (4 BE)  -> empty (active alarm)
//	0x16 | key -> SetMeta value
//
// esc replaces every 0x00 byte with 0x00 0xFF; with the 0x00 0x01
// terminator this preserves bytewise order of user keys and makes the
// encoded user key prefix-free, so a range [key, end) is one pebble scan
// from 0x10|esc(key) to 0x10|esc(end). Inverting the revisions orders the
// versions of a key newest first: the version visible at revision R is the
// first entry at or after 0x10|esc(key) 0x00 0x01|^R. The revision index
// serves history reads (RangeEvents, for watch catch-up) and compaction.
// Lease ids flip the sign bit so they sort numerically.
//
// # Concurrency
//
// Store methods are safe for concurrent use. A Batch is used by one
// goroutine; only one batch that changes MVCC/lease/alarm/applied state
// may be open at a time (the loser of a race gets ErrBatchConflict at
// Commit). Close waits for in-flight operations and is idempotent.
package storage
