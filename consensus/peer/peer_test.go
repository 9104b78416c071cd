package peer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// fakeRaft records what a transport delivers.
type fakeRaft struct {
	mu          sync.Mutex
	batches     [][]*raftpb.Message
	unreachable map[uint64]int
	snaps       map[uint64][]raft.SnapshotStatus
	received    [][]byte
	snapErr     error
	block       chan struct{} // when set, Process blocks until it is closed or ctx ends
}

func newFakeRaft() *fakeRaft {
	return &fakeRaft{unreachable: map[uint64]int{}, snaps: map[uint64][]raft.SnapshotStatus{}}
}

func (f *fakeRaft) Process(ctx context.Context, msgs []*raftpb.Message) error {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	f.batches = append(f.batches, msgs)
	f.mu.Unlock()
	return nil
}

func (f *fakeRaft) ReceiveSnapshot(_ context.Context, m *raftpb.Message, data io.Reader) error {
	b, err := io.ReadAll(data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.snapErr != nil {
		return f.snapErr
	}
	f.received = append(f.received, b)
	return nil
}

func (f *fakeRaft) ReportUnreachable(id uint64) {
	f.mu.Lock()
	f.unreachable[id]++
	f.mu.Unlock()
}

func (f *fakeRaft) ReportSnapshot(id uint64, st raft.SnapshotStatus) {
	f.mu.Lock()
	f.snaps[id] = append(f.snaps[id], st)
	f.mu.Unlock()
}

func (f *fakeRaft) ReportRemoved() {}

func (f *fakeRaft) Membership() consensus.Membership {
	return consensus.Membership{ClusterID: 7, Members: []*pb.Member{{ID: 1, Name: "a", PeerURLs: []string{"http://a:1"}}}}
}

func (f *fakeRaft) PromoteMember(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, consensus.ErrLearnerNotReady
}

func (f *fakeRaft) messages() []*raftpb.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*raftpb.Message
	for _, b := range f.batches {
		out = append(out, b...)
	}
	return out
}

func (f *fakeRaft) batchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.batches)
}

func (f *fakeRaft) unreachableCount(id uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.unreachable[id]
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// endpoint is one member's peer listener; the handler can be swapped so a
// restarted member keeps its URL.
type endpoint struct {
	url string
	h   atomic.Pointer[http.Handler]
	srv *http.Server
	ln  net.Listener
}

func newEndpoint(t testing.TB) *endpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{url: "http://" + ln.Addr().String(), ln: ln}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	e.srv = &http.Server{Protocols: &protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := e.h.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.Error(w, "no member", http.StatusServiceUnavailable)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = e.srv.Serve(ln) }()
	t.Cleanup(func() { _ = e.srv.Close(); <-done })
	return e
}

// sameCounters compares the counters of two PeerStats (not RoundTrip).
func sameCounters(a, b consensus.PeerStats) bool {
	a.RoundTrip, b.RoundTrip = consensus.Histogram{}, consensus.Histogram{}
	return reflect.DeepEqual(a, b)
}

func (e *endpoint) serve(tr *Transport) {
	path, h := tr.Handler()
	mux := http.NewServeMux()
	mux.Handle(path, h)
	mux.Handle(tr.ProbeHandler())
	var hh http.Handler = mux
	e.h.Store(&hh)
}

func newTransport(t testing.TB) *Transport { return newTransportWith(t, Config{}) }

// newTransportWith is a transport of cfg with the tests' logger and short
// backoffs.
func newTransportWith(t testing.TB, cfg Config) *Transport {
	t.Helper()
	cfg.Logger, cfg.MinBackoff, cfg.MaxBackoff = quiet, 5*time.Millisecond, 20*time.Millisecond
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Stop)
	return tr
}

func msg(from, to, index uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: &from, To: &to, Index: &index}
}

// pair connects member 1 (sender) to member 2 (receiver).
func pair(t *testing.T) (a, b *Transport, fa, fb *fakeRaft, eb *endpoint) {
	return pairWith(t, Config{})
}

// pairWith is pair with member 1's transport of cfg (newTransportWith).
func pairWith(t *testing.T, cfg Config) (a, b *Transport, fa, fb *fakeRaft, eb *endpoint) {
	a, b = newTransportWith(t, cfg), newTransport(t)
	fa, fb = newFakeRaft(), newFakeRaft()
	eb = newEndpoint(t)
	eb.serve(b)
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, fa); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 7}, fb); err != nil {
		t.Fatal(err)
	}
	a.AddPeer(2, []string{eb.url})
	return a, b, fa, fb, eb
}

