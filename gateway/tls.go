package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"
)

// tlsHandshakeTimeout bounds a client's TLS handshake, so a connection that
// never completes one does not hold a goroutine and a socket forever.
const tlsHandshakeTimeout = 10 * time.Second

// serverTLS returns a copy of c that offers ALPN h2 and http/1.1 (gRPC
// clients refuse a server that does not negotiate h2), keeping any protocols
// c already lists first.
func serverTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	for _, p := range []string{"h2", "http/1.1"} {
		if !slices.Contains(c.NextProtos, p) {
			c.NextProtos = append(c.NextProtos, p)
		}
	}
	return c
}

// tlsListener wraps accepted connections in TLS; the handshake runs on the
// connection's first Read (tlsConn), not in Accept.
type tlsListener struct {
	net.Listener
	cfg *tls.Config
	log *slog.Logger
}

func newTLSListener(ln net.Listener, cfg *tls.Config, log *slog.Logger) net.Listener {
	return &tlsListener{Listener: ln, cfg: cfg, log: log}
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &tlsConn{Conn: tls.Server(c, l.cfg), log: l.log}, nil
}

// tlsConn is a server-side TLS connection that completes its handshake,
// with a deadline, on its first Read, and logs a failed one (as etcd logs
// "rejected connection"): h2server.Split's first Read is that of its
// sniffing goroutine, and every later Read happens after it.
type tlsConn struct {
	*tls.Conn
	log  *slog.Logger
	done bool
}

func (c *tlsConn) Read(p []byte) (int, error) {
	if !c.done {
		c.done = true
		if err := c.handshake(); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

func (c *tlsConn) handshake() error {
	ctx, cancel := context.WithTimeout(context.Background(), tlsHandshakeTimeout)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		lvl := slog.LevelWarn
		if errors.Is(err, io.EOF) {
			// A TCP probe (load balancer, kubelet) connects and closes.
			lvl = slog.LevelDebug
		}
		c.log.Log(ctx, lvl, "rejected connection", "remote-addr", c.RemoteAddr().String(), "error", err)
		return err
	}
	return nil
}
