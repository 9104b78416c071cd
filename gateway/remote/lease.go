package remote

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// Lease is a lease service reached over the network; it implements
// gateway.Lease. Grants, revokes, listings and TimeToLive use etcd's Lease
// service of the lease process; each keep-alive is one unary call of
// concord.v1.LeaseKeepAliveService.
//
// With several lease services (one active, standbys) it sends calls to the
// one that last answered as the active one. A keep-alive or TimeToLive that
// one refuses (gone, or "no leader" from a standby or a holder whose
// authority lapsed) is sent at once to the others, and while none is active
// (a takeover under way) it is held and re-sent every leaseProbeInterval
// for up to leaseFailoverWait, by one caller at a time while the others wait
// for its outcome, so that a client's keep-alive stream survives a takeover
// instead of breaking and backing off. Keep-alives and TimeToLive are
// idempotent, so re-sending one that may have reached a dying instance is
// safe; grants and revokes are re-sent only when they were never sent.
type Lease struct {
	targets []leaseTarget
	active  atomic.Uint32 // index of the target that last answered
	header  func() *pb.ResponseHeader
	// newest is the header of the newest answer that came through l: a
	// revoke that deletes keys moves the revision through a lease service,
	// which the consensus client behind header does not see, and the
	// answers made up from Header must not predate it.
	newest    newestHeader
	closeOnce sync.Once

	mu     sync.Mutex
	search chan struct{} // closed when the caller probing for the active ends; nil if none
}

// Failover timing of Lease (variables for tests).
var (
	// leaseFailoverWait bounds how long a keep-alive is held while no lease
	// service answers as the active one; past it the client gets the "no
	// leader" answer and retries on its own, as with etcd's request timeout.
	leaseFailoverWait = 5 * time.Second
	// leaseProbeInterval is how often the held call is re-sent during a
	// takeover: a standby acts at a precise moment (leasesvc), so finding it
	// a few tens of milliseconds later is all the delay the gateway adds.
	leaseProbeInterval = 25 * time.Millisecond
)

type leaseTarget struct {
	ep    *Endpoint
	lease etcdserverpbconnect.LeaseClient
	ka    concordv1connect.LeaseKeepAliveServiceClient
}

var _ gateway.Lease = (*Lease)(nil)

// NewLease returns a client of the lease services at urls. header supplies
// the headers of answers the gateway makes up itself (the consensus
// client's Header).
func NewLease(urls string, header func() *pb.ResponseHeader, opts ...DialOption) (*Lease, error) {
	eps, err := DialAll(urls, opts...)
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
	return l, nil
}

// NewLeaseWithLocal is NewLease with local, a lease service in process,
// as one more target, tried first: a member of a multi-member cluster
// (services) serves keep-alives itself once its own lease service holds
// the authority, and others' otherwise, and it must notice when a
// takeover makes it the holder while it is probing the others.
func NewLeaseWithLocal(local gateway.Lease, urls string, opts ...DialOption) (*Lease, error) {
	l, err := NewLease(urls, local.Header, opts...)
	if err != nil {
		return nil, err
	}
	c := localLeaseClient{local}
	l.targets = append([]leaseTarget{{lease: c, ka: c}}, l.targets...)
	return l, nil
}

// Close drops idle connections. Idempotent.
func (l *Lease) Close() error {
	l.closeOnce.Do(func() {
		for _, t := range l.targets {
			if t.ep != nil {
				_ = t.ep.Close()
			}
		}
	})
	return nil
}

// localLeaseClient calls a lease service in process as if over the wire:
// its errors become what a lease process would send (so that "no leader"
// from a standby is a refusal, and fromWire maps the others back).
type localLeaseClient struct{ l gateway.Lease }

var (
	_ etcdserverpbconnect.LeaseClient              = localLeaseClient{}
	_ concordv1connect.LeaseKeepAliveServiceClient = localLeaseClient{}
)

func wire[Resp any](resp *Resp, err error) (*Resp, error) {
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return resp, nil
}

func (c localLeaseClient) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return wire(c.l.LeaseGrant(ctx, r))
}

func (c localLeaseClient) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return wire(c.l.LeaseRevoke(ctx, r))
}

func (c localLeaseClient) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return wire(c.l.LeaseLeases(ctx, r))
}

func (c localLeaseClient) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return wire(c.l.LeaseTimeToLive(ctx, r))
}

func (c localLeaseClient) KeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	return wire(c.l.LeaseKeepAlive(ctx, r))
}

// LeaseKeepAlive is never called: Lease sends keep-alives through KeepAlive.
func (localLeaseClient) LeaseKeepAlive(context.Context) (*connect.BidiStreamForClientSimple[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("in-process lease streams are not used"))
}

