package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// MemNetwork connects members in one process without sockets, for tests.
// Links are directed and can be cut (partitions), made lossy or slow; every
// member's Transport comes from the network and behaves like the real one:
// Send never blocks, messages to one peer stay in order, a full queue or a
// cut link drops and reports the peer unreachable, and snapshots go through
// the receiver's ReceiveSnapshot.
type MemNetwork struct {
	mu        sync.Mutex
	members   map[uint64]*memTransport
	cut       map[[2]uint64]bool
	dropP     float64
	delay     time.Duration
	rng       *rand.Rand
	snapshots atomic.Int64
	byURL     map[string]*memTransport
}

// NewMemNetwork returns a network with no faults; seed drives the random
// drops of SetDropRate.
func NewMemNetwork(seed uint64) *MemNetwork {
	return &MemNetwork{
		members: map[uint64]*memTransport{},
		cut:     map[[2]uint64]bool{},
		byURL:   map[string]*memTransport{},
		rng:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Transport returns a new transport attached to the network. It joins under
// its member's ID when the member starts it (replacing an earlier
// incarnation of the same member).
func (nw *MemNetwork) Transport() Transport { return &memTransport{nw: nw} }

// Cut drops every message from one member to another until Heal.
func (nw *MemNetwork) Cut(from, to uint64) {
	nw.mu.Lock()
	nw.cut[[2]uint64{from, to}] = true
	nw.mu.Unlock()
}

// Isolate cuts every link to and from id, among the ids given.
func (nw *MemNetwork) Isolate(id uint64, others ...uint64) {
	for _, o := range others {
		if o != id {
			nw.Cut(id, o)
			nw.Cut(o, id)
		}
	}
}

// Heal restores every link and removes drops and delays.
func (nw *MemNetwork) Heal() {
	nw.mu.Lock()
	nw.cut = map[[2]uint64]bool{}
	nw.dropP, nw.delay = 0, 0
	nw.mu.Unlock()
}

// SetDropRate makes every message batch get lost with probability p.
func (nw *MemNetwork) SetDropRate(p float64) {
	nw.mu.Lock()
	nw.dropP = p
	nw.mu.Unlock()
}

// SetDelay delays every delivery by d.
func (nw *MemNetwork) SetDelay(d time.Duration) {
	nw.mu.Lock()
	nw.delay = d
	nw.mu.Unlock()
}

// SnapshotsDelivered counts snapshots installed through the network.
func (nw *MemNetwork) SnapshotsDelivered() int64 { return nw.snapshots.Load() }

// route decides the fate of one delivery from -> to.
func (nw *MemNetwork) route(from, to uint64) (dst *memTransport, delay time.Duration, ok bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.cut[[2]uint64{from, to}] {
		return nil, 0, false
	}
	if nw.dropP > 0 && nw.rng.Float64() < nw.dropP {
		return nil, 0, false
	}
	dst = nw.members[to]
	return dst, nw.delay, dst != nil
}

func (nw *MemNetwork) join(t *memTransport) {
	nw.mu.Lock()
	nw.members[t.local.ID] = t
	nw.mu.Unlock()
}

func (nw *MemNetwork) leave(t *memTransport) {
	nw.mu.Lock()
	if nw.members[t.local.ID] == t {
		delete(nw.members, t.local.ID)
	}
	nw.mu.Unlock()
}

// memQueue is how many batches wait for one peer before Send drops.
const memQueue = 1024

type memTransport struct {
	nw    *MemNetwork
	local LocalMember
	r     Raft

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	peers map[uint64]chan []*raftpb.Message

	stopOnce sync.Once
}

func (t *memTransport) Start(local LocalMember, r Raft) error {
	t.local, t.r = local, r
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.peers = map[uint64]chan []*raftpb.Message{}
	t.nw.join(t)
	for _, m := range r.Membership().Members {
		if m.GetID() == local.ID {
			t.nw.registerURLs(t, m.GetPeerURLs())
		}
	}
	return nil
}

// PeerStats reports a peer as reachable while it is on the network and the
// link to it is not cut, as the real transport does once the peer answers
// its probes; it counts no bytes.
func (t *memTransport) PeerStats() []PeerStats {
	t.mu.Lock()
	ids := make([]uint64, 0, len(t.peers))
	for id := range t.peers {
		ids = append(ids, id)
	}
	t.mu.Unlock()
	slices.Sort(ids)
	out := make([]PeerStats, len(ids))
	t.nw.mu.Lock()
	defer t.nw.mu.Unlock()
	for i, id := range ids {
		out[i] = PeerStats{ID: id, Reachable: t.nw.members[id] != nil && !t.nw.cut[[2]uint64{t.local.ID, id}]}
	}
	return out
}

func (t *memTransport) AddPeer(id uint64, urls []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.peers[id]; ok || t.ctx.Err() != nil {
		return
	}
	q := make(chan []*raftpb.Message, memQueue)
	t.peers[id] = q
	t.wg.Add(1)
	go t.deliver(id, q)
}

func (t *memTransport) RemovePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if q, ok := t.peers[id]; ok {
		close(q)
		delete(t.peers, id)
	}
}

func (t *memTransport) Send(msgs []*raftpb.Message) {
	byPeer := map[uint64][]*raftpb.Message{}
	for _, m := range msgs {
		byPeer[m.GetTo()] = append(byPeer[m.GetTo()], m)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for to, ms := range byPeer {
		q, ok := t.peers[to]
		if !ok {
			continue
		}
		select {
		case q <- ms:
		default:
			t.r.ReportUnreachable(to)
		}
	}
}

// deliver hands the batches for one peer to it, in order.
func (t *memTransport) deliver(to uint64, q <-chan []*raftpb.Message) {
	defer t.wg.Done()
	for {
		var msgs []*raftpb.Message
		select {
		case <-t.ctx.Done():
			return
		case ms, ok := <-q:
			if !ok {
				return
			}
			msgs = ms
		}
		dst, delay, ok := t.nw.route(t.local.ID, to)
		if !ok {
			t.r.ReportUnreachable(to)
			continue
		}
		if delay > 0 && !sleepCtx(t.ctx, delay) {
			return
		}
		// Receivers own what they are given: a real network would have
		// decoded fresh copies.
		cp := make([]*raftpb.Message, len(msgs))
		for i, m := range msgs {
			cp[i] = cloneMessage(m)
		}
		if err := dst.r.Process(t.ctx, cp); err != nil {
			if errors.Is(err, ErrMemberRemoved) {
				t.r.ReportRemoved()
			}
			t.r.ReportUnreachable(to)
		}
	}
}

func (t *memTransport) SendSnapshot(m *raftpb.Message, data io.ReadCloser) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		ok := t.sendSnapshot(m, data)
		status := raft.SnapshotFinish
		if !ok {
			status = raft.SnapshotFailure
		}
		t.r.ReportSnapshot(m.GetTo(), status)
	}()
}

