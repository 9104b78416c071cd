package remote

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/auth"
	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// Failover timing.
const (
	// leaderPollInterval is how often Consensus asks the member it uses for
	// the leader (Status), and moves its calls to the leader.
	leaderPollInterval = 500 * time.Millisecond
	// statusTimeout bounds the leader poll's Status call; a member that
	// does not answer within it is tried last for downFor.
	statusTimeout = 2 * time.Second
	// downFor is how long a member whose connection failed is tried only
	// after every other one.
	downFor = time.Second
)

// memberSyncInterval is how often Consensus re-learns the members
// (MemberList); a leader it has no URL for triggers a sync at once. A
// variable for tests.
var memberSyncInterval = 10 * time.Second

// endpointClients are the clients of one consensus member, all sharing the
// member's one HTTP/2 connection.
type endpointClients struct {
	ep       *Endpoint
	kv       etcdserverpbconnect.KVClient
	kvWire   etcdserverpbconnect.KVClient // RangeWire's: kvRelayCodec
	lease    etcdserverpbconnect.LeaseClient
	maint    etcdserverpbconnect.MaintenanceClient
	cluster  etcdserverpbconnect.ClusterClient
	auth     etcdserverpbconnect.AuthClient
	internal concordv1connect.InternalServiceClient

	id        atomic.Uint64 // the member's ID once a response named it
	downUntil atomic.Int64  // unix nanos; see downFor
	// advertiser is the member that advertises this endpoint's URL as a
	// client URL, 0 while none is known (under Consensus.mu). Unlike id, a
	// proxy or load balancer in front of members never gets one.
	advertiser uint64
}

func newEndpointClients(ep *Endpoint) *endpointClients {
	o := clientOpts()
	return &endpointClients{
		ep:       ep,
		kv:       etcdserverpbconnect.NewKVClient(ep.client, ep.URL, o...),
		kvWire:   etcdserverpbconnect.NewKVClient(ep.client, ep.URL, slices.Concat(o, []connect.ClientOption{connect.WithCodec(kvRelayCodec{})})...),
		lease:    etcdserverpbconnect.NewLeaseClient(ep.client, ep.URL, o...),
		maint:    etcdserverpbconnect.NewMaintenanceClient(ep.client, ep.URL, o...),
		cluster:  etcdserverpbconnect.NewClusterClient(ep.client, ep.URL, o...),
		auth:     etcdserverpbconnect.NewAuthClient(ep.client, ep.URL, o...),
		internal: concordv1connect.NewInternalServiceClient(ep.client, ep.URL, internalOpts()...),
	}
}

func (m *endpointClients) down(now time.Time) bool { return m.downUntil.Load() > now.UnixNano() }

// Consensus is the consensus cluster reached over the network. It
// implements gateway.Backend, leasesvc.Backend and watchfanout.History.
//
// It knows every member: the endpoints it was given plus the client URLs
// MemberList reports, re-learned periodically and after each membership
// change made through it; a removed member's endpoint is dropped
// (applyMembers). Every call goes through
// call, the one place that picks a member: the leader when known (a write
// sent there saves the follower-to-leader hop, a linearizable read the
// ReadIndex round trip), otherwise the member that last answered, moving
// to the next member when one is unreachable. Retries follow clientv3's
// rules (see call), so a write is never executed twice by the failover.
type Consensus struct {
	log *slog.Logger
	// dial is how members learned from MemberList are reached.
	dial dialOptions

	mu       sync.Mutex
	members  []*endpointClients // copy-on-write under mu
	removed  map[uint64]bool    // IDs of members dropped (etcd never reuses one); under mu
	lastSync time.Time          // of members, from MemberList; under mu
	pref     atomic.Pointer[endpointClients]

	leader atomic.Uint64
	header newestHeader

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NewConsensus returns a client of the consensus members at urls
// (comma-separated client URLs; any one reachable member is enough, the
// others are learned from it) and starts following the leader; Close stops
// it.
func NewConsensus(urls string, log *slog.Logger, opts ...DialOption) (*Consensus, error) {
	o := newDialOptions(opts)
	eps, err := DialAll(urls, opts...)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	c := &Consensus{log: log, dial: o, removed: make(map[uint64]bool)}
	for _, ep := range eps {
		c.members = append(c.members, newEndpointClients(ep))
	}
	c.pref.Store(c.members[0])
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go c.pollLeader(ctx)
	return c, nil
}

// Close stops following the leader and drops idle connections. Idempotent.
func (c *Consensus) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.members {
			_ = m.ep.Close()
		}
	})
	return nil
}