func TestMessagesArriveInOrderInFewBatches(t *testing.T) {
	a, _, fa, fb, _ := pair(t)
	const n = 2000
	msgs := make([]*raftpb.Message, n)
	for i := range n {
		msgs[i] = msg(1, 2, uint64(i))
	}
	a.Send(msgs) // one Ready's worth
	waitFor(t, "every message", func() bool { return len(fb.messages()) == n })
	for i, m := range fb.messages() {
		if m.GetIndex() != uint64(i) || m.GetFrom() != 1 || m.GetTo() != 2 {
			t.Fatalf("message %d = %v", i, m)
		}
	}
	if got := fb.batchCount(); got > 10 {
		t.Errorf("%d messages sent in one call arrived in %d batches; want them flushed together", n, got)
	}
	// Later sends reuse the same stream: more batches, still in order.
	for i := range 50 {
		a.Send([]*raftpb.Message{msg(1, 2, uint64(n+i))})
	}
	waitFor(t, "later messages", func() bool { return len(fb.messages()) == n+50 })
	for i, m := range fb.messages() {
		if m.GetIndex() != uint64(i) {
			t.Fatalf("message %d has index %d", i, m.GetIndex())
		}
	}
	if fa.unreachableCount(2) != 0 {
		t.Errorf("peer reported unreachable %d times on a healthy link", fa.unreachableCount(2))
	}
}

// PeerStats counts raft message bytes as etcd's
// etcd_network_peer_sent_bytes_total and _received_bytes_total do: on the
// sender by recipient, on the receiver by sender.
func TestPeerStatsCountBytes(t *testing.T) {
	a, b, _, fb, _ := pair(t)
	b.AddPeer(1, []string{"http://127.0.0.1:1"}) // listed, never sent to
	var want uint64
	msgs := make([]*raftpb.Message, 10)
	for i := range msgs {
		msgs[i] = msg(1, 2, uint64(i))
		want += uint64(proto.Size(msgs[i]))
	}
	a.Send(msgs)
	waitFor(t, "every message", func() bool { return len(fb.messages()) == len(msgs) })
	waitFor(t, "the sender's count", func() bool {
		ps := a.PeerStats()
		return len(ps) == 1 && ps[0].SentBytes == want
	})
	if ps := a.PeerStats(); ps[0].ID != 2 || ps[0].ReceivedBytes != 0 || ps[0].SentFailures != 0 || !ps[0].Active || ps[0].Disconnects != 0 {
		t.Errorf("sender's peer stats: %+v, want %d bytes sent to 2", ps, want)
	}
	if ps := b.PeerStats(); len(ps) != 1 || !sameCounters(ps[0], consensus.PeerStats{ID: 1, ReceivedBytes: want}) {
		t.Errorf("receiver's peer stats: %+v, want %d bytes received from 1", ps, want)
	}
}

func TestUnreachablePeerIsReportedAndReconnected(t *testing.T) {
	a := newTransport(t)
	fa := newFakeRaft()
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, fa); err != nil {
		t.Fatal(err)
	}
	// Nothing listens yet.
	addr := unusedAddr(t)
	a.AddPeer(2, []string{"http://" + addr})
	waitFor(t, "unreachable reports", func() bool {
		a.Send([]*raftpb.Message{msg(1, 2, 1)})
		return fa.unreachableCount(2) >= 2
	})
	// etcd_network_peer_sent_failures_total counts the dropped messages.
	if ps := a.PeerStats(); len(ps) != 1 || ps[0].ID != 2 || ps[0].SentFailures == 0 || ps[0].SentBytes != 0 || ps[0].Active {
		t.Errorf("peer stats of an unreachable peer: %+v", ps)
	}

	// The peer comes up on that address: messages flow again.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("re-listen on %s: %v", addr, err)
	}
	b, fb := newTransport(t), newFakeRaft()
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 7}, fb); err != nil {
		t.Fatal(err)
	}
	path, h := b.Handler()
	mux := http.NewServeMux()
	mux.Handle(path, h)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protocols}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	defer func() { b.Stop(); _ = srv.Close(); <-done }()
	waitFor(t, "delivery after the peer came up", func() bool {
		a.Send([]*raftpb.Message{msg(1, 2, 9)})
		return len(fb.messages()) > 0
	})
}

