package consensus

// Membership changes, as etcd makes them. A change is a raft ConfChange
// (v1) whose Context carries the member record as JSON (etcd's
// ConfigChangeContext). Every member validates it at apply against the
// replicated table (member exists, peer URLs unique, ID not removed, learner
// limit), so all of them take the same decision; a rejected change is
// applied to raft with NodeId 0 (a no-op), as etcd does, and its index is
// recorded in the replicated metadata so that a member replaying it after a
// snapshot install (snapshot.go) makes the same no-op. An accepted change
// updates the member table in the same batch and the transport's peers
// right after it commits.
//
// Checks that depend on the live cluster run before proposing, on the raft
// loop, as etcd's strict reconfiguration check: quorum of started members
// (a member is started once it published its name), quorum of members
// recently heard from (only the leader hears from every member, so only it
// can check that), and a learner's progress before promotion (leader only,
// like etcd; a follower answers "not leader").
//
// A member that applies its own removal keeps running for ten heartbeats,
// so the commit reaches the others, then its raft loop ends with
// ErrMemberRemoved; a removed member that restarts, or sends raft messages
// to a member that applied its removal, learns it the same way.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/storage"
)

const (
	// readyPercentThreshold is how far (of the leader's match index) a
	// learner must have caught up to be promoted (etcd's).
	readyPercentThreshold = 0.9
	// maxRejectedConfChanges bounds the rejected conf change indexes kept
	// in the replicated metadata; only those above the oldest snapshot a
	// member may still receive matter.
	maxRejectedConfChanges = 64
)

// confChangeContext is the Context of a membership ConfChange.
type confChangeContext struct {
	Member    member `json:"member"`
	IsPromote bool   `json:"is_promote,omitempty"`
}

// MemberAdd adds a member (a learner if asked) with etcd's ID for a
// runtime-added member: peer URLs and the current time.
func (n *Node) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	urls, err := parsePeerURLs(r.GetPeerURLs())
	if err != nil {
		return nil, err
	}
	if _, ok := n.transport.(loopbackTransport); ok {
		return nil, ErrNoPeerTransport
	}
	m := member{ID: newMemberID(urls, time.Now()), PeerURLs: urls, IsLearner: r.GetIsLearner()}
	if err := n.onLoopErr(ctx, func() error { return n.mayAddMember(m) }); err != nil {
		return nil, err
	}
	typ := raftpb.ConfChangeAddNode
	if m.IsLearner {
		typ = raftpb.ConfChangeAddLearnerNode
	}
	ms, err := n.configure(ctx, typ, m.ID, confChangeContext{Member: m})
	if err != nil {
		return nil, err
	}
	return &pb.MemberAddResponse{
		Header:  n.clusterHeader(),
		Member:  &pb.Member{ID: m.ID, PeerURLs: slices.Clone(m.PeerURLs), IsLearner: m.IsLearner},
		Members: ms,
	}, nil
}

// MemberRemove removes a member; removing the leader works (raft hands
// leadership over when the old leader steps down).
func (n *Node) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	if err := n.onLoopErr(ctx, func() error { return n.mayRemoveMember(r.GetID()) }); err != nil {
		return nil, err
	}
	ms, err := n.configure(ctx, raftpb.ConfChangeRemoveNode, r.GetID(), confChangeContext{Member: member{ID: r.GetID()}})
	if err != nil {
		return nil, err
	}
	return &pb.MemberRemoveResponse{Header: n.clusterHeader(), Members: ms}, nil
}

// MemberUpdate changes a member's peer URLs.
func (n *Node) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	urls, err := parsePeerURLs(r.GetPeerURLs())
	if err != nil {
		// etcd checks no URLs of an update (concord does, so that a member
		// cannot be given URLs nobody can reach) but refuses an unknown
		// member: that answer comes first.
		if !slices.ContainsFunc(*n.membersPub.Load(), func(m member) bool { return m.ID == r.GetID() }) {
			return nil, ErrMemberNotFound
		}
		return nil, err
	}
	ms, err := n.configure(ctx, raftpb.ConfChangeUpdateNode, r.GetID(),
		confChangeContext{Member: member{ID: r.GetID(), PeerURLs: urls}})
	if err != nil {
		return nil, err
	}
	return &pb.MemberUpdateResponse{Header: n.clusterHeader(), Members: ms}, nil
}