// order is the sequence in which call tries the members: the preferred one,
// the others, then those whose connection failed recently.
func (c *Consensus) order() []*endpointClients {
	c.mu.Lock()
	ms := c.members
	c.mu.Unlock()
	now := time.Now()
	out := make([]*endpointClients, 0, len(ms))
	p := c.pref.Load()
	if !p.down(now) && slices.Contains(ms, p) { // p may have been dropped since
		out = append(out, p)
	}
	for _, m := range ms {
		if m != p && !m.down(now) {
			out = append(out, m)
		}
	}
	for _, m := range ms {
		if m.down(now) {
			out = append(out, m)
		}
	}
	return out
}

// call runs f against one member after another until one answers, with
// clientv3's retry rules: a call moves on to the next member when the
// request certainly was not sent (the dial failed) or, for an idempotent
// call (clientv3's "repeatable": reads, lease calls, Status...), when the
// member was unreachable or answered Unavailable (no leader, stopping). A
// mutation whose connection broke after it was sent may have been applied:
// it is not retried but fails with etcd's "request timed out, possibly due
// to connection lost" (Unavailable, which clientv3 does not retry for
// mutations either). Any other error is the member's answer and is
// returned as is (through fromWire).
func (c *Consensus) call(ctx context.Context, idempotent bool, f func(*endpointClients) error) error {
	var err error
	for _, m := range c.order() {
		if err = f(m); err == nil {
			if m.downUntil.Load() != 0 { // only then: no shared write per call
				m.downUntil.Store(0)
			}
			if p := c.pref.Load(); p != m && p.down(time.Now()) {
				c.pref.CompareAndSwap(p, m)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fromWire(err)
		}
		sent, transport := classify(err)
		if transport {
			m.downUntil.Store(time.Now().Add(downFor).UnixNano())
			c.log.Debug("consensus member unreachable", "endpoint", m.ep.URL, "error", err)
		}
		switch {
		case !sent:
		case idempotent && (transport || connect.CodeOf(err) == connect.CodeUnavailable):
		case transport:
			return fmt.Errorf("remote: %s: %v: %w", m.ep.URL, err, consensus.ErrTimeoutConnectionLost)
		default:
			return fromWire(err)
		}
	}
	return fromWire(err)
}

var learnerRefusal = status.Convert(rpctypes.ErrGRPCNotSupportedForLearner).Message()

// classify tells whether a failed request may have reached the member
// (sent) and whether the failure is the connection's rather than an answer
// of the member (transport).
func classify(err error) (sent, transport bool) {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" || errors.Is(err, syscall.ECONNREFUSED) {
		return false, true
	}
	// A learner refuses what it does not serve before executing anything;
	// clientv3 too moves on to another endpoint.
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Message() == learnerRefusal {
		return false, false
	}
	if _, answered := fromWire(err).(*wireError); answered {
		return true, false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeCanceled:
		// Errors members send are etcd's (mapped by fromWire above) or
		// carry other codes; these come from a broken stream or connection.
		return true, true
	}
	return true, false
}

