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
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			// As net/http does: tell a cleartext HTTP client what is wrong.
			_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
			re.Conn.Close()
		}
		lingerClose(c.NetConn())
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

// lingerTimeout bounds lingerClose.
const lingerTimeout = 500 * time.Millisecond

// lingerClose half-closes nc after a failed handshake and reads what the
// client still sends for a moment before the caller closes it: with TLS 1.3
// a client refused for its certificate has already finished its handshake
// and is writing its first request, and closing at once would reset the
// connection before it read the alert saying why (it would report "broken
// pipe" instead of "certificate required").
func lingerClose(nc net.Conn) {
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	if nc.SetReadDeadline(time.Now().Add(lingerTimeout)) != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(nc, 1<<20))
}

// looksLikeHTTP reports whether the first bytes of a connection are those
// of a cleartext HTTP request (as net/http checks).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "PRI *":
		return true
	}
	return false
}
