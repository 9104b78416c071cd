package services

import (
	"context"
	"errors"
	"testing"

	"connectrpc.com/connect"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/leasesvc"
)

// The other members' lease services are the voters other than this member,
// and the client of them follows membership changes.
func TestMemberLeaseFollowsMembership(t *testing.T) {
	members := []*pb.Member{
		{ID: 1, PeerURLs: []string{"http://127.0.0.1:1"}},
		{ID: 2, PeerURLs: []string{"http://127.0.0.1:2"}},
		{ID: 3, PeerURLs: []string{"http://127.0.0.1:3"}, IsLearner: true},
	}
	m := newMemberLease(nil, 1, func() []*pb.Member { return members }, nil)
	defer m.Close()
	first := m.allMembers()
	if first == nil || m.peers != "http://127.0.0.1:2" {
		t.Fatalf("other members %q", m.peers)
	}
	if m.allMembers() != first {
		t.Fatal("client made again without a membership change")
	}
	members[2].IsLearner = false // promoted
	if o := m.allMembers(); o == first || m.peers != "http://127.0.0.1:2,http://127.0.0.1:3" {
		t.Fatalf("after a promotion: other members %q", m.peers)
	}
	members = members[:1] // alone again
	if o := m.allMembers(); o != nil || m.peers != "" {
		t.Fatalf("alone: other members %q", m.peers)
	}
}

// Until the lease service is set, forwarded calls answer as a lease
// service that is not active, which sends the forwarder elsewhere.
func TestPeerLeasesUnsetAnswersNotActive(t *testing.T) {
	var p peerLeases
	if _, err := (peerLease{&p}).LeaseKeepAlive(context.Background(), &pb.LeaseKeepAliveRequest{ID: 1}); !errors.Is(err, leasesvc.ErrNotActive) {
		t.Fatalf("keep-alive before the lease service is set: %v", err)
	}
	if _, err := (peerTimeToLive{p: &p}).LeaseTimeToLive(context.Background(), &pb.LeaseTimeToLiveRequest{ID: 1}); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("TimeToLive before the lease service is set: %v, want Unavailable (no leader)", err)
	}
}
