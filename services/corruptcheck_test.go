package services

import (
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/storage"
)

func hashResp(rev int64, hash uint32, hashRev, compactRev int64) *pb.HashKVResponse {
	return &pb.HashKVResponse{Header: &pb.ResponseHeader{Revision: rev}, Hash: hash, HashRevision: hashRev, CompactRevision: compactRev}
}

// TestPeriodicVerdict walks etcd's PeriodicCheck decisions: the leader (1)
// at revision 10, compacted at 5, with hash 100.
func TestPeriodicVerdict(t *testing.T) {
	h := hashResp(10, 100, 10, 5)
	for _, c := range []struct {
		name  string
		h2    *pb.HashKVResponse
		peers []peerHash
		want  uint64 // 0: no alarm
	}{
		{"all agree", h, []peerHash{{2, hashResp(10, 100, 10, 5)}, {3, hashResp(9, 100, 10, 5)}}, 0},
		{"leader's own hash changed", hashResp(10, 101, 10, 5), nil, 1},
		{"leader's hash at a later revision", hashResp(11, 101, 11, 5), nil, 0},
		{"follower ahead in revision", h, []peerHash{{2, hashResp(10, 100, 10, 5)}, {3, hashResp(11, 100, 10, 5)}}, 3},
		{"follower ahead in compaction", h, []peerHash{{2, hashResp(10, 100, 10, 6)}}, 2},
		{"other hash at the same compaction", h, []peerHash{{2, hashResp(10, 100, 10, 5)}, {3, hashResp(10, 7, 10, 5)}}, 3},
		{"other hash at an older compaction", h, []peerHash{{2, hashResp(10, 7, 10, 4)}}, 0},
	} {
		id, _, found := periodicVerdict(1, h, c.h2, c.peers)
		if found != (c.want != 0) || id != c.want {
			t.Errorf("%s: alarm for %d (found %v), want %d", c.name, id, found, c.want)
		}
	}
}

// TestCompactionVerdict walks etcd's checkPeerHashes decisions for a
// leader (1) whose compaction at 20 (from 10) stored hash 100.
func TestCompactionVerdict(t *testing.T) {
	h := storage.CompactionHash{Hash: 100, Revision: 20, CompactRevision: 10}
	peer := func(id uint64, hash uint32, compactRev int64) peerHash {
		return peerHash{id, hashResp(25, hash, 20, compactRev)}
	}
	for _, c := range []struct {
		name    string
		peers   []peerHash
		others  int
		want    hashVerdict
		corrupt []uint64
	}{
		{"all agree", []peerHash{peer(2, 100, 10), peer(3, 100, 10)}, 2, hashVerdict{checked: 2, consistent: true}, nil},
		{"one did not answer", []peerHash{peer(2, 100, 10)}, 2, hashVerdict{checked: 1, consistent: true}, nil},
		{"one compacted elsewhere", []peerHash{peer(2, 100, 10), peer(3, 7, 9)}, 2, hashVerdict{skipped: []uint64{3}, checked: 1, consistent: true}, nil},
		{"a follower in the minority", []peerHash{peer(2, 100, 10), peer(3, 7, 10)}, 2, hashVerdict{checked: 2, majority: true}, []uint64{3}},
		{"the leader in the minority", []peerHash{peer(2, 7, 10), peer(3, 7, 10)}, 2, hashVerdict{checked: 2, majority: true}, []uint64{1}},
		{"no majority", []peerHash{peer(2, 7, 10), peer(3, 8, 10)}, 2, hashVerdict{checked: 2}, []uint64{0}},
		{"two of five in the minority", []peerHash{peer(2, 100, 10), peer(3, 100, 10), peer(4, 7, 10), peer(5, 8, 10)}, 4, hashVerdict{checked: 4, majority: true}, []uint64{4, 5}},
	} {
		v := compactionVerdict(1, h, c.peers, c.others)
		if !slices.Equal(v.skipped, c.want.skipped) || v.checked != c.want.checked || v.consistent != c.want.consistent ||
			v.majority != c.want.majority || !slices.Equal(v.corrupt, c.corrupt) {
			t.Errorf("%s: %+v, want %+v with corrupt %v", c.name, v, c.want, c.corrupt)
		}
	}
}

// A check loop's peer clients are dialed once per URL and kept from check
// to check, closed when no member has their URL any more, and refused after
// close.
func TestPeerClientsAreKept(t *testing.T) {
	c := &corruptionChecks{}
	p := c.newPeerClients()
	const u2, u3 = "http://127.0.0.1:1", "http://127.0.0.1:2"
	get := func(u string) *remote.Endpoint {
		t.Helper()
		ep, err := p.get(u)
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	first2, first3 := get(u2), get(u3)
	if get(u2) != first2 || get(u3) != first3 || first2 == first3 {
		t.Fatal("a URL's client was dialed again, or two URLs share one")
	}
	p.retain([]*pb.Member{{ID: 2, PeerURLs: []string{u2}}})
	if get(u2) != first2 {
		t.Error("the client of a member's URL was not kept")
	}
	if get(u3) == first3 {
		t.Error("the client of a URL no member has was kept")
	}
	p.close()
	p.close()
	if _, err := p.get(u2); err == nil {
		t.Error("a client was handed out after close")
	}
}