// MemberPromote makes a learner that caught up a voter. Only the leader
// knows the learner's progress: a follower forwards the request to it over
// the peer transport, as etcd does, until it is answered or ctx ends.
func (n *Node) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	resp, err := n.PromoteMember(ctx, r)
	if !errors.Is(err, ErrNotLeader) {
		return resp, err
	}
	fw, ok := n.transport.(PromoteForwarder)
	if !ok {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, n.reqTimeout)
	defer cancel()
	for {
		lead, ok := findMember(*n.membersPub.Load(), n.leader.Load())
		if ok && lead.ID != n.memberID {
			resp, err := fw.ForwardPromote(cctx, lead.PeerURLs, r)
			if err == nil || errors.Is(err, ErrLearnerNotReady) || errors.Is(err, ErrMemberNotFound) ||
				errors.Is(err, ErrMemberNotLearner) || errors.Is(err, ErrNotEnoughStartedMembers) {
				if resp != nil {
					resp.Header = n.clusterHeader()
				}
				return resp, err
			}
			n.lg.Debug("forwarding member promote to the leader failed", "leader", fmt.Sprintf("%x", lead.ID), "error", err)
		}
		if !sleepCtx(cctx, n.cfg.HeartbeatInterval) {
			return nil, n.ctxErr(ctx)
		}
	}
}

// PromoteMember implements Raft: the leader's own promotion of a learner
// (ErrNotLeader elsewhere), for MemberPromote forwarded by a follower.
func (n *Node) PromoteMember(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if err := n.onLoopErr(ctx, func() error { return n.mayPromoteMember(r.GetID()) }); err != nil {
		return nil, err
	}
	ms, err := n.configure(ctx, raftpb.ConfChangeAddNode, r.GetID(),
		confChangeContext{Member: member{ID: r.GetID()}, IsPromote: true})
	if err != nil {
		return nil, err
	}
	return &pb.MemberPromoteResponse{Header: n.clusterHeader(), Members: ms}, nil
}

// PromoteForwarder is implemented by transports that can hand a
// MemberPromote to the leader (its Raft.PromoteMember) at its peer URLs.
// Errors that are consensus sentinels on the leader must match them again
// here (errors.Is).
type PromoteForwarder interface {
	ForwardPromote(ctx context.Context, peerURLs []string, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error)
}

// MoveLeader transfers leadership to a voter and waits until it leads or
// ctx ends. It must be asked of the leader.
func (n *Node) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	if err := n.adminGuard(ctx); err != nil {
		return nil, err
	}
	target := r.GetTargetID()
	err := n.onLoopErr(ctx, func() error {
		if n.leader.Load() != n.memberID {
			return ErrNotLeader
		}
		m, ok := findMember(n.members, target)
		if !ok || m.IsLearner {
			return ErrBadLeaderTransferee
		}
		n.lg.Info("leadership transfer starting", "member-id", fmt.Sprintf("%x", n.memberID),
			"transferee", fmt.Sprintf("%x", target))
		n.rn.TransferLeader(target)
		return nil
	})
	if err != nil {
		return nil, err
	}
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for n.leader.Load() != target {
		select {
		case <-ctx.Done():
			return nil, ErrTimeoutLeaderTransfer
		case <-n.done:
			return nil, ErrStopped
		case <-t.C:
		}
	}
	n.lg.Info("leadership transfer finished", "new-leader", fmt.Sprintf("%x", target))
	return &pb.MoveLeaderResponse{Header: n.clusterHeader()}, nil
}

// clusterHeader is the header etcd's Cluster service answers with.
func (n *Node) clusterHeader() *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: n.clusterID, MemberId: n.memberID, RaftTerm: n.term.Load()}
}

// IsLearner reports whether this member is a learner in the applied table.
func (n *Node) IsLearner() bool {
	self, ok := findMember(*n.membersPub.Load(), n.memberID)
	return ok && self.IsLearner
}

// learnerGuard refuses what a learner does not serve, with etcd's error.
func (n *Node) learnerGuard() error {
	if n.IsLearner() {
		return ErrNotSupportedForLearner
	}
	return nil
}

