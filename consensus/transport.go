package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Transport carries raft messages between the members of a cluster. The
// network implementation is consensus/peer (connect-go streams on the peer
// URLs); MemNetwork is an in-memory one for tests. A single-member cluster
// needs none.
//
// Contract: the member calls Start once before its raft loop runs and Stop
// once when it closes; Send, SendSnapshot, AddPeer and RemovePeer are called
// from the raft loop only, between the two, and must not block for long (a
// transport queues and drops rather than wait for a slow peer: raft
// retransmits). Messages are delivered to the peer's Raft.Process in the
// order they were sent to that peer, or lost.
type Transport interface {
	// Start begins delivering incoming messages and reports to r on behalf
	// of the member local.
	Start(local LocalMember, r Raft) error
	// AddPeer makes a member reachable at its peer URLs; RemovePeer forgets
	// it. Adding a known peer updates its URLs.
	AddPeer(id uint64, urls []string)
	RemovePeer(id uint64)
	// Send queues messages for their recipients. It is never given a
	// MsgSnap.
	Send(msgs []*raftpb.Message)
	// SendSnapshot streams a store snapshot to m.To together with m (a
	// MsgSnap carrying the raft snapshot metadata), then reports the
	// outcome with Raft.ReportSnapshot. It owns data and closes it.
	SendSnapshot(m *raftpb.Message, data io.ReadCloser)
	// Stop stops every goroutine of the transport and waits for them; no
	// call into Raft happens after it returns. Idempotent.
	Stop()
}

// PeerStats are a transport's counters for one peer (etcd's
// etcd_network_peer_sent_bytes_total, _received_bytes_total and
// _sent_failures_total): raft message bytes sent to and received from it,
// snapshot data included, and messages that could not be sent to it.
type PeerStats struct {
	ID                                     uint64
	SentBytes, ReceivedBytes, SentFailures uint64
	// Active is whether messages reach the peer now; Disconnects counts
	// the times they stopped (etcd_network_active_peers and
	// etcd_network_disconnected_peers_total).
	Active      bool
	Disconnects uint64
	// Reachable is whether the peer answered the latest probe, which it
	// does while its transport delivers to its raft; unlike Active it is
	// known before raft has sent the peer anything (the initial election
	// tick advance counts peers that are either).
	Reachable bool
	// RoundTrip is the peer's etcd_network_peer_round_trip_time_seconds:
	// its smoothed round-trip time, recorded periodically (empty until
	// the first record).
	RoundTrip Histogram
}

// PeerStatser is a Transport that counts its traffic per peer; Node.Stats
// includes its counters.
type PeerStatser interface {
	PeerStats() []PeerStats
}

// LocalMember identifies the member a transport works for.
type LocalMember struct {
	ID, ClusterID uint64
}

// Raft is what a Transport delivers to; *Node implements it.
type Raft interface {
	// Process steps messages received from a peer, in order. It blocks
	// while the member's receive queue is full (backpressure on the
	// sender's stream) until ctx is done.
	Process(ctx context.Context, msgs []*raftpb.Message) error
	// ReceiveSnapshot installs the snapshot a leader sent: m is its MsgSnap,
	// data the store snapshot stream. It returns once the snapshot is
	// installed, or discarded because raft no longer needs it.
	ReceiveSnapshot(ctx context.Context, m *raftpb.Message, data io.Reader) error
	// ReportUnreachable tells raft a message to id could not be delivered.
	ReportUnreachable(id uint64)
	// ReportSnapshot tells raft how sending a snapshot to id ended.
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
	// ReportRemoved tells the member a peer refused its messages because
	// it was removed from the cluster (Process returned ErrMemberRemoved
	// there); the member stops.
	ReportRemoved()
	// Membership is the cluster as this member knows it, for members
	// joining it.
	Membership() Membership
	// PromoteMember promotes a learner if this member leads (ErrNotLeader
	// otherwise); followers forward MemberPromote to it.
	PromoteMember(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error)
}

// ErrWrongCluster is returned to peers whose messages carry another
// cluster's ID or are addressed to another member.
var ErrWrongCluster = errors.New("consensus: message for another cluster or member")

// loopbackTransport is the single-member transport: a lone voter never
// addresses anyone else (messages to itself are stepped by raft on Advance).
type loopbackTransport struct{}

func (loopbackTransport) Start(LocalMember, Raft) error { return nil }
func (loopbackTransport) AddPeer(uint64, []string)      {}
func (loopbackTransport) RemovePeer(uint64)             {}
func (loopbackTransport) Send([]*raftpb.Message)        {}
func (loopbackTransport) SendSnapshot(_ *raftpb.Message, data io.ReadCloser) {
	_ = data.Close()
}
func (loopbackTransport) Stop() {}

// recvQueue bounds the batches of received messages waiting for the loop.
const recvQueue = 256

// Process implements Raft: it queues msgs for the raft loop.
func (n *Node) Process(ctx context.Context, msgs []*raftpb.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if from := msgs[0].GetFrom(); n.isRemoved(from) {
		// etcd answers a removed member 410 Gone so that it stops.
		return fmt.Errorf("%w: member %x", ErrMemberRemoved, from)
	}
	select {
	case n.recvC <- msgs:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopC:
		return ErrStopped
	case <-n.done:
		return ErrStopped
	}
}

// ReportUnreachable implements Raft. A report that finds the loop's queue
// full is dropped: raft learns the same from the next failure.
func (n *Node) ReportUnreachable(id uint64) {
	select {
	case n.reportC <- func() { n.rn.ReportUnreachable(id) }:
	default:
	}
}

// ReportSnapshot implements Raft. Unlike unreachability it is never
// dropped: raft keeps the follower in snapshot state until it hears.
func (n *Node) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	f := func() {
		n.lg.Info("snapshot send finished", "to", fmt.Sprintf("%x", id), "failed", status == raft.SnapshotFailure)
		n.rn.ReportSnapshot(id, status)
	}
	select {
	case n.reportC <- f:
	case <-n.stopC:
	case <-n.done:
	}
}

// stepMessages steps received messages into raft, on the raft loop.
func (n *Node) stepMessages(msgs []*raftpb.Message) {
	now := time.Now()
	for _, m := range msgs {
		switch {
		case n.removed[m.GetFrom()]:
			continue
		case m.GetTo() != n.memberID:
			n.lg.Warn("dropping raft message addressed to another member", "to", fmt.Sprintf("%x", m.GetTo()),
				"from", fmt.Sprintf("%x", m.GetFrom()), "type", m.GetType().String())
			continue
		case m.GetType() == raftpb.MsgSnap:
			// A snapshot is useless without its data, which only
			// ReceiveSnapshot brings.
			n.lg.Warn("dropping a MsgSnap that arrived without its data", "from", fmt.Sprintf("%x", m.GetFrom()))
			continue
		}
		n.lastHeard[m.GetFrom()] = now
		if err := n.rn.Step(m); err != nil {
			n.lg.Debug("raft step failed", "from", fmt.Sprintf("%x", m.GetFrom()), "type", m.GetType().String(), "error", err)
		}
	}
}

func cloneMessage(m *raftpb.Message) *raftpb.Message {
	c, _ := proto.Clone(m).(*raftpb.Message)
	return c
}
