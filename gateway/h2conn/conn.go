// Package h2conn wraps the server side of client connections so that the
// HTTP/2 server's many small reads and writes reach the socket in few
// system calls.
//
// Go's HTTP/2 server writes one frame at a time and flushes its 4 KiB
// buffer to the connection whenever its write queue runs empty, which under
// load is after nearly every response: one write(2) per response, each
// waking the peer. It reads every frame with two unbuffered reads (header,
// then payload). A Conn changes both without touching the server:
//
//   - Write copies the bytes into a pending buffer and returns; one flusher
//     goroutine per connection writes everything pending in one system call.
//     While that call is in progress new writes accumulate, so the busier
//     the connection, the more responses share a write (group commit for
//     the socket). The flusher starts writing as soon as it is scheduled:
//     there is no timer and nothing waits for more data, so a response is
//     never delayed beyond the write in progress before it.
//   - A large write (at least DirectWrite bytes: bulk DATA frames) is not
//     copied: Write waits until the bytes before it are written and writes
//     it itself, as an unwrapped connection would.
//   - Read fills a read buffer with whatever the socket has, so a frame
//     header and its payload, and the frames queued behind them, cost one
//     read(2).
//
// Invariants:
//   - Bytes reach the underlying connection exactly once, in Write order;
//     a Write that returned nil has been accepted and will be written unless
//     the connection fails or Close's flush deadline passes.
//   - A write error is sticky: every later Write, Flush and CloseWrite
//     returns it, and pending bytes are dropped.
//   - At most MaxPending bytes wait to be written; a Write beyond that
//     blocks until the flusher catches up (back-pressure, as a socket
//     buffer would exert).
//   - Close writes what is pending (for at most CloseFlushTimeout), stops
//     and waits for the flusher, and closes the underlying connection. It
//     is idempotent; Read, Write and Flush after Close fail with
//     net.ErrClosed.
package h2conn

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

const (
	// DefaultMaxPending is Config.MaxPending's default: enough for many
	// small responses per write, small next to a socket buffer.
	DefaultMaxPending = 64 << 10
	// DefaultDirectWrite is Config.DirectWrite's default: larger than the
	// HTTP/2 server's 4 KiB write buffer, so only writes the server passes
	// through unbuffered (parts of large DATA frames) bypass the copy.
	DefaultDirectWrite = 8 << 10
	// DefaultReadBuffer is Config.ReadBuffer's default: a few frames.
	DefaultReadBuffer = 16 << 10
	// DefaultCloseFlushTimeout is Config.CloseFlushTimeout's default.
	DefaultCloseFlushTimeout = time.Second
	// retainBuffer is the largest write buffer kept for reuse; larger ones
	// (after a burst) are dropped.
	retainBuffer = 32 << 10
)

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("h2conn: invalid config")

// Config configures a Conn. Zero values mean the defaults.
type Config struct {
	// MaxPending bounds the bytes accepted by Write but not yet written.
	MaxPending int
	// DirectWrite is the size from which Write writes through instead of
	// copying; negative means never.
	DirectWrite int
	// ReadBuffer is the read buffer's size; negative disables read
	// buffering.
	ReadBuffer int
	// CloseFlushTimeout bounds how long Close tries to write pending bytes
	// to a peer that does not read.
	CloseFlushTimeout time.Duration
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.DirectWrite == 0 {
		c.DirectWrite = DefaultDirectWrite
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = DefaultReadBuffer
	}
	if c.CloseFlushTimeout == 0 {
		c.CloseFlushTimeout = DefaultCloseFlushTimeout
	}
}

// Validate reports whether the config (after SetDefaults) is usable.
func (c Config) Validate() error {
	switch {
	case c.MaxPending <= 0:
		return fmt.Errorf("%w: MaxPending must be positive, got %d", ErrInvalidConfig, c.MaxPending)
	case c.CloseFlushTimeout < 0:
		return fmt.Errorf("%w: CloseFlushTimeout must not be negative", ErrInvalidConfig)
	}
	return nil
}

// Conn is a net.Conn with coalesced writes and buffered reads. It is safe
// for concurrent use like any net.Conn.
type Conn struct {
	net.Conn
	cfg Config

	// Read side; rmu serializes readers.
	rmu        sync.Mutex
	rbuf       []byte
	rpos, rend int

	// Write side.
	mu       sync.Mutex
	cond     sync.Cond // broadcast when pending shrinks or the flusher idles
	pending  []byte    // accepted, not yet handed to the flusher
	spare    []byte    // the flusher's previous buffer, reused
	flushing bool      // the flusher or a direct write owns the socket, or the flusher was kicked
	direct   bool      // a direct write is in progress
	werr     error     // sticky write error
	closed   bool

	kick chan struct{} // wakes the flusher; capacity 1
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the flusher has exited

	closeOnce sync.Once
	closeErr  error
}

