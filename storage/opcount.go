package storage

import "sync/atomic"

// OpCounts are the store's operation counters since it opened, counted as
// etcd's mvcc layer counts them (server/storage/mvcc/metrics_txn.go), so
// etcd_mvcc_range_total, _put_total, _delete_total, _txn_total,
// etcd_debugging_mvcc_total_put_size_in_bytes and
// etcd_debugging_mvcc_keys_total read the same on concord as on etcd after
// the same requests:
//
//   - Ranges counts every range etcd runs against its store: a Range (and
//     each chunk of a streamed range), each compare a txn evaluates (a
//     failing compare stops the evaluation), the range op of a txn, and the
//     previous-version read of a put with prev_kv, ignore_value or
//     ignore_lease and of a delete with prev_kv, and a compaction (etcd
//     reads the revision for its response with a range).
//   - Puts and Deletes count put and delete-range operations, a delete that
//     matches nothing included; a lease revoke deletes each of its keys
//     with its own delete.
//   - Txns counts etcd's store transactions that ran more than one of the
//     above: a Put with prev_kv is one, and a write txn is two (its
//     compares and checks, then its writes) counted separately, so a txn
//     with one compare and one put counts as none.
//   - PutBytes adds len(key)+len(value) of every put.
//   - Keys is the number of keys with a live version (not deleted).
type OpCounts struct {
	Ranges, Puts, Deletes, Txns int64
	PutBytes                    int64
	Keys                        int64
}

// opCounters are the store's OpCounts: one atomic add per counted field of
// a finished operation, no allocation.
type opCounters struct {
	ranges, puts, deletes, txns, putBytes, keys atomic.Int64
}

// opTally counts one store transaction's operations (etcd's
// metricsTxnWrite) until it ends.
type opTally struct {
	ranges, puts, deletes, putBytes int64
}

// OpCounts returns the store's operation counters.
func (s *Store) OpCounts() OpCounts {
	c := &s.ops
	return OpCounts{
		Ranges: c.ranges.Load(), Puts: c.puts.Load(), Deletes: c.deletes.Load(), Txns: c.txns.Load(),
		PutBytes: c.putBytes.Load(), Keys: c.keys.Load(),
	}
}

// endTally adds t to the store's counters, as etcd's metricsTxnWrite.End
// does, and resets it.
func (s *Store) endTally(t *opTally) {
	c := &s.ops
	if t.ranges+t.puts+t.deletes > 1 {
		c.txns.Add(1)
	}
	if t.ranges > 0 {
		c.ranges.Add(t.ranges)
	}
	if t.puts > 0 {
		c.puts.Add(t.puts)
		c.putBytes.Add(t.putBytes)
	}
	if t.deletes > 0 {
		c.deletes.Add(t.deletes)
	}
	*t = opTally{}
}