// refused reports whether err says the target is not the active lease
// service: its "no leader" (Unavailable), or the connection failed.
func refused(err error) bool {
	if err == nil {
		return false
	}
	_, transport := classify(err)
	return transport || connect.CodeOf(err) == connect.CodeUnavailable
}

// round sends r to the target that last answered and, while targets refuse
// it, to each other one once, in order. ok is false when every target
// refused. A refused call goes on to the next target if it is idempotent,
// and otherwise only if it was never sent (the connection failed).
func round[Req, Resp any](l *Lease, f func(leaseTarget) func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req,
	idempotent bool) (resp *Resp, err error, ok bool) {
	first := l.active.Load()
	n := uint32(len(l.targets))
	for k := range n {
		i := (first + k) % n
		resp, err = f(l.targets[i])(ctx, r)
		if !refused(err) {
			l.active.Store(i)
			return resp, err, true
		}
		if ctx.Err() != nil {
			return nil, err, true
		}
		if sent, _ := classify(err); sent && !idempotent {
			if n > 1 {
				// Later calls start with the next target.
				l.active.CompareAndSwap(i, (i+1)%n)
			}
			return nil, err, true
		}
	}
	return nil, err, false
}

// leaseCall makes a call that any lease service can answer (grants, revokes
// and listings go to consensus through it).
func leaseCall[Req, Resp any](l *Lease, f func(leaseTarget) func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req,
	idempotent bool) (*Resp, error) {
	resp, err, _ := round(l, f, ctx, r, idempotent)
	return resp, fromWire(err)
}

// activeCall makes an idempotent call only the active lease service
// answers, holding it through a takeover (see Lease).
func activeCall[Req, Resp any](l *Lease, f func(leaseTarget) func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req) (*Resp, error) {
	deadline := time.Now().Add(leaseFailoverWait)
	for {
		resp, err, ok := round(l, f, ctx, r, true)
		if ok || ctx.Err() != nil || !time.Now().Before(deadline) {
			return resp, fromWire(err)
		}
		search, prober := l.joinSearch()
		if !prober {
			// Another caller is probing: wait for its outcome, then try.
			t := time.NewTimer(time.Until(deadline))
			select {
			case <-search:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			continue
		}
		resp, err, ok = probe(l, f, ctx, r, deadline)
		l.endSearch(search)
		if ok || ctx.Err() != nil || !time.Now().Before(deadline) {
			return resp, fromWire(err)
		}
	}
}

// probe re-sends r every leaseProbeInterval until a target answers it as
// the active lease service, ctx ends or deadline passes.
func probe[Req, Resp any](l *Lease, f func(leaseTarget) func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req,
	deadline time.Time) (resp *Resp, err error, ok bool) {
	for {
		t := time.NewTimer(min(leaseProbeInterval, time.Until(deadline)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err(), true
		}
		resp, err, ok = round(l, f, ctx, r, true)
		if ok || !time.Now().Before(deadline) {
			return resp, err, ok
		}
	}
}

// joinSearch returns the channel closed when the current probe ends, and
// whether the caller is to do the probing (no probe was under way).
func (l *Lease) joinSearch() (chan struct{}, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.search != nil {
		return l.search, false
	}
	l.search = make(chan struct{})
	return l.search, true
}

func (l *Lease) endSearch(c chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.search == c {
		l.search = nil
	}
	close(c)
}

// leaseLearnTimeout bounds how long TellActive waits.
const leaseLearnTimeout = time.Second

// TellActive makes the active lease service learn of lease id, which
// another lease service granted: only the active one expires leases, and
// it learns of one granted elsewhere only when asked about it (or at its
// next reconciliation, up to 30 s later). It asks the active one for the
// lease's TTL, for at most a second; failing that (a takeover under way),
// the next active one loads every lease as it takes over.
func (l *Lease) TellActive(ctx context.Context, id int64) {
	ctx, cancel := context.WithTimeout(ctx, leaseLearnTimeout)
	defer cancel()
	_, _ = l.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id})
}

// LeaseGrant implements gateway.Lease. Any lease service grants (through
// consensus); with several, the active one is then told (TellActive,
// starting with the one that granted, which answers from memory if it is
// the active one), so that the lease expires on time, as etcd's do.
func (l *Lease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp, err := leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
		return t.lease.LeaseGrant
	}, ctx, r, false)
	if err != nil {
		return nil, err
	}
	l.newest.observe(resp.GetHeader())
	if len(l.targets) > 1 {
		l.TellActive(ctx, resp.GetID())
	}
	return resp, nil
}

