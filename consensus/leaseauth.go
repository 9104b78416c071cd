package consensus

// Lease authority (DESIGN.md invariant 4). Leases are replicated state, but
// deciding that one has expired is done by exactly one leasesvc instance at a
// time. consensus keeps a replicated record naming it, {holder, epoch}, and
// checks the epoch of every expiry revoke when the revoke is applied: a
// revoke proposed by a deposed or partitioned instance carries an old epoch
// and writes nothing, whenever it reaches the log.
//
// The commands that change the record and the fenced revokes are concord's
// own RaftCommand envelope (proto/concord/v1), stored on the log as 0x00
// followed by the encoded message; every other entry is an etcd
// InternalRaftRequest, whose encoding never starts with 0x00.

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	concordv1 "github.com/concord-kv/concord/proto/gen/concord/v1"
	"github.com/concord-kv/concord/storage"
)

// commandPrefix starts every raft entry that carries a concordv1.RaftCommand.
const commandPrefix byte = 0x00

// metaLeaseAuthority is the storage metadata key of the authority record.
var metaLeaseAuthority = []byte("lease-authority")

// ErrStaleEpoch is returned when a lease authority command or an expiry
// revoke carries an epoch (or holder) that is not the current one. Nothing
// was written.
var ErrStaleEpoch = errors.New("consensus: stale lease authority epoch")

// LeaseAuthority is the replicated record of the leasesvc instance allowed
// to expire leases. The zero value means nobody ever held it.
type LeaseAuthority struct {
	// Holder names the instance holding the authority.
	Holder string
	// Epoch increases by one with every acquisition; expiry revokes carry it.
	Epoch uint64
	// RenewedIndex is the raft index of the last acquisition or renewal: a
	// standby that sees it stop advancing for long enough may take over,
	// without comparing clocks across machines.
	RenewedIndex uint64
}

func authorityFromProto(a *concordv1.LeaseAuthority) LeaseAuthority {
	return LeaseAuthority{Holder: a.GetHolder(), Epoch: a.GetEpoch(), RenewedIndex: a.GetRenewedIndex()}
}

func (a LeaseAuthority) proto() *concordv1.LeaseAuthority {
	return &concordv1.LeaseAuthority{Holder: a.Holder, Epoch: a.Epoch, RenewedIndex: a.RenewedIndex}
}

// RevokeExpiredResult is the outcome of RevokeExpiredLeases.
type RevokeExpiredResult struct {
	// Revoked are the leases revoked (each in its own revision, with all its
	// keys), NotFound those that no longer existed.
	Revoked, NotFound []int64
	// Revision is the store revision after the command was applied.
	Revision int64
}

// loadLeaseAuthority reads the record at start.
func loadLeaseAuthority(s *storage.Store) (LeaseAuthority, error) {
	v, err := s.Meta(metaLeaseAuthority)
	if err != nil {
		return LeaseAuthority{}, fmt.Errorf("consensus: read lease authority: %w", err)
	}
	if v == nil {
		return LeaseAuthority{}, nil
	}
	a := &concordv1.LeaseAuthority{}
	if err := proto.Unmarshal(v, a); err != nil {
		return LeaseAuthority{}, fmt.Errorf("consensus: decode lease authority: %w", err)
	}
	return authorityFromProto(a), nil
}

// LeaseAuthority returns the authority record as of this member's applied
// state. A standby polls it; a lagging member only makes it look older,
// which delays a takeover but never hastens one.
func (n *Node) LeaseAuthority(ctx context.Context) (LeaseAuthority, error) {
	if n.stopped() {
		return LeaseAuthority{}, ErrStopped
	}
	if err := ctx.Err(); err != nil {
		return LeaseAuthority{}, err
	}
	return *n.leaseAuthPub.Load(), nil
}

