//go:build !linux

package h2server

import (
	"syscall"
	"time"
)

// setSocketUserTimeout does nothing where TCP_USER_TIMEOUT does not exist,
// as in grpc-go.
func setSocketUserTimeout(syscall.Conn, time.Duration) error { return nil }
