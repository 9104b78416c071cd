package storage

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Batch collects the writes of one raft Ready/apply step. It is used by one
// goroutine. Its reads see the committed store plus its own earlier writes
// (it is an indexed pebble batch); nothing it does is visible to Store
// readers until Commit, which applies everything atomically.
//
// Revisions are assigned from the committed revision at NewBatch. Two
// batches that both change MVCC, lease, alarm or applied state must not be
// open at once: the second to commit fails with ErrBatchConflict. Batches
// that only carry raft log writes (through Pebble) or SetMeta never conflict.
type Batch struct {
	s  *Store
	pb *pebble.Batch

	// it is the kv iterator of the op in progress (nil between ops, so no
	// iterator outlives the op that holds the store's close lock).
	it    *pebble.Iterator
	itLen int // pb.Len() when it was last refreshed
	rd    mvccReader

	baseSeq    uint64
	rev        int64
	compactRev int64
	alarms     []*pb.AlarmMember

	revDirty, compactDirty, alarmsDirty, appliedSet bool
	// stateful marks a batch whose commit must not race another one.
	stateful                  bool
	appliedIndex, appliedTerm uint64

	events []RevisionEvents
	// keysDelta is the change in live keys (OpCounts.Keys) the batch makes.
	keysDelta int64
	hashes    []CompactionHash // computed by this batch's compactions, in order
	err       error            // set when an op failed after writing: Commit refuses
	done      bool
	buf       []byte
	kbuf      []byte // key filter probes
}

// NewBatch starts a write batch.
func (s *Store) NewBatch() *Batch {
	b := &Batch{s: s}
	if err := s.enter(); err != nil {
		b.err, b.done = err, true
		return b
	}
	defer s.leave()
	s.stateMu.RLock()
	b.baseSeq, b.rev, b.compactRev = s.seq, s.rev, s.compactRev
	b.alarms = cloneAlarms(s.alarms)
	s.stateMu.RUnlock()
	b.pb = s.db.NewIndexedBatch()
	return b
}

// Pebble returns the underlying pebble batch; consensus adds its raft log
// and hard state writes (keys starting with 0x01) so they commit atomically
// with the applied state.
func (b *Batch) Pebble() *pebble.Batch { return b.pb }

// Events returns the events produced so far, one entry per revision.
func (b *Batch) Events() []RevisionEvents { return b.events }

// writeOp is one request (Put, DeleteRange, Txn, LeaseRevoke) applied to a
// batch: it gets at most one new main revision, beginRev+1.
type writeOp struct {
	b        *Batch
	beginRev int64
	changes  int64
	wrote    bool
	events   []*mvccpb.Event
	ops      opTally
	// replica marks a txn this member applies without answering it
	// (Batch.ReplicaTxn).
	replica bool
}

func (b *Batch) begin() (*writeOp, error) {
	if b.done {
		if b.err != nil {
			return nil, b.err
		}
		return nil, ErrBatchDone
	}
	if b.err != nil {
		return nil, b.err
	}
	if err := b.s.enter(); err != nil {
		return nil, err
	}
	return &writeOp{b: b, beginRev: b.rev}, nil
}

// finish ends an op started by begin: it publishes the op's revision and
// events to the batch, releases the iterator and poisons the batch if the
// op failed after writing.
func (b *Batch) finish(o *writeOp, err error) {
	if b.it != nil {
		if cerr := b.it.Close(); cerr != nil && err == nil {
			err = cerr
		}
		b.it = nil
	}
	b.s.leave()
	b.s.endTally(&o.ops)
	if o.wrote {
		b.stateful = true
	}
	if err != nil && o.wrote {
		b.err = fmt.Errorf("storage: batch unusable, an op failed after writing: %w", err)
		b.s.logger.Error("write op failed after writing; batch will not commit", "error", err)
		return
	}
	if o.changes > 0 {
		b.rev = o.beginRev + 1
		b.revDirty = true
		b.events = append(b.events, RevisionEvents{Revision: b.rev, Events: o.events})
	}
}

