package h2server

import (
	"crypto/tls"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/concord-kv/concord/gateway/h2conn"
)

// SetUserTimeout reaches the TCP socket under the wrappers a connection
// comes in (the sniffing Split's prefixConn, TLS, h2conn) and sets TCP_USER_TIMEOUT
// in milliseconds; a connection with no socket is left alone.
func TestSetUserTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	userTimeout := func() int {
		t.Helper()
		rc, err := server.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil {
			t.Fatal(err)
		}
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	coalescing, err := h2conn.New(server, h2conn.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer coalescing.Close()
	for _, tc := range []struct {
		name string
		conn net.Conn
		d    time.Duration
	}{
		{"sniffed", &prefixConn{Conn: server}, 7 * time.Second},
		{"TLS over sniffed", tls.Server(&prefixConn{Conn: server}, &tls.Config{}), 3 * time.Second},
		{"plain", server, 20 * time.Second},
		{"TLS over coalescing (net/http's HTTP/2 server)", tls.Server(coalescing, &tls.Config{}), 11 * time.Second},
	} {
		if err := SetUserTimeout(tc.conn, tc.d); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := userTimeout(); got != int(tc.d/time.Millisecond) {
			t.Fatalf("%s: TCP_USER_TIMEOUT = %d ms, want %d", tc.name, got, tc.d/time.Millisecond)
		}
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if err := SetUserTimeout(p1, time.Second); err != nil {
		t.Fatalf("pipe: %v", err)
	}
}
