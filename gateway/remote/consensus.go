package remote

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/eventbus"
	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
	"github.com/concord-kv/concord/storage"
)

// leaderPollInterval is how often Consensus refreshes the leader it reports.
const leaderPollInterval = 500 * time.Millisecond

// Consensus is a consensus member reached over the network. It implements
// gateway.Backend, leasesvc.Backend and watchfanout.History.
type Consensus struct {
	ep       *Endpoint
	kv       etcdserverpbconnect.KVClient
	lease    etcdserverpbconnect.LeaseClient
	maint    etcdserverpbconnect.MaintenanceClient
	cluster  etcdserverpbconnect.ClusterClient
	internal concordv1connect.InternalServiceClient
	log      *slog.Logger

	leader atomic.Uint64
	header atomic.Pointer[pb.ResponseHeader]

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NewConsensus returns a client of the consensus member at urls and starts
// polling its leader; Close stops it.
func NewConsensus(urls string, log *slog.Logger) (*Consensus, error) {
	ep, err := Dial(urls)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	o := clientOpts()
	c := &Consensus{
		ep:       ep,
		kv:       etcdserverpbconnect.NewKVClient(ep.client, ep.URL, o...),
		lease:    etcdserverpbconnect.NewLeaseClient(ep.client, ep.URL, o...),
		maint:    etcdserverpbconnect.NewMaintenanceClient(ep.client, ep.URL, o...),
		cluster:  etcdserverpbconnect.NewClusterClient(ep.client, ep.URL, o...),
		internal: concordv1connect.NewInternalServiceClient(ep.client, ep.URL, internalOpts()...),
		log:      log,
	}
	c.header.Store(&pb.ResponseHeader{})
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go c.pollLeader(ctx)
	return c, nil
}

// Close stops the leader polling and drops idle connections. Idempotent.
func (c *Consensus) Close() error {
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Wait()
		_ = c.ep.Close()
	})
	return nil
}

// pollLeader keeps Leader (used by /health and require-leader requests) and
// the cached header fresh.
func (c *Consensus) pollLeader(ctx context.Context) {
	defer c.wg.Done()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.maint.Status(cctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			c.leader.Store(st.GetLeader())
			c.seen(st.GetHeader())
		} else if ctx.Err() == nil {
			c.leader.Store(0)
			c.log.Debug("consensus status failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(leaderPollInterval):
		}
	}
}

func (c *Consensus) seen(h *pb.ResponseHeader) {
	if h != nil && h.GetClusterId() != 0 {
		c.header.Store(h)
	}
}

// WaitReady blocks until the member answers a Header call.
func (c *Consensus) WaitReady(ctx context.Context) (*pb.ResponseHeader, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := c.internal.Header(cctx, &concordv1.HeaderRequest{})
		cancel()
		if err == nil {
			c.seen(r.GetHeader())
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
	h := *c.header.Load()
	return &h
}

func call[Req, Resp any](c *Consensus, f func(context.Context, *Req) (*Resp, error), ctx context.Context, r *Req, hdr func(*Resp) *pb.ResponseHeader) (*Resp, error) {
	resp, err := f(ctx, r)
	if err != nil {
		return nil, fromWire(err)
	}
	c.seen(hdr(resp))
	return resp, nil
}

// Range implements gateway.KV.
func (c *Consensus) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return call(c, c.kv.Range, ctx, r, (*pb.RangeResponse).GetHeader)
}

// Put implements gateway.KV.
func (c *Consensus) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	return call(c, c.kv.Put, ctx, r, (*pb.PutResponse).GetHeader)
}

// DeleteRange implements gateway.KV.
func (c *Consensus) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return call(c, c.kv.DeleteRange, ctx, r, (*pb.DeleteRangeResponse).GetHeader)
}

// Txn implements gateway.KV.
func (c *Consensus) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	return call(c, c.kv.Txn, ctx, r, (*pb.TxnResponse).GetHeader)
}

// Compact implements gateway.KV.
func (c *Consensus) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	return call(c, c.kv.Compact, ctx, r, (*pb.CompactionResponse).GetHeader)
}

// LeaseGrant implements gateway.LeaseStore.
func (c *Consensus) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	return call(c, c.lease.LeaseGrant, ctx, r, (*pb.LeaseGrantResponse).GetHeader)
}

// LeaseRevoke implements gateway.LeaseStore.
func (c *Consensus) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	return call(c, c.lease.LeaseRevoke, ctx, r, (*pb.LeaseRevokeResponse).GetHeader)
}