// Put applies a PutRequest as one new revision.
func (b *Batch) Put(r *pb.PutRequest) (resp *pb.PutResponse, err error) {
	if r == nil {
		return nil, errNilRequest
	}
	o, err := b.begin()
	if err != nil {
		return nil, err
	}
	defer func() { b.finish(o, err) }()
	return o.put(r)
}

// DeleteRange applies a DeleteRangeRequest; it creates a revision only if
// something was deleted.
func (b *Batch) DeleteRange(r *pb.DeleteRangeRequest) (resp *pb.DeleteRangeResponse, err error) {
	if r == nil {
		return nil, errNilRequest
	}
	o, err := b.begin()
	if err != nil {
		return nil, err
	}
	defer func() { b.finish(o, err) }()
	return o.deleteRange(r)
}

// Txn applies a TxnRequest; it creates one revision iff it writes. Every op
// on the chosen path is validated before anything is written, so a failing
// txn (ErrLeaseNotFound, ErrKeyNotFound, ErrCompacted, ErrFutureRev) leaves
// the batch unchanged.
func (b *Batch) Txn(r *pb.TxnRequest) (*pb.TxnResponse, error) { return b.txn(r, false) }

// ReplicaTxn is Txn for a txn this member applies but does not answer
// (another member received it). It does the same, but its range ops do not
// count in OpCounts.Ranges: etcd does not execute them on such members.
func (b *Batch) ReplicaTxn(r *pb.TxnRequest) (*pb.TxnResponse, error) { return b.txn(r, true) }

func (b *Batch) txn(r *pb.TxnRequest, replica bool) (resp *pb.TxnResponse, err error) {
	if r == nil {
		return nil, errNilRequest
	}
	o, err := b.begin()
	if err != nil {
		return nil, err
	}
	defer func() { b.finish(o, err) }()
	o.replica = replica
	return runTxn(o, r)
}

// mayExist reports whether key may have a version; false only when the
// key filter rules it out (the put path then skips reading the previous
// version).
func (b *Batch) mayExist(key []byte) bool {
	kf := b.s.keys.Load()
	if kf == nil {
		return true
	}
	b.kbuf = appendKVKeyPrefix(b.kbuf[:0], key)
	return kf.mayContain(b.kbuf)
}

