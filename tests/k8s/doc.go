// Package k8s proves that Kubernetes' storage layer works on concord, with Kubernetes' own code:
// k8s.io/apiserver's etcd3 store (the code kube-apiserver keeps every object with) runs against
// concord through a go.etcd.io/etcd/client/v3 client, both an all-in-one server and the split
// topology, and the conformance suite k8s.io/apiserver ships for storage.Interface
// (k8s.io/apiserver/pkg/storage/testing, the Run* functions) checks it: create, get, delete with
// preconditions, guaranteed update, lists with paging, continuation, resource version matching
// and compaction, consistent reads, stats, and watches with bookmarks, progress notifications and
// initial events.
//
// How: TestMain builds concord (./services/concord) and the real etcd of the version in go.mod
// (go.etcd.io/etcd/server/v3) once per run. TestStorageConformance runs the list of cases that
// k8s.io/apiserver/pkg/storage/etcd3's store_test.go and watcher_test.go run, with the same
// arguments and feature gates, as subtests against three targets:
//
//   - etcd (TestStorageConformance/etcd/<case>): one etcd process on free loopback ports with a
//     temporary data directory and --watch-progress-notify-interval=1s (as k8s's own watcher
//     tests configure etcd);
//   - concord (TestStorageConformance/concord/<case>): concord's all-in-one server, started the
//     same way;
//   - split (TestStorageConformance/split/<case>): every service of compose.yaml as separate
//     concord processes (three `concord consensus` members, two `concord watchfanout`, two
//     `concord leasesvc`, two `concord gateway`), started by internal/launcher as `concord
//     cluster` starts them, with the fan-outs' progress notifications every second (through
//     CONCORD_WATCH_PROGRESS_NOTIFY_INTERVAL, so compose.yaml's commands stay as they are).
//     Kubernetes is given both gateways' client URLs, as kube-apiserver is given every etcd
//     member: clientv3 sends its calls to them in turn.
//
// etcd is the spec: every case runs on every target and none is skipped; each passes on etcd
// 3.7.3 and must pass on concord, all-in-one and split.
//
// TestWatchCacheConformance runs the part of the suite that k8s's cacher_test.go runs on the watch
// cache (k8s.io/apiserver/pkg/storage/cacher, what kube-apiserver serves watches and most lists
// from) and that needs none of its unexported fields, on a cache over the etcd3 store, against the
// same three targets: a long-running watch, bookmarks, and consistent lists served from the cache
// after a watch progress request to the server.
//
// Each case builds its own store, client and compactor as k8s's testSetup does, but on one server
// (or split topology) per target: each store gets its own key prefix (/k8s-<n>/), so cases do not
// see each other's objects. Compactions are server-wide, so the cases that compact share a second
// server; a case that needs a server without history (the watch cache's WatchSemantics, which
// watches from revision 1) starts its own. So each of the two tests starts two servers (or
// topologies) per target; a split topology is up in about 2 s.
//
// Running: `go test -count=1 ./tests/k8s/` (about three minutes on two cores, the split target a
// third of it); one case on one target: `-run
// 'TestStorageConformance/split/GuaranteedUpdate$' -v`.
package k8s
