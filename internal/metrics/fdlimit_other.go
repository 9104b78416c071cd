//go:build !unix

package metrics

// fdLimit is 0 where etcd's runtime.FDLimit has no limit to read.
func fdLimit() uint64 { return 0 }
