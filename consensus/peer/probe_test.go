package peer

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/concord-kv/concord/consensus"
)

func probingTransport(t *testing.T) *Transport {
	t.Helper()
	return newTransportWith(t, Config{ProbeInterval: 2 * time.Millisecond, ProbeReportInterval: 10 * time.Millisecond, ProbeRetryInterval: 5 * time.Millisecond})
}

func roundTrip(tr *Transport, id uint64) consensus.Histogram {
	for _, p := range tr.PeerStats() {
		if p.ID == id {
			return p.RoundTrip
		}
	}
	return consensus.Histogram{}
}

// TestRoundTripIsProbed checks etcd_network_peer_round_trip_time_seconds'
// source: a member probes each peer's ProbePath and records the smoothed
// round trip, in etcd's buckets, periodically.
func TestRoundTripIsProbed(t *testing.T) {
	a, b := probingTransport(t), newTransport(t)
	eb := newEndpoint(t)
	eb.serve(b)
	for i, tr := range []*Transport{a, b} {
		if err := tr.Start(consensus.LocalMember{ID: uint64(i + 1), ClusterID: 7}, newFakeRaft()); err != nil {
			t.Fatal(err)
		}
	}
	a.AddPeer(2, []string{eb.url})
	waitFor(t, "three round-trip records", func() bool { return roundTrip(a, 2).Count >= 3 })
	h := roundTrip(a, 2)
	if h.Sum <= 0 || h.Sum > float64(h.Count)*DefaultProbeInterval.Seconds() {
		t.Errorf("round trips: %d records summing to %gs; want positive loopback times", h.Count, h.Sum)
	}
	if len(h.Buckets) != 16 || h.Buckets[0.0001] > h.Count || h.Buckets[3.2768] != h.Count {
		t.Errorf("buckets %v (count %d): want etcd's 16, 0.1 ms to 3.2768 s", h.Buckets, h.Count)
	}
}

// A peer that never answers is recorded at 0, as etcd's prober records it.
func TestRoundTripOfUnreachablePeer(t *testing.T) {
	a := probingTransport(t)
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, newFakeRaft()); err != nil {
		t.Fatal(err)
	}
	addr := unusedAddr(t)
	a.AddPeer(2, []string{"http://" + addr})
	waitFor(t, "two round-trip records", func() bool { return roundTrip(a, 2).Count >= 2 })
	if h := roundTrip(a, 2); h.Sum != 0 || h.Buckets[0.0001] != h.Count {
		t.Errorf("round trips of an unreachable peer: %+v, want zeros", h)
	}
}

// A peer counts as reachable once it answers a probe, before raft sends it
// anything, and only while its transport delivers to raft: the peer server
// listens before its member starts, and the initial election tick advance
// counts reachable peers. Until the first answer, probes come every
// FirstAnswerProbeInterval; the hour-long ProbeInterval here would
// otherwise leave the peer unreachable for the whole test.
func TestPeerReachableOnceItsTransportStarts(t *testing.T) {
	a, b := newTransportWith(t, Config{ProbeInterval: time.Hour, FirstAnswerProbeInterval: 5 * time.Millisecond}), newTransport(t)
	eb := newEndpoint(t)
	eb.serve(b)
	var probes atomic.Int64
	served := *eb.h.Load()
	var counting http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == ProbePath {
			probes.Add(1)
		}
		served.ServeHTTP(w, r)
	})
	eb.h.Store(&counting)
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, newFakeRaft()); err != nil {
		t.Fatal(err)
	}
	a.AddPeer(2, []string{eb.url})
	reachable := func() bool {
		ps := a.PeerStats()
		return len(ps) == 1 && ps[0].Reachable
	}
	// b's server answers, but b is not started: its probes are refused.
	waitFor(t, "three refused probes", func() bool { return probes.Load() >= 3 })
	if reachable() {
		t.Fatal("a peer whose transport is not started counts as reachable")
	}
	fb := newFakeRaft()
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 7}, fb); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the peer reachable", reachable)
	if ps := a.PeerStats(); ps[0].Active || ps[0].SentBytes != 0 || len(fb.messages()) != 0 {
		t.Errorf("peer stats after the probe: %+v, %d messages delivered; want no stream, nothing sent", ps, len(fb.messages()))
	}
}
