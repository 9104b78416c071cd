// Package auth is concord's replicated authentication and authorization
// state: users (bcrypt password hashes), roles with key permissions, whether
// auth is enabled, and the auth revision, with etcd's semantics
// (server/auth/store.go).
//
// Invariants:
//   - A State is immutable once built: every change returns a new State, so
//     the consensus apply loop can publish one to concurrent readers (the
//     gateway's permission checks) with a single pointer store.
//   - A State changes only through Apply, called by the consensus apply loop
//     with committed raft entries, so every member computes the same State
//     from the same log; it is persisted (Marshal) in the same storage batch
//     as the entry's other effects.
//   - The auth revision starts at 1 (etcd's NewAuthStore commits it) and
//     increases by one with every change that can alter a permission
//     decision, exactly where etcd's commitRevision does.
//   - Errors are this package's sentinels, which carry etcd's auth package
//     texts; the gateway's error table turns them into etcd's rpctypes.
package auth
