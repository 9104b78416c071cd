//go:build unix

package metrics

import "syscall"

// fdLimit is the soft limit on open files, etcd's runtime.FDLimit (0 when
// it cannot be read, as etcd reports it).
func fdLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0
	}
	return uint64(l.Cur)
}
