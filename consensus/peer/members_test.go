package peer

import (
	"net/http/httptest"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/consensus"
)

type membersRaft struct{ *fakeRaft }

func (membersRaft) Membership() consensus.Membership {
	return consensus.Membership{ClusterID: 0xc1, Members: []*pb.Member{
		{ID: 20, Name: "b", PeerURLs: []string{"http://b:2380"}, ClientURLs: []string{"http://b:2379"}},
		{ID: 3, PeerURLs: []string{"http://c:2380"}, IsLearner: true}, // added, not started
		{ID: 10, Name: "a", PeerURLs: []string{"http://a:2380"}, ClientURLs: []string{"http://a:2379", "http://a:22379"}},
	}}
}

// TestMembersHandler checks /members on the peer URLs against etcd's
// peerMembersHandler: members by ID, IDs as numbers, unpublished
// attributes left out, the cluster ID in a header; GET only.
func TestMembersHandler(t *testing.T) {
	tr := newTransport(t)
	path, h := tr.MembersHandler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	if rec.Code != 503 {
		t.Errorf("before Start: %d, want 503", rec.Code)
	}
	if err := tr.Start(consensus.LocalMember{ID: 10, ClusterID: 0xc1}, membersRaft{newFakeRaft()}); err != nil {
		t.Fatal(err)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	want := `[{"id":3,"peerURLs":["http://c:2380"],"isLearner":true},` +
		`{"id":10,"peerURLs":["http://a:2380"],"name":"a","clientURLs":["http://a:2379","http://a:22379"]},` +
		`{"id":20,"peerURLs":["http://b:2380"],"name":"b","clientURLs":["http://b:2379"]}]` + "\n"
	if rec.Code != 200 || rec.Body.String() != want || rec.Header().Get("X-Etcd-Cluster-ID") != "c1" ||
		rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("GET /members: %d %q %v\nwant 200 %q", rec.Code, rec.Body.String(), rec.Header(), want)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", path, nil))
	if rec.Code != 405 || rec.Header().Get("Allow") != "GET" {
		t.Errorf("POST /members: %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}