// view returns the batch reader, refreshed to see every write so far.
func (o *writeOp) view() (*mvccReader, int64, int64, error) {
	b := o.b
	switch {
	case b.it == nil:
		it, err := b.pb.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
		if err != nil {
			return nil, 0, 0, err
		}
		b.it, b.itLen = it, b.pb.Len()
	case b.itLen != b.pb.Len():
		b.it.SetOptions(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
		b.itLen = b.pb.Len()
	}
	b.rd.it = b.it
	return &b.rd, o.readRev(), b.compactRev, nil
}

// readRev is the revision reads of this op default to: etcd's txn reads at
// the new revision once the op has written.
func (o *writeOp) readRev() int64 {
	if o.changes > 0 {
		return o.beginRev + 1
	}
	return o.beginRev
}

func (o *writeOp) baseRev() int64       { return o.beginRev }
func (o *writeOp) changed() bool        { return o.changes > 0 }
func (o *writeOp) tally() *opTally      { return &o.ops }
func (o *writeOp) endChecks()           { o.b.s.endTally(&o.ops) }
func (o *writeOp) countsRangeOps() bool { return !o.replica }

func (o *writeOp) leaseExists(id int64) (bool, error) { return o.b.leaseExists(id) }

func (b *Batch) leaseExists(id int64) (bool, error) {
	_, closer, err := b.pb.Get(encodeLeaseKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, closer.Close()
}

func (b *Batch) set(k, v []byte) error    { return b.pb.Set(k, v, nil) }
func (b *Batch) delete(k []byte) error    { return b.pb.Delete(k, nil) }
func (o *writeOp) set(k, v []byte) error  { o.wrote = true; return o.b.set(k, v) }
func (o *writeOp) delete(k []byte) error  { o.wrote = true; return o.b.delete(k) }
func (o *writeOp) newRev() (int64, int64) { return o.beginRev + 1, o.changes }

// put mirrors etcd's put path: lease check, then the previous kv (needed
// for ignore_value/ignore_lease/prev_kv), then the write.
func (o *writeOp) put(p *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkLease(o, p.Lease); err != nil {
		return nil, err
	}
	if p.PrevKv || p.IgnoreValue || p.IgnoreLease {
		o.ops.ranges++ // etcd reads the previous version only for these
	}
	var (
		f      found
		exists bool
		err    error
	)
	if o.b.mayExist(p.Key) {
		r, rev, _, err := o.view()
		if err != nil {
			return nil, err
		}
		if f, exists, err = r.get(p.Key, rev); err != nil {
			return nil, err
		}
	}
	if (p.IgnoreValue || p.IgnoreLease) && !exists {
		return nil, ErrKeyNotFound
	}
	var cur *mvccpb.KeyValue
	if exists {
		var a arena
		if cur, err = a.toKV(&f, false); err != nil {
			return nil, err
		}
	}
	val, lease := p.Value, p.Lease
	if p.IgnoreValue {
		val = cur.Value
	}
	if p.IgnoreLease {
		lease = cur.Lease
	}
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{}}
	if p.PrevKv && exists {
		resp.PrevKv = cur
	}
	o.ops.puts++
	o.ops.putBytes += int64(len(p.Key) + len(val))
	resp.Header.Revision, err = o.writePut(p.Key, val, lease, cur)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// writePut writes a new version of key; cur is the live version (nil if
// none). Version and create revision continue cur's generation; the lease
// attachment moves if the lease changed.
func (o *writeOp) writePut(key, val []byte, lease int64, cur *mvccpb.KeyValue) (int64, error) {
	b := o.b
	rev, sub := o.newRev()
	create, ver, oldLease := rev, int64(1), int64(0)
	if cur != nil {
		create, ver, oldLease = cur.CreateRevision, cur.Version+1, cur.Lease
	} else {
		b.keysDelta++
	}
	b.buf = encodeKVKey(b.buf[:0], key, rev, sub)
	n := len(b.buf)
	if kf := b.s.keys.Load(); kf != nil {
		kf.add(b.buf[:n-16]) // what splitKVKey returns; before the version can be read
	}
	b.buf = encodeKVValue(b.buf, create, ver, lease, val)
	if err := o.set(b.buf[:n], b.buf[n:]); err != nil {
		return 0, err
	}
	b.buf = encodeRevKey(b.buf[:0], rev, sub)
	n = len(b.buf)
	b.buf = encodeRevValue(b.buf, false, key)
	if err := o.set(b.buf[:n], b.buf[n:]); err != nil {
		return 0, err
	}
	if oldLease != lease {
		if oldLease != 0 {
			if err := o.delete(encodeLeaseKeyKey(oldLease, key)); err != nil {
				return 0, err
			}
		}
		if lease != 0 {
			if err := o.set(encodeLeaseKeyKey(lease, key), nil); err != nil {
				return 0, err
			}
		}
	}
	// One allocation for the event's copies of key and value.
	kvBuf := make([]byte, 0, len(key)+len(val))
	kvBuf = append(append(kvBuf, key...), val...)
	ev := &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{
		Key: kvBuf[:len(key):len(key)], CreateRevision: create,
		ModRevision: rev, Version: ver, Lease: lease,
	}}
	if len(val) > 0 {
		ev.Kv.Value = kvBuf[len(key):]
	}
	if ver > 1 {
		prev, err := o.prevAtBase(key, cur)
		if err != nil {
			return 0, err
		}
		ev.PrevKv = prev
	}
	o.events = append(o.events, ev)
	o.changes++
	return rev, nil
}

// prevAtBase returns key's live version at the op's base revision (what
// etcd's watch reports as prev_kv: the value at mod_revision-1). cur is the
// live version as the op currently sees it.
func (o *writeOp) prevAtBase(key []byte, cur *mvccpb.KeyValue) (*mvccpb.KeyValue, error) {
	if cur != nil && cur.ModRevision <= o.beginRev {
		return cur, nil
	}
	r, _, _, err := o.view()
	if err != nil {
		return nil, err
	}
	f, ok, err := r.get(key, o.beginRev)
	if err != nil || !ok {
		return nil, err
	}
	var a arena
	return a.toKV(&f, false)
}

// deleteRange mirrors etcd's deleteRange.
func (o *writeOp) deleteRange(d *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	o.ops.deletes++ // counted by etcd whether or not anything matches
	if d.PrevKv {
		o.ops.ranges++
	}
	r, rev, compactRev, err := o.view()
	if err != nil {
		return nil, err
	}
	rr, err := r.rangeKeys(d.Key, normEnd(d.RangeEnd), rev, compactRev, 0, 0, false, false)
	if err != nil {
		return nil, err
	}
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{}}
	if d.PrevKv {
		resp.PrevKvs = slices.Clone(rr.kvs)
	}
	for _, kv := range rr.kvs {
		if err := o.writeDelete(kv); err != nil {
			return nil, err
		}
	}
	resp.Deleted = int64(len(rr.kvs))
	resp.Header.Revision = o.readRev()
	return resp, nil
}

