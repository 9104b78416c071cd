//go:build !unix

package services

import (
	"errors"
	"net"
	"syscall"

	"github.com/concord-kv/concord/services/config"
)

// listenConfig refuses etcd's socket options where concord cannot set them.
func listenConfig(o config.SocketOptions) net.ListenConfig {
	if !o.ReusePort && !o.ReuseAddress {
		return net.ListenConfig{}
	}
	return net.ListenConfig{Control: func(string, string, syscall.RawConn) error {
		return errors.New("--socket-reuse-port and --socket-reuse-address need a unix system")
	}}
}