// New wraps c. cfg is defaulted; an invalid cfg is an error.
func New(c net.Conn, cfg Config) (*Conn, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bc := &Conn{
		Conn: c,
		cfg:  cfg,
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	bc.cond.L = &bc.mu
	go bc.flusher()
	return bc, nil
}

// Read reads through the read buffer.
// NetConn returns the wrapped connection, as tls.Conn.NetConn does, for
// socket options (TCP_USER_TIMEOUT) that are set under the wrapper.
func (c *Conn) NetConn() net.Conn { return c.Conn }

func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rpos < c.rend {
		n := copy(p, c.rbuf[c.rpos:c.rend])
		c.rpos += n
		return n, nil
	}
	if c.cfg.ReadBuffer < 0 || len(p) >= c.cfg.ReadBuffer {
		return c.Conn.Read(p)
	}
	if c.rbuf == nil {
		c.rbuf = make([]byte, c.cfg.ReadBuffer)
	}
	n, err := c.Conn.Read(c.rbuf)
	if n <= 0 {
		return 0, err
	}
	// An error that came with data is not lost: a net.Conn reports it
	// again on the next read (EOF, a reset, a passed deadline); holding
	// it here could report a deadline that was extended meanwhile.
	m := copy(p, c.rbuf[:n])
	c.rpos, c.rend = m, n
	return m, nil
}

// Write accepts p for the flusher. It blocks only while MaxPending bytes
// are already waiting, or, for a direct write, until the bytes before it are
// written.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.cfg.DirectWrite > 0 && len(p) >= c.cfg.DirectWrite {
		return c.writeDirect(p)
	}
	c.mu.Lock()
	for {
		if err := c.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
		// A write larger than MaxPending is taken whole into an empty
		// buffer rather than split.
		if len(c.pending) == 0 || len(c.pending)+len(p) <= c.cfg.MaxPending {
			break
		}
		c.cond.Wait()
	}
	c.pending = append(c.pending, p...)
	wake := !c.flushing
	c.flushing = true
	c.mu.Unlock()
	if wake {
		select {
		case c.kick <- struct{}{}:
		default: // already kicked
		}
	}
	return len(p), nil
}

// writeDirect writes p on the caller's goroutine once everything accepted
// before it has been written. Writes accepted meanwhile queue behind it.
func (c *Conn) writeDirect(p []byte) (int, error) {
	c.mu.Lock()
	for c.flushing && c.werr == nil && !c.closed {
		c.cond.Wait()
	}
	if err := c.writeErrLocked(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	c.flushing, c.direct = true, true
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	if err != nil {
		c.werr = err
		c.pending = nil
	}
	c.direct = false
	wake := len(c.pending) > 0 && c.werr == nil
	c.flushing = wake
	c.cond.Broadcast()
	c.mu.Unlock()
	if wake {
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return n, err
}

func (c *Conn) writeErrLocked() error {
	switch {
	case c.werr != nil:
		return c.werr
	case c.closed:
		return net.ErrClosed
	}
	return nil
}

// Flush waits until every byte accepted so far has been written, and
// returns the write error if there was one.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.flushing && c.werr == nil {
		c.cond.Wait()
	}
	if c.werr != nil {
		return c.werr
	}
	if c.closed {
		return net.ErrClosed
	}
	return nil
}

// CloseWrite flushes, then shuts down the writing side of the underlying
// connection when it supports that (TCP does). net/http calls it before
// closing an HTTP/1 connection.
func (c *Conn) CloseWrite() error {
	if err := c.Flush(); err != nil {
		return err
	}
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close flushes what is pending (for at most CloseFlushTimeout), stops the
// flusher and closes the underlying connection. Idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.cond.Broadcast() // writers blocked on back-pressure fail
		c.mu.Unlock()
		// Bound the final flush: a peer that stopped reading must not
		// hold Close forever.
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.cfg.CloseFlushTimeout))
		close(c.stop)
		<-c.done
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}

// flusher writes pending bytes until Close. It exits after writing what
// was pending when Close was called.
func (c *Conn) flusher() {
	defer close(c.done)
	for {
		select {
		case <-c.kick:
		case <-c.stop:
			c.drain()
			return
		}
		c.drain()
	}
}

// drain writes batches until nothing is pending.
func (c *Conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.direct {
		// Only Close's final drain can meet a direct write in progress;
		// what was queued behind it must follow it.
		c.cond.Wait()
	}
	for len(c.pending) > 0 && c.werr == nil {
		batch := c.pending
		c.pending = c.spare[:0]
		c.spare = nil
		c.cond.Broadcast() // room for blocked writers
		c.mu.Unlock()
		_, err := c.Conn.Write(batch)
		c.mu.Lock()
		if err != nil {
			c.werr = err
			c.pending = nil
			break
		}
		if cap(batch) <= retainBuffer || len(c.pending) > 0 {
			c.spare = batch[:0]
		}
	}
	if len(c.pending) == 0 && cap(c.pending) > retainBuffer {
		c.pending = nil
	}
	if cap(c.spare) > retainBuffer {
		c.spare = nil
	}
	c.flushing = false
	c.cond.Broadcast()
}

// Listener wraps every accepted connection in a Conn.
type Listener struct {
	net.Listener
	cfg Config
}

// NewListener wraps ln. cfg is defaulted; an invalid cfg is an error.
func NewListener(ln net.Listener, cfg Config) (*Listener, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Listener{Listener: ln, cfg: cfg}, nil
}

// Accept returns the next connection, wrapped.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return New(c, l.cfg)
}
