package services

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/leasesvc"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// Lease keep-alives across the members of a multi-member cluster.
//
// Every member runs its own lease service, and one of them holds the lease
// authority (DESIGN.md invariant 4): only that one renews leases and knows
// their remaining TTLs; the others refuse keep-alives and TimeToLive with
// leasesvc.ErrNotActive. etcd's followers forward lease renewals to the
// leader over the peer URLs, so clients may keep leases alive through any
// member; a client's lock or election session would otherwise break on
// every member but one. memberLease does the same: what its own lease
// service refuses it sends, over the peer URLs, to the other members'
// lease services (peerLeases), which answer only from their own state, so
// a call is forwarded at most once; during a takeover it keeps trying its
// own service too, which may be the one taking over. Permissions are
// checked where the client's call arrives, before it is forwarded, as etcd
// does; the peer URLs are trusted like raft traffic, which carries every
// key anyway.

// memberLease is gateway.Lease for one member: its own lease service, and
// the other members' for the keep-alives and TimeToLive it refuses.
type memberLease struct {
	*leasesvc.Service
	self    uint64
	members func() []*pb.Member
	dial    []remote.DialOption

	mu    sync.Mutex
	peers string        // the peer URLs all was made for
	all   *remote.Lease // this member's lease service first, then the others'; nil while alone
}

func newMemberLease(l *leasesvc.Service, self uint64, members func() []*pb.Member, peerTLS *tls.Config) *memberLease {
	return &memberLease{Service: l, self: self, members: members, dial: []remote.DialOption{remote.WithTLS(peerTLS)}}
}

// LeaseKeepAlive implements gateway.Lease.
// The holder (and a single member) answers from its own service alone.
func (m *memberLease) LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	resp, err := m.Service.LeaseKeepAlive(ctx, r)
	if !errors.Is(err, leasesvc.ErrNotActive) {
		return resp, err
	}
	if all := m.allMembers(); all != nil {
		return all.LeaseKeepAlive(ctx, r)
	}
	return nil, err
}

// LeaseGrant implements gateway.Lease: the grant goes through consensus
// from any member, and a member that does not hold the lease authority
// then tells the holder (remote.Lease.TellActive), so that the lease
// expires on time, as etcd's do wherever they were granted.
func (m *memberLease) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	resp, err := m.Service.LeaseGrant(ctx, r)
	if err != nil {
		return resp, err
	}
	if !m.Service.Active() {
		if all := m.allMembers(); all != nil {
			all.TellActive(ctx, resp.GetID())
		}
	}
	return resp, nil
}

// LeaseRevoke implements gateway.Lease: the revoke goes through consensus
// from any member, and a member that does not hold the lease authority
// then tells the holder, whose TimeToLive finds the lease gone in
// consensus and forgets it: keep-alives through any member then fail at
// once, as etcd's do after a revoke, instead of renewing the revoked lease
// until the holder's next reconciliation.
func (m *memberLease) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := m.Service.LeaseRevoke(ctx, r)
	if err != nil {
		return resp, err
	}
	if !m.Service.Active() {
		if all := m.allMembers(); all != nil {
			all.TellActive(ctx, r.GetID())
		}
	}
	return resp, nil
}

// LeaseTimeToLive implements gateway.Lease.
func (m *memberLease) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	resp, err := m.Service.LeaseTimeToLive(ctx, r)
	if !errors.Is(err, leasesvc.ErrNotActive) {
		return resp, err
	}
	if all := m.allMembers(); all != nil {
		return all.LeaseTimeToLive(ctx, r)
	}
	return nil, err
}

// allMembers returns a client of the voting members' lease services (this
// member's in process first; learners never hold the authority), which
// sends each call to the one that last answered as the holder and fails
// over as a split gateway does (remote.Lease), and is made again when the
// membership changed; nil while no other voter exists.
func (m *memberLease) allMembers() *remote.Lease {
	var urls []string
	for _, mb := range m.members() {
		if mb.ID != m.self && !mb.IsLearner {
			urls = append(urls, mb.PeerURLs...)
		}
	}
	slices.Sort(urls)
	peers := strings.Join(urls, ",")
	m.mu.Lock()
	defer m.mu.Unlock()
	if peers == m.peers {
		return m.all
	}
	if m.all != nil {
		_ = m.all.Close()
	}
	m.peers, m.all = peers, nil
	if peers != "" {
		// Only malformed URLs fail, and members' peer URLs were parsed
		// when they joined.
		m.all, _ = remote.NewLeaseWithLocal(m.Service, peers, m.dial...)
	}
	return m.all
}

// Close drops the connections to the other members. Idempotent.
func (m *memberLease) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.all != nil {
		_ = m.all.Close()
		m.all, m.peers = nil, ""
	}
	return nil
}

// peerLeases serves, on this member's peer URLs, the keep-alives and
// TimeToLive other members forward (memberLease) from this member's own
// lease service. Until set (the lease service starts after consensus,
// the peer server before) every call answers "no leader", which sends the
// forwarder on to another member.
type peerLeases struct {
	svc atomic.Pointer[leasesvc.Service]
}

func (p *peerLeases) set(l *leasesvc.Service) { p.svc.Store(l) }

// handlers are the paths and handlers to mount on the peer server.
func (p *peerLeases) handlers() map[string]http.Handler {
	kaPath, ka := remote.KeepAliveHandler(remote.KeepAliveServer{L: peerLease{p}})
	ttlPath, ttl := etcdserverpbconnect.NewLeaseHandler(peerTimeToLive{p: p})
	return map[string]http.Handler{kaPath: ka, ttlPath: ttl}
}

// own is the lease service, or nil with the error to answer while unset.
func (p *peerLeases) own() (*leasesvc.Service, error) {
	if l := p.svc.Load(); l != nil {
		return l, nil
	}
	return nil, leasesvc.ErrNotActive
}

// peerLease renews the forwarded keep-alives (remote.KeepAliveServer).
type peerLease struct{ p *peerLeases }

func (l peerLease) LeaseKeepAlive(ctx context.Context, r *pb.LeaseKeepAliveRequest) (*pb.LeaseKeepAliveResponse, error) {
	own, err := l.p.own()
	if err != nil {
		return nil, err
	}
	return own.LeaseKeepAlive(ctx, r)
}

// peerTimeToLive serves etcd's LeaseTimeToLive for forwarded calls,
// answering a missing lease with TTL -1 as the client gateway does (which
// is what remote.Lease expects of the lease service it calls).
type peerTimeToLive struct {
	etcdserverpbconnect.UnimplementedLeaseHandler
	p *peerLeases
}

func (s peerTimeToLive) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	own, err := s.p.own()
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	resp, err := own.LeaseTimeToLive(ctx, r)
	if errors.Is(err, storage.ErrLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: own.Header(), ID: r.GetID(), TTL: -1}, nil
	}
	if err != nil {
		return nil, gateway.TranslateError(err)
	}
	return resp, nil
}
