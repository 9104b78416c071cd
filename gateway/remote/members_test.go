package remote_test

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// fakeCluster is the membership every fake member answers with: Status
// names the leader, MemberList the members. MemberRemove answers with the
// list without the member but leaves the shared list as it was, so later
// MemberList answers still name the removed member (as a list read before
// the removal would).
type fakeCluster struct {
	mu      sync.Mutex
	leader  uint64
	members []*pb.Member
	lists   atomic.Int64 // MemberList calls answered
}

func (fc *fakeCluster) set(leader uint64, ms ...*pb.Member) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.leader, fc.members = leader, ms
}

func (fc *fakeCluster) snapshot() (uint64, []*pb.Member) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.leader, slices.Clone(fc.members)
}

type fakeClusterSvc struct {
	etcdserverpbconnect.UnimplementedClusterHandler
	id uint64
	fc *fakeCluster
}

func (f fakeClusterSvc) MemberList(context.Context, *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	f.fc.lists.Add(1)
	_, ms := f.fc.snapshot()
	return &pb.MemberListResponse{Header: &pb.ResponseHeader{ClusterId: 7, MemberId: f.id}, Members: ms}, nil
}

func (f fakeClusterSvc) MemberRemove(_ context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	_, ms := f.fc.snapshot()
	ms = slices.DeleteFunc(ms, func(m *pb.Member) bool { return m.ID == r.ID })
	return &pb.MemberRemoveResponse{Header: &pb.ResponseHeader{ClusterId: 7, MemberId: f.id}, Members: ms}, nil
}

type fakeStatusSvc struct {
	etcdserverpbconnect.UnimplementedMaintenanceHandler
	id uint64
	fc *fakeCluster
}

func (f fakeStatusSvc) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	lead, _ := f.fc.snapshot()
	return &pb.StatusResponse{Header: &pb.ResponseHeader{ClusterId: 7, MemberId: f.id}, Leader: lead}, nil
}

func startClusterMember(t *testing.T, fc *fakeCluster, id uint64) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(etcdserverpbconnect.NewClusterHandler(fakeClusterSvc{id: id, fc: fc}))
	mux.Handle(etcdserverpbconnect.NewMaintenanceHandler(fakeStatusSvc{id: id, fc: fc}))
	return serveH2C(t, mux)
}

// TestConsensusFollowsMembership: a member removed through the client is
// dropped at once, and is not brought back by member lists that still name
// it; members added to the cluster are used once they publish client URLs;
// a member removed elsewhere, the leader the client followed included, is
// dropped at the next sync. An endpoint no member advertises (here a proxy
// answering as member 2) stays.
func TestConsensusFollowsMembership(t *testing.T) {
	defer remote.SetMemberSyncIntervalForTest(20 * time.Millisecond)()
	fc := &fakeCluster{}
	u := map[uint64]string{}
	for id := range uint64(4) {
		u[id+1] = startClusterMember(t, fc, id+1)
	}
	member := func(id uint64, published bool) *pb.Member {
		m := &pb.Member{ID: id, Name: "m" + string(rune('0'+id))}
		if published {
			m.ClientURLs = []string{u[id]}
		}
		return m
	}
	proxy := startClusterMember(t, fc, 2)
	fc.set(1, member(1, true), member(2, true), member(3, true))
	c := newConsensus(t, u[1], u[2], u[3], proxy)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	waitEndpoints := func(what string, want ...string) {
		t.Helper()
		for !slices.Equal(remote.EndpointsForTest(c), want) {
			if ctx.Err() != nil {
				t.Fatalf("%s: endpoints %v, want %v", what, remote.EndpointsForTest(c), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// syncs waits until the client has listed the members twice more.
	syncs := func() {
		t.Helper()
		for n := fc.lists.Load() + 2; fc.lists.Load() < n; {
			if ctx.Err() != nil {
				t.Fatal("the client stopped listing the members")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for remote.PreferredForTest(c) != u[1] {
		if ctx.Err() != nil {
			t.Fatalf("the client never followed the leader %s", u[1])
		}
		time.Sleep(10 * time.Millisecond)
	}
	syncs() // every endpoint's member is known

	if _, err := c.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: 2}); err != nil {
		t.Fatal(err)
	}
	if got, want := remote.EndpointsForTest(c), []string{u[1], u[3], proxy}; !slices.Equal(got, want) {
		t.Fatalf("endpoints right after member remove: %v, want %v", got, want)
	}
	syncs()
	if got, want := remote.EndpointsForTest(c), []string{u[1], u[3], proxy}; !slices.Equal(got, want) {
		t.Fatalf("endpoints after lists still naming the removed member: %v, want %v", got, want)
	}

	// Member 4 joins: no endpoint until it publishes its client URLs.
	fc.set(1, member(1, true), member(3, true), member(4, false))
	syncs()
	if got, want := remote.EndpointsForTest(c), []string{u[1], u[3], proxy}; !slices.Equal(got, want) {
		t.Fatalf("endpoints before the new member published its URLs: %v, want %v", got, want)
	}
	fc.set(1, member(1, true), member(3, true), member(4, true))
	waitEndpoints("after member 4 published its URLs", u[1], u[3], proxy, u[4])

	// The leader the client follows is removed elsewhere; 3 leads.
	fc.set(3, member(3, true), member(4, true))
	waitEndpoints("after the leader's removal", u[3], proxy, u[4])
	for remote.PreferredForTest(c) != u[3] {
		if ctx.Err() != nil {
			t.Fatalf("the client never followed the new leader %s: uses %s", u[3], remote.PreferredForTest(c))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
