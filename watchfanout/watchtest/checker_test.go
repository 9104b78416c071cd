package watchtest

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// checkerHistory: rev 2 put a, rev 3 put a+b (txn), rev 4 delete a, rev 5 put c.
func checkerHistory(t *testing.T) (History, *Model) {
	m := NewModel(nil)
	m.Put("a", "1")
	m.Txn([]Op{{Key: []byte("a"), Value: []byte("2")}, {Key: []byte("b"), Value: []byte("1")}})
	m.Delete("a", "")
	m.Put("c", "1")
	h := m.History()
	if len(h) != 4 || h.Last() != 5 {
		t.Fatalf("history %v", h)
	}
	return h, m
}

func created(id, rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: id, Created: true}
}

func evResp(id, rev int64, evs ...*mvccpb.Event) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: id, Events: evs}
}

func progress(id, rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: id}
}

// strip returns ev without PrevKv.
func strip(ev *mvccpb.Event) *mvccpb.Event {
	return &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
}

func TestCheckerAcceptsCorrectStreams(t *testing.T) {
	h, _ := checkerHistory(t)
	ev := func(i, j int) *mvccpb.Event { return h[i].Events[j] }
	all := Watch{Key: []byte("a"), RangeEnd: []byte{0}, StartRevision: 1, PrevKV: true}
	resps := []*pb.WatchResponse{
		created(0, 5),
		evResp(0, 2, ev(0, 0)),
		progress(0, 2),
		evResp(0, 3, ev(1, 0), ev(1, 1)),
		evResp(0, 4, ev(2, 0)),
		progress(-1, 4),
		evResp(0, 5, ev(3, 0)),
		progress(0, 5),
	}
	res, err := Check(h, all, resps)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 5 || res.Reached != 5 || res.Start != 1 || res.LastEvent != 5 {
		t.Fatalf("result %+v", res)
	}
	// Fragments are reassembled; a watch from "now"; filters; no prev_kv.
	frag := Watch{Key: []byte("a"), RangeEnd: []byte("c"), StartRevision: 3, Fragment: true, NoDelete: true}
	f1 := evResp(1, 3, strip(ev(1, 0)))
	f1.Fragment = true
	now := Watch{Key: []byte("c")}
	res2, err := CheckStream(h, []Watch{frag, now}, []*pb.WatchResponse{
		created(1, 3), created(2, 4), f1, evResp(1, 3, strip(ev(1, 1))), evResp(2, 5, strip(ev(3, 0))), progress(-1, 5),
		{Header: &pb.ResponseHeader{Revision: 5}, WatchId: 1, Canceled: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res2[0].Events != 2 || !res2[0].Canceled || res2[1].Start != 5 || res2[1].Reached != 5 {
		t.Fatalf("results %+v", res2)
	}
	// Resume from where it got to.
	if r := res2[0].Resume(frag); r.StartRevision != 6 {
		t.Fatalf("resume %+v", r)
	}
}

func TestCheckerCatchesViolations(t *testing.T) {
	h, _ := checkerHistory(t)
	ev := func(i, j int) *mvccpb.Event { return h[i].Events[j] }
	all := Watch{Key: []byte("a"), RangeEnd: []byte{0}, StartRevision: 2, PrevKV: true}
	wrongValue := proto.CloneOf(ev(0, 0))
	wrongValue.Kv.Value = []byte("x")
	wrongPrev := proto.CloneOf(ev(2, 0))
	wrongPrev.PrevKv = nil
	frag := evResp(0, 3, ev(1, 0))
	frag.Fragment = true
	for _, tc := range []struct {
		name  string
		w     Watch
		resps []*pb.WatchResponse
	}{
		{"gap", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), evResp(0, 4, ev(2, 0))}},
		{"duplicate", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), evResp(0, 2, ev(0, 0))}},
		{"out of order", all, []*pb.WatchResponse{created(0, 5), evResp(0, 3, ev(1, 0), ev(1, 1)), evResp(0, 2, ev(0, 0))}},
		{"split revision", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), evResp(0, 3, ev(1, 0)), evResp(0, 3, ev(1, 1))}},
		{"fragment not requested", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), frag, evResp(0, 3, ev(1, 1))}},
		{"wrong event", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, wrongValue)}},
		{"wrong prev_kv", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), evResp(0, 3, ev(1, 0), ev(1, 1)), evResp(0, 4, wrongPrev)}},
		{"unrequested prev_kv", Watch{Key: []byte("a"), StartRevision: 3}, []*pb.WatchResponse{created(0, 5), evResp(0, 3, ev(1, 0))}},
		{"filter", Watch{Key: []byte("a"), StartRevision: 2, NoDelete: true, PrevKV: true}, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), evResp(0, 3, ev(1, 0)), evResp(0, 4, ev(2, 0))}},
		{"event before start", Watch{Key: []byte("a"), StartRevision: 3, PrevKV: true}, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0))}},
		{"unwatched key", Watch{Key: []byte("b"), StartRevision: 2, PrevKV: true}, []*pb.WatchResponse{created(0, 5), evResp(0, 3, ev(1, 0))}},
		{"progress beyond delivered", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), progress(0, 3)}},
		{"progress (-1) beyond delivered", all, []*pb.WatchResponse{created(0, 5), progress(-1, 2)}},
		{"progress backwards", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), progress(0, 2), evResp(0, 3, ev(1, 0), ev(1, 1)), progress(0, 2)}},
		{"header beyond events", all, []*pb.WatchResponse{created(0, 5), evResp(0, 3, ev(0, 0))}},
		{"beyond history", Watch{Key: []byte("zz")}, []*pb.WatchResponse{created(0, 5), progress(0, 6)}},
		{"response after cancel", all, []*pb.WatchResponse{created(0, 5), {WatchId: 0, Canceled: true, Header: &pb.ResponseHeader{}}, evResp(0, 2, ev(0, 0))}},
		{"needless compaction cancel", all, []*pb.WatchResponse{created(0, 5), evResp(0, 2, ev(0, 0)), {WatchId: 0, Canceled: true, CompactRevision: 3, Header: &pb.ResponseHeader{}}}},
		{"unknown id", all, []*pb.WatchResponse{created(0, 5), evResp(7, 2, ev(0, 0))}},
		{"no created response", all, []*pb.WatchResponse{evResp(0, 2, ev(0, 0))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Check(h, tc.w, tc.resps); !errors.Is(err, ErrViolation) {
				t.Fatalf("Check = %v, want a violation", err)
			}
		})
	}
}

