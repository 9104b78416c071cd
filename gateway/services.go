package gateway

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// Each service embeds the generated Unimplemented handler, so methods that
// concord does not serve here answer code Unimplemented with connect's
// standard message instead of being missing routes.

// kvService serves etcdserverpb.KV.
type kvService struct {
	etcdserverpbconnect.UnimplementedKVHandler
	g *Gateway
}

func (s kvService) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	// A learner serves serializable reads only (learner.go), and refuses
	// before validating, as etcd's interceptor does.
	if !r.GetSerializable() && s.g.isLearner() {
		return nil, learnerRefusal.err()
	}
	if err := validRangeRequest(r); err != nil {
		return nil, rpcError(err)
	}
	var resp *pb.RangeResponse
	var err error
	// A single key is never encoded (storage.Store.RangeWire), so the most
	// common read skips the content-type check.
	if len(r.RangeEnd) > 0 && s.g.wire != nil && protoWire(ctx) {
		resp, err = s.g.wire.RangeWire(ctx, r)
	} else {
		resp, err = s.g.b.Range(ctx, r)
	}
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// wireRanger is a backend that can answer a range with its KeyValues
// already in the protobuf wire format (consensus.Node, from the store's
// entries: storage.Store.RangeWire), which the gateway uses when the reply
// is marshaled to that format and nothing else reads it.
type wireRanger interface {
	RangeWire(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error)
}

// protoWire reports whether the call's reply is marshaled to the protobuf
// binary format (gRPC, gRPC-Web and Connect with the proto codec), by the
// request's content type; JSON and anything unrecognised answer false.
func protoWire(ctx context.Context) bool {
	info, ok := connect.CallInfoForHandlerContext(ctx)
	if !ok {
		return false
	}
	switch info.RequestHeader().Get("Content-Type") {
	case "application/grpc", "application/grpc+proto", "application/grpc-web", "application/grpc-web+proto", "application/proto":
		return true
	}
	return false
}

