// Package h2server is a small cleartext HTTP/2 server (prior knowledge,
// "h2c") for an http.Handler, built for gRPC unary calls and streams.
//
// It exists because Go's net/http HTTP/2 server spends most of a small RPC's
// CPU on its own machinery: a serve-loop goroutine per connection that every
// frame is handed to through channels, a goroutine per response HEADERS
// frame, and a write and wake-up per frame. Here:
//
//   - one goroutine per connection reads and dispatches frames (the one that
//     called ServeConn), one goroutine per stream runs the handler, and one
//     flusher goroutine per connection writes to the socket;
//   - the handler goroutine encodes its own HEADERS, DATA and trailers into
//     the connection's write buffer under a mutex, so a unary response is a
//     single append, and the flusher writes everything appended while it was
//     busy in one system call (group commit, as gateway/h2conn does for
//     net/http);
//   - a request's context is the stream itself (no context.WithCancel chain),
//     cancelled when the peer resets the stream, the connection is lost, or
//     the handler returns.
//
// Frames are parsed by golang.org/x/net/http2's Framer and header blocks
// (with CONTINUATION) decoded by its hpack package; the connection state
// machine (SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, flow control
// both ways, concurrency limit) is this package's, and so is grpc-go's
// keep-alive (Config.KeepAlive: server pings, with one timer goroutine per
// connection that checks when the socket last delivered bytes, and the
// ping-strike policy, checked by the reader).
//
// Invariants:
//   - The HPACK encoder's state and the order of header blocks on the wire
//     agree: a header block is encoded and appended to the write buffer in
//     one critical section of conn.wmu.
//   - DATA is only appended within both the stream's and the connection's
//     send window; the receive windows the peer sees are only re-opened for
//     bytes the handler consumed (or that were discarded).
//   - ServeConn returns only after every handler goroutine it started has
//     returned and the flusher has stopped.
//   - A malformed frame or preface is a connection (or stream) error: the
//     peer gets GOAWAY (or RST_STREAM) and nothing panics.
package h2server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

const (
	// DefaultMaxReadFrameSize is the largest frame payload the server
	// accepts (advertised in SETTINGS_MAX_FRAME_SIZE).
	DefaultMaxReadFrameSize = 16 << 10
	// DefaultStreamWindow is each stream's receive window: a whole
	// typical write request fits without a WINDOW_UPDATE round trip.
	DefaultStreamWindow = 1 << 20
	// DefaultConnWindow is the connection's receive window.
	DefaultConnWindow = 4 << 20
	// DefaultMaxHeaderListSize bounds a request's decoded header block.
	DefaultMaxHeaderListSize = 1 << 20
	// DefaultMaxPending bounds the bytes handlers may queue for the socket
	// before their writes block.
	DefaultMaxPending = 1 << 20
	// DefaultCloseFlushTimeout bounds the final flush to a peer that does
	// not read.
	DefaultCloseFlushTimeout = time.Second
	// DefaultKeepAliveTimeout is KeepAlive.Timeout's default, grpc-go's.
	DefaultKeepAliveTimeout = 20 * time.Second

	// prefaceTimeout bounds how long a connection may take to send the
	// client preface.
	prefaceTimeout = 10 * time.Second
)

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("h2server: invalid config")