func TestCheckerCompactionCancel(t *testing.T) {
	h, _ := checkerHistory(t)
	w := Watch{Key: []byte("a"), StartRevision: 2}
	// Legit: the watch still needed revision 2 < 4.
	res, err := CheckStream(h, []Watch{w}, []*pb.WatchResponse{
		created(0, 5), {WatchId: 0, Canceled: true, CompactRevision: 4, Header: &pb.ResponseHeader{Revision: 5}},
		// etcd answers the client's later cancel of the compacted watch.
		{WatchId: 0, Canceled: true, Header: &pb.ResponseHeader{Revision: 5}},
	})
	if err != nil || res[0].CompactRevision != 4 {
		t.Fatalf("CheckStream = %+v, %v", res, err)
	}
}

func TestModelRangeEvents(t *testing.T) {
	_, m := checkerHistory(t)
	ctx := t.Context()
	revs, err := m.RangeEvents(ctx, 2, 5, []byte("a"), nil)
	if err != nil || len(revs) != 3 || revs[1].Rev != 3 || len(revs[1].Events) != 1 {
		t.Fatalf("RangeEvents(a) = %v, %v", revs, err)
	}
	revs, err = m.RangeEvents(ctx, 3, 4, []byte{0}, []byte{0})
	if err != nil || len(revs) != 2 || len(revs[0].Events) != 2 {
		t.Fatalf("RangeEvents(all) = %v, %v", revs, err)
	}
	if err := m.Compact(4); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RangeEvents(ctx, 3, 5, []byte{0}, []byte{0}); err == nil {
		t.Fatal("RangeEvents below the compaction revision succeeded")
	}
	if revs, err := m.RangeEvents(ctx, 4, 5, []byte{0}, []byte{0}); err != nil || len(revs) != 2 {
		t.Fatalf("RangeEvents at the compaction revision = %v, %v", revs, err)
	}
	if rev, crev, err := m.CurrentRevision(ctx); rev != 5 || crev != 4 || err != nil {
		t.Fatalf("CurrentRevision = %d %d %v", rev, crev, err)
	}
	if _, ok := m.Delete("nothing", ""); ok {
		t.Fatal("deleting nothing made a revision")
	}
}
