package remote

import (
	"context"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// Lease is a lease service reached over the network; it implements
// gateway.Lease. Grants, revokes, listings and TimeToLive use etcd's Lease
// service of the lease process; each keep-alive is one unary call of
// concord.v1.LeaseKeepAliveService. With several lease services it uses one
// until it answers Unavailable (gone, or a standby's "no leader"), then the
// next, so calls find the active instance.
type Lease struct {
	targets   []leaseTarget
	rot       rotation
	header    func() *pb.ResponseHeader
	closeOnce sync.Once
}

type leaseTarget struct {
	ep    *Endpoint
	lease etcdserverpbconnect.LeaseClient
	ka    concordv1connect.LeaseKeepAliveServiceClient
}

var _ gateway.Lease = (*Lease)(nil)

// NewLease returns a client of the lease services at urls. header supplies
// the headers of answers the gateway makes up itself (the consensus
// client's Header).
func NewLease(urls string, header func() *pb.ResponseHeader) (*Lease, error) {
	eps, err := DialAll(urls)
	if err != nil {
		return nil, err
	}
	l := &Lease{header: header}
	for _, ep := range eps {
		l.targets = append(l.targets, leaseTarget{
			ep:    ep,
			lease: etcdserverpbconnect.NewLeaseClient(ep.client, ep.URL, clientOpts()...),
			ka:    concordv1connect.NewLeaseKeepAliveServiceClient(ep.client, ep.URL, internalOpts()...),
		})
	}
	l.rot.n = uint32(len(l.targets))
	return l, nil
}

// Close drops idle connections. Idempotent.
func (l *Lease) Close() error {
	l.closeOnce.Do(func() {
		for _, t := range l.targets {
			_ = t.ep.Close()
		}
	})
	return nil
}

func leaseCall[Req, Resp any](l *Lease, f func(leaseTarget) func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req) (*Resp, error) {
	i := l.rot.pick()
	resp, err := f(l.targets[i])(ctx, r)
	l.rot.done(i, err)
	return resp, fromWire(err)
}

// LeaseGrant implements gateway.Lease.
func (l *Lease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
		return t.lease.LeaseGrant
	}, ctx, r)
}

// LeaseRevoke implements gateway.Lease.
func (l *Lease) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
		return t.lease.LeaseRevoke
	}, ctx, r)
}

// LeaseLeases implements gateway.Lease.
func (l *Lease) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
		return t.lease.LeaseLeases
	}, ctx, r)
}

// LeaseTimeToLive implements gateway.Lease. The lease process's gateway
// already answers a missing lease with TTL -1, so that answer passes
// through unchanged.
func (l *Lease) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
		return t.lease.LeaseTimeToLive
	}, ctx, r)
}

// LeaseKeepAlive implements gateway.Lease. A missing lease comes back as
// storage.ErrLeaseNotFound (through fromWire), which the gateway answers
// with TTL 0 as in process.
func (l *Lease) LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
		return t.ka.KeepAlive
	}, ctx, r)
}

// Header implements gateway.Lease.
func (l *Lease) Header() *pb.ResponseHeader { return l.header() }

// KeepAliveServer serves concord.v1.LeaseKeepAliveService for a lease
// service in process (*leasesvc.Service).
type KeepAliveServer struct {
	L gateway.Lease
}

var _ concordv1connect.LeaseKeepAliveServiceHandler = KeepAliveServer{}

// KeepAlive implements LeaseKeepAliveServiceHandler; errors travel as
// etcd's (storage.ErrLeaseNotFound as "requested lease not found").
func (s KeepAliveServer) KeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	resp, err := s.L.LeaseKeepAlive(ctx, r)
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return resp, nil
}