// writeDelete writes a tombstone for cur.Key and detaches its lease.
func (o *writeOp) writeDelete(cur *mvccpb.KeyValue) error {
	b := o.b
	rev, sub := o.newRev()
	if err := o.set(encodeKVKey(b.buf[:0], cur.Key, rev, sub), tombstoneValue); err != nil {
		return err
	}
	b.buf = encodeRevKey(b.buf[:0], rev, sub)
	n := len(b.buf)
	b.buf = encodeRevValue(b.buf, true, cur.Key)
	if err := o.set(b.buf[:n], b.buf[n:]); err != nil {
		return err
	}
	if cur.Lease != 0 {
		if err := o.delete(encodeLeaseKeyKey(cur.Lease, cur.Key)); err != nil {
			return err
		}
	}
	prev, err := o.prevAtBase(cur.Key, cur)
	if err != nil {
		return err
	}
	o.b.keysDelta--
	o.events = append(o.events, &mvccpb.Event{
		Type:   mvccpb.Event_DELETE,
		Kv:     &mvccpb.KeyValue{Key: slices.Clone(cur.Key), ModRevision: rev},
		PrevKv: prev,
	})
	o.changes++
	return nil
}

// LeaseGrant records a lease. It does not create a revision.
func (b *Batch) LeaseGrant(id, ttl int64) (err error) {
	o, err := b.begin()
	if err != nil {
		return err
	}
	defer func() { b.finish(o, err) }()
	if id == 0 {
		return fmt.Errorf("%w: lease id 0", ErrLeaseNotFound)
	}
	ok, err := b.leaseExists(id)
	if err != nil {
		return err
	}
	if ok {
		return fmt.Errorf("%w: %x", ErrLeaseExists, id)
	}
	b.stateful = true
	return o.set(encodeLeaseKey(id), encodeLeaseValue(ttl))
}

// LeaseRevoke deletes the lease and every key attached to it (in key
// order, in one revision; no revision if it has no keys).
func (b *Batch) LeaseRevoke(id int64) (err error) {
	o, err := b.begin()
	if err != nil {
		return err
	}
	defer func() { b.finish(o, err) }()
	ok, err := b.leaseExists(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %x", ErrLeaseNotFound, id)
	}
	b.stateful = true
	keys, err := b.leaseKeys(id)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := o.deleteRange(&pb.DeleteRangeRequest{Key: k}); err != nil {
			return err
		}
		// Normally already detached by the delete; removed regardless so a
		// revoked lease leaves nothing behind.
		if err := o.delete(encodeLeaseKeyKey(id, k)); err != nil {
			return err
		}
	}
	return o.delete(encodeLeaseKey(id))
}