// unary makes one unary call through call and caches the response header.
// client picks the generated client of a member, method is the method
// expression (etcdserverpbconnect.KVClient.Put).
func unary[C, Req, Resp any](c *Consensus, ctx context.Context, idempotent bool, client func(*endpointClients) C,
	method func(C, context.Context, *Req) (*Resp, error), r *Req, hdr func(*Resp) *pb.ResponseHeader) (*Resp, error) {
	var resp *Resp
	err := c.call(ctx, idempotent, func(m *endpointClients) (err error) {
		resp, err = method(client(m), ctx, r)
		if err == nil {
			if h := hdr(resp); h.GetMemberId() != 0 {
				m.id.Store(h.GetMemberId())
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	c.seen(hdr(resp))
	return resp, nil
}

func kvOf(m *endpointClients) etcdserverpbconnect.KVClient                 { return m.kv }
func leaseOf(m *endpointClients) etcdserverpbconnect.LeaseClient           { return m.lease }
func maintOf(m *endpointClients) etcdserverpbconnect.MaintenanceClient     { return m.maint }
func clusterOf(m *endpointClients) etcdserverpbconnect.ClusterClient       { return m.cluster }
func authOf(m *endpointClients) etcdserverpbconnect.AuthClient             { return m.auth }
func internalOf(m *endpointClients) concordv1connect.InternalServiceClient { return m.internal }

// pollLeader keeps Leader (used by /health and require-leader requests),
// the cached header and the preferred member (the leader) fresh.
func (c *Consensus) pollLeader(ctx context.Context) {
	defer c.wg.Done()
	for {
		cctx, cancel := context.WithTimeout(ctx, statusTimeout)
		p := c.pref.Load()
		st, err := c.Status(cctx, &pb.StatusRequest{})
		if err == nil {
			c.leader.Store(st.GetLeader())
			c.follow(cctx, st.GetLeader())
		} else if ctx.Err() == nil {
			c.leader.Store(0)
			c.log.Debug("consensus status failed", "error", err)
			if cctx.Err() != nil {
				// The member accepts requests but does not answer (frozen,
				// or cut off after connecting): calls go elsewhere first
				// until it answers again, instead of hanging until its
				// connection's pings fail.
				p.downUntil.Store(time.Now().Add(downFor).UnixNano())
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(leaderPollInterval):
		}
	}
}

// follow makes the leader the preferred member, learning the members'
// client URLs first when the leader's is unknown or the last sync is old.
func (c *Consensus) follow(ctx context.Context, leader uint64) {
	if leader == 0 {
		return
	}
	m := c.byID(leader)
	c.mu.Lock()
	stale := time.Since(c.lastSync) > memberSyncInterval
	c.mu.Unlock()
	if m == nil || stale {
		if err := c.syncMembers(ctx); err != nil {
			c.log.Debug("consensus member list failed", "error", err)
			return
		}
		m = c.byID(leader)
	}
	if m != nil && !m.down(time.Now()) && c.pref.Swap(m) != m {
		c.log.Info("following the consensus leader", "endpoint", m.ep.URL, "member-id", fmt.Sprintf("%x", leader))
	}
}

func (c *Consensus) byID(id uint64) *endpointClients {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.id.Load() == id {
			return m
		}
	}
	return nil
}

// syncMembers re-learns the members from a linearizable MemberList, so a
// list is never older than one applied before it (a member missing from it
// has been removed, not yet to be seen).
func (c *Consensus) syncMembers(ctx context.Context) error {
	ml, err := c.MemberList(ctx, &pb.MemberListRequest{Linearizable: true})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lastSync = time.Now()
	c.mu.Unlock()
	c.applyMembers(ml.GetMembers())
	return nil
}

// applyMembers makes the endpoints follow the cluster's membership: the
// endpoint at a client URL a member advertises is that member's; it is
// dropped once the member is no longer in the cluster (stopped, or it would
// refuse) and the ID is never added again. A member advertising no URL of
// an endpoint gets one for its first reachable client URL (once it
// published them). An endpoint no member advertises is kept: it may be a
// member under another name (a DNS name) or a proxy in front of several.
// The list is never emptied.
func (c *Consensus) applyMembers(members []*pb.Member) {
	if len(members) == 0 {
		return
	}
	c.mu.Lock()
	in := make(map[uint64]bool, len(members))
	for _, mem := range members {
		in[mem.GetID()] = true
		for _, raw := range mem.GetClientURLs() {
			for _, m := range c.members {
				if sameURL(m.ep.URL, raw) {
					m.id.Store(mem.GetID())
					m.advertiser = mem.GetID()
				}
			}
		}
	}
	kept := make([]*endpointClients, 0, len(c.members)+1)
	var dropped, added []*endpointClients
	for _, m := range c.members {
		if m.advertiser != 0 && !in[m.advertiser] {
			dropped = append(dropped, m)
		} else {
			kept = append(kept, m)
		}
	}
	for _, mem := range members {
		id := mem.GetID()
		i := slices.IndexFunc(mem.GetClientURLs(), reachable)
		if c.removed[id] || i < 0 || slices.ContainsFunc(kept, func(m *endpointClients) bool { return m.advertiser == id }) {
			continue
		}
		ep, err := dialOne(mem.GetClientURLs()[i], c.dial)
		if err != nil {
			continue
		}
		m := newEndpointClients(ep)
		m.id.Store(id)
		m.advertiser = id
		kept = append(kept, m)
		added = append(added, m)
	}
	if len(kept) == 0 {
		c.mu.Unlock()
		return
	}
	for _, m := range dropped {
		c.removed[m.advertiser] = true
	}
	c.members = kept
	if p := c.pref.Load(); slices.Contains(dropped, p) {
		// The leader, when known, so that calls that must reach it (and
		// etcdctl move-leader, which looks for the endpoint whose Status
		// names itself the leader) do not wait for the next poll.
		next := kept[0]
		if i := slices.IndexFunc(kept, func(m *endpointClients) bool { return m.id.Load() == c.leader.Load() }); i >= 0 {
			next = kept[i]
		}
		c.pref.CompareAndSwap(p, next)
	}
	for _, m := range added {
		c.log.Info("learned a consensus member", "endpoint", m.ep.URL, "member-id", fmt.Sprintf("%x", m.advertiser))
	}
	for _, m := range dropped {
		c.log.Info("dropped a removed consensus member", "endpoint", m.ep.URL, "member-id", fmt.Sprintf("%x", m.advertiser))
	}
	c.mu.Unlock()
	// Calls already under way on a dropped endpoint finish; its idle
	// connection goes now.
	for _, m := range dropped {
		_ = m.ep.Close()
	}
}

// reachable tells whether an advertised client URL can be dialed from
// another host: http, and not a wildcard address such as 0.0.0.0 (a
// member advertising its listen address), which would dial this process's
// own host, possibly this very process.
func reachable(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return false
	}
	ip := net.ParseIP(u.Hostname())
	return ip == nil || !ip.IsUnspecified()
}

// sameURL compares an endpoint's base URL with a client URL as advertised.
func sameURL(base, raw string) bool {
	u, err := baseURL(raw)
	return err == nil && u == base
}

func (c *Consensus) seen(h *pb.ResponseHeader) { c.header.observe(h) }

// WaitReady blocks until a member answers a Header call.
func (c *Consensus) WaitReady(ctx context.Context) (*pb.ResponseHeader, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := unary(c, cctx, true, internalOf, concordv1connect.InternalServiceClient.Header,
			&concordv1.HeaderRequest{}, (*concordv1.HeaderResponse).GetHeader)
		cancel()
		if err == nil {
			return r.GetHeader(), nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Leader implements gateway.Backend: the leader seen by the last poll.
func (c *Consensus) Leader() uint64 { return c.leader.Load() }

// Header implements leasesvc.Backend: the newest header seen. (In process
// it is "as of now"; here it is at most one poll interval old, which only
// makes keep-alive headers older, never newer than the truth.)
func (c *Consensus) Header() *pb.ResponseHeader {
	h := c.header.load()
	if h == nil {
		return &pb.ResponseHeader{}
	}
	return &pb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, Revision: h.Revision, RaftTerm: h.RaftTerm}
}

// Range implements gateway.KV.
func (c *Consensus) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return unary(c, ctx, true, kvOf, etcdserverpbconnect.KVClient.Range, r, (*pb.RangeResponse).GetHeader)
}

// ChecksRequestSize implements gateway.RequestSizeChecker: a write with a
// token is size-checked by the member, after the token as in etcd, with
// the user name and auth revision etcd's raft request header then holds
// (consensus.Config.MaxRequestBytes); without one, the gateway's check is
// exact (the header holds no user), or a lower bound the member's check
// completes for a client certificate's user.
func (c *Consensus) ChecksRequestSize(ctx context.Context) bool {
	cr, _ := auth.CredentialsFrom(ctx)
	return cr.Token != ""
}

// Put implements gateway.KV.
func (c *Consensus) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return unary(c, ctx, false, kvOf, etcdserverpbconnect.KVClient.Put, r, (*pb.PutResponse).GetHeader)
}

// DeleteRange implements gateway.KV.
func (c *Consensus) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return unary(c, ctx, false, kvOf, etcdserverpbconnect.KVClient.DeleteRange, r, (*pb.DeleteRangeResponse).GetHeader)
}

// Txn implements gateway.KV.
func (c *Consensus) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	return unary(c, ctx, false, kvOf, etcdserverpbconnect.KVClient.Txn, r, (*pb.TxnResponse).GetHeader)
}

