package gateway

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// KV is the key-value part of the backend. Responses carry complete headers.
type KV interface {
	Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error)
	Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error)
	DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error)
	Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error)
	Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error)
}

// Lease is the lease part of the backend that the gateway serves itself;
// keep-alives and time-to-live belong to leasesvc.
type Lease interface {
	LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error)
	LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error)
	LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error)
}

// Maintenance is the maintenance part of the backend.
type Maintenance interface {
	Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error)
	HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error)
	Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error)
	Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error)
}

// Cluster is the membership part of the backend.
type Cluster interface {
	MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error)
}

// Backend is everything the gateway needs; consensus.Node implements it.
type Backend interface {
	KV
	Lease
	Maintenance
	Cluster
	// Leader returns the raft leader's member ID, 0 while there is none.
	Leader() uint64
}