func (s kvService) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := validPutRequest(r); err != nil {
		return nil, rpcError(err)
	}
	if err := s.g.tooLarge(ctx, r); err != nil {
		return nil, rpcError(err)
	}
	resp, err := s.g.b.Put(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s kvService) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := validDeleteRequest(r); err != nil {
		return nil, rpcError(err)
	}
	if err := s.g.tooLarge(ctx, r); err != nil {
		return nil, rpcError(err)
	}
	resp, err := s.g.b.DeleteRange(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s kvService) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := validTxnRequest(r, s.g.cfg.MaxTxnOps); err != nil {
		return nil, rpcError(err)
	}
	// After validTxnRequest, as in etcd: the op count bound keeps the
	// interval check from blowing up.
	if err := checkTxnIntervals(r); err != nil {
		return nil, rpcError(err)
	}
	// Read-only txns are not proposed to raft, so etcd does not size-check them.
	if hasWrites(r) {
		if err := s.g.tooLarge(ctx, r); err != nil {
			return nil, rpcError(err)
		}
	}
	resp, err := s.g.b.Txn(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s kvService) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	resp, err := s.g.b.Compact(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// leaseService serves etcdserverpb.Lease: from l (leasesvc) when set,
// otherwise the unary calls from the backend's LeaseStore with
// LeaseKeepAlive and LeaseTimeToLive unimplemented.
type leaseService struct {
	etcdserverpbconnect.UnimplementedLeaseHandler
	g *Gateway
	l Lease
}

func (s leaseService) store() LeaseStore {
	if s.l != nil {
		return s.l
	}
	return s.g.b
}

// LeaseGrant leaves the TTL bound to consensus: etcd checks it at apply,
// after refusing a request without a user once auth is enabled.
func (s leaseService) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp, err := s.store().LeaseGrant(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s leaseService) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := s.store().LeaseRevoke(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s leaseService) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	resp, err := s.store().LeaseLeases(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// LeaseTimeToLive answers a missing lease with TTL -1 and no error, as
// etcd's v3rpc does (etcdctl prints "already expired").
func (s leaseService) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	if s.l == nil {
		return s.UnimplementedLeaseHandler.LeaseTimeToLive(ctx, r)
	}
	// As etcd, only a TimeToLive that lists the keys checks permissions on
	// them; every one needs a user once auth is enabled
	// (EtcdServer.LeaseTimeToLive's requireAuthInfo): lease 0, which never
	// exists, checks just that.
	if la, ok := s.g.b.(LeaseAuthorizer); ok {
		id := r.GetID()
		if !r.GetKeys() {
			id = 0
		}
		if err := la.AuthorizeLease(ctx, id, false); err != nil {
			return nil, TranslateError(err)
		}
	}
	resp, err := s.l.LeaseTimeToLive(ctx, r)
	if errors.Is(err, storage.ErrLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: s.l.Header(), ID: r.GetID(), TTL: -1}, nil
	}
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// LeaseKeepAlive answers every request of the stream, in order, with the
// lease's renewed TTL; a lease that does not exist (or expired) is answered
// with TTL 0, as etcd does. Any other error ends the stream.
func (s leaseService) LeaseKeepAlive(ctx context.Context, stream *connect.BidiStream[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	if s.l == nil {
		return s.UnimplementedLeaseHandler.LeaseKeepAlive(ctx, stream)
	}
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if la, ok := s.g.b.(LeaseAuthorizer); ok {
			if err := la.AuthorizeLease(ctx, req.GetID(), true); err != nil {
				return TranslateError(err)
			}
		}
		resp, err := s.l.LeaseKeepAlive(ctx, req)
		if errors.Is(err, storage.ErrLeaseNotFound) {
			resp, err = &pb.LeaseKeepAliveResponse{Header: s.l.Header(), ID: req.GetID(), TTL: 0}, nil
		}
		if err != nil {
			return TranslateError(err)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// maintenanceService serves etcdserverpb.Maintenance (Snapshot needs a
// Snapshotter backend).
type maintenanceService struct {
	etcdserverpbconnect.UnimplementedMaintenanceHandler
	g *Gateway
}

// Snapshotter is a backend that streams backups of its store (etcd's
// Maintenance.Snapshot, which etcdctl snapshot save calls): blobs with the
// bytes remaining, then the SHA-256 digest of the whole, as etcd frames them.
type Snapshotter interface {
	Snapshot(ctx context.Context, send func(*pb.SnapshotResponse) error) error
}

func (s maintenanceService) Snapshot(ctx context.Context, _ *pb.SnapshotRequest, stream *connect.ServerStream[pb.SnapshotResponse]) error {
	sn, ok := s.g.b.(Snapshotter)
	if !ok {
		return connect.NewError(connect.CodeUnimplemented, errors.New("method Snapshot not implemented"))
	}
	if err := sn.Snapshot(ctx, stream.Send); err != nil {
		return TranslateError(err)
	}
	return nil
}

func (s maintenanceService) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	resp, err := s.g.b.Alarm(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s maintenanceService) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	resp, err := s.g.b.Status(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s maintenanceService) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	var resp *pb.DefragmentResponse
	err := s.g.health.defragment(func() (err error) {
		resp, err = s.g.b.Defragment(ctx, r)
		return err
	})
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s maintenanceService) Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error) {
	resp, err := s.g.b.Hash(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s maintenanceService) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	resp, err := s.g.b.HashKV(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// MoveLeader transfers leadership; etcdctl sends it to the leader's
// endpoint itself, and the backend refuses it anywhere else.
func (s maintenanceService) Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	resp, err := s.g.b.Downgrade(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s maintenanceService) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	resp, err := s.g.b.MoveLeader(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// clusterService serves etcdserverpb.Cluster.
type clusterService struct {
	etcdserverpbconnect.UnimplementedClusterHandler
	g *Gateway
}

func (s clusterService) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	resp, err := s.g.b.MemberList(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s clusterService) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if err := validPeerURLs(r.GetPeerURLs()); err != nil {
		return nil, rpcError(err)
	}
	resp, err := s.g.b.MemberAdd(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s clusterService) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	resp, err := s.g.b.MemberRemove(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

// MemberUpdate leaves the URLs to the backend: etcd answers an update of
// an unknown member "member not found" whatever its URLs.
func (s clusterService) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	resp, err := s.g.b.MemberUpdate(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}

func (s clusterService) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	resp, err := s.g.b.MemberPromote(ctx, r)
	if err != nil {
		return nil, TranslateError(err)
	}
	return resp, nil
}
