// Package recipes serves etcd's v3lock (Lock, Unlock) and v3election
// (Campaign, Proclaim, Leader, Observe, Resign) services inside concord.
//
// etcd implements both services as thin wrappers over clientv3/concurrency's
// Mutex and Election, run by an in-process client against its own server,
// with the lease the caller passes. This package performs the same requests
// in the same order against the backend's KV interface and an in-process
// watch on the gateway's Watcher, without going through the network.
//
// Invariants:
//   - Keys, values, leases and compares are exactly those clientv3/concurrency
//     writes: the key of a waiter is "<name>/<lease ID in lower-case hex>",
//     attached to that lease; the holder (leader) is the key of the prefix
//     with the lowest create revision; a waiter waits, one key at a time, for
//     the deletion of the key with the highest create revision below its own.
//     So a Mutex or Election of clientv3/concurrency and a caller of these
//     services exclude each other on the same name.
//   - A call without a lease (0) is given a fresh lease of SessionTTL seconds
//     (60, concurrency's default session TTL) that nobody keeps alive, as
//     etcd's orphaned server-side session does.
//   - A Lock whose wait fails (the caller gave up, or the backend failed)
//     deletes the caller's key; a Campaign does so only when the caller gave
//     up, and otherwise leaves the key to its lease. Both are etcd's
//     behaviour; the deletion runs under the service's lifetime, not the
//     caller's ended context.
//   - Errors are etcd's. etcd's handlers see backend errors through their
//     in-process clientv3, which turns every error etcd knows into a plain
//     error, and gRPC sends a plain error with code Unknown: so a backend
//     error reaches the client with etcd's text (gateway.TranslateError's)
//     and code Unknown, e.g. "etcdserver: requested lease not found". The
//     recipes' own errors ("election: not leader", "election: no leader",
//     "mutex: session is expired", `"leader" field must be provided`) are
//     Unknown with their text too; a caller's cancellation or deadline keeps
//     Canceled / DeadlineExceeded.
//   - Writes the recipes build are checked against MaxRequestBytes ("etcdserver:
//     request is too large"), as etcd checks the proposals its in-process
//     client makes; the lock/election request itself is checked by the
//     gateway.
//   - Every goroutine a call starts (one per in-process watch) is stopped
//     and waited for before the call returns; Close ends every call in flight
//     and waits for them.
package recipes
