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

// LeaseStore is the replicated lease table of the backend: grants and
// revokes go through raft. Without WithLease the gateway serves the Lease
// service's unary calls from it (keep-alives and TimeToLive are then
// unimplemented).
type LeaseStore interface {
	LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error)
	LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error)
	LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error)
}

// Lease is everything etcd's Lease service needs; *leasesvc.Service
// implements it (grants, revokes and listings forwarded to consensus,
// keep-alives and TTLs answered from its deadlines). Like etcd's server
// layer, it reports a missing lease as storage.ErrLeaseNotFound; the
// gateway turns that into TTL 0 (keep-alive) or TTL -1 (TimeToLive) as
// etcd's v3rpc does.
type Lease interface {
	LeaseStore
	LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error)
	LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error)
	// Header is a complete response header as of now, for the answers the
	// gateway makes up itself (TTL 0 / -1 for a missing lease).
	Header() *pb.ResponseHeader
}

// Maintenance is the maintenance part of the backend.
type Maintenance interface {
	Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error)
	HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error)
	Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error)
	Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error)
	Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error)
	// MoveLeader transfers raft leadership; it must reach the leader.
	MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error)
	Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error)
}

// Cluster is the membership part of the backend: changes go through raft
// as conf changes (consensus/reconfig.go).
type Cluster interface {
	MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error)
	MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error)
	MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error)
	MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error)
	MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error)
}

// RequestSizeChecker is a backend that checks the size of the raft
// requests built from writes itself, as etcd does: after the caller's
// token, counting the user name and auth revision etcd's raft request
// header carries once auth is enabled, which the gateway cannot know.
// ChecksRequestSize reports whether it does for the request of ctx; the
// gateway then leaves the check to it (tooLarge). consensus.Node does when
// its MaxRequestBytes is set; remote.Consensus (the split topology) for a
// request with a token, which the member checks first.
type RequestSizeChecker interface {
	ChecksRequestSize(ctx context.Context) bool
}

// Backend is everything the gateway needs; consensus.Node implements it.
type Backend interface {
	KV
	LeaseStore
	Maintenance
	Cluster
	// Leader returns the raft leader's member ID, 0 while there is none.
	Leader() uint64
}
