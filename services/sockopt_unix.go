//go:build unix

package services

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/concord-kv/concord/services/config"
)

// listenConfig sets etcd's --socket-reuse-port (SO_REUSEPORT: several
// processes may bind the port) and --socket-reuse-address (SO_REUSEADDR:
// bind an address still in TIME_WAIT) on the listening sockets.
func listenConfig(o config.SocketOptions) net.ListenConfig {
	if !o.ReusePort && !o.ReuseAddress {
		return net.ListenConfig{}
	}
	return net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if o.ReuseAddress {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
			if serr == nil && o.ReusePort {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
}
