package remote

// Membership changes and leadership transfer, forwarded to the consensus
// member's own etcd Cluster and Maintenance services. Their errors already
// are etcd's wire errors (code and message), which the gateway passes on
// unchanged. A change's answer lists the members after it: the client's
// endpoints follow it at once (a removed member's is dropped), rather than
// at the next periodic sync.

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// MemberAdd implements gateway.Cluster.
func (c *Consensus) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	resp, err := unary(c, ctx, false, clusterOf, etcdserverpbconnect.ClusterClient.MemberAdd, r, (*pb.MemberAddResponse).GetHeader)
	if err == nil {
		c.applyMembers(resp.GetMembers())
	}
	return resp, err
}

// MemberRemove implements gateway.Cluster.
func (c *Consensus) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	resp, err := unary(c, ctx, false, clusterOf, etcdserverpbconnect.ClusterClient.MemberRemove, r, (*pb.MemberRemoveResponse).GetHeader)
	if err == nil {
		c.applyMembers(resp.GetMembers())
	}
	return resp, err
}

// MemberUpdate implements gateway.Cluster.
func (c *Consensus) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	resp, err := unary(c, ctx, false, clusterOf, etcdserverpbconnect.ClusterClient.MemberUpdate, r, (*pb.MemberUpdateResponse).GetHeader)
	if err == nil {
		c.applyMembers(resp.GetMembers())
	}
	return resp, err
}

// MemberPromote implements gateway.Cluster.
func (c *Consensus) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	resp, err := unary(c, ctx, false, clusterOf, etcdserverpbconnect.ClusterClient.MemberPromote, r, (*pb.MemberPromoteResponse).GetHeader)
	if err == nil {
		c.applyMembers(resp.GetMembers())
	}
	return resp, err
}

// MoveLeader implements gateway.Maintenance. Only the leader transfers
// leadership (a follower answers "not leader"), so a Status first makes the
// leader the preferred member when a leader change has not been polled yet;
// its error is not returned, since MoveLeader's own answer says more.
func (c *Consensus) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	_, _ = c.Status(ctx, &pb.StatusRequest{})
	return unary(c, ctx, false, maintOf, etcdserverpbconnect.MaintenanceClient.MoveLeader, r, (*pb.MoveLeaderResponse).GetHeader)
}

// Downgrade implements gateway.Maintenance.
func (c *Consensus) Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return unary(c, ctx, false, maintOf, etcdserverpbconnect.MaintenanceClient.Downgrade, r, (*pb.DowngradeResponse).GetHeader)
}
