// Package memlock keeps a process's memory in RAM: etcd's --memory-mlock.
//
// etcd locks its bbolt file, which it reads through a memory map, so that no
// read of the keyspace waits for the disk after memory pressure swapped it
// out. concord's store reads its files with pread into a block cache and
// memtables that live in the process's memory, so the equivalent is to lock
// the process: every page it has and every page it maps later, each locked
// when first touched (MCL_ONFAULT), so reserved but unused address space
// costs nothing.
//
// Locking everything a process will ever map is only safe when the kernel
// cannot refuse a later mapping: with a finite RLIMIT_MEMLOCK and without
// CAP_IPC_LOCK, the first allocation past the limit would fail inside the Go
// runtime and crash the process. Lock refuses then, before locking anything.
package memlock

import "errors"

// ErrUnsupported is returned where the platform has no mlockall.
var ErrUnsupported = errors.New("memlock: locking memory is only supported on Linux")

// ErrLimited is returned when a later allocation could exceed the locked
// memory limit.
var ErrLimited = errors.New("memlock: memory cannot be locked safely")

// Lock locks the process's current and future memory in RAM.
func Lock() error { return lock() }
