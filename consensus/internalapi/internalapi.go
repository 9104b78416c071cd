// Package internalapi serves concord.v1.InternalService for one consensus
// member: the history watch fan-outs repair from and the lease authority and
// fenced revokes lease services use, when those run as separate processes
// (the split topology). It only adapts *consensus.Node (or anything with the
// same methods) to the wire.
//
// Invariant: errors leave through gateway.TranslateError, so every backend
// sentinel travels as the gRPC code and message of etcd's rpctypes error
// for it; gateway/remote maps those messages back to the sentinels.
package internalapi

import (
	"context"
	"errors"
	"net/http"

	"connectrpc.com/connect"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/storage"
)

// Node is what the internal API needs from a consensus member;
// *consensus.Node implements it.
type Node interface {
	RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error)
	CurrentRevision(ctx context.Context) (rev, compactRev int64, err error)
	Header() *pb.ResponseHeader
	LeaseAuthority(ctx context.Context) (consensus.LeaseAuthority, error)
	AcquireLeaseAuthority(ctx context.Context, holder string, epoch, renewedIndex uint64) (consensus.LeaseAuthority, error)
	RenewLeaseAuthority(ctx context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error)
	RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error)
	Leases(ctx context.Context) ([]storage.LeaseInfo, error)
	Lease(ctx context.Context, id int64) (storage.LeaseInfo, bool, error)
	AuthorizeWatch(ctx context.Context, key, end []byte) (*pb.ResponseHeader, error)
	AuthorizeLease(ctx context.Context, id int64, write bool) error
	AuthorizeInternal(ctx context.Context) error
	AuthEnabled() bool
}

// Server implements concordv1connect.InternalServiceHandler.
type Server struct {
	n Node
}

var _ concordv1connect.InternalServiceHandler = (*Server)(nil)

// New returns the internal API of n.
func New(n Node) *Server { return &Server{n: n} }

// Handler is the internal API of n with the options it needs: Authorize
// sees the credentials its caller forwarded (a token, or the claim of a
// client certificate's user), and, once auth is enabled, every
// other call needs a caller n admits (AuthorizeInternal: a root-role user),
// because they serve the history of every key and decide lease expiries.
// Authorize needs none: it only tells a caller about the token it sent;
// neither does Header, which every process waits on at start and which
// carries no keys (etcd's response headers).
func Handler(n Node, opts ...connect.HandlerOption) (string, http.Handler) {
	path, h := concordv1connect.NewInternalServiceHandler(New(n), append([]connect.HandlerOption{
		gateway.ForwardedCredentials(concordv1connect.InternalServiceAuthorizeProcedure),
		gateway.RequireInternalCaller(n.AuthorizeInternal,
			concordv1connect.InternalServiceAuthorizeProcedure, concordv1connect.InternalServiceHeaderProcedure),
	}, opts...)...)
	return path, gateway.WithClientCertName(h)
}

func authority(a consensus.LeaseAuthority, h *pb.ResponseHeader) *concordv1.LeaseAuthorityResponse {
	return &concordv1.LeaseAuthorityResponse{
		Authority: &concordv1.LeaseAuthority{Holder: a.Holder, Epoch: a.Epoch, RenewedIndex: a.RenewedIndex},
		Header:    h,
	}
}

// RangeEvents implements InternalServiceHandler.
func (s *Server) RangeEvents(ctx context.Context, r *concordv1.RangeEventsRequest) (*concordv1.RangeEventsResponse, error) {
	revs, err := s.n.RangeEvents(ctx, r.GetFrom(), r.GetTo(), r.GetKey(), r.GetEnd())
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	out := &concordv1.RangeEventsResponse{Revisions: make([]*concordv1.RevisionEvents, len(revs)), Header: s.n.Header()}
	for i, rv := range revs {
		out.Revisions[i] = &concordv1.RevisionEvents{Revision: rv.Rev, Events: rv.Events}
	}
	return out, nil
}

// CurrentRevision implements InternalServiceHandler.
func (s *Server) CurrentRevision(ctx context.Context, _ *concordv1.CurrentRevisionRequest) (*concordv1.CurrentRevisionResponse, error) {
	rev, compact, err := s.n.CurrentRevision(ctx)
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return &concordv1.CurrentRevisionResponse{Revision: rev, CompactRevision: compact, Header: s.n.Header()}, nil
}

// Header implements InternalServiceHandler.
func (s *Server) Header(context.Context, *concordv1.HeaderRequest) (*concordv1.HeaderResponse, error) {
	return &concordv1.HeaderResponse{Header: s.n.Header()}, nil
}