// Compact implements gateway.KV.
func (c *Consensus) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return unary(c, ctx, false, kvOf, etcdserverpbconnect.KVClient.Compact, r, (*pb.CompactionResponse).GetHeader)
}

// LeaseGrant implements gateway.LeaseStore.
func (c *Consensus) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return unary(c, ctx, true, leaseOf, etcdserverpbconnect.LeaseClient.LeaseGrant, r, (*pb.LeaseGrantResponse).GetHeader)
}

// LeaseRevoke implements gateway.LeaseStore.
func (c *Consensus) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return unary(c, ctx, true, leaseOf, etcdserverpbconnect.LeaseClient.LeaseRevoke, r, (*pb.LeaseRevokeResponse).GetHeader)
}

// LeaseLeases implements gateway.LeaseStore.
func (c *Consensus) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return unary(c, ctx, true, leaseOf, etcdserverpbconnect.LeaseClient.LeaseLeases, r, (*pb.LeaseLeasesResponse).GetHeader)
}

// Status implements gateway.Maintenance. The answer is the leader's own
// whenever a leader is known: etcdctl move-leader sends MoveLeader to the
// endpoint whose status names itself the leader, and after a leader change
// the preferred member may still be a follower until the next leader poll
// (calls fail over to whichever member answers), which made a gateway "no
// leader endpoint" for up to leaderPollInterval. A follower's answer is
// returned only when the leader it names cannot be asked.
func (c *Consensus) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := unary(c, ctx, true, maintOf, etcdserverpbconnect.MaintenanceClient.Status, r, (*pb.StatusResponse).GetHeader)
	if err != nil || st.GetLeader() == 0 || st.GetHeader().GetMemberId() == st.GetLeader() {
		return st, err
	}
	m := c.byID(st.GetLeader())
	if m == nil && c.syncMembers(ctx) == nil {
		m = c.byID(st.GetLeader())
	}
	if m == nil || m.down(time.Now()) {
		return st, nil
	}
	lst, lerr := m.maint.Status(ctx, r)
	if lerr != nil || lst.GetHeader().GetMemberId() != lst.GetLeader() {
		return st, nil
	}
	if c.pref.Swap(m) != m {
		c.log.Info("following the consensus leader", "endpoint", m.ep.URL, "member-id", fmt.Sprintf("%x", lst.GetLeader()))
	}
	c.seen(lst.GetHeader())
	return lst, nil
}

