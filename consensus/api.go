package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/version"
	"go.opentelemetry.io/otel/attribute"

	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/storage"
)

// maxLeaseTTL is etcd's lease.MaxLeaseTTL.
const maxLeaseTTL = 9000000000

// storageVersion is the etcd storage schema version concord reports: the
// major.minor of the etcd API it implements.
var storageVersion = clusterVersion.String()

// header completes a response header: cluster and member IDs, raft term and,
// unless the operation set it, the current revision.
func (n *Node) header(h *pb.ResponseHeader) *pb.ResponseHeader {
	if h == nil {
		h = &pb.ResponseHeader{}
	}
	h.ClusterId = n.clusterID
	h.MemberId = n.memberID
	h.RaftTerm = n.term.Load()
	if h.Revision == 0 {
		h.Revision = n.store.Rev()
	}
	return h
}

// Range reads keys: serializable requests from the local store, others after
// a ReadIndex round. A learner serves both here, like etcd's server layer
// (its /health reads through it); the client API refuses a learner's
// linearizable reads, as etcd's interceptor does, in the gateway
// (gateway/learner.go).
func (n *Node) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return n.rangeKeys(ctx, r, false)
}

// RangeWire is Range for a caller that only marshals the response to the
// protobuf binary format: see storage.Store.RangeWire.
func (n *Node) RangeWire(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return n.rangeKeys(ctx, r, true)
}

func (n *Node) rangeKeys(ctx context.Context, r *pb.RangeRequest, wire bool) (*pb.RangeResponse, error) {
	ctx, span := n.cfg.Tracing.Start(ctx, "range", func() []attribute.KeyValue { return tracing.RangeAttrs(r) })
	defer span.End()
	if err := n.readBarrier(ctx, r.GetSerializable()); err != nil {
		return nil, err
	}
	if err := n.checkRead(ctx, r.GetKey(), r.GetRangeEnd()); err != nil {
		return nil, err
	}
	rangeStore := n.store.Range
	if wire {
		rangeStore = n.store.RangeWire
	}
	resp, err := rangeStore(r)
	if err != nil {
		return nil, n.storeErr(err)
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// storeErr reports a store closed under a concurrent local read as the
// member being stopped.
func (n *Node) storeErr(err error) error {
	if errors.Is(err, storage.ErrClosed) {
		return fmt.Errorf("%w: %w", ErrStopped, err)
	}
	return err
}

// readBarrier makes a read linearizable unless serializable was requested.
func (n *Node) readBarrier(ctx context.Context, serializable bool) error {
	if serializable {
		if n.stopped() {
			return ErrStopped
		}
		return nil
	}
	return n.linearizableReadNotify(ctx)
}

// Put writes one key through raft.
func (n *Node) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	ctx, span := n.cfg.Tracing.Start(ctx, "put", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String("key", string(r.GetKey()))}
	})
	defer span.End()
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if err := n.checkQuota(ctx, costPut(r)); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.PutResponse](ctx, n, &pb.InternalRaftRequest{Put: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// DeleteRange deletes keys through raft.
func (n *Node) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	ctx, span := n.cfg.Tracing.Start(ctx, "delete_range", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String("range_begin", string(r.GetKey())), attribute.String("range_end", string(r.GetRangeEnd()))}
	})
	defer span.End()
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.DeleteRangeResponse](ctx, n, &pb.InternalRaftRequest{DeleteRange: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// Txn runs a transaction. One without write operations in any branch is
// served locally (after a ReadIndex round unless all its ranges are
// serializable) without a proposal, as etcd does.
func (n *Node) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	readOnly := !txnHasWrites(r)
	ctx, span := n.cfg.Tracing.Start(ctx, "txn", func() []attribute.KeyValue { return tracing.TxnAttrs(r, readOnly) })
	defer span.End()
	if readOnly {
		if err := n.readBarrier(ctx, txnSerializable(r)); err != nil {
			return nil, err
		}
		if err := n.checkReadTxn(ctx, r); err != nil {
			return nil, err
		}
		resp, err := n.store.ReadTxn(r)
		if err != nil {
			return nil, n.storeErr(err)
		}
		resp.Header = n.header(resp.Header)
		return resp, nil
	}
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if err := n.checkQuota(ctx, costTxn(r)); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.TxnResponse](ctx, n, &pb.InternalRaftRequest{Txn: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// txnHasWrites reports a put or delete in any branch, nested txns included.
func txnHasWrites(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, op := range ops {
			switch {
			case op.GetRequestPut() != nil, op.GetRequestDeleteRange() != nil:
				return true
			case op.GetRequestTxn() != nil && txnHasWrites(op.GetRequestTxn()):
				return true
			}
		}
	}
	return false
}

// txnSerializable is etcd's isTxnSerializable: every op is a serializable
// range (a nested txn makes it linearizable).
func txnSerializable(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.GetSuccess(), r.GetFailure()} {
		for _, op := range ops {
			if rr := op.GetRequestRange(); rr == nil || !rr.GetSerializable() {
				return false
			}
		}
	}
	return true
}

// Compact compacts the key history through raft.
func (n *Node) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	ctx, span := n.cfg.Tracing.Start(ctx, "compact", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Bool("is_physical", r.GetPhysical()), attribute.Int64("rev", r.GetRevision())}
	})
	defer span.End()
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.CompactionResponse](ctx, n, &pb.InternalRaftRequest{Compaction: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// LeaseGrant creates a lease through raft, choosing an ID when none is given
// and raising the TTL to the minimum etcd allows for the election timeout.
func (n *Node) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	// The ID first, as etcd's EtcdServer.LeaseGrant: its span names it.
	req := &pb.LeaseGrantRequest{ID: r.GetID(), TTL: max(r.GetTTL(), n.minLeaseTTL)}
	for req.ID == 0 {
		req.ID = int64(n.ids.next() & (1<<63 - 1))
	}
	ctx, span := n.cfg.Tracing.Start(ctx, "lease_grant", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int64("id", req.ID), attribute.Int64("ttl", r.GetTTL())}
	})
	defer span.End()
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	// Before the other checks, as etcd's EtcdServer.LeaseGrant.
	if err := n.requireAuthInfo(ctx); err != nil {
		return nil, err
	}
	if r.GetTTL() > maxLeaseTTL {
		return nil, ErrLeaseTTLTooLarge
	}
	if err := n.checkQuota(ctx, leaseOverhead); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.LeaseGrantResponse](ctx, n, &pb.InternalRaftRequest{LeaseGrant: req})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// LeaseRevoke deletes a lease and its keys through raft.
