package remote

// FromWireForTest exposes fromWire to the external tests.
var FromWireForTest = fromWire

// PreferredForTest is the endpoint c sends its calls to first.
func PreferredForTest(c *Consensus) string { return c.pref.Load().ep.URL }

// ReachableForTest exposes reachable.
var ReachableForTest = reachable