// GetLeaseAuthority implements InternalServiceHandler.
func (s *Server) GetLeaseAuthority(ctx context.Context, _ *concordv1.GetLeaseAuthorityRequest) (*concordv1.LeaseAuthorityResponse, error) {
	a, err := s.n.LeaseAuthority(ctx)
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return authority(a, s.n.Header()), nil
}

// AcquireLeaseAuthority implements InternalServiceHandler.
func (s *Server) AcquireLeaseAuthority(ctx context.Context, r *concordv1.LeaseAuthorityAcquire) (*concordv1.LeaseAuthorityResponse, error) {
	a, err := s.n.AcquireLeaseAuthority(ctx, r.GetHolder(), r.GetEpoch(), r.GetRenewedIndex())
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return authority(a, s.n.Header()), nil
}

// RenewLeaseAuthority implements InternalServiceHandler.
func (s *Server) RenewLeaseAuthority(ctx context.Context, r *concordv1.LeaseAuthorityRenew) (*concordv1.LeaseAuthorityResponse, error) {
	a, err := s.n.RenewLeaseAuthority(ctx, r.GetHolder(), r.GetEpoch())
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return authority(a, s.n.Header()), nil
}

// RevokeExpiredLeases implements InternalServiceHandler.
func (s *Server) RevokeExpiredLeases(ctx context.Context, r *concordv1.LeaseRevokeExpired) (*concordv1.RevokeExpiredLeasesResponse, error) {
	res, err := s.n.RevokeExpiredLeases(ctx, r.GetEpoch(), r.GetIds())
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return &concordv1.RevokeExpiredLeasesResponse{
		Revoked: res.Revoked, NotFound: res.NotFound, Revision: res.Revision, Header: s.n.Header(),
	}, nil
}

// Leases implements InternalServiceHandler.
func (s *Server) Leases(ctx context.Context, r *concordv1.LeasesRequest) (*concordv1.LeasesResponse, error) {
	if id := r.GetId(); id != 0 {
		li, ok, err := s.n.Lease(ctx, id)
		if err != nil {
			return nil, gateway.TranslateError(err)
		}
		out := &concordv1.LeasesResponse{Found: ok, Header: s.n.Header()}
		if ok {
			out.Leases = []*concordv1.LeaseInfo{leaseInfo(li)}
		}
		return out, nil
	}
	ls, err := s.n.Leases(ctx)
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	out := &concordv1.LeasesResponse{Found: true, Leases: make([]*concordv1.LeaseInfo, len(ls)), Header: s.n.Header()}
	for i, li := range ls {
		out.Leases[i] = leaseInfo(li)
	}
	return out, nil
}

func leaseInfo(li storage.LeaseInfo) *concordv1.LeaseInfo {
	return &concordv1.LeaseInfo{Id: li.ID, Ttl: li.TTL, Keys: li.Keys}
}

// withHeader adds h to the refusal err as a detail: etcd sends a refused
// watch's creation with the member's current header, which the gateway
// takes from it (remote.Authorizer.AuthorizeWatch).
func withHeader(err error, h *pb.ResponseHeader) error {
	var ce *connect.Error
	if h == nil || !errors.As(err, &ce) {
		return err
	}
	if d, derr := connect.NewErrorDetail(h); derr == nil {
		ce.AddDetail(d)
	}
	return err
}

// Authorize implements InternalServiceHandler. It fails closed: served
// without gateway.ForwardedCredentials, its context carries no credentials,
// which it checks as a client request without a token, never as the
// member's own (trusted) work. It checks the client's token or, without
// one, the user its certificate names if the claim came through concord's
// processes only (the caller, a fan-out or lease service, and the gateway
// before it); never the caller's own identity.
func (s *Server) Authorize(ctx context.Context, r *concordv1.AuthorizeRequest) (*concordv1.AuthorizeResponse, error) {
	c, _ := auth.CredentialsFrom(ctx)
	ctx = auth.WithCredentials(ctx, auth.Credentials{Token: c.Token, Forwarded: c.Forwarded})
	switch w := r.GetWhat().(type) {
	case *concordv1.AuthorizeRequest_Watch:
		h, err := s.n.AuthorizeWatch(ctx, w.Watch.GetKey(), w.Watch.GetEnd())
		if err != nil {
			return nil, withHeader(gateway.TranslateError(err), h)
		}
		return &concordv1.AuthorizeResponse{Header: h, AuthEnabled: s.n.AuthEnabled()}, nil
	case *concordv1.AuthorizeRequest_Lease:
		if err := s.n.AuthorizeLease(ctx, w.Lease.GetId(), w.Lease.GetWrite()); err != nil {
			return nil, gateway.TranslateError(err)
		}
		return &concordv1.AuthorizeResponse{Header: s.n.Header(), AuthEnabled: s.n.AuthEnabled()}, nil
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("authorize: nothing to authorize"))
	}
}
