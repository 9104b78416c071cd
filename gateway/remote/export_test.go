package remote

// FromWireForTest exposes fromWire to the external tests.
var FromWireForTest = fromWire
