package h2server

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// Split serves one listener with two servers: connections that start with
// the HTTP/2 client preface go to a Server, every other connection (HTTP/1.1,
// HTTP/1.1 upgrades, TLS) to the listener returned by HTTP1, which a
// net/http Server serves. The first bytes are read on a goroutine per
// connection, so a silent client holds up no one else.
type Split struct {
	ln  net.Listener
	srv *Server
	h1  *chanListener

	mu       sync.Mutex
	closed   bool
	sniffing map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// NewSplit splits ln between srv and HTTP1's listener.
func NewSplit(ln net.Listener, srv *Server) *Split {
	return &Split{
		ln:       ln,
		srv:      srv,
		h1:       &chanListener{addr: ln.Addr(), conns: make(chan net.Conn), done: make(chan struct{})},
		sniffing: make(map[net.Conn]struct{}),
	}
}

// HTTP1 is the listener of the connections that are not HTTP/2 prior
// knowledge. Closing it does not close the underlying listener.
func (s *Split) HTTP1() net.Listener { return s.h1 }

// Serve accepts connections until the listener fails or Close. HTTP/2
// connections are served on their sniffing goroutine; ctx done aborts them.
// It returns nil after Close.
func (s *Split) Serve(ctx context.Context) error {
	var delay time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			// Like net/http: transient accept failures (EMFILE, ...)
			// are retried with a growing pause rather than ending Serve.
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return nil
		}
		s.sniffing[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(ctx, nc)
	}
}

func (s *Split) handle(ctx context.Context, nc net.Conn) {
	defer s.wg.Done()
	var buf [len(clientPreface)]byte
	n := 0
	h2 := true
	for n < len(buf) {
		m, err := nc.Read(buf[n:])
		if m > 0 && string(buf[n:n+m]) != clientPreface[n:n+m] {
			n += m
			h2 = false
			break
		}
		n += m
		if err != nil {
			h2 = false
			break
		}
	}
	s.mu.Lock()
	delete(s.sniffing, nc)
	closed := s.closed
	s.mu.Unlock()
	pc := &prefixConn{Conn: nc, prefix: buf[:n:n]}
	if closed {
		nc.Close()
		return
	}
	if h2 {
		_ = s.srv.ServeConn(ctx, pc)
		return
	}
	select {
	case s.h1.conns <- pc:
	case <-s.h1.done:
		nc.Close()
	}
}

// Close closes the listener and the connections still being sniffed, and
// waits for the HTTP/2 connections' ServeConn calls, which end once their
// server is shut down or closed. Idempotent.
func (s *Split) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	for nc := range s.sniffing {
		nc.Close()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	s.h1.Close()
	s.wg.Wait()
	return err
}

// prefixConn replays the sniffed bytes before reading from the socket.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http half-close HTTP/1 connections as it does TCP.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// chanListener hands connections from Split to a net/http Server.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