// parsePeerURLs applies etcd's types.NewURLs: at least one valid URL,
// returned normalized and sorted.
func parsePeerURLs(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, ErrBadPeerURLs
	}
	out := make([]string, 0, len(in))
	for _, u := range in {
		norm, err := normalizeURL(u)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadPeerURLs, err)
		}
		out = append(out, norm)
	}
	slices.Sort(out)
	return out, nil
}

// newMemberID is etcd's ID for a member added at runtime (membership's
// computeMemberID with the empty cluster name etcd's MemberAdd passes):
// SHA-1 over the sorted peer URLs and the Unix time in seconds.
func newMemberID(peerURLs []string, now time.Time) uint64 {
	return computeMemberID(peerURLs, fmt.Sprintf("%d", now.Unix()))
}

// onLoopErr runs f on the raft loop and returns its error.
func (n *Node) onLoopErr(ctx context.Context, f func() error) error {
	if n.stopped() {
		return ErrStopped
	}
	errc := make(chan error, 1)
	select {
	case n.execC <- func() { errc <- f() }:
	case <-ctx.Done():
		return n.ctxErr(ctx)
	case <-n.done:
		return ErrStopped
	}
	return <-errc
}

// healthWindow is how recently a member must have been heard from to count
// as active (etcd's HealthInterval is 5s; tied to the election timeout here
// so that tests with short timeouts see a stopped member as inactive).
func (n *Node) healthWindow() time.Duration {
	return max(2*n.cfg.ElectionTimeout, 5*n.cfg.HeartbeatInterval)
}

// activeSince reports whether id was heard from since t (this member
// always is). Owned by the raft loop.
func (n *Node) activeSince(id uint64, t time.Time) bool {
	return id == n.memberID || n.lastHeard[id].After(t)
}

func (n *Node) votingMembers() []member {
	var out []member
	for _, m := range n.members {
		if !m.IsLearner {
			out = append(out, m)
		}
	}
	return out
}

func started(m member) bool { return m.Name != "" }

// mayAddMember is etcd's strict reconfiguration check for adds.
func (n *Node) mayAddMember(m member) error {
	if n.cfg.DisableStrictReconfigCheck {
		return nil
	}
	voters := n.votingMembers()
	if !m.IsLearner {
		members, nstarted := len(voters)+1, 0
		for _, v := range voters {
			if started(v) {
				nstarted++
			}
		}
		// Adding to a one-member cluster is how a cluster is grown back.
		if !(nstarted == 1 && members == 2) && nstarted < members/2+1 {
			return ErrNotEnoughStartedMembers
		}
	}
	if n.leader.Load() != n.memberID {
		return nil // only the leader knows who is active
	}
	// etcd lets a one-member cluster grow although the new member is not
	// active yet: otherwise `member add` could never take it past one.
	if len(voters) == 1 {
		return nil
	}
	since := time.Now().Add(-n.healthWindow())
	active := 0
	for _, v := range voters {
		if n.activeSince(v.ID, since) {
			active++
		}
	}
	// The new member counts as a voter that is not active yet (etcd
	// checks this for learners too).
	if active < (len(voters)+1)/2+1 {
		return ErrUnhealthy
	}
	return nil
}

// mayRemoveMember is etcd's strict reconfiguration check for removals.
func (n *Node) mayRemoveMember(id uint64) error {
	if n.cfg.DisableStrictReconfigCheck {
		return nil
	}
	m, ok := findMember(n.members, id)
	if ok && m.IsLearner {
		return nil
	}
	voters := n.votingMembers()
	members, nstarted := 0, 0
	for _, v := range voters {
		if v.ID == id {
			continue
		}
		members++
		if started(v) {
			nstarted++
		}
	}
	if nstarted < members/2+1 {
		return ErrNotEnoughStartedMembers
	}
	if n.leader.Load() != n.memberID {
		return nil
	}
	since := time.Now().Add(-n.healthWindow())
	if id != n.memberID && !n.activeSince(id, since) {
		return nil // a member that is down is not part of the active quorum
	}
	active := 0
	for _, v := range voters {
		if n.activeSince(v.ID, since) {
			active++
		}
	}
	if active-1 < 1+(len(voters)-1)/2 {
		return ErrUnhealthy
	}
	return nil
}