// AcquireLeaseAuthority makes holder the lease authority with epoch, which
// must be the current epoch plus one (ErrStaleEpoch otherwise, for example
// when another candidate won the race). A non-zero renewedIndex makes the
// acquisition conditional on the record's RenewedIndex still being that one:
// a standby passes the index it watched go unrenewed, so a renewal it did
// not see (applied on the leader before its own member, or in flight) fails
// the takeover rather than deposing a holder that is answering keep-alives.
//
// A learner refuses (ErrNotSupportedForLearner): its gateway refuses
// keep-alives as etcd's learners do, so a lease service in a learner's
// process must not become the one that decides expiries (in etcd, only the
// leader's lessor does). A lease service in its own process reaching a
// learner is sent on to another member by gateway/remote.
func (n *Node) AcquireLeaseAuthority(ctx context.Context, holder string, epoch, renewedIndex uint64) (LeaseAuthority, error) {
	if holder == "" {
		return LeaseAuthority{}, errors.New("consensus: empty lease authority holder")
	}
	if err := n.learnerGuard(); err != nil {
		return LeaseAuthority{}, err
	}
	return n.proposeAuthority(ctx, &concordv1.RaftCommand{Command: &concordv1.RaftCommand_LeaseAuthorityAcquire{
		LeaseAuthorityAcquire: &concordv1.LeaseAuthorityAcquire{Holder: holder, Epoch: epoch, RenewedIndex: renewedIndex},
	}})
}

// RenewLeaseAuthority records that the holder of epoch is alive (it advances
// RenewedIndex). ErrStaleEpoch means the holder has been deposed.
func (n *Node) RenewLeaseAuthority(ctx context.Context, holder string, epoch uint64) (LeaseAuthority, error) {
	return n.proposeAuthority(ctx, &concordv1.RaftCommand{Command: &concordv1.RaftCommand_LeaseAuthorityRenew{
		LeaseAuthorityRenew: &concordv1.LeaseAuthorityRenew{Holder: holder, Epoch: epoch},
	}})
}

// proposeAuthority proposes an acquire or renew command and returns the
// authority record its apply produced.
func (n *Node) proposeAuthority(ctx context.Context, cmd *concordv1.RaftCommand) (LeaseAuthority, error) {
	m, err := n.proposeCommand(ctx, cmd)
	if err != nil {
		return LeaseAuthority{}, err
	}
	a, ok := m.(*concordv1.LeaseAuthority)
	if !ok {
		return LeaseAuthority{}, fmt.Errorf("consensus: unexpected apply response %T", m)
	}
	return authorityFromProto(a), nil
}

// RevokeExpiredLeases revokes expired leases on behalf of the lease authority
// of epoch: each lease is deleted with all its keys in one revision of its
// own. If epoch is not current when the command is applied, nothing is
// written and the error is ErrStaleEpoch.
func (n *Node) RevokeExpiredLeases(ctx context.Context, epoch uint64, ids []int64) (RevokeExpiredResult, error) {
	m, err := n.proposeCommand(ctx, &concordv1.RaftCommand{Command: &concordv1.RaftCommand_LeaseRevokeExpired{
		LeaseRevokeExpired: &concordv1.LeaseRevokeExpired{Epoch: epoch, Ids: ids},
	}})
	if err != nil {
		return RevokeExpiredResult{}, err
	}
	r, ok := m.(*concordv1.LeaseRevokeExpiredResult)
	if !ok {
		return RevokeExpiredResult{}, fmt.Errorf("consensus: unexpected apply response %T", m)
	}
	return RevokeExpiredResult{Revoked: r.GetRevoked(), NotFound: r.GetNotFound(), Revision: r.GetRevision()}, nil
}

// Leases lists every lease with its granted TTL and keys, linearizably (a
// new lease authority loads them after its acquisition was applied).
func (n *Node) Leases(ctx context.Context) ([]storage.LeaseInfo, error) {
	if err := n.readBarrier(ctx, false); err != nil {
		return nil, err
	}
	if n.stopped() {
		return nil, ErrStopped
	}
	return n.store.Leases(), nil
}

// Lease returns one lease with its granted TTL and keys, linearizably.
func (n *Node) Lease(ctx context.Context, id int64) (storage.LeaseInfo, bool, error) {
	if err := n.readBarrier(ctx, false); err != nil {
		return storage.LeaseInfo{}, false, err
	}
	if n.stopped() {
		return storage.LeaseInfo{}, false, ErrStopped
	}
	li, ok := n.store.Lease(id)
	return li, ok, nil
}

// Header returns a response header for this member as of now (cluster and
// member IDs, raft term, current revision), for responses served outside
// consensus such as lease keep-alives.
func (n *Node) Header() *pb.ResponseHeader { return n.header(nil) }

// proposeCommand replicates a concord RaftCommand and returns its apply
// result.
func (n *Node) proposeCommand(ctx context.Context, cmd *concordv1.RaftCommand) (proto.Message, error) {
	id := n.ids.next()
	cmd.Id = id
	data, err := proto.MarshalOptions{}.MarshalAppend([]byte{commandPrefix}, cmd)
	if err != nil {
		return nil, fmt.Errorf("consensus: encode command: %w", err)
	}
	return n.proposeData(ctx, id, data)
}