func (t *memTransport) sendSnapshot(m *raftpb.Message, data io.ReadCloser) bool {
	buf, err := io.ReadAll(data)
	_ = data.Close()
	if err != nil {
		return false
	}
	dst, delay, ok := t.nw.route(t.local.ID, m.GetTo())
	if !ok {
		return false
	}
	if delay > 0 && !sleepCtx(t.ctx, delay) {
		return false
	}
	if err := dst.r.ReceiveSnapshot(t.ctx, cloneMessage(m), bytes.NewReader(buf)); err != nil {
		return false
	}
	t.nw.snapshots.Add(1)
	return true
}

// FetchMembership implements MembershipFetcher: it asks the first member
// of the network whose peer URLs include one of urls (members register
// their own when they start).
func (t *memTransport) FetchMembership(ctx context.Context, urls []string) (Membership, error) {
	t.nw.mu.Lock()
	var found Raft
	for _, u := range urls {
		if mt := t.nw.byURL[u]; mt != nil && mt.r != nil {
			found = mt.r
			break
		}
	}
	t.nw.mu.Unlock()
	if found == nil {
		return Membership{}, fmt.Errorf("no member reachable at %v", urls)
	}
	return found.Membership(), ctx.Err()
}

// ForwardPromote implements PromoteForwarder.
func (t *memTransport) ForwardPromote(ctx context.Context, urls []string, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	t.nw.mu.Lock()
	var dst Raft
	for _, u := range urls {
		if mt := t.nw.byURL[u]; mt != nil && mt.r != nil {
			dst = mt.r
			break
		}
	}
	t.nw.mu.Unlock()
	if dst == nil {
		return nil, fmt.Errorf("no member reachable at %v", urls)
	}
	return dst.PromoteMember(ctx, r)
}

// registerURLs makes the member of t reachable for FetchMembership at urls.
func (nw *MemNetwork) registerURLs(t *memTransport, urls []string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, u := range urls {
		nw.byURL[u] = t
	}
}

func (t *memTransport) Stop() {
	t.stopOnce.Do(func() {
		if t.cancel == nil {
			return // never started
		}
		t.nw.leave(t)
		t.cancel()
		t.wg.Wait()
	})
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
