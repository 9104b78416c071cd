package peer

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
)

// ProbePath is where a member answers round-trip probes: etcd's rafthttp
// ProbingPrefix, with the same answer.
const ProbePath = "/raft/probing"

// etcd's probing intervals (rafthttp's proberInterval, statusErrorInterval
// and statusMonitoringInterval).
const (
	DefaultProbeInterval       = 4 * time.Second
	DefaultProbeReportInterval = 30 * time.Second
	DefaultProbeRetryInterval  = 5 * time.Second
	// DefaultFirstAnswerProbeInterval is how often a peer is probed until
	// it first answers, during the FirstAnswerWindow after it is added, so
	// a starting member learns within a few ticks which peers are up
	// (Reachable; the initial election tick advance counts them).
	DefaultFirstAnswerProbeInterval = 50 * time.Millisecond
	// DefaultFirstAnswerWindow is etcd's rafthttp.ConnReadTimeout, for
	// which etcd's adjustTicks waits for active peers.
	DefaultFirstAnswerWindow = 5 * time.Second
)

// rttBuckets are the upper bounds, in seconds, of etcd's
// etcd_network_peer_round_trip_time_seconds: 0.1 ms doubling to 3.2768 s.
var rttBuckets = func() []float64 {
	b := make([]float64, 16)
	for i := range b {
		b[i] = 0.0001 * math.Pow(2, float64(i))
	}
	return b
}()

// probeAnswer is the JSON a probe gets (github.com/xiang90/probing's
// Health, which etcd serves).
type probeAnswer struct {
	OK  bool
	Now time.Time
}

// ProbeHandler returns ProbePath and the handler that answers the probes of
// the other members, as etcd's probing handler does. It answers only while
// the transport delivers to raft (between Start and Stop): the peer server
// listens before its member starts, and a prober takes an answer to mean
// that raft messages would be received (Reachable), which etcd can assume
// because it serves its peer URLs only once its member runs.
func (t *Transport) ProbeHandler() (string, http.Handler) {
	return ProbePath, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !t.delivering() {
			http.Error(w, ErrNotStarted.Error(), http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(probeAnswer{OK: true, Now: time.Now()})
	})
}

// probe measures the round trip to the peer as etcd's rafthttp prober does:
// a GET of ProbePath every ProbeInterval, kept as a smoothed round-trip
// time (srtt = 7/8 srtt + 1/8 rtt, xiang90/probing's), recorded in the
// peer's histogram ProbeRetryInterval after the peer is added, then every
// ProbeReportInterval while probes succeed and every ProbeRetryInterval
// while they fail (etcd's monitorProbingStatus; like it, a peer that never
// answered records 0). etcd probes each peer twice, once per round
// tripper, so its histogram counts two observations per interval; concord
// has one connection per peer and records one. Until the peer first
// answers, within FirstAnswerWindow of being added, it is probed every
// FirstAnswerProbeInterval instead; reachable records whether the latest
// probe was answered.
func (s *sender) probe() {
	defer s.t.wg.Done()
	cfg := s.t.cfg
	h := s.t.peerCounter(s.to).rtt
	tick := time.NewTimer(0)
	defer tick.Stop()
	report := time.NewTimer(cfg.ProbeRetryInterval)
	defer report.Stop()
	var (
		srtt     time.Duration
		healthy  bool
		answered bool // ever
		urlIdx   int
		client   = &http.Client{Transport: s.t.http}
	)
	firstAnswerBy := time.Now().Add(cfg.FirstAnswerWindow)
	next := func() time.Duration {
		if !answered && time.Now().Before(firstAnswerBy) {
			return cfg.FirstAnswerProbeInterval
		}
		return cfg.ProbeInterval
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
			s.mu.Lock()
			u := s.urls[urlIdx%len(s.urls)]
			s.mu.Unlock()
			rtt, err := probeOnce(s.ctx, client, u, cfg.ProbeInterval)
			s.reachable.Store(err == nil)
			answered = answered || err == nil
			tick.Reset(next())
			if err != nil {
				if s.ctx.Err() != nil {
					return
				}
				healthy = false
				urlIdx++
				s.t.lg.Debug("peer probe failed", "peer", fmt.Sprintf("%x", s.to), "error", err)
				continue
			}
			healthy = true
			if srtt == 0 {
				srtt = rtt
			}
			srtt = time.Duration(0.875*float64(srtt) + 0.125*float64(rtt))
		case <-report.C:
			h.Observe(srtt)
			next := cfg.ProbeRetryInterval
			if healthy {
				next = cfg.ProbeReportInterval
			}
			report.Reset(next)
		}
	}
}

// probeOnce times one probe of the member at peer URL u.
func probeOnce(ctx context.Context, c *http.Client, u string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(u, "/")+ProbePath, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("peer: probe of %s: status %s", u, resp.Status)
	}
	var a probeAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || !a.OK {
		return 0, fmt.Errorf("peer: probe of %s: bad answer (%v)", u, err)
	}
	return time.Since(start), nil
}
