package recipes

import (
	"strconv"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The requests below are those clientv3 builds for the operations
// clientv3/concurrency uses, field for field.

// waiterKey is the key of a session in a lock or election: the prefix and
// the lease ID in lower-case hex (concurrency's fmt "%s%x").
func waiterKey(pfx string, lease int64) string {
	return pfx + strconv.FormatInt(lease, 16)
}

// prefixEnd is clientv3.GetPrefixRangeEnd: the end of the range of all keys
// starting with pfx.
func prefixEnd(pfx string) []byte {
	end := []byte(pfx)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	// Every byte is 0xff: the range runs to the end of the keyspace.
	return []byte{0}
}

// firstCreate is OpGet(pfx, WithFirstCreate()...): the key of the prefix with
// the lowest create revision (the lock holder, the election leader).
func firstCreate(pfx string) *pb.RangeRequest {
	return &pb.RangeRequest{
		Key:        []byte(pfx),
		RangeEnd:   prefixEnd(pfx),
		Limit:      1,
		SortOrder:  pb.RangeRequest_ASCEND,
		SortTarget: pb.RangeRequest_CREATE,
	}
}

// lastCreateBefore is Get(pfx, WithLastCreate()..., WithMaxCreateRev(max)):
// the key of the prefix with the highest create revision at most max.
func lastCreateBefore(pfx string, maxCreateRev int64) *pb.RangeRequest {
	return &pb.RangeRequest{
		Key:               []byte(pfx),
		RangeEnd:          prefixEnd(pfx),
		Limit:             1,
		SortOrder:         pb.RangeRequest_DESCEND,
		SortTarget:        pb.RangeRequest_CREATE,
		MaxCreateRevision: maxCreateRev,
	}
}

// createRevIs is Compare(CreateRevision(key), "=", rev).
func createRevIs(key string, rev int64) *pb.Compare {
	return &pb.Compare{
		Key:         []byte(key),
		Target:      pb.Compare_CREATE,
		Result:      pb.Compare_EQUAL,
		TargetUnion: &pb.Compare_CreateRevision{CreateRevision: rev},
	}
}

func opRange(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opGet(key string) *pb.RequestOp {
	return opRange(&pb.RangeRequest{Key: []byte(key)})
}

func opPut(key string, value []byte, lease int64) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: value, Lease: lease}}}
}

func opDelete(key string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key)}}}
}

// rangeKvs returns the kvs of the i-th response of a txn when it is a
// range response (nil otherwise).
func rangeKvs(resp *pb.TxnResponse, i int) []*mvccpb.KeyValue {
	if i >= len(resp.GetResponses()) {
		return nil
	}
	return resp.Responses[i].GetResponseRange().GetKvs()
}
