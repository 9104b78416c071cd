package storage

import (
	"bytes"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// txnExec is what a txn runs against: a read-only store snapshot or one
// write op of a Batch. This file mirrors etcd's server/etcdserver/txn/txn.go.
type txnExec interface {
	// view returns a reader that sees every write made so far, the revision
	// reads default to (the txn's base revision, +1 once it has written) and
	// the compact revision.
	view() (r *mvccReader, curRev, compactRev int64, err error)
	// baseRev is the revision before the txn.
	baseRev() int64
	leaseExists(id int64) (bool, error)
	// changed reports whether the txn has written anything.
	changed() bool
	put(p *pb.PutRequest) (*pb.PutResponse, error)
	deleteRange(d *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error)
	// tally counts the txn's operations (opcount.go).
	tally() *opTally
	// endChecks ends the compare and check phase: etcd runs a write txn's
	// compares and checks in one store transaction and its ops in
	// another, and counts each (a read-only txn is one).
	endChecks()
	// countsRangeOps reports whether the txn's range ops count: etcd skips
	// them on members that do not answer the request.
	countsRangeOps() bool
}

// runTxn evaluates the compares of every (nested) txn on the chosen path
// against the state before the txn, validates every op on that path before
// anything is written, then executes it.
func runTxn(tx txnExec, rt *pb.TxnRequest) (*pb.TxnResponse, error) {
	r, curRev, compactRev, err := tx.view()
	if err != nil {
		return nil, err
	}
	path, err := compareToPath(r, curRev, compactRev, rt, tx.tally())
	if err != nil {
		tx.endChecks()
		return nil, err
	}
	c := checker{tx: tx, r: r, rev: curRev, compactRev: compactRev}
	_, err = c.checkTxn(rt, path)
	tx.endChecks()
	if err != nil {
		return nil, err
	}
	resp, _ := newTxnResp(rt, path)
	if _, err := executeTxn(tx, rt, path, resp); err != nil {
		return nil, err
	}
	rev := tx.baseRev()
	if tx.changed() {
		rev++
	}
	resp.Header.Revision = rev
	return resp, nil
}

func compareToPath(r *mvccReader, curRev, compactRev int64, rt *pb.TxnRequest, t *opTally) ([]bool, error) {
	ok, err := applyCompares(r, curRev, compactRev, rt.Compare, t)
	if err != nil {
		return nil, err
	}
	path := []bool{ok}
	ops := rt.Success
	if !ok {
		ops = rt.Failure
	}
	for _, op := range ops {
		tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn)
		if !isTxn || tv.RequestTxn == nil {
			continue
		}
		sub, err := compareToPath(r, curRev, compactRev, tv.RequestTxn, t)
		if err != nil {
			return nil, err
		}
		path = append(path, sub...)
	}
	return path, nil
}