// applyCommand executes one RaftCommand at log index. Like applyRequest,
// request-level failures are results and only a closed store is fatal.
func (n *Node) applyCommand(b *storage.Batch, index uint64, cmd *concordv1.RaftCommand, out *applyOutput) (result, error) {
	cur := n.leaseAuth
	switch c := cmd.GetCommand().(type) {
	case *concordv1.RaftCommand_LeaseAuthorityAcquire:
		a := c.LeaseAuthorityAcquire
		if a.GetHolder() == "" || a.GetEpoch() != cur.Epoch+1 {
			return result{err: fmt.Errorf("%w: acquire of epoch %d by %q, current epoch %d held by %q",
				ErrStaleEpoch, a.GetEpoch(), a.GetHolder(), cur.Epoch, cur.Holder)}, nil
		}
		if ri := a.GetRenewedIndex(); ri != 0 && ri != cur.RenewedIndex {
			return result{err: fmt.Errorf("%w: acquire by %q expected the record renewed at index %d, renewed at %d by %q",
				ErrStaleEpoch, a.GetHolder(), ri, cur.RenewedIndex, cur.Holder)}, nil
		}
		n.setLeaseAuthority(b, LeaseAuthority{Holder: a.GetHolder(), Epoch: a.GetEpoch(), RenewedIndex: index}, out)
		n.lg.Info("lease authority acquired", "holder", a.GetHolder(), "epoch", a.GetEpoch(),
			"previous-holder", cur.Holder, "previous-epoch", cur.Epoch)
		return result{resp: n.leaseAuth.proto()}, nil
	case *concordv1.RaftCommand_LeaseAuthorityRenew:
		r := c.LeaseAuthorityRenew
		if r.GetEpoch() != cur.Epoch || r.GetHolder() != cur.Holder {
			return result{err: fmt.Errorf("%w: renewal of epoch %d by %q, current epoch %d held by %q",
				ErrStaleEpoch, r.GetEpoch(), r.GetHolder(), cur.Epoch, cur.Holder)}, nil
		}
		cur.RenewedIndex = index
		n.setLeaseAuthority(b, cur, out)
		return result{resp: n.leaseAuth.proto()}, nil
	case *concordv1.RaftCommand_LeaseRevokeExpired:
		r := c.LeaseRevokeExpired
		if r.GetEpoch() != cur.Epoch {
			return result{err: fmt.Errorf("%w: expiry revoke of epoch %d, current epoch %d",
				ErrStaleEpoch, r.GetEpoch(), cur.Epoch)}, nil
		}
		res := &concordv1.LeaseRevokeExpiredResult{}
		for _, id := range r.GetIds() {
			err := b.LeaseRevoke(id)
			switch {
			case err == nil:
				res.Revoked = append(res.Revoked, id)
			case errors.Is(err, storage.ErrLeaseNotFound):
				res.NotFound = append(res.NotFound, id)
			case errors.Is(err, storage.ErrClosed):
				return result{}, err
			default:
				return result{err: err}, nil
			}
		}
		res.Revision = n.batchRev(b)
		return result{resp: res}, nil
	case *concordv1.RaftCommand_MemberAttributes:
		return n.applyMemberAttributes(b, c.MemberAttributes, out), nil
	case *concordv1.RaftCommand_AuthEnable:
		return n.applyAuthEnable(b, c.AuthEnable, out)
	default:
		return result{err: ErrUnknownMethod}, nil
	}
}

// setLeaseAuthority records a new authority in the batch and in the loop's
// copy; it is published to readers once the batch is committed.
func (n *Node) setLeaseAuthority(b *storage.Batch, a LeaseAuthority, out *applyOutput) {
	data, err := proto.Marshal(a.proto())
	if err != nil { // a struct of three scalars always encodes
		n.lg.Error("encode lease authority", "error", err)
		return
	}
	b.SetMeta(metaLeaseAuthority, data)
	n.leaseAuth = a
	out.leaseAuth = &a
}

// decodeCommand reports whether data is a RaftCommand entry and decodes it.
func decodeCommand(data []byte) (*concordv1.RaftCommand, bool, error) {
	if len(data) == 0 || data[0] != commandPrefix {
		return nil, false, nil
	}
	cmd := &concordv1.RaftCommand{}
	if err := proto.Unmarshal(data[1:], cmd); err != nil {
		return nil, true, err
	}
	return cmd, true, nil
}