// leaseKeys lists the keys attached to a lease as the batch sees them.
// LeaseKeys lists the keys attached to lease id, including the batch's
// own writes so far (for permission checks at apply).
func (b *Batch) LeaseKeys(id int64) ([][]byte, error) { return b.leaseKeys(id) }

func (b *Batch) leaseKeys(id int64) ([][]byte, error) {
	lo := encodeLeaseKeyKey(id, nil)
	it, err := b.pb.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return nil, err
	}
	var keys [][]byte
	for ok := it.First(); ok; ok = it.Next() {
		_, k, err := decodeLeaseKeyKey(it.Key())
		if err != nil {
			_ = it.Close()
			return nil, err
		}
		keys = append(keys, slices.Clone(k))
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return keys, nil
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := slices.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// Alarm applies an AlarmRequest with etcd's semantics: ACTIVATE of NONE is a
// no-op, activating an active alarm returns the existing one, DEACTIVATE of
// an inactive alarm returns nothing, GET with NONE lists every alarm.
func (b *Batch) Alarm(r *pb.AlarmRequest) (resp *pb.AlarmResponse, err error) {
	if r == nil {
		return nil, errNilRequest
	}
	o, err := b.begin()
	if err != nil {
		return nil, err
	}
	defer func() { b.finish(o, err) }()
	resp = &pb.AlarmResponse{Header: &pb.ResponseHeader{Revision: b.rev}}
	idx := slices.IndexFunc(b.alarms, func(a *pb.AlarmMember) bool {
		return a.MemberID == r.MemberID && a.Alarm == r.Alarm
	})
	switch r.Action {
	case pb.AlarmRequest_GET:
		for _, a := range b.alarms {
			if r.Alarm == pb.AlarmType_NONE || a.Alarm == r.Alarm {
				resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: a.MemberID, Alarm: a.Alarm})
			}
		}
	case pb.AlarmRequest_ACTIVATE:
		if r.Alarm == pb.AlarmType_NONE {
			break
		}
		m := &pb.AlarmMember{MemberID: r.MemberID, Alarm: r.Alarm}
		if idx < 0 {
			if err := o.set(encodeAlarmKey(r.MemberID, int32(r.Alarm)), nil); err != nil {
				return nil, err
			}
			b.alarms = append(b.alarms, m)
			sort.Slice(b.alarms, func(i, j int) bool { return alarmLess(b.alarms[i], b.alarms[j]) })
			b.alarmsDirty, b.stateful = true, true
		}
		resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: m.MemberID, Alarm: m.Alarm})
	case pb.AlarmRequest_DEACTIVATE:
		if idx < 0 {
			break
		}
		if err := o.delete(encodeAlarmKey(r.MemberID, int32(r.Alarm))); err != nil {
			return nil, err
		}
		b.alarms = slices.Delete(b.alarms, idx, idx+1)
		b.alarmsDirty, b.stateful = true, true
		resp.Alarms = append(resp.Alarms, &pb.AlarmMember{MemberID: r.MemberID, Alarm: r.Alarm})
	}
	return resp, nil
}

func alarmLess(a, b *pb.AlarmMember) bool {
	if a.MemberID != b.MemberID {
		return a.MemberID < b.MemberID
	}
	return a.Alarm < b.Alarm
}

// SetApplied records the raft index and term this batch brings the store
// to; Store.Applied reports it once the batch is committed.
func (b *Batch) SetApplied(index, term uint64) {
	if b.done {
		b.s.logger.Warn("SetApplied on a finished batch ignored", "index", index, "term", term)
		return
	}
	b.appliedIndex, b.appliedTerm, b.appliedSet, b.stateful = index, term, true, true
}

