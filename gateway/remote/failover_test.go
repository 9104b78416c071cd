package remote_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/consensus/internalapi"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/concord/v1/concordv1connect"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// member is a real consensus member (raft over an in-memory network, Pebble
// on disk) served over a real loopback listener the way `concord
// consensus` serves it.
type member struct {
	url  string
	node *consensus.Node
	gw   *gateway.Gateway
	done chan struct{}
	once sync.Once
}

// kill closes the member's server (every connection drops at once) and
// stops the member.
func (m *member) kill(t *testing.T) {
	m.once.Do(func() {
		_ = m.gw.Close()
		<-m.done
		if err := m.node.Close(); err != nil {
			t.Errorf("close member: %v", err)
		}
	})
}

func startMembers(t *testing.T, size int) []*member {
	t.Helper()
	nw := consensus.NewMemNetwork(1)
	lns := make([]net.Listener, size)
	var spec []string
	for i := range size {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		spec = append(spec, fmt.Sprintf("m%d=http://127.0.0.1:%d", i+1, 22380+i))
	}
	log := slog.New(slog.DiscardHandler)
	ms := make([]*member, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			n, err := consensus.Start(ctx, consensus.Config{
				Name:              fmt.Sprintf("m%d", i+1),
				DataDir:           t.TempDir(),
				ClientURLs:        []string{"http://" + lns[i].Addr().String()},
				PeerURLs:          []string{fmt.Sprintf("http://127.0.0.1:%d", 22380+i)},
				InitialCluster:    strings.Join(spec, ","),
				HeartbeatInterval: 10 * time.Millisecond,
				ElectionTimeout:   100 * time.Millisecond,
				Logger:            log,
				Transport:         nw.Transport(),
			})
			if err != nil {
				errs[i] = err
				return
			}
			path, h := concordv1connect.NewInternalServiceHandler(internalapi.New(n))
			gw, err := gateway.New(gateway.Config{Logger: log}, n, gateway.WithHTTPHandler(path, h))
			if err != nil {
				errs[i] = errors.Join(err, n.Close())
				return
			}
			m := &member{url: "http://" + lns[i].Addr().String(), node: n, gw: gw, done: make(chan struct{})}
			go func() {
				defer close(m.done)
				_ = gw.Serve(context.Background(), lns[i])
			}()
			ms[i] = m
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, m := range ms {
			if m != nil {
				m.kill(t)
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return ms
}

// leaderOf waits until the members agree on a leader and returns its index.
func leaderOf(t *testing.T, ms []*member) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lead := ms[0].node.Leader()
		if lead != 0 && !slices.ContainsFunc(ms, func(m *member) bool { return m.node.Leader() != lead }) {
			return slices.IndexFunc(ms, func(m *member) bool { return m.node.MemberID() == lead })
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no leader")
	return -1
}

func newConsensus(t *testing.T, urls ...string) *remote.Consensus {
	t.Helper()
	c, err := remote.NewConsensus(strings.Join(urls, ","), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func put(ctx context.Context, c *remote.Consensus, k, v string) (*pb.PutResponse, error) {
	return c.Put(ctx, &pb.PutRequest{Key: []byte(k), Value: []byte(v)})
}

// TestConsensusFollowsLeaderAndFailsOver gives the client one follower's URL
// only: it learns the others (MemberList), moves its calls to the leader,
// and when that leader is killed, reads and writes continue through the
// survivors.
func TestConsensusFollowsLeaderAndFailsOver(t *testing.T) {
	ms := startMembers(t, 3)
	lead := leaderOf(t, ms)
	follower := (lead + 1) % 3
	c := newConsensus(t, ms[follower].url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFollowsLeader(ctx, t, c, ms[lead].url)

	// What preferring the leader saves: puts through the leader against
	// puts a follower forwards (one client per member, same workload).
	const n = 100
	for _, i := range []int{lead, follower} {
		one := newConsensus(t, ms[i].url)
		if _, err := put(ctx, one, "warm", "x"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for j := range n {
			if _, err := put(ctx, one, "lat", fmt.Sprint(j)); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("put latency via the %s: %v", map[bool]string{true: "leader", false: "follower"}[i == lead], time.Since(start)/n)
	}

	before, err := put(ctx, c, "k", "before")
	if err != nil {
		t.Fatal(err)
	}
	ms[lead].kill(t)
	killed := time.Now()
	var after *pb.PutResponse
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		after, err = put(cctx, c, "k", "after")
		ccancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no write went through after the leader was killed: %v", err)
		}
		// Writes lost with the leader fail as etcd's do, with Unavailable.
		if code := connect.CodeOf(gateway.TranslateError(err)); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
			t.Fatalf("write while the leader is down: %v (code %v)", err, code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("writes resumed %v after the leader was killed", time.Since(killed))
	if after.GetHeader().GetRevision() <= before.GetHeader().GetRevision() {
		t.Fatalf("revision went from %d to %d", before.GetHeader().GetRevision(), after.GetHeader().GetRevision())
	}
	got, err := c.Range(ctx, &pb.RangeRequest{Key: []byte("k")})
	if err != nil || len(got.GetKvs()) != 1 || string(got.GetKvs()[0].GetValue()) != "after" {
		t.Fatalf("read after failover = %v, %v", got, err)
	}
	for c.Leader() == 0 || c.Leader() == ms[lead].node.MemberID() {
		if ctx.Err() != nil {
			t.Fatalf("the client still reports the dead leader %x", c.Leader())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if remote.PreferredForTest(c) == ms[lead].url {
		t.Fatalf("the client still prefers the dead leader")
	}
}

// TestStatusAndMoveLeaderReachTheLeader: right after a leader change, before
// the client's leader poll has moved its calls to the new leader, MoveLeader
// reaches the leader (a follower refuses it) and Status is the leader's own
// (etcdctl move-leader sends MoveLeader only to an endpoint whose status
// names itself the leader). Both failed through a gateway in the e2e tests
// until the next poll.
func TestStatusAndMoveLeaderReachTheLeader(t *testing.T) {
	ms := startMembers(t, 3)
	lead := leaderOf(t, ms)
	var urls []string
	for _, m := range ms {
		urls = append(urls, m.url)
	}
	c := newConsensus(t, urls...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFollowsLeader(ctx, t, c, ms[lead].url)

	// Every member has published its client URL (as a started concord
	// member does at once): the client can reach whichever becomes leader.
	for {
		ml, err := c.MemberList(ctx, &pb.MemberListRequest{})
		if err == nil && !slices.ContainsFunc(ml.GetMembers(), func(m *pb.Member) bool { return len(m.GetClientURLs()) == 0 }) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("members never all published their client URLs: %v, %v", ml, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The leader dies; the survivors elect another.
	dead := ms[lead].node.MemberID()
	ms[lead].kill(t)
	survivors := slices.Delete(slices.Clone(ms), lead, lead+1)
	newLead := 0
	for {
		l := survivors[0].node.Leader()
		if l != 0 && l != dead && survivors[1].node.Leader() == l {
			newLead = slices.IndexFunc(survivors, func(m *member) bool { return m.node.MemberID() == l })
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the survivors elected no leader")
		}
		time.Sleep(time.Millisecond)
	}
	target := survivors[1-newLead].node.MemberID()
	if _, err := c.MoveLeader(ctx, &pb.MoveLeaderRequest{TargetID: target}); err != nil {
		t.Fatalf("MoveLeader to %x right after the leader change: %v", target, err)
	}

	// MoveLeader returned once the old leader follows the target: the
	// client's preferred member is a follower now.
	st, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetLeader() != target || st.GetHeader().GetMemberId() != target {
		t.Fatalf("Status right after move-leader to %x: member %x, leader %x; want the leader's own status",
			target, st.GetHeader().GetMemberId(), st.GetLeader())
	}
}

// fakeKV counts the writes a member received; with cut set it drops every
// connection while a Put is being handled, so the client cannot know
// whether the write was applied.
type fakeKV struct {
	etcdserverpbconnect.UnimplementedKVHandler
	srv        *httptest.Server
	puts, gets atomic.Int32
	cut        bool
	learner    bool
}

func (f *fakeKV) Put(context.Context, *pb.PutRequest) (*pb.PutResponse, error) {
	f.puts.Add(1)
	if f.learner {
		return nil, gateway.TranslateError(rpctypes.ErrGRPCNotSupportedForLearner)
	}
	if f.cut {
		f.srv.CloseClientConnections()
		time.Sleep(100 * time.Millisecond)
	}
	return &pb.PutResponse{Header: hdr}, nil
}

func (f *fakeKV) Range(context.Context, *pb.RangeRequest) (*pb.RangeResponse, error) {
	f.gets.Add(1)
	if f.cut {
		f.srv.CloseClientConnections()
		time.Sleep(100 * time.Millisecond)
	}
	return &pb.RangeResponse{Header: hdr}, nil
}

func fakeMember(t *testing.T, cut bool) (*fakeKV, string) {
	return fakeMemberOf(t, &fakeKV{cut: cut})
}

func fakeMemberOf(t *testing.T, f *fakeKV) (*fakeKV, string) {
	path, h := etcdserverpbconnect.NewKVHandler(f)
	url := h2cServer(t, path, h, func(s *httptest.Server) { f.srv = s })
	return f, url
}

// TestConsensusRetriesOnlyWhatWasNotExecuted checks clientv3's retry rules:
// a write moves to the next member only when the first could not be dialed;
// a write whose connection died after it was sent fails with etcd's
// Unavailable "connection lost" error and is not sent again; a read is
// retried either way.
func TestConsensusRetriesOnlyWhatWasNotExecuted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		ln.Close()
		f, url := fakeMember(t, false)
		c := newConsensus(t, dead, url)
		if _, err := put(ctx, c, "k", "v"); err != nil {
			t.Fatalf("put with the first member down: %v", err)
		}
		if f.puts.Load() != 1 {
			t.Fatalf("second member got %d puts, want 1", f.puts.Load())
		}
	})

	t.Run("learner", func(t *testing.T) {
		l, lurl := fakeMemberOf(t, &fakeKV{learner: true})
		f, url := fakeMember(t, false)
		c := newConsensus(t, lurl, url)
		if _, err := put(ctx, c, "k", "v"); err != nil {
			t.Fatalf("put with a learner first: %v", err)
		}
		if l.puts.Load() != 1 || f.puts.Load() != 1 {
			t.Fatalf("puts: %d on the learner, %d on the voter; want 1 and 1", l.puts.Load(), f.puts.Load())
		}
	})

	// With nothing but learners to send it to, the write fails with the
	// learner's own refusal, which the gateway passes on as etcd's.
	t.Run("learners only", func(t *testing.T) {
		l, lurl := fakeMemberOf(t, &fakeKV{learner: true})
		c := newConsensus(t, lurl)
		_, err := put(ctx, c, "k", "v")
		want := status.Convert(rpctypes.ErrGRPCNotSupportedForLearner)
		var ce *connect.Error
		if !errors.As(gateway.TranslateError(err), &ce) || ce.Code() != connect.Code(want.Code()) || ce.Message() != want.Message() {
			t.Fatalf("put with only a learner: %v, want etcd's %v", err, want.Err())
		}
		if l.puts.Load() != 1 {
			t.Fatalf("the learner got %d puts, want 1", l.puts.Load())
		}
	})

	t.Run("connection lost", func(t *testing.T) {
		cut, cutURL := fakeMember(t, true)
		other, otherURL := fakeMember(t, false)
		c := newConsensus(t, cutURL, otherURL)
		_, err := put(ctx, c, "k", "v")
		var ce *connect.Error
		want := status.Convert(rpctypes.ErrGRPCTimeoutDueToConnectionLost)
		if !errors.Is(err, consensus.ErrTimeoutConnectionLost) {
			t.Fatalf("put whose connection died: %v, want %v", err, consensus.ErrTimeoutConnectionLost)
		}
		if !errors.As(gateway.TranslateError(err), &ce) || ce.Code() != connect.Code(want.Code()) || ce.Message() != want.Message() {
			t.Fatalf("translated to %v, want etcd's %v", ce, want)
		}
		if cut.puts.Load() != 1 || other.puts.Load() != 0 {
			t.Fatalf("puts: %d on the member that died, %d on the other; want 1 and 0 (no retry)", cut.puts.Load(), other.puts.Load())
		}
		c2 := newConsensus(t, cutURL, otherURL)
		if _, err := c2.Range(ctx, &pb.RangeRequest{Key: []byte("k")}); err != nil {
			t.Fatalf("range is retried on the other member: %v", err)
		}
		if cut.gets.Load() != 1 || other.gets.Load() != 1 {
			t.Fatalf("ranges: %d on the member that died, %d on the other; want 1 and 1", cut.gets.Load(), other.gets.Load())
		}
	})
}

func TestLearnedClientURLsMustBeReachable(t *testing.T) {
	for raw, want := range map[string]bool{
		"http://10.0.0.1:2379": true, "http://consensus-2:2379": true, "http://[::1]:2379": true,
		"http://0.0.0.0:2379": false, "http://[::]:2379": false, "unix://sock": false, "::": false,
		// TLS members are dialed with the client's TLS options (WithTLS).
		"https://c:2379": true, "https://0.0.0.0:2379": false,
	} {
		if got := remote.ReachableForTest(raw); got != want {
			t.Errorf("reachable(%q) = %v, want %v", raw, got, want)
		}
	}
}

// fakeMaint answers Status as member id, the leader; with hang set it
// never answers (a frozen member whose connection still stands).
type fakeMaint struct {
	etcdserverpbconnect.UnimplementedMaintenanceHandler
	id   uint64
	hang bool
}

func (f *fakeMaint) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &pb.StatusResponse{Header: &pb.ResponseHeader{ClusterId: 7, MemberId: f.id}, Leader: f.id}, nil
}

// hangingKV never answers a Range.
type hangingKV struct {
	etcdserverpbconnect.UnimplementedKVHandler
}

func (hangingKV) Range(ctx context.Context, _ *pb.RangeRequest) (*pb.RangeResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestConsensusLeavesAMemberThatDoesNotAnswer: the first member accepts
// connections but answers nothing; the leader poll's timeout moves the
// calls to the other member, which they then follow.
func TestConsensusLeavesAMemberThatDoesNotAnswer(t *testing.T) {
	serve := func(kv etcdserverpbconnect.KVHandler, m *fakeMaint) string {
		mux := http.NewServeMux()
		mux.Handle(etcdserverpbconnect.NewKVHandler(kv))
		mux.Handle(etcdserverpbconnect.NewMaintenanceHandler(m))
		return serveH2C(t, mux)
	}
	frozen := serve(hangingKV{}, &fakeMaint{id: 1, hang: true})
	ok := &fakeKV{}
	okURL := serve(ok, &fakeMaint{id: 2})
	c := newConsensus(t, frozen, okURL)
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := c.Range(ctx, &pb.RangeRequest{Key: []byte("k")})
		cancel()
		if err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("reads still go to the member that does not answer: %v", err)
		}
	}
	t.Logf("reads moved away from the frozen member after %v", time.Since(start))
	for remote.PreferredForTest(c) != okURL {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the client does not follow the answering leader: uses %s", remote.PreferredForTest(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitFollowsLeader waits until c is ready and prefers leaderURL.
func waitFollowsLeader(ctx context.Context, t *testing.T, c *remote.Consensus, leaderURL string) {
	t.Helper()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for remote.PreferredForTest(c) != leaderURL {
		if ctx.Err() != nil {
			t.Fatalf("the client never moved to the leader %s: uses %v", leaderURL, remote.PreferredForTest(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