// mayPromoteMember checks the learner caught up (leader only) and that the
// promotion keeps a quorum of started members.
func (n *Node) mayPromoteMember(id uint64) error {
	st := n.rn.Status()
	if st.Progress == nil {
		return ErrNotLeader
	}
	pr, ok := st.Progress[id]
	if !ok {
		return ErrMemberNotFound
	}
	lead := st.Progress[st.ID]
	if lead.Match == 0 || float64(pr.Match)/float64(lead.Match) < readyPercentThreshold {
		n.lg.Warn("rejecting promote learner: learner is not ready", "learner", fmt.Sprintf("%x", id),
			"learner-match", pr.Match, "leader-match", lead.Match)
		return ErrLearnerNotReady
	}
	if n.cfg.DisableStrictReconfigCheck {
		return nil
	}
	members, nstarted := 1, 1 // the learner counts, as started
	for _, v := range n.votingMembers() {
		if started(v) {
			nstarted++
		}
		members++
	}
	if nstarted < members/2+1 {
		return ErrNotEnoughStartedMembers
	}
	return nil
}

// configure proposes a membership ConfChange and returns the member table
// as of its apply.
func (n *Node) configure(ctx context.Context, typ raftpb.ConfChangeType, id uint64, cctx confChangeContext) ([]*pb.Member, error) {
	data, err := json.Marshal(cctx)
	if err != nil {
		return nil, err
	}
	reqID := n.ids.next()
	cc := &raftpb.ConfChange{Id: new(reqID), Type: typ.Enum(), NodeId: new(id), Context: data}
	resp, err := n.proposeWait(ctx, proposal{id: reqID, cc: cc})
	if err != nil {
		return nil, err
	}
	ml, ok := resp.(*pb.MemberListResponse)
	if !ok {
		return nil, fmt.Errorf("consensus: unexpected conf change response %T", resp)
	}
	n.lg.Info("applied a configuration change through raft", "member-id", fmt.Sprintf("%x", n.memberID),
		"conf-change", typ.String(), "node-id", fmt.Sprintf("%x", id))
	return ml.Members, nil
}

// applyMembershipChange validates and applies one ConfChange at index:
// raft's configuration, the member table and the removed set, all in b.
func (n *Node) applyMembershipChange(b *storage.Batch, index uint64, cc *raftpb.ConfChange, out *applyOutput) error {
	ms, verr := n.validateConfChange(cc)
	if verr != nil {
		n.lg.Warn("rejected a configuration change", "index", index, "type", cc.GetType().String(),
			"node-id", fmt.Sprintf("%x", cc.GetNodeId()), "error", verr)
		noop := proto.CloneOf(cc)
		noop.NodeId = new(uint64(0))
		n.rejectedCC = append(n.rejectedCC, index)
		if len(n.rejectedCC) > maxRejectedConfChanges {
			n.rejectedCC = slices.Clone(n.rejectedCC[len(n.rejectedCC)-maxRejectedConfChanges:])
		}
		if err := n.writeClusterMeta(b, n.members); err != nil {
			return err
		}
		if err := n.applyConfChange(b, noop); err != nil {
			return err
		}
		out.results = append(out.results, waiterResult{id: cc.GetId(), res: result{err: verr}})
		return nil
	}
	if cc.GetType() == raftpb.ConfChangeRemoveNode {
		n.removed[cc.GetNodeId()] = true
		n.publishRemoved()
		if cc.GetNodeId() == n.memberID && n.removedAt.IsZero() {
			n.removedAt = time.Now()
			n.lg.Warn("this member was removed from the cluster; stopping soon", "member-id", fmt.Sprintf("%x", n.memberID))
		}
	}
	if err := n.writeClusterMeta(b, ms); err != nil {
		return err
	}
	if err := n.applyConfChange(b, cc); err != nil {
		return err
	}
	n.members = ms
	out.members = ms
	out.results = append(out.results, waiterResult{id: cc.GetId(), res: result{resp: &pb.MemberListResponse{Members: membersToPB(ms)}}})
	return nil
}