// ErrServerClosed is returned by ServeConn after Shutdown or Close.
var ErrServerClosed = errors.New("h2server: server closed")

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// MaxConcurrentStreams is advertised to peers; streams beyond it are
	// refused (RST_STREAM REFUSED_STREAM). Zero means unlimited (2^32-1).
	MaxConcurrentStreams uint32
	// MaxReadFrameSize is SETTINGS_MAX_FRAME_SIZE (16 KiB to 16 MiB).
	MaxReadFrameSize uint32
	// StreamWindow and ConnWindow are the receive flow-control windows.
	StreamWindow int32
	ConnWindow   int32
	// MaxHeaderListSize bounds a request's header block.
	MaxHeaderListSize uint32
	// MaxPending bounds queued, unwritten response bytes per connection.
	MaxPending int
	// CloseFlushTimeout bounds the last write when a connection closes.
	CloseFlushTimeout time.Duration
	// KeepAlive is the server's pings and its policy for the peer's pings
	// (grpc-go's keepalive.ServerParameters and EnforcementPolicy); the
	// zero value sends no pings and answers every ping.
	KeepAlive KeepAlive
	// Clock is the keep-alive's time source; nil is the real clock
	// (tests inject a manual one).
	Clock Clock
	// Logger receives handler panics and connection errors; nil means
	// slog.Default().
	Logger *slog.Logger
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = 1<<32 - 1
	}
	if c.MaxReadFrameSize == 0 {
		c.MaxReadFrameSize = DefaultMaxReadFrameSize
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = DefaultConnWindow
	}
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = DefaultMaxHeaderListSize
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.CloseFlushTimeout == 0 {
		c.CloseFlushTimeout = DefaultCloseFlushTimeout
	}
	if c.KeepAlive.Time > 0 && c.KeepAlive.Timeout == 0 {
		c.KeepAlive.Timeout = DefaultKeepAliveTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports whether the config (after SetDefaults) is usable.
func (c Config) Validate() error {
	switch {
	case c.MaxReadFrameSize < 16<<10 || c.MaxReadFrameSize > 1<<24-1:
		return fmt.Errorf("%w: MaxReadFrameSize %d outside [16384, 16777215]", ErrInvalidConfig, c.MaxReadFrameSize)
	case c.StreamWindow < 65535 || c.ConnWindow < 65535:
		return fmt.Errorf("%w: windows must be at least 65535 bytes", ErrInvalidConfig)
	case c.MaxPending <= 0:
		return fmt.Errorf("%w: MaxPending must be positive", ErrInvalidConfig)
	case c.CloseFlushTimeout < 0:
		return fmt.Errorf("%w: CloseFlushTimeout must not be negative", ErrInvalidConfig)
	case c.KeepAlive.Time < 0 || c.KeepAlive.Timeout < 0 || c.KeepAlive.MinTime < 0:
		return fmt.Errorf("%w: KeepAlive durations must not be negative", ErrInvalidConfig)
	case c.Logger == nil:
		return fmt.Errorf("%w: Logger is nil (call SetDefaults)", ErrInvalidConfig)
	}
	return nil
}

// Server serves HTTP/2 connections with one http.Handler.
type Server struct {
	cfg     Config
	handler http.Handler

	mu           sync.Mutex
	conns        map[*conn]struct{}
	shuttingDown bool
	closed       bool
	idle         chan struct{} // closed and replaced when a conn ends
}

// New builds a Server for h. cfg is defaulted and validated.
func New(cfg Config, h http.Handler) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if h == nil {
		return nil, fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	return &Server{cfg: cfg, handler: h, conns: make(map[*conn]struct{}), idle: make(chan struct{})}, nil
}

// ServeConn serves one connection whose next bytes are the HTTP/2 client
// preface, until the peer closes it, a connection error, or Shutdown/Close.
// It closes nc and returns after every handler it started has returned. ctx
// is the parent of nothing: it only ends the connection when done.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.shuttingDown || s.closed {
		s.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.abort(errors.New("h2server: context done")) })
	err := c.serve()
	stop()
	s.mu.Lock()
	delete(s.conns, c)
	close(s.idle)
	s.idle = make(chan struct{})
	s.mu.Unlock()
	return err
}

// Shutdown stops new streams on every connection (GOAWAY), waits until the
// running ones have finished and their connections are closed, or until ctx
// is done (then it returns ctx's error and leaves the rest to Close). Later
// ServeConn calls fail with ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shuttingDown = true
	for c := range s.conns {
		c.goAway()
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n, idle := len(s.conns), s.idle
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close closes every connection at once: their streams' contexts are
// cancelled. It does not wait for ServeConn calls to return. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.abort(ErrServerClosed)
	}
	s.mu.Unlock()
	return nil
}
