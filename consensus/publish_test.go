package consensus

import (
	"context"
	"errors"
	"fmt"
	"github.com/concord-kv/concord/storage"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/concord-kv/concord/consensus/eventbus"
)

// recordingPublisher keeps everything consensus publishes.
type recordingPublisher struct {
	mu    sync.Mutex
	revs  []eventbus.Revision
	beats []int64
}

func (p *recordingPublisher) Publish(_ context.Context, revs []eventbus.Revision) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.revs = append(p.revs, revs...)
	return nil
}

func (p *recordingPublisher) PublishProgress(_ context.Context, rev int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.beats = append(p.beats, rev)
	return nil
}

func (p *recordingPublisher) snapshot() ([]eventbus.Revision, []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]eventbus.Revision(nil), p.revs...), append([]int64(nil), p.beats...)
}

func TestCommittedRevisionsAndBeatsArePublished(t *testing.T) {
	pub := &recordingPublisher{}
	cfg := testConfig(t)
	cfg.Events = pub
	cfg.ProgressInterval = 20 * time.Millisecond
	n := startNode(t, cfg)

	put(t, n, "a", "1")
	put(t, n, "a", "2")
	if _, err := n.DeleteRange(ctxT(t), &pb.DeleteRangeRequest{Key: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	txn := &pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("x"), Value: []byte("1")}}},
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("y"), Value: []byte("1")}}},
	}}
	resp, err := n.Txn(ctxT(t), txn)
	if err != nil {
		t.Fatal(err)
	}
	last := resp.GetHeader().GetRevision()

	waitFor(t, "a beat at the last revision", func() bool {
		_, beats := pub.snapshot()
		return len(beats) > 0 && beats[len(beats)-1] == last
	})
	revs, beats := pub.snapshot()
	if len(revs) != 4 {
		t.Fatalf("published %d revisions, want 4: %v", len(revs), revs)
	}
	for i, r := range revs {
		if want := int64(2 + i); r.Rev != want {
			t.Errorf("revision %d = %d, want %d (contiguous from 2)", i, r.Rev, want)
		}
	}
	if ev := revs[1].Events; len(ev) != 1 || string(ev[0].Kv.Value) != "2" || string(ev[0].PrevKv.GetValue()) != "1" {
		t.Errorf("second put's event = %v, want value 2 with prev_kv value 1", ev)
	}
	if ev := revs[2].Events; len(ev) != 1 || ev[0].Type != mvccpb.DELETE {
		t.Errorf("delete's event = %v", ev)
	}
	if ev := revs[3].Events; len(ev) != 2 || revs[3].Rev != last {
		t.Errorf("txn revision %d has %d events, want both puts at %d", revs[3].Rev, len(ev), last)
	}
	for i := 1; i < len(beats); i++ {
		if beats[i] < beats[i-1] {
			t.Fatalf("beats went backwards: %v", beats)
		}
	}
}

func TestRangeEventsReturnsCommittedHistory(t *testing.T) {
	n := startNode(t, testConfig(t))
	put(t, n, "k1", "a")
	put(t, n, "other", "x")
	last := put(t, n, "k1", "b").GetHeader().GetRevision()

	revs, err := n.RangeEvents(ctxT(t), 2, last, []byte("k"), []byte("l"))
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 2 || revs[0].Rev != 2 || revs[1].Rev != last {
		t.Fatalf("history = %v, want revisions 2 and %d for k*", revs, last)
	}
	if got := revs[1].Events[0].PrevKv.GetValue(); string(got) != "a" {
		t.Errorf("prev_kv of the overwrite = %q, want a", got)
	}
	if _, err := n.RangeEvents(ctxT(t), 2, last+10, []byte("k"), []byte("l")); !errors.Is(err, storage.ErrFutureRev) {
		t.Errorf("history beyond the cluster's revision: err = %v, want ErrFutureRev", err)
	}
	rev, _, err := n.CurrentRevision(ctxT(t))
	if err != nil || rev != last {
		t.Errorf("CurrentRevision = %d, %v; want %d", rev, err, last)
	}
}

// TestOnlyTheLeaderPublishesToASharedBus: with EventsFromLeaderOnly, a
// revision crosses the shared bus once (from the leader), followers
// publish neither revisions nor beats, and after the leader dies its
// successor takes over the publishing.
func TestOnlyTheLeaderPublishesToASharedBus(t *testing.T) {
	pubs := make([]*recordingPublisher, 3)
	next := 0
	c := newTestCluster(t, 3, func(cfg *Config) {
		pubs[next] = &recordingPublisher{}
		cfg.Events, cfg.EventsFromLeaderOnly, cfg.ProgressInterval = pubs[next], true, 20*time.Millisecond
		next++
	})
	lead := c.leader()
	// What each member published so far (one may have led briefly while
	// the cluster started); followers must add nothing to it.
	published := func(i int) int {
		revs, beats := pubs[i].snapshot()
		return len(revs) + len(beats)
	}
	base := make([]int, 3)
	for i := range base {
		base[i] = published(i)
	}
	var last int64
	for i := range 5 {
		resp, err := putCtx(ctxT(t), c.nodes[i%3], "k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.GetHeader().GetRevision()
	}
	waitFor(t, "the leader's beat at the last revision", func() bool {
		_, beats := pubs[lead].snapshot()
		return len(beats) > 0 && beats[len(beats)-1] == last
	})
	revs, _ := pubs[lead].snapshot()
	if len(revs) < 5 || revs[len(revs)-5].Rev != last-4 || revs[len(revs)-1].Rev != last {
		t.Fatalf("the leader published %v, want revisions %d..%d last", revs, last-4, last)
	}
	for _, f := range c.followers(lead) {
		if n := published(f); n != base[f] {
			t.Fatalf("follower %d published %d revisions and beats", f, n-base[f])
		}
	}

	c.stop(lead)
	newLead := c.leader()
	for i := range base {
		base[i] = published(i)
	}
	resp, err := putCtx(ctxT(t), c.nodes[newLead], "k", "after")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new leader to publish", func() bool {
		revs, _ := pubs[newLead].snapshot()
		return len(revs) > 0 && revs[len(revs)-1].Rev == resp.GetHeader().GetRevision()
	})
	for _, f := range c.followers(newLead) {
		if n := published(f); n != base[f] {
			t.Fatalf("follower %d published %d revisions and beats", f, n-base[f])
		}
	}
}