// LeaseRevoke implements gateway.Lease. With several lease services, the
// active one is then told (TellActive): its TimeToLive finds the lease
// gone in consensus and forgets it, so its keep-alives fail at once, as
// etcd's do after a revoke.
func (l *Lease) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
		return t.lease.LeaseRevoke
	}, ctx, r, false)
	if err != nil {
		return nil, err
	}
	l.newest.observe(resp.GetHeader())
	if len(l.targets) > 1 {
		l.TellActive(ctx, r.GetID())
	}
	return resp, nil
}

// LeaseLeases implements gateway.Lease.
func (l *Lease) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return leaseCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
		return t.lease.LeaseLeases
	}, ctx, r, true)
}

// LeaseTimeToLive implements gateway.Lease. The lease process's gateway
// already answers a missing lease with TTL -1, so that answer passes
// through unchanged.
func (l *Lease) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	resp, err := activeCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
		return t.lease.LeaseTimeToLive
	}, ctx, r)
	if err == nil {
		l.raiseRevision(resp.GetHeader())
	}
	return resp, err
}

// raiseRevision raises h's revision to the newest this process saw. A
// split lease service's header is as new as the last answer it had from
// consensus, which may predate a write this gateway forwarded and
// acknowledged since; etcd's keep-alive and TimeToLive headers carry the
// current revision, so a client would see its keep-alive answered at a
// revision older than its own write. Both revisions were current at some
// point, so the larger is never newer than the truth.
func (l *Lease) raiseRevision(h *pb.ResponseHeader) {
	if h == nil {
		return
	}
	if rev := l.Header().GetRevision(); rev > h.Revision {
		h.Revision = rev
	}
	l.newest.observe(h)
}

// LeaseKeepAlive implements gateway.Lease. A missing lease comes back as
// storage.ErrLeaseNotFound (through fromWire), which the gateway answers
// with TTL 0 as in process.
func (l *Lease) LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	resp, err := activeCall(l, func(t leaseTarget) func(context.Context, *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
		return t.ka.KeepAlive
	}, ctx, r)
	if err == nil {
		l.raiseRevision(resp.GetHeader())
	}
	return resp, err
}

// Header implements gateway.Lease: the consensus client's header, at the
// revision of the newest answer that came through l if that is later.
func (l *Lease) Header() *pb.ResponseHeader {
	h := l.header()
	if n := l.newest.load(); n.GetRevision() > h.GetRevision() {
		h = &pb.ResponseHeader{ClusterId: h.GetClusterId(), MemberId: h.GetMemberId(), Revision: n.GetRevision(), RaftTerm: max(h.GetRaftTerm(), n.GetRaftTerm())}
	}
	return h
}

// KeepAliver renews a lease: the one call KeepAliveServer makes of a lease
// service (gateway.Lease, *leasesvc.Service).
type KeepAliver interface {
	LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error)
}

// KeepAliveServer serves concord.v1.LeaseKeepAliveService for a lease
// service in process (*leasesvc.Service).
type KeepAliveServer struct {
	L KeepAliver
	// Authz, when set, checks each keep-alive as etcd does (write
	// permission on the lease's keys) for the credentials the caller
	// forwarded (KeepAliveHandler).
	Authz gateway.LeaseAuthorizer
}

var _ concordv1connect.LeaseKeepAliveServiceHandler = KeepAliveServer{}

// KeepAliveHandler serves s with the caller's forwarded credentials (the
// client's token, or the claim of its certificate's user) in each call's
// context.
func KeepAliveHandler(s KeepAliveServer, opts ...connect.HandlerOption) (string, http.Handler) {
	return concordv1connect.NewLeaseKeepAliveServiceHandler(s,
		append([]connect.HandlerOption{gateway.ForwardedCredentials(concordv1connect.LeaseKeepAliveServiceKeepAliveProcedure)}, opts...)...)
}

// KeepAlive implements LeaseKeepAliveServiceHandler; errors travel as
// etcd's (storage.ErrLeaseNotFound as "requested lease not found").
func (s KeepAliveServer) KeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	if s.Authz != nil {
		// Fails closed: without the forwarded credentials in ctx, the
		// call is checked as a client's without a token.
		c, _ := auth.CredentialsFrom(ctx)
		if err := s.Authz.AuthorizeLease(auth.WithCredentials(ctx, auth.Credentials{Token: c.Token, Forwarded: c.Forwarded}), r.GetID(), true); err != nil {
			return nil, gateway.TranslateError(err)
		}
	}
	resp, err := s.L.LeaseKeepAlive(ctx, r)
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return resp, nil
}