func applyCompares(r *mvccReader, curRev, compactRev int64, cmps []*pb.Compare, t *opTally) (bool, error) {
	for _, c := range cmps {
		t.ranges++ // etcd reads each compare's range from the store
		ok, err := applyCompare(r, curRev, compactRev, c)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// applyCompare mirrors etcd: every key in the range must satisfy the
// compare; on a missing key a VALUE compare fails and the others compare
// against zero values.
func applyCompare(r *mvccReader, curRev, compactRev int64, c *pb.Compare) (bool, error) {
	rr, err := r.rangeKeys(c.Key, normEnd(c.RangeEnd), curRev, compactRev, 0, 0, false, false)
	if err != nil {
		return false, err
	}
	if len(rr.kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range rr.kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		result = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		result = cmpInt64(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = cmpInt64(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = cmpInt64(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = cmpInt64(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checker validates the ops on a txn's path before anything is written
// (etcd's checkTxn). Besides etcd's checks against the pre-txn state it
// simulates the txn's own writes, so a put with ignore_value/ignore_lease on
// a key that an earlier op of the same txn deleted fails here with
// ErrKeyNotFound instead of failing halfway through execution.
type checker struct {
	tx              txnExec
	r               *mvccReader
	rev, compactRev int64
	writes          []simWrite
}

type simWrite struct {
	m   keyMatcher
	put bool
}

func (c *checker) checkTxn(rt *pb.TxnRequest, path []bool) (int, error) {
	txnCount := 0
	reqs := rt.Success
	if !path[0] {
		reqs = rt.Failure
	}
	for _, req := range reqs {
		var err error
		switch tv := req.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			err = checkRange(c.rev, c.compactRev, tv.RequestRange)
		case *pb.RequestOp_RequestPut:
			err = c.checkPut(tv.RequestPut)
		case *pb.RequestOp_RequestDeleteRange:
			c.writes = append(c.writes, simWrite{m: newKeyMatcher(tv.RequestDeleteRange.Key, tv.RequestDeleteRange.RangeEnd)})
		case *pb.RequestOp_RequestTxn:
			if tv.RequestTxn == nil {
				continue // compareToPath gave it no path entry either
			}
			var txns int
			txns, err = c.checkTxn(tv.RequestTxn, path[1:])
			txnCount += txns + 1
			path = path[txns+1:]
		}
		if err != nil {
			return 0, err
		}
	}
	return txnCount, nil
}

// checkRange mirrors etcd's checkRange (note: a negative revision is
// reported as compacted, as etcd does inside a txn).
func checkRange(rev, compactRev int64, r *pb.RangeRequest) error {
	switch {
	case r.Revision == 0:
		return nil
	case r.Revision > rev:
		return ErrFutureRev
	case r.Revision < compactRev:
		return ErrCompacted
	}
	return nil
}

func (c *checker) checkPut(p *pb.PutRequest) error {
	if err := checkLease(c.tx, p.Lease); err != nil {
		return err
	}
	if p.PrevKv || p.IgnoreValue || p.IgnoreLease {
		c.tx.tally().ranges++ // etcd's check reads the previous version for these
	}
	if p.IgnoreValue || p.IgnoreLease {
		_, exists, err := c.r.get(p.Key, c.rev)
		if err != nil {
			return err
		}
		for i := len(c.writes) - 1; i >= 0; i-- {
			if c.writes[i].m.match(p.Key) {
				exists = exists && c.writes[i].put
				break
			}
		}
		if !exists {
			return ErrKeyNotFound
		}
	}
	c.writes = append(c.writes, simWrite{m: keyMatcher{key: p.Key}, put: true})
	return nil
}

func checkLease(tx txnExec, id int64) error {
	if id == 0 {
		return nil
	}
	ok, err := tx.leaseExists(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %x", ErrLeaseNotFound, id)
	}
	return nil
}

// newTxnResp allocates the response tree for the chosen path; nested txn
// responses keep an empty header, as etcd's do.
func newTxnResp(rt *pb.TxnRequest, path []bool) (*pb.TxnResponse, int) {
	reqs := rt.Success
	if !path[0] {
		reqs = rt.Failure
	}
	txnCount := 0
	resps := make([]*pb.ResponseOp, len(reqs))
	resp := &pb.TxnResponse{Responses: resps, Succeeded: path[0], Header: &pb.ResponseHeader{}}
	for i, req := range reqs {
		switch tv := req.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			resps[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{}}
		case *pb.RequestOp_RequestPut:
			resps[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{}}
		case *pb.RequestOp_RequestDeleteRange:
			resps[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{}}
		case *pb.RequestOp_RequestTxn:
			if tv.RequestTxn == nil {
				resps[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: &pb.TxnResponse{Header: &pb.ResponseHeader{}}}}
				continue
			}
			sub, txns := newTxnResp(tv.RequestTxn, path[1:])
			resps[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}}
			path = path[1+txns:]
			txnCount += txns + 1
		default:
			resps[i] = &pb.ResponseOp{} // empty op (the gateway rejects these)
		}
	}
	return resp, txnCount
}

func executeTxn(tx txnExec, rt *pb.TxnRequest, path []bool, tresp *pb.TxnResponse) (int, error) {
	reqs := rt.Success
	if !path[0] {
		reqs = rt.Failure
	}
	txns := 0
	for i, req := range reqs {
		respi := tresp.Responses[i].Response
		switch tv := req.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			if tx.countsRangeOps() {
				tx.tally().ranges++
			}
			r, curRev, compactRev, err := tx.view()
			if err != nil {
				return 0, err
			}
			resp, err := executeRange(r, curRev, compactRev, tv.RequestRange)
			if err != nil {
				return 0, fmt.Errorf("txn range: %w", err)
			}
			respi.(*pb.ResponseOp_ResponseRange).ResponseRange = resp
		case *pb.RequestOp_RequestPut:
			resp, err := tx.put(tv.RequestPut)
			if err != nil {
				return 0, fmt.Errorf("txn put: %w", err)
			}
			respi.(*pb.ResponseOp_ResponsePut).ResponsePut = resp
		case *pb.RequestOp_RequestDeleteRange:
			resp, err := tx.deleteRange(tv.RequestDeleteRange)
			if err != nil {
				return 0, fmt.Errorf("txn delete: %w", err)
			}
			respi.(*pb.ResponseOp_ResponseDeleteRange).ResponseDeleteRange = resp
		case *pb.RequestOp_RequestTxn:
			if tv.RequestTxn == nil {
				continue
			}
			sub := respi.(*pb.ResponseOp_ResponseTxn).ResponseTxn
			n, err := executeTxn(tx, tv.RequestTxn, path[1:], sub)
			if err != nil {
				return 0, err
			}
			txns += n + 1
			path = path[n+1:]
		}
	}
	return txns, nil
}

// isTxnReadOnly reports whether every op on every branch, nested txns
// included, is a range.
func isTxnReadOnly(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch tv := op.GetRequest().(type) {
			case *pb.RequestOp_RequestRange, nil:
			case *pb.RequestOp_RequestTxn:
				if tv.RequestTxn != nil && !isTxnReadOnly(tv.RequestTxn) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}