// Hash implements gateway.Maintenance.
func (c *Consensus) Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error) {
	return unary(c, ctx, true, maintOf, etcdserverpbconnect.MaintenanceClient.Hash, r, (*pb.HashResponse).GetHeader)
}

// HashKV implements gateway.Maintenance.
func (c *Consensus) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return unary(c, ctx, true, maintOf, etcdserverpbconnect.MaintenanceClient.HashKV, r, (*pb.HashKVResponse).GetHeader)
}

// Alarm implements gateway.Maintenance.
func (c *Consensus) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return unary(c, ctx, true, maintOf, etcdserverpbconnect.MaintenanceClient.Alarm, r, (*pb.AlarmResponse).GetHeader)
}

// Defragment implements gateway.Maintenance.
func (c *Consensus) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return unary(c, ctx, false, maintOf, etcdserverpbconnect.MaintenanceClient.Defragment, r, (*pb.DefragmentResponse).GetHeader)
}

// MemberList implements gateway.Cluster.
func (c *Consensus) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	return unary(c, ctx, true, clusterOf, etcdserverpbconnect.ClusterClient.MemberList, r, (*pb.MemberListResponse).GetHeader)
}

// RangeEvents implements watchfanout.History.
func (c *Consensus) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.RangeEvents,
		&concordv1.RangeEventsRequest{From: from, To: to, Key: key, End: end}, (*concordv1.RangeEventsResponse).GetHeader)
	if err != nil {
		return nil, err
	}
	out := make([]eventbus.Revision, len(resp.GetRevisions()))
	for i, rv := range resp.GetRevisions() {
		out[i] = eventbus.Revision{Rev: rv.GetRevision(), Events: rv.GetEvents()}
	}
	return out, nil
}

