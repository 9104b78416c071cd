package tracing

// The attributes of etcd's INTERNAL spans of the operations whose
// requests are more than a key (EtcdServer's, etcdserver/v3_server.go).

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.opentelemetry.io/otel/attribute"
)

// RangeStreamAttrs are etcd's attributes of a "range_streaming" span.
func RangeStreamAttrs(r *pb.RangeRequest) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("range_begin", string(r.GetKey())),
		attribute.String("range_end", string(r.GetRangeEnd())),
		attribute.Int64("rev", r.GetRevision()),
		attribute.Int64("limit", r.GetLimit()),
		attribute.Bool("count_only", r.GetCountOnly()),
	}
}

// RangeAttrs are etcd's attributes of a "range" span: a streamed range's
// and keys_only.
func RangeAttrs(r *pb.RangeRequest) []attribute.KeyValue {
	return append(RangeStreamAttrs(r), attribute.Bool("keys_only", r.GetKeysOnly()))
}

// TxnAttrs are etcd's attributes of a "txn" span.
func TxnAttrs(r *pb.TxnRequest, readOnly bool) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("compare_first_key", firstCompareKey(r.GetCompare())),
		attribute.String("success_first_key", firstOpKey(r.GetSuccess())),
		attribute.String("success_first_type", firstOpType(r.GetSuccess())),
		attribute.Int64("success_first_lease", firstOpLease(r.GetSuccess())),
		attribute.Int("compare_len", len(r.GetCompare())),
		attribute.Int("success_len", len(r.GetSuccess())),
		attribute.Int("failure_len", len(r.GetFailure())),
		attribute.Bool("read_only", readOnly),
	}
}

// firstCompareKey is the first non-empty key compared.
func firstCompareKey(cs []*pb.Compare) string {
	for _, c := range cs {
		if k := string(c.GetKey()); k != "" {
			return k
		}
	}
	return ""
}

// firstOpKey is the first non-empty key of a put, range or delete.
func firstOpKey(ops []*pb.RequestOp) string {
	for _, op := range ops {
		var k []byte
		switch {
		case op.GetRequestPut() != nil:
			k = op.GetRequestPut().GetKey()
		case op.GetRequestRange() != nil:
			k = op.GetRequestRange().GetKey()
		case op.GetRequestDeleteRange() != nil:
			k = op.GetRequestDeleteRange().GetKey()
		}
		if len(k) > 0 {
			return string(k)
		}
	}
	return ""
}

// firstOpType names the first operation ("" for none).
func firstOpType(ops []*pb.RequestOp) string {
	for _, op := range ops {
		switch {
		case op.GetRequestPut() != nil:
			return "put"
		case op.GetRequestRange() != nil:
			return "range"
		case op.GetRequestDeleteRange() != nil:
			return "delete_range"
		case op.GetRequestTxn() != nil:
			return "txn"
		}
	}
	return ""
}

// firstOpLease is the lease of the first put, -1 without one.
func firstOpLease(ops []*pb.RequestOp) int64 {
	for _, op := range ops {
		if p := op.GetRequestPut(); p != nil {
			return p.GetLease()
		}
	}
	return -1
}