func TestWrongClusterIsRejected(t *testing.T) {
	a, b := newTransport(t), newTransport(t)
	fa, fb := newFakeRaft(), newFakeRaft()
	eb := newEndpoint(t)
	eb.serve(b)
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, fa); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 8}, fb); err != nil {
		t.Fatal(err)
	}
	a.AddPeer(2, []string{eb.url})
	waitFor(t, "the sender to see the rejection", func() bool {
		a.Send([]*raftpb.Message{msg(1, 2, 1)})
		return fa.unreachableCount(2) > 0
	})
	if n := len(fb.messages()); n != 0 {
		t.Fatalf("member of another cluster accepted %d messages", n)
	}
}

func TestSnapshotIsStreamedAndReported(t *testing.T) {
	a, _, fa, fb, _ := pairWith(t, Config{SnapshotChunkBytes: 1000}) // several chunks
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	idx := uint64(50)
	m := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: new(uint64(1)), To: new(uint64(2)),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: &idx, Term: new(uint64(3))}}}
	a.SendSnapshot(m, io.NopCloser(bytes.NewReader(data)))
	waitFor(t, "snapshot report", func() bool {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		return len(fa.snaps[2]) == 1
	})
	fa.mu.Lock()
	st := fa.snaps[2][0]
	fa.mu.Unlock()
	if st != raft.SnapshotFinish {
		t.Fatalf("snapshot reported %v, want finish", st)
	}
	fb.mu.Lock()
	got := fb.received
	fb.mu.Unlock()
	if len(got) != 1 || !bytes.Equal(got[0], data) {
		t.Fatalf("receiver got %d snapshots, data equal: %v", len(got), len(got) == 1 && bytes.Equal(got[0], data))
	}

	// A snapshot the receiver cannot install is reported as failed.
	fb.mu.Lock()
	fb.snapErr = errors.New("disk full")
	fb.mu.Unlock()
	a.SendSnapshot(m, io.NopCloser(bytes.NewReader(data)))
	waitFor(t, "failure report", func() bool {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		return len(fa.snaps[2]) == 2
	})
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if fa.snaps[2][1] != raft.SnapshotFailure {
		t.Fatalf("failed snapshot reported %v", fa.snaps[2][1])
	}
}

func TestStopAbortsCallsInProgress(t *testing.T) {
	a, b, _, fb, _ := pair(t)
	fb.block = make(chan struct{}) // the receiver's raft loop is stuck
	a.Send([]*raftpb.Message{msg(1, 2, 1)})
	waitFor(t, "a call in progress", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.calls) > 0
	})
	stopped := make(chan struct{})
	go func() { b.Stop(); a.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return while a call was in progress")
	}
	b.Stop() // idempotent
}

func TestConfigValidate(t *testing.T) {
	var c Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := c
	bad.MinBackoff = 2 * bad.MaxBackoff
	if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Validate(min > max) = %v", err)
	}
	bad = c
	bad.QueueLength = -1
	if _, err := New(bad); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New(bad) = %v", err)
	}
}

func TestMembershipAndForwardedPromote(t *testing.T) {
	b := newTransport(t)
	eb := newEndpoint(t)
	eb.serve(b)
	joiner := newTransport(t) // not started: a member about to join
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Before the member started there is nothing to answer with.
	if _, err := joiner.FetchMembership(ctx, []string{eb.url}); err == nil {
		t.Fatal("membership fetched from a member that has not started")
	}
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 7}, newFakeRaft()); err != nil {
		t.Fatal(err)
	}
	// A dead URL first: the next one answers.
	m, err := joiner.FetchMembership(ctx, []string{"http://127.0.0.1:1", eb.url})
	if err != nil || m.ClusterID != 7 || len(m.Members) != 1 || m.Members[0].Name != "a" {
		t.Fatalf("membership = %+v, %v", m, err)
	}
	// The leader's refusal comes back as the same sentinel.
	if _, err := joiner.ForwardPromote(ctx, []string{eb.url}, &pb.MemberPromoteRequest{ID: 9}); !errors.Is(err, consensus.ErrLearnerNotReady) {
		t.Fatalf("forwarded promote: %v, want %v", err, consensus.ErrLearnerNotReady)
	}
}

// unusedAddr returns a loopback address nothing listens on (one just
// reserved and released).
func unusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}
