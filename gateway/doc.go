// Package gateway serves etcd's v3 API (KV, Watch, Lease, Cluster,
// Maintenance, Auth, plus v3lock and v3election) over connect-go, so the
// same handlers answer gRPC (clientv3, etcdctl), gRPC-Web and the Connect
// protocol (JSON or binary over plain HTTP), together with etcd's /health,
// /livez, /readyz and /version endpoints. For browsers, which cannot open
// etcd's bidirectional Watch stream, concord.v1.WatchService serves one
// watch per server-streaming call (browserwatch.go).
//
// The gateway is stateless: it validates requests exactly as etcd's v3rpc
// layer does, hands them to a Backend (consensus.Node in production) and
// translates the backend's sentinel errors into etcd's rpctypes errors, so
// clientv3 maps them to its typed errors.
//
// Invariants:
//   - Every method of etcd's services is routed. Methods concord does not
//     implement (yet) answer code Unimplemented, never HTTP 404; unknown
//     services and methods get grpc-go's words, as from etcd.
//   - A gRPC request message that does not decode or is over the size
//     limit gets grpc-go's answer (Internal "grpc: error unmarshalling
//     request: ...", ResourceExhausted "grpc: received message larger than
//     max ..."), not connect's, rewritten in one place (errors.go).
//   - A request that fails validation never reaches the backend.
//   - Every error leaving a handler is a *connect.Error whose code and
//     message are those etcd would send (see errors.go, the single
//     translation table).
//   - The request path allocates nothing beyond what connect and the
//     backend need: no reflection, no goroutines per call.
package gateway