func (n *Node) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	ctx, span := n.cfg.Tracing.Start(ctx, "lease_revoke", func() []attribute.KeyValue {
		return []attribute.KeyValue{attribute.Int64("id", r.GetID())}
	})
	defer span.End()
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	// etcd's EtcdServer.LeaseRevoke needs a user even for a lease without
	// keys (whose write permission apply checks).
	if err := n.requireAuthInfo(ctx); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.LeaseRevokeResponse](ctx, n, &pb.InternalRaftRequest{LeaseRevoke: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// LeaseLeases lists the leases in the local store (etcd serves it locally
// too).
func (n *Node) LeaseLeases(ctx context.Context, _ *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if n.stopped() {
		return nil, ErrStopped
	}
	ls := n.store.Leases()
	if err := n.checkLeaseLeases(ctx, ls); err != nil {
		return nil, err
	}
	out := make([]*pb.LeaseStatus, 0, len(ls))
	for _, l := range ls {
		out = append(out, &pb.LeaseStatus{ID: l.ID})
	}
	return &pb.LeaseLeasesResponse{Header: n.header(nil), Leases: out}, nil
}

// Alarms lists this member's applied alarms locally, without raft or auth
// checks, as etcd's /health and /readyz read them (EtcdServer.Alarms): they
// answer without a leader.
func (n *Node) Alarms() []*pb.AlarmMember { return n.store.Alarms() }

// Alarm activates, deactivates or lists alarms, through raft as in etcd.
func (n *Node) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	// A learner lists alarms (its /health does) but changes none.
	if r.GetAction() != pb.AlarmRequest_GET {
		if err := n.learnerGuard(); err != nil {
			return nil, err
		}
		if err := n.requireAdmin(ctx); err != nil {
			return nil, err
		}
	} else if err := n.requireAuthInfo(ctx); err != nil {
		return nil, err
	}
	resp, err := proposeAs[*pb.AlarmResponse](ctx, n, &pb.InternalRaftRequest{Alarm: r})
	if err != nil {
		return nil, err
	}
	resp.Header = n.header(resp.Header)
	return resp, nil
}

// checkQuota refuses a write that needs space when the NOSPACE alarm is
// active or the store would exceed the quota; in the latter case it raises
// the alarm first, like etcd's quotaAlarmer.
func (n *Node) checkQuota(ctx context.Context, cost int) error {
	if cost == 0 || n.quota < 0 {
		return nil
	}
	if n.noSpace.Load() {
		return ErrNoSpace
	}
	if n.sizeFn()+int64(cost) < n.quota {
		return nil
	}
	n.lg.Warn("request exceeds backend quota; raising NOSPACE alarm", "quota-bytes", n.quota)
	if err := n.raiseAlarm(ctx, n.memberID, pb.AlarmType_NOSPACE); err != nil {
		n.lg.Warn("raising NOSPACE alarm failed", "error", err)
	}
	return ErrNoSpace
}

// Status reports this member's state as etcd's Maintenance.Status does.
func (n *Node) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	if n.stopped() {
		return nil, ErrStopped
	}
	if err := n.requireAuthInfo(ctx); err != nil {
		return nil, err
	}
	total, inUse := n.store.Size()
	resp := &pb.StatusResponse{
		Header:           n.header(nil),
		Version:          version.Version,
		DbSize:           total,
		DbSizeInUse:      inUse,
		Leader:           n.leader.Load(),
		RaftIndex:        n.committed.Load(),
		RaftTerm:         n.term.Load(),
		RaftAppliedIndex: n.applied.Load(),
		IsLearner:        n.IsLearner(),
		DbSizeQuota:      n.quota,
		StorageVersion:   storageVersion,
		DowngradeInfo:    &pb.DowngradeInfo{},
	}
	if resp.Leader == 0 {
		resp.Errors = append(resp.Errors, ErrNoLeader.Error())
	}
	for _, a := range n.store.Alarms() {
		resp.Errors = append(resp.Errors, formatAlarm(a))
	}
	return resp, nil
}

