package gateway

import (
	"math"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// TestEtcdRaftSize checks the computed size against the InternalRaftRequest
// etcd builds, with the largest request ID, for writes of sizes whose
// length varints take one to three bytes.
func TestEtcdRaftSize(t *testing.T) {
	for _, n := range []int{0, 1, 100, 126, 127, 128, 16000, 16383, 16384, 2 << 20} {
		v := []byte(strings.Repeat("v", n))
		put := &pb.PutRequest{Key: []byte("k"), Value: v}
		del := &pb.DeleteRangeRequest{Key: v, RangeEnd: []byte("z")}
		txn := &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: put}}}}
		for _, c := range []struct {
			m    proto.Message
			want *pb.InternalRaftRequest
		}{
			{put, &pb.InternalRaftRequest{Put: put}},
			{del, &pb.InternalRaftRequest{DeleteRange: del}},
			{txn, &pb.InternalRaftRequest{Txn: txn}},
		} {
			c.want.Header = &pb.RequestHeader{ID: math.MaxUint64}
			if got, want := etcdRaftSize(c.m), proto.Size(c.want); got != want {
				t.Errorf("%T with %d bytes: etcdRaftSize %d, etcd's raft request %d", c.m, n, got, want)
			}
		}
	}
	r := &pb.RangeRequest{Key: []byte("k")}
	if got, want := etcdRaftSize(r), proto.Size(r); got != want {
		t.Errorf("RangeRequest: %d, want its own size %d", got, want)
	}
}