// validateConfChange is etcd's ValidateConfigurationChange; it returns the
// member table after the change.
func (n *Node) validateConfChange(cc *raftpb.ConfChange) ([]member, error) {
	id := cc.GetNodeId()
	if n.removed[id] {
		return nil, ErrIDRemoved
	}
	var cctx confChangeContext
	if err := json.Unmarshal(cc.GetContext(), &cctx); err != nil {
		return nil, fmt.Errorf("consensus: decode conf change context: %w", err)
	}
	ms := slices.Clone(n.members)
	i := slices.IndexFunc(ms, func(m member) bool { return m.ID == id })
	urlTaken := func(urls []string, except uint64) bool {
		for _, m := range ms {
			if m.ID != except && slices.ContainsFunc(urls, func(u string) bool { return slices.Contains(m.PeerURLs, u) }) {
				return true
			}
		}
		return false
	}
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if cctx.IsPromote {
			if i < 0 {
				return nil, ErrMemberNotFound
			}
			if !ms[i].IsLearner {
				return nil, ErrMemberNotLearner
			}
			ms[i].IsLearner = false
			return ms, nil
		}
		if i >= 0 {
			return nil, ErrMemberExists
		}
		if urlTaken(cctx.Member.PeerURLs, 0) {
			return nil, ErrPeerURLExists
		}
		m := cctx.Member
		m.ID = id
		m.IsLearner = cc.GetType() == raftpb.ConfChangeAddLearnerNode
		if m.IsLearner {
			learners := 0
			for _, x := range ms {
				if x.IsLearner {
					learners++
				}
			}
			if learners+1 > n.cfg.MaxLearners {
				return nil, ErrTooManyLearners
			}
		}
		return append(ms, m), nil
	case raftpb.ConfChangeRemoveNode:
		if i < 0 {
			return nil, ErrMemberNotFound
		}
		return slices.Delete(ms, i, i+1), nil
	case raftpb.ConfChangeUpdateNode:
		if i < 0 {
			return nil, ErrMemberNotFound
		}
		if urlTaken(cctx.Member.PeerURLs, id) {
			return nil, ErrPeerURLExists
		}
		ms[i].PeerURLs = slices.Clone(cctx.Member.PeerURLs)
		return ms, nil
	}
	return nil, fmt.Errorf("consensus: unsupported conf change type %s", cc.GetType())
}

// replayConfChange re-applies to raft a conf change the store already
// reflects (after a snapshot install), making the no-op of a rejected one.
func (n *Node) replayConfChange(b *storage.Batch, index uint64, cc *raftpb.ConfChange) error {
	if slices.Contains(n.rejectedCC, index) {
		cc = proto.CloneOf(cc)
		cc.NodeId = new(uint64(0))
	}
	return n.applyConfChange(b, cc)
}

func (n *Node) writeClusterMeta(b *storage.Batch, ms []member) error {
	removed := make([]uint64, 0, len(n.removed))
	for id := range n.removed {
		removed = append(removed, id)
	}
	slices.Sort(removed)
	meta, err := json.Marshal(clusterMeta{ClusterID: n.clusterID, Members: ms, Removed: removed, RejectedConfChanges: n.rejectedCC})
	if err != nil {
		return err
	}
	b.SetMeta(metaClusterKey, meta)
	return nil
}

func (n *Node) publishRemoved() {
	m := make(map[uint64]bool, len(n.removed))
	for id := range n.removed {
		m[id] = true
	}
	n.removedPub.Store(&m)
}

func (n *Node) isRemoved(id uint64) bool {
	p := n.removedPub.Load()
	return p != nil && (*p)[id]
}

// ReportRemoved implements Raft: a peer refused this member's messages
// because it was removed from the cluster.
func (n *Node) ReportRemoved() {
	select {
	case n.reportC <- func() {
		if n.removedAt.IsZero() {
			n.lg.Warn("a peer reports this member was removed from the cluster", "member-id", fmt.Sprintf("%x", n.memberID))
			n.removedAt = time.Now().Add(-n.removalGrace())
		}
	}:
	default:
	}
}

// removalGrace is how long a removed member keeps running so that the
// commit of its removal reaches the others (etcd's 10 heartbeats).
func (n *Node) removalGrace() time.Duration { return 10 * n.cfg.HeartbeatInterval }

// checkRemoved ends the loop once the removal grace period is over.
func (n *Node) checkRemoved(now time.Time) error {
	if !n.removedAt.IsZero() && now.Sub(n.removedAt) >= n.removalGrace() {
		return ErrMemberRemoved
	}
	return nil
}

