package remote

import "time"

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
