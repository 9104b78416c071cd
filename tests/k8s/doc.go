// Package k8s proves that Kubernetes' storage layer works on concord, with Kubernetes' own code:
// k8s.io/apiserver's etcd3 store (the code kube-apiserver keeps every object with) runs against a
// concord all-in-one server through a go.etcd.io/etcd/client/v3 client, and the conformance suite
// k8s.io/apiserver ships for storage.Interface (k8s.io/apiserver/pkg/storage/testing, the Run*
// functions) checks it: create, get, delete with preconditions, guaranteed update, lists with
// paging, continuation, resource version matching and compaction, consistent reads, stats, and
// watches with bookmarks, progress notifications and initial events.
//
// How: TestMain builds concord (./services/concord) and the real etcd of the version in go.mod
// (go.etcd.io/etcd/server/v3) once per run. TestStorageConformance starts each as a process on
// free loopback ports with a temporary data directory and --watch-progress-notify-interval=1s (as
// k8s's own watcher tests configure etcd), then runs the list of cases that
// k8s.io/apiserver/pkg/storage/etcd3's store_test.go and watcher_test.go run, with the same
// arguments and feature gates, as subtests: TestStorageConformance/etcd/<case> and
// TestStorageConformance/concord/<case>. etcd is the spec: every case runs on both and
// none is skipped; each passes on etcd 3.7.3 and must pass on concord.
//
// TestWatchCacheConformance runs the part of the suite that k8s's cacher_test.go runs on the watch
// cache (k8s.io/apiserver/pkg/storage/cacher, what kube-apiserver serves watches and most lists
// from) and that needs none of its unexported fields, on a cache over the etcd3 store: a
// long-running watch, bookmarks, and consistent lists served from the cache after a watch
// progress request to the server.
//
// Each case builds its own store, client and compactor as k8s's testSetup does, but on one server
// per implementation: each store gets its own key prefix (/k8s-<n>/), so cases do not see each
// other's objects. Compactions are server-wide, so the cases that compact share a second server;
// a case that needs a server without history (the watch cache's WatchSemantics, which watches
// from revision 1) starts its own.
//
// Running: `go test -count=1 ./tests/k8s/`; one case on one server: `-run
// 'TestStorageConformance/concord/GuaranteedUpdate$' -v`.
package k8s
