// Package e2e holds concord's end-to-end tests. They build the real etcd server, the real etcdctl
// and concord from this module (TestMain, once per run), start them as processes on loopback and
// drive them with the real etcdctl and go.etcd.io/etcd/client/v3. etcd v3.7.3 is the spec: every
// scenario runs against both servers, and concord must produce what etcd produces.
//
// How the comparison works: an etcdctl scenario is a list of steps; running it against a server
// gives a transcript (command, stdout, stderr, exit status) that is normalized so that values
// which legitimately differ between two servers (cluster and member IDs, raft terms and indexes,
// database sizes, hashes, timings, ports) become placeholders. Placeholders are numbered in order
// of appearance, so equalities still count: a member_id that equals the leader field, or a hash
// that survives a restart, must do so on both servers. Revisions, versions, counts, keys, values,
// error messages, gRPC codes and exit statuses are compared exactly. The etcd transcript is kept
// in testdata/<scenario>.golden: the "etcd" subtest proves the golden file is what etcd does
// (rewrite it with -update), and the "concord" subtest compares concord against it.
//
// Running: `go test -count=1 ./tests/e2e/` (also part of `go test ./...`). One scenario against
// one server: `-run 'TestCtlTxn/concord' -v`. Rewrite the golden files from etcd: `-run
// 'TestCtl.*/etcd' -update`. E2E_CONCORD_BIN=/path tests a prebuilt binary as "concord" instead
// of building ./services/concord; pointing it at an etcd binary must pass every test, which
// checks the harness itself.
//
// Invariants the harness keeps: every process a test starts is killed by t.Cleanup; ports come
// from the kernel (":0") and a start that loses the port race is retried; readiness is a poll of
// GET /health under a deadline, and no test sleeps for correctness.
package e2e
