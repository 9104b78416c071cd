package gateway_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/h2test"
)

// acceptRecorder is a listener that keeps the server side of every
// connection it accepts.
type acceptRecorder struct {
	net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func (l *acceptRecorder) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		l.mu.Lock()
		l.conns = append(l.conns, tc)
		l.mu.Unlock()
	}
	return c, err
}

func (l *acceptRecorder) userTimeouts(t *testing.T) []int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, c := range l.conns {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
			t.Fatalf("getsockopt: %v %v", err, gerr)
		}
		out = append(out, v)
	}
	return out
}

// Both HTTP/2 servers set the keep-alive timeout as the socket's
// TCP_USER_TIMEOUT, as grpc-go does for etcd.
func TestKeepAliveSetsTCPUserTimeout(t *testing.T) {
	for _, netHTTP2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "lean", true: "nethttp2"}[netHTTP2], func(t *testing.T) {
			g, err := gateway.New(gateway.Config{NetHTTP2: netHTTP2, KeepAlive: gateway.KeepAlive{Interval: time.Hour, Timeout: 7 * time.Second}}, newFake())
			if err != nil {
				t.Fatal(err)
			}
			rec := &acceptRecorder{}
			addr := serveOn(t, g, func(ctx context.Context, ln net.Listener) error {
				rec.Listener = ln // before Serve's goroutines exist
				return g.Serve(ctx, rec)
			})
			_, fr := h2test.Dial(t, addr, 20*time.Second)
			// The server's SETTINGS arrive once it took the connection.
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := f.(*http2.SettingsFrame); ok {
					break
				}
			}
			if got := rec.userTimeouts(t); len(got) != 1 || got[0] != 7000 {
				t.Fatalf("TCP_USER_TIMEOUT of the accepted connections: %v ms, want [7000]", got)
			}
		})
	}
}