// LeaseLeases implements gateway.LeaseStore.
func (c *Consensus) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return call(c, c.lease.LeaseLeases, ctx, r, (*pb.LeaseLeasesResponse).GetHeader)
}

// Status implements gateway.Maintenance.
func (c *Consensus) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	return call(c, c.maint.Status, ctx, r, (*pb.StatusResponse).GetHeader)
}

// HashKV implements gateway.Maintenance.
func (c *Consensus) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return call(c, c.maint.HashKV, ctx, r, (*pb.HashKVResponse).GetHeader)
}

// Alarm implements gateway.Maintenance.
func (c *Consensus) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	return call(c, c.maint.Alarm, ctx, r, (*pb.AlarmResponse).GetHeader)
}

// Defragment implements gateway.Maintenance.
func (c *Consensus) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	return call(c, c.maint.Defragment, ctx, r, (*pb.DefragmentResponse).GetHeader)
}

// MemberList implements gateway.Cluster.
func (c *Consensus) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	return call(c, c.cluster.MemberList, ctx, r, (*pb.MemberListResponse).GetHeader)
}

// RangeEvents implements watchfanout.History.
func (c *Consensus) RangeEvents(ctx context.Context, from, to int64, key, end []byte) ([]eventbus.Revision, error) {
	resp, err := call(c, c.internal.RangeEvents, ctx,
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
	resp, err := call(c, c.internal.CurrentRevision, ctx, &concordv1.CurrentRevisionRequest{},
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
	resp, err := call(c, c.internal.GetLeaseAuthority, ctx, &concordv1.GetLeaseAuthorityRequest{},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// AcquireLeaseAuthority implements leasesvc.Backend.
func (c *Consensus) AcquireLeaseAuthority(ctx context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error) {
	resp, err := call(c, c.internal.AcquireLeaseAuthority, ctx, &concordv1.LeaseAuthorityAcquire{Holder: holder, Epoch: epoch},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// RenewLeaseAuthority implements leasesvc.Backend.
func (c *Consensus) RenewLeaseAuthority(ctx context.Context, holder string, epoch uint64) (consensus.LeaseAuthority, error) {
	resp, err := call(c, c.internal.RenewLeaseAuthority, ctx, &concordv1.LeaseAuthorityRenew{Holder: holder, Epoch: epoch},
		(*concordv1.LeaseAuthorityResponse).GetHeader)
	if err != nil {
		return consensus.LeaseAuthority{}, err
	}
	return authority(resp.GetAuthority()), nil
}

// RevokeExpiredLeases implements leasesvc.Backend.
func (c *Consensus) RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (consensus.RevokeExpiredResult, error) {
	resp, err := call(c, c.internal.RevokeExpiredLeases, ctx, &concordv1.LeaseRevokeExpired{Epoch: epoch, Ids: ids},
		(*concordv1.RevokeExpiredLeasesResponse).GetHeader)
	if err != nil {
		return consensus.RevokeExpiredResult{}, err
	}
	return consensus.RevokeExpiredResult{Revoked: resp.GetRevoked(), NotFound: resp.GetNotFound(), Revision: resp.GetRevision()}, nil
}

// Leases implements leasesvc.Backend.
func (c *Consensus) Leases(ctx context.Context) ([]storage.LeaseInfo, error) {
	resp, err := call(c, c.internal.Leases, ctx, &concordv1.LeasesRequest{}, (*concordv1.LeasesResponse).GetHeader)
	if err != nil {
		return nil, err
	}
	out := make([]storage.LeaseInfo, len(resp.GetLeases()))
	for i, l := range resp.GetLeases() {
		out[i] = storage.LeaseInfo{ID: l.GetId(), TTL: l.GetTtl(), Keys: l.GetKeys()}
	}
	return out, nil
}

// Lease implements leasesvc.Backend.
func (c *Consensus) Lease(ctx context.Context, id int64) (storage.LeaseInfo, bool, error) {
	resp, err := call(c, c.internal.Leases, ctx, &concordv1.LeasesRequest{Id: id}, (*concordv1.LeasesResponse).GetHeader)
	if err != nil || !resp.GetFound() || len(resp.GetLeases()) == 0 {
		return storage.LeaseInfo{}, false, err
	}
	l := resp.GetLeases()[0]
	return storage.LeaseInfo{ID: l.GetId(), TTL: l.GetTtl(), Keys: l.GetKeys()}, true, nil
}