// formatAlarm renders an alarm the way etcd's status errors show it
// (gogoproto's compact text form, which clients and scripts match on).
func formatAlarm(a *pb.AlarmMember) string {
	return fmt.Sprintf("memberID:%d alarm:%s ", a.GetMemberID(), a.GetAlarm())
}

// adminGuard is what etcd checks before a member or maintenance admin call:
// a learner refuses it, and once auth is on only root may make it.
func (n *Node) adminGuard(ctx context.Context) error {
	if err := n.learnerGuard(); err != nil {
		return err
	}
	return n.requireAdmin(ctx)
}

// Hash is etcd's Maintenance.Hash: a hash of this member's replicated
// store (storage.Store.Hash) at the revision in the header.
func (n *Node) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	if n.stopped() {
		return nil, ErrStopped
	}
	hash, rev, err := n.store.Hash()
	if err != nil {
		return nil, n.storeErr(err)
	}
	return &pb.HashResponse{Header: n.header(&pb.ResponseHeader{Revision: rev}), Hash: hash}, nil
}

// HashKV hashes the MVCC keyspace up to r.Revision (0 = current).
func (n *Node) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	return n.PeerHashKV(r.GetRevision())
}

// PeerHashKV is HashKV without the auth and learner checks, for the
// corruption check of another member (etcd's peer /members/hashkv): the
// peer URLs are trusted as raft traffic is, which carries every key.
func (n *Node) PeerHashKV(revision int64) (*pb.HashKVResponse, error) {
	if n.stopped() {
		return nil, ErrStopped
	}
	rev := n.store.Rev()
	hash, hashRev, compactRev, err := n.store.HashKV(revision)
	if err != nil {
		return nil, n.storeErr(err)
	}
	return &pb.HashKVResponse{
		Header:          n.header(&pb.ResponseHeader{Revision: rev}),
		Hash:            hash,
		HashRevision:    hashRev,
		CompactRevision: compactRev,
	}, nil
}

// CompactionHashes are the hashes this member's latest compactions stored,
// newest first (for the compaction hash check).
func (n *Node) CompactionHashes() []storage.CompactionHash { return n.store.CompactionHashes() }

// RaiseCorruptAlarm activates the CORRUPT alarm for member id through
// raft, as etcd's corruption check does; it needs no user, as a member
// raises it for itself.
func (n *Node) RaiseCorruptAlarm(ctx context.Context, id uint64) error {
	return n.raiseAlarm(ctx, id, pb.AlarmType_CORRUPT)
}

// raiseAlarm activates alarm typ for member id through raft, without the
// auth checks of Alarm: a member raises its own alarms.
func (n *Node) raiseAlarm(ctx context.Context, id uint64, typ pb.AlarmType) error {
	_, err := n.propose(ctx, &pb.InternalRaftRequest{Alarm: &pb.AlarmRequest{
		Action: pb.AlarmRequest_ACTIVATE, MemberID: id, Alarm: typ,
	}})
	return err
}

// Defragment reclaims space in the store; reads and writes keep working.
func (n *Node) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	if n.stopped() {
		return nil, ErrStopped
	}
	n.lg.Info("starting defragment")
	if err := n.store.Defragment(ctx); err != nil {
		n.lg.Warn("defragment failed", "error", err)
		return nil, n.storeErr(err)
	}
	n.lg.Info("finished defragment")
	return &pb.DefragmentResponse{Header: n.header(nil)}, nil
}

// MemberList lists the cluster's members.
func (n *Node) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	if err := n.learnerGuard(); err != nil {
		return nil, err
	}
	if err := n.readBarrier(ctx, !r.GetLinearizable()); err != nil {
		return nil, err
	}
	// Any user, once auth is enabled, as etcd's EtcdServer.MemberList.
	if err := n.requireAuthInfo(ctx); err != nil {
		return nil, err
	}
	members := *n.membersPub.Load()
	out := make([]*pb.Member, 0, len(members))
	for _, m := range members {
		client := m.ClientURLs
		if m.ID == n.memberID {
			// A member knows its own client URLs before it published them.
			client = n.cfg.ClientURLs
		}
		out = append(out, &pb.Member{
			ID: m.ID, Name: m.Name, PeerURLs: slices.Clone(m.PeerURLs),
			ClientURLs: slices.Clone(client), IsLearner: m.IsLearner,
		})
	}
	sortMembersByID(out) // etcd's order
	return &pb.MemberListResponse{Header: n.clusterHeader(), Members: out}, nil
}