// SetMeta stores a small metadata blob (nil value deletes it).
func (b *Batch) SetMeta(key, value []byte) {
	if b.done {
		b.s.logger.Warn("SetMeta on a finished batch ignored", "key", string(key))
		return
	}
	var err error
	if value == nil {
		err = b.delete(encodeMetaKey(key))
	} else {
		err = b.set(encodeMetaKey(key), value)
	}
	if err != nil && b.err == nil {
		b.err = fmt.Errorf("storage: SetMeta: %w", err)
	}
}

// Commit atomically applies the batch; with sync the WAL is fsynced before
// it returns. Afterwards Rev, CompactRev, Applied, Alarms and every read
// reflect it. The batch cannot be used afterwards.
func (b *Batch) Commit(sync bool) error {
	if b.done {
		if b.err != nil {
			return b.err
		}
		return ErrBatchDone
	}
	if b.err != nil {
		_ = b.Close()
		return b.err
	}
	s := b.s
	if err := s.enter(); err != nil {
		b.release()
		return err
	}
	defer s.leave()
	defer b.release()
	if err := b.writeState(); err != nil {
		return err
	}
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if b.stateful && s.seq != b.baseSeq {
		return ErrBatchConflict
	}
	if b.compactDirty {
		// Compaction removes versions: readers must not capture the old
		// compact revision together with an iterator over the new data.
		s.stateMu.Lock()
		defer s.stateMu.Unlock()
		if err := b.pb.Commit(opts); err != nil {
			return fmt.Errorf("storage: commit: %w", err)
		}
		b.publish()
		return nil
	}
	if err := b.pb.Commit(opts); err != nil {
		return fmt.Errorf("storage: commit: %w", err)
	}
	s.stateMu.Lock()
	b.publish()
	s.stateMu.Unlock()
	return nil
}

// writeState adds the persisted copies of the batch's state changes.
func (b *Batch) writeState() error {
	if b.revDirty {
		if err := b.set(stateKeyRev, encodeInt64(b.rev)); err != nil {
			return err
		}
	}
	if b.compactDirty {
		if err := b.set(stateKeyCompactRev, encodeInt64(b.compactRev)); err != nil {
			return err
		}
	}
	if b.appliedSet {
		if err := b.set(stateKeyApplied, encodeApplied(b.appliedIndex, b.appliedTerm)); err != nil {
			return err
		}
	}
	return nil
}

// publish makes the committed batch's state the store's. Caller holds
// commitMu and stateMu.
func (b *Batch) publish() {
	s := b.s
	if b.revDirty {
		s.rev = b.rev
	}
	if b.compactDirty {
		s.compactRev = b.compactRev
		s.hashes = keepHashes(s.hashes, b.hashes)
	}
	if b.appliedSet {
		s.appliedIndex, s.appliedTerm = b.appliedIndex, b.appliedTerm
	}
	if b.alarmsDirty {
		s.alarms = b.alarms
		b.alarms = cloneAlarms(b.alarms)
	}
	if b.stateful {
		s.seq++
	}
	if b.keysDelta != 0 {
		s.ops.keys.Add(b.keysDelta)
	}
}

// keepHashes appends the hashes of new compactions to the stored ones and
// keeps the newest maxCompactionHashes. Compaction revisions strictly
// increase, so the result stays ordered by revision.
func keepHashes(stored, added []CompactionHash) []CompactionHash {
	out := append(stored, added...)
	if n := len(out) - maxCompactionHashes; n > 0 {
		out = slices.Delete(out, 0, n)
	}
	return out
}

// release frees the pebble batch.
func (b *Batch) release() {
	b.done = true
	if b.pb != nil {
		_ = b.pb.Close()
		b.pb = nil
	}
}

// Close discards the batch if it was not committed. Idempotent.
func (b *Batch) Close() error {
	if b.done {
		return nil
	}
	b.release()
	return nil
}
