package remote

import (
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// FromWireForTest exposes fromWire to the external tests.
var FromWireForTest = fromWire

// PreferredForTest is the endpoint c sends its calls to first.
func PreferredForTest(c *Consensus) string { return c.pref.Load().ep.URL }

// ReachableForTest exposes reachable.
var ReachableForTest = reachable

// SetLeaseFailoverForTest sets how long a keep-alive is held while no lease
// service is active and how often it is re-sent; the returned func restores
// the defaults.
func SetLeaseFailoverForTest(wait, probe time.Duration) (restore func()) {
	w, p := leaseFailoverWait, leaseProbeInterval
	leaseFailoverWait, leaseProbeInterval = wait, probe
	return func() { leaseFailoverWait, leaseProbeInterval = w, p }
}

// EndpointsForTest lists the URLs of the members c knows, in order.
func EndpointsForTest(c *Consensus) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.ep.URL
	}
	return out
}

// SetMemberSyncIntervalForTest sets how often c re-learns the members; the
// returned func restores the default. Call it before NewConsensus.
func SetMemberSyncIntervalForTest(d time.Duration) (restore func()) {
	old := memberSyncInterval
	memberSyncInterval = d
	return func() { memberSyncInterval = old }
}

// UnmarshalKeepingKVsForTest exposes the relay codec's decoding.
var UnmarshalKeepingKVsForTest = unmarshalKeepingKVs

// SeenForTest records h as an answer's header in c.
func SeenForTest(c *Consensus, h *pb.ResponseHeader) { c.seen(h) }