// CurrentRevision implements watchfanout.History.
func (c *Consensus) CurrentRevision(ctx context.Context) (rev, compactRev int64, err error) {
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.CurrentRevision, &concordv1.CurrentRevisionRequest{},
		(*concordv1.CurrentRevisionResponse).GetHeader)
	if err != nil {
		return 0, 0, err
	}
	return resp.GetRevision(), resp.GetCompactRevision(), nil
}

func authority(a *concordv1.LeaseAuthority) consensus.LeaseAuthority {
	return consensus.LeaseAuthority{Holder: a.GetHolder(), Epoch: a.GetEpoch(), RenewedIndex: a.GetRenewedIndex()}
}

// LeaseAuthority implements leasesvc.Backend.
func (c *Consensus) LeaseAuthority(ctx context.Context) (consensus.LeaseAuthority, error) {
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.GetLeaseAuthority, &concordv1.GetLeaseAuthorityRequest{},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// AcquireLeaseAuthority implements leasesvc.Backend.
func (c *Consensus) AcquireLeaseAuthority(ctx context.Context, holder string, epoch, renewedIndex uint64) (consensus.LeaseAuthority, error) {
	resp, err := unary(c, ctx, false, internalOf, concordv1connect.InternalServiceClient.AcquireLeaseAuthority,
		&concordv1.LeaseAuthorityAcquire{Holder: holder, Epoch: epoch, RenewedIndex: renewedIndex},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// RenewLeaseAuthority implements leasesvc.Backend.
func (c *Consensus) RenewLeaseAuthority(ctx context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error) {
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.RenewLeaseAuthority, &concordv1.LeaseAuthorityRenew{Holder: holder, Epoch: epoch},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// RevokeExpiredLeases implements leasesvc.Backend.
func (c *Consensus) RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error) {
	resp, err := unary(c, ctx, false, internalOf, concordv1connect.InternalServiceClient.RevokeExpiredLeases, &concordv1.LeaseRevokeExpired{Epoch: epoch, Ids: ids},
		(*concordv1.RevokeExpiredLeasesResponse).GetHeader)
	if err != nil {
		return consensus.RevokeExpiredResult{}, err
	}
	return consensus.RevokeExpiredResult{Revoked: resp.GetRevoked(), NotFound: resp.GetNotFound(), Revision: resp.GetRevision()}, nil
}

// Leases implements leasesvc.Backend.
func (c *Consensus) Leases(ctx context.Context) ([]storage.LeaseInfo, error) {
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.Leases, &concordv1.LeasesRequest{}, (*concordv1.LeasesResponse).GetHeader)
	if err != nil {
		return nil, err
	}
	out := make([]storage.LeaseInfo, len(resp.GetLeases()))
	for i, l := range resp.GetLeases() {
		out[i] = storage.LeaseInfo{ID: l.GetId(), TTL: l.GetTtl(), Keys: l.GetKeys()}
	}
	return out, nil
}

// Lease implements leasesvc.Backend. ID 0 is no lease (etcd's NoLease):
// it is not asked for, since a LeasesRequest without an ID lists every
// lease, and the first of those is not lease 0.
func (c *Consensus) Lease(ctx context.Context, id int64) (storage.LeaseInfo, bool, error) {
	if id == 0 {
		return storage.LeaseInfo{}, false, nil
	}
	resp, err := unary(c, ctx, true, internalOf, concordv1connect.InternalServiceClient.Leases, &concordv1.LeasesRequest{Id: id}, (*concordv1.LeasesResponse).GetHeader)
	if err != nil || !resp.GetFound() || len(resp.GetLeases()) == 0 || resp.GetLeases()[0].GetId() != id {
		return storage.LeaseInfo{}, false, err
	}
	l := resp.GetLeases()[0]
	return storage.LeaseInfo{ID: l.GetId(), TTL: l.GetTtl(), Keys: l.GetKeys()}, true, nil
}

// Authorizer checks watches and lease uses against the permissions of the
// token its callers forwarded, or of the certificate user they claimed
// (credentials.go) (gateway.WatchAuthorizer and
// gateway.LeaseAuthorizer), by asking a consensus member (Authorize on its
// internal API), which holds the replicated auth state: the answer always
// reflects the member's current users, roles and auth revision. The split
// watch fan-outs and lease services use it; every call is a round trip, so
// a process that forwards to one of those leaves the checks to it.
//
// Keep-alives are the exception: they are the lease service's hot path,
// and a round trip each cost 30–40% of the split topology's keep-alive
// throughput with auth off. After a member answered that auth is off,
// keep-alives are let through unchecked for KeepAliveRecheck; so for at
// most that long after `auth enable` a keep-alive may renew a lease its
// client has no write permission on (it reveals and changes no key).
// Watches and TimeToLive are always checked.
type Authorizer struct {
	c   *Consensus
	now func() time.Time
	// offUntil is the time (UnixNano) until which keep-alives go
	// unchecked; 0 while auth is on or unknown.
	offUntil atomic.Int64
}

// KeepAliveRecheck is how long a lease service trusts "auth is off" for
// keep-alives: ten Authorize round trips a second, against the thousands
// of keep-alives a loaded lease service answers, and it bounds the time
// after `auth enable` in which a keep-alive goes unchecked.
const KeepAliveRecheck = 100 * time.Millisecond

// NewAuthorizer returns an Authorizer asking c; now is its clock (nil:
// time.Now).
func NewAuthorizer(c *Consensus, now func() time.Time) *Authorizer {
	if now == nil {
		now = time.Now
	}
	return &Authorizer{c: c, now: now}
}

var (
	_ gateway.WatchAuthorizer = (*Authorizer)(nil)
	_ gateway.LeaseAuthorizer = (*Authorizer)(nil)
)

// AuthorizeWatch implements gateway.WatchAuthorizer.
func (a *Authorizer) AuthorizeWatch(ctx context.Context, key, end []byte) (*pb.ResponseHeader, error) {
	resp, err := a.authorize(ctx, &concordv1.AuthorizeRequest{What: &concordv1.AuthorizeRequest_Watch{Watch: &concordv1.AuthorizeWatch{Key: key, End: end}}})
	if err != nil {
		// A refusal carries the member's header (etcd's for a refused
		// watch); the cached one may be older than writes made
		// through other gateways or before this one saw them.
		if h := refusalHeader(err); h != nil {
			return h, err
		}
		return a.c.Header(), err
	}
	return resp.GetHeader(), nil
}

// refusalHeader is the header a refusal of consensus's Authorize carries,
// nil if none.
func refusalHeader(err error) *pb.ResponseHeader {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if v, derr := d.Value(); derr == nil {
			if h, ok := v.(*pb.ResponseHeader); ok {
				return h
			}
		}
	}
	return nil
}

// AuthorizeLease implements gateway.LeaseAuthorizer.
func (a *Authorizer) AuthorizeLease(ctx context.Context, id int64, write bool) error {
	if write && a.now().UnixNano() < a.offUntil.Load() {
		return nil
	}
	_, err := a.authorize(ctx, &concordv1.AuthorizeRequest{What: &concordv1.AuthorizeRequest_Lease{Lease: &concordv1.AuthorizeLease{Id: id, Write: write}}})
	return err
}

// authorize asks a member and notes whether auth was on.
func (a *Authorizer) authorize(ctx context.Context, r *concordv1.AuthorizeRequest) (*concordv1.AuthorizeResponse, error) {
	resp, err := unary(a.c, ctx, true, internalOf, concordv1connect.InternalServiceClient.Authorize, r,
		(*concordv1.AuthorizeResponse).GetHeader)
	switch {
	case err != nil:
	case resp.GetAuthEnabled():
		a.offUntil.Store(0)
	default:
		a.offUntil.Store(a.now().Add(KeepAliveRecheck).UnixNano())
	}
	return resp, err
}