// membersToPB lists ms in ID order, as etcd's RaftCluster.Members does
// (etcdctl prints member add's ETCD_INITIAL_CLUSTER in that order).
func membersToPB(ms []member) []*pb.Member {
	out := make([]*pb.Member, 0, len(ms))
	for _, m := range ms {
		out = append(out, &pb.Member{
			ID: m.ID, Name: m.Name, PeerURLs: slices.Clone(m.PeerURLs),
			ClientURLs: slices.Clone(m.ClientURLs), IsLearner: m.IsLearner,
		})
	}
	sortMembersByID(out)
	return out
}

func sortMembersByID(ms []*pb.Member) {
	slices.SortFunc(ms, func(a, b *pb.Member) int { return cmp.Compare(a.ID, b.ID) })
}

// Membership is the cluster a member belongs to, as joining members learn
// it from the existing ones.
type Membership struct {
	ClusterID uint64
	Members   []*pb.Member
}

// Membership implements Raft.
func (n *Node) Membership() Membership {
	return Membership{ClusterID: n.clusterID, Members: membersToPB(*n.membersPub.Load())}
}

// MembershipFetcher is implemented by transports that can ask existing
// members about their cluster (consensus/peer, MemNetwork): a member
// joining with ClusterState "existing" and an empty data dir needs it.
type MembershipFetcher interface {
	FetchMembership(ctx context.Context, peerURLs []string) (Membership, error)
}

var errJoin = errors.New("consensus: cannot join the existing cluster")

// join learns the cluster from its existing members and persists an empty
// raft state for this member: raft starts with no log and no
// configuration, and the leader brings it up to date with a snapshot.
func (n *Node) join(ctx context.Context) (*raftState, error) {
	f, ok := n.transport.(MembershipFetcher)
	if !ok {
		return nil, fmt.Errorf("%w: the transport cannot reach the existing members", errJoin)
	}
	initial, err := n.cfg.initialMembers()
	if err != nil {
		return nil, err
	}
	var urls []string
	for _, m := range initial {
		if m.Name != n.cfg.Name {
			urls = append(urls, m.PeerURLs...)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("%w: --initial-cluster names no other member", errJoin)
	}
	own, err := parsePeerURLs(n.cfg.PeerURLs)
	if err != nil {
		return nil, err
	}
	// The member asked may not have applied the add yet (it commits on a
	// quorum first): ask again for a little while.
	deadline := time.Now().Add(2*n.cfg.ElectionTimeout + time.Second)
	var (
		cl      Membership
		members []member
	)
	for {
		if cl, err = f.FetchMembership(ctx, urls); err != nil {
			return nil, fmt.Errorf("%w: %w", errJoin, err)
		}
		members = make([]member, 0, len(cl.Members))
		for _, pm := range cl.Members {
			m := member{ID: pm.GetID(), Name: pm.GetName(), PeerURLs: slices.Clone(pm.GetPeerURLs()),
				ClientURLs: slices.Clone(pm.GetClientURLs()), IsLearner: pm.GetIsLearner()}
			if sameURLs(m.PeerURLs, own) {
				n.memberID = m.ID
			}
			members = append(members, m)
		}
		if n.memberID != 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: no member with peer urls %v in cluster %x (add it with member add first)",
				errJoin, own, cl.ClusterID)
		}
		if !sleepCtx(ctx, n.cfg.HeartbeatInterval) {
			return nil, fmt.Errorf("%w: %w", errJoin, ctx.Err())
		}
	}
	n.clusterID, n.members = cl.ClusterID, members
	zero := uint64(0)
	st := &raftState{
		hs:   &raftpb.HardState{Term: new(zero), Commit: new(zero)},
		cs:   &raftpb.ConfState{},
		snap: &raftpb.SnapshotMetadata{Index: new(zero), Term: new(zero)},
		ents: []*raftpb.Entry{{Index: new(zero), Term: new(zero), Type: raftpb.EntryNormal.Enum()}},
	}
	if err := n.persistInitial(st, members); err != nil {
		return nil, err
	}
	n.lg.Info("joining existing cluster", "name", n.cfg.Name, "member-id", fmt.Sprintf("%x", n.memberID),
		"cluster-id", fmt.Sprintf("%x", n.clusterID), "members", len(members))
	return st, nil
}
