// Package bench measures any etcd-v3-compatible endpoint (concord or etcd)
// with the workloads of etcd's own benchmark tool (go.etcd.io/etcd/v3/tools/benchmark):
// put, range, txn-put, txn-mixed, watch, watch-latency and lease-keepalive,
// plus a Kubernetes-like mixed workload (paginated lists, optimistic updates
// with a txn on mod_revision, watches).
//
// Every workload talks to the server through the unmodified clientv3, so the
// figures are what a real client sees. Like etcd's tool, --conns gRPC
// connections are shared round-robin by --clients concurrent clients, each
// running one request at a time (a closed loop, optionally rate limited).
//
// Invariants:
//   - Latency is measured around one client call, from just before the call to
//     just after it returns; failed calls are counted as errors and never enter
//     the latency histograms (as in etcd's report package).
//   - Throughput is successful operations divided by the wall time of the timed
//     phase; set-up (preloading keys, granting leases, creating watches) is not
//     part of it unless the operation itself is what is measured.
//   - A server that does not implement an RPC a workload needs (gRPC code
//     Unimplemented) makes the workload fail with ErrUnsupported instead of
//     reporting figures for requests that never ran.
//   - Every goroutine a workload starts is stopped and waited for before Run
//     returns, and every client it dials is closed.
//
// The compare runner that sets etcd and concord side by side lives in
// bench/compare.
package bench
