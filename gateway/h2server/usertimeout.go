package h2server

import (
	"net"
	"syscall"
	"time"
)

// SetUserTimeout sets TCP_USER_TIMEOUT to d on the TCP socket under nc, as
// grpc-go does on a server connection with keep-alive: data the peer has
// not acknowledged for d ends the connection, so a peer that vanished while
// the server was sending is noticed within the keep-alive timeout too (the
// PINGs alone only notice it once the send queue drains). It looks under
// the sniffing wrapper and anything with a NetConn method (TLS, h2conn);
// connections that are not TCP underneath (tests' pipes) are left alone.
func SetUserTimeout(nc net.Conn, d time.Duration) error {
	for {
		switch c := nc.(type) {
		case *prefixConn:
			nc = c.Conn
		case interface{ NetConn() net.Conn }: // *tls.Conn and wrappers of it
			nc = c.NetConn()
		case syscall.Conn:
			return setSocketUserTimeout(c, d)
		default:
			return nil
		}
	}
}
