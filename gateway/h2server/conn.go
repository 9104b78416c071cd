package h2server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

var (
	errConnClosed  = errors.New("h2server: connection closed")
	errStreamReset = errors.New("h2server: stream reset")
	errBadPreface  = errors.New("h2server: bad client preface")
)

// retainBuffer is the largest write buffer kept across flushes.
const retainBuffer = 256 << 10

// conn is one HTTP/2 connection. The goroutine in serve owns the framer and
// the read side; handlers and the reader share the write side under wmu.
type conn struct {
	s   *Server
	cfg *Config
	nc  net.Conn
	fr  *http2.Framer
	// remoteAddr is computed once for every request's RemoteAddr.
	remoteAddr string
	// tls is the connection's TLS state, nil in cleartext.
	tls *tls.ConnectionState

	// Stream table. lastID is written by the reader only, read by goAway.
	smu       sync.Mutex
	streams   map[uint32]*stream
	lastID    uint32
	running   atomic.Int32 // handler goroutines not yet returned; changed under smu, read by the flusher without it
	goingAway bool
	dead      bool
	handlers  sync.WaitGroup

	// Write side and flow control, all under wmu.
	wmu   sync.Mutex
	wcond sync.Cond // broadcast on window growth, buffer drain, errors
	wbuf  []byte    // frames not yet handed to the flusher
	spare []byte
	// Large DATA payloads are queued by reference instead of being copied
	// into wbuf (copying and growing wbuf was a quarter of the CPU of a
	// 2.6 MB range response): segs holds, in order, the pieces that come
	// before wbuf[segMark:], alternating wbuf slices and handler memory.
	// The handler waits until the flusher has written them (written
	// reaches its handoff number) before its Write returns.
	segs      [][]byte
	spareSegs [][]byte
	segMark   int
	segBytes  int    // handler bytes in segs, counted against MaxPending
	handoff   uint64 // pieces handed off so far, as a count of Writes
	written   uint64 // handoff count the flusher has finished writing
	writing   bool   // the flusher is writing a batch
	// openData is the offset in wbuf of the last frame queued when that
	// frame is a copied DATA frame of stream openDataStream and nothing
	// was queued after it (openDataEnd == len(wbuf)); -1 otherwise. A
	// stream's next DATA is then appended to that frame instead of
	// starting one: a client pays per frame (a watch stream sends many
	// small messages back to back), and the frame may still grow up to the
	// peer's SETTINGS_MAX_FRAME_SIZE.
	openData       int
	openDataEnd    int
	openDataStream uint32
	// vw writes a batch with writev when the socket supports it; only
	// then are payloads handed off (elsewhere each piece would be its own
	// write or TLS record).
	vw       io.Writer
	vectored bool
	flushing bool // the flusher was kicked or is writing
	werr     error
	henc     *hpack.Encoder
	hbuf     bytes.Buffer
	// Send side: the peer's windows and limits.
	sendWindow   int64
	peerInitWin  int32
	peerMaxFrame int
	// Receive side: what the peer may still send, and what the handlers
	// consumed but the peer has not been told about yet.
	inflow      int32
	connUnacked int32

	// sentStreamFrames (under wmu) records that HEADERS or DATA were
	// queued since the peer's last PING, which clears its ping strikes.
	sentStreamFrames bool

	// Keep-alive (KeepAlive.Time): when the socket last delivered bytes,
	// in nanoseconds since epoch on the config's clock; kaDone is closed
	// when the keep-alive goroutine returns (nil: none was started).
	epoch    time.Time
	lastRead atomic.Int64
	kaDone   chan struct{}
	// Ping policy (KeepAlive.MinTime), owned by the reader.
	lastPingAt  int64
	pinged      bool
	pingStrikes int

	kick      chan struct{}
	closing   chan struct{}
	flushDone chan struct{}
	abortOnce sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		s:            s,
		cfg:          &s.cfg,
		nc:           nc,
		streams:      make(map[uint32]*stream),
		sendWindow:   65535,
		peerInitWin:  65535,
		peerMaxFrame: 16 << 10,
		inflow:       65535,
		openData:     -1,
		kick:         make(chan struct{}, 1),
		closing:      make(chan struct{}),
		flushDone:    make(chan struct{}),
	}
	if a := nc.RemoteAddr(); a != nil {
		c.remoteAddr = a.String()
	}
	// Requests report the connection's TLS state as net/http's do (the
	// handshake is done: the client preface was read through it), so
	// handlers see verified client certificates.
	inner := nc
	if pc, ok := nc.(*prefixConn); ok {
		inner = pc.Conn
	}
	if tc, ok := inner.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := tc.ConnectionState()
		c.tls = &st
	}
	c.vw = nc
	if pc, ok := nc.(*prefixConn); ok {
		c.vw = pc.Conn // writes bypass the sniffed-prefix wrapper
	}
	switch c.vw.(type) {
	case *net.TCPConn, *net.UnixConn:
		c.vectored = true // net.Buffers uses writev on these
	}
	c.wcond.L = &c.wmu
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.epoch = time.Now()
	if s.cfg.Clock != nil {
		c.epoch = s.cfg.Clock.Now()
	}
	var src io.Reader = nc
	if s.cfg.KeepAlive.Time > 0 {
		src = readStamper{c}
		if err := SetUserTimeout(nc, s.cfg.KeepAlive.Timeout); err != nil {
			s.cfg.Logger.Debug("h2server: cannot set TCP_USER_TIMEOUT", "remote", nc.RemoteAddr().String(), "err", err)
		}
	}
	br := bufio.NewReaderSize(src, 16<<10)
	c.fr = http2.NewFramer(nil, br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = s.cfg.MaxHeaderListSize
	c.fr.SetMaxReadFrameSize(s.cfg.MaxReadFrameSize)
	c.fr.SetReuseFrames()
	return c
}

// abort starts closing the connection: the flusher writes what is queued
// (bounded by CloseFlushTimeout) and closes the socket, which ends the
// reader. Idempotent.
func (c *conn) abort(error) {
	c.abortOnce.Do(func() { close(c.closing) })
}

// serve runs the read loop, then tears the connection down.
func (c *conn) serve() (err error) {
	go c.flusher()
	defer func() {
		c.abort(err)
		c.smu.Lock()
		c.dead = true
		streams := c.streams
		c.streams = nil
		c.smu.Unlock()
		// No closeWrites here: it would drop what is queued, such as the
		// GOAWAY of a connection error, before the flusher's last write
		// (which ends with closeWrites). Failing the streams wakes their
		// writers.
		for _, st := range streams {
			st.fail(errConnClosed)
		}
		c.handlers.Wait()
		<-c.flushDone
		if c.kaDone != nil {
			<-c.kaDone
		}
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			err = nil
		}
	}()
	if err := c.readPreface(); err != nil {
		return err
	}
	c.wmu.Lock()
	settings := []http2.Setting{
		{ID: http2.SettingMaxFrameSize, Val: c.cfg.MaxReadFrameSize},
		{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.MaxConcurrentStreams},
		{ID: http2.SettingMaxHeaderListSize, Val: c.cfg.MaxHeaderListSize},
		{ID: http2.SettingInitialWindowSize, Val: uint32(c.cfg.StreamWindow)},
	}
	c.wbuf = appendFrameHeader(c.wbuf, 6*len(settings), http2.FrameSettings, 0, 0)
	for _, s := range settings {
		c.wbuf = append(c.wbuf, byte(s.ID>>8), byte(s.ID), byte(s.Val>>24), byte(s.Val>>16), byte(s.Val>>8), byte(s.Val))
	}
	if d := c.cfg.ConnWindow - 65535; d > 0 {
		c.wbuf = appendWindowUpdate(c.wbuf, 0, uint32(d))
		c.inflow += d
	}
	c.kickLocked()
	c.wmu.Unlock()
	if c.cfg.KeepAlive.Time > 0 {
		c.kaDone = make(chan struct{})
		go c.keepAlive()
	}

	first := true
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return c.connError(http2.ErrCode(ce), nil, err)
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return c.connError(http2.ErrCodeFrameSize, nil, err)
			}
			select {
			case <-c.closing:
				return nil
			default:
			}
			return err
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return c.connError(http2.ErrCodeProtocol, nil, errors.New("h2server: first frame is not SETTINGS"))
			}
			first = false
		}
		if err := c.processFrame(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return c.connError(http2.ErrCode(ce), nil, err)
			}
			if errors.Is(err, errTooManyPings) {
				return c.connError(http2.ErrCodeEnhanceYourCalm, tooManyPingsDebug, err)
			}
			return err
		}
	}
}

func (c *conn) readPreface() error {
	_ = c.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	var buf [len(clientPreface)]byte
	if _, err := io.ReadFull(c.nc, buf[:]); err != nil {
		return fmt.Errorf("%w: %w", errBadPreface, err)
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if string(buf[:]) != clientPreface {
		return errBadPreface
	}
	return nil
}

// connError sends GOAWAY with code and debug data and ends the connection.
func (c *conn) connError(code http2.ErrCode, debug []byte, err error) error {
	c.smu.Lock()
	last := c.lastID
	c.smu.Unlock()
	c.wmu.Lock()
	c.wbuf = appendGoAway(c.wbuf, last, code, debug...)
	c.kickLocked()
	c.wmu.Unlock()
	c.cfg.Logger.Debug("h2server: connection error", "remote", c.remoteAddr, "code", code, "err", err)
	return err
}

func (c *conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.wmu.Lock()
		if c.flooded() {
			c.wmu.Unlock()
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		c.wbuf = appendFrameHeader(c.wbuf, 8, http2.FramePing, http2.FlagPingAck, 0)
		c.wbuf = append(c.wbuf, f.Data[:]...)
		c.kickLocked()
		sent := c.sentStreamFrames
		c.sentStreamFrames = false
		c.wmu.Unlock()
		if c.cfg.KeepAlive.MinTime > 0 {
			// After the ack, as grpc-go: a client that gets GOAWAY
			// has its last PING answered.
			return c.policePing(sent)
		}
	case *http2.RSTStreamFrame:
		if c.isIdle(f.StreamID) {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.smu.Lock()
		st := c.streams[f.StreamID]
		delete(c.streams, f.StreamID)
		c.smu.Unlock()
		if st != nil {
			st.fail(errStreamReset)
			c.maybeFinishGoAway()
		}
	case *http2.GoAwayFrame:
		// The peer opens no more streams; running ones continue.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	default:
		// PRIORITY and unknown frame types are ignored.
	}
	return nil
}

// isIdle reports whether id names a stream the peer never opened.
func (c *conn) isIdle(id uint32) bool {
	return id%2 == 1 && id > c.lastID
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := f.ForeachSetting(http2.Setting.Valid); err != nil {
		return err
	}
	var err error
	c.smu.Lock()
	c.wmu.Lock()
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingHeaderTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = int(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(c.peerInitWin)
			c.peerInitWin = int32(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > 1<<31-1 {
					err = http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		}
		return nil
	})
	if c.flooded() {
		err = http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	c.wbuf = appendFrameHeader(c.wbuf, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
	c.kickLocked()
	c.wcond.Broadcast()
	c.wmu.Unlock()
	c.smu.Unlock()
	return err
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.wmu.Lock()
		c.sendWindow += inc
		over := c.sendWindow > 1<<31-1
		c.wcond.Broadcast()
		c.wmu.Unlock()
		if over {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return nil
	}
	if c.isIdle(f.StreamID) {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.smu.Lock()
	st := c.streams[f.StreamID]
	c.smu.Unlock()
	if st == nil {
		return nil // closed stream: allowed, ignored
	}
	c.wmu.Lock()
	st.sendWindow += inc
	over := st.sendWindow > 1<<31-1
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if over {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (c *conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int32(f.Length)
	c.wmu.Lock()
	if n > c.inflow {
		c.wmu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.inflow -= n
	c.wmu.Unlock()
	if c.isIdle(id) {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.smu.Lock()
	st := c.streams[id]
	c.smu.Unlock()
	if st == nil {
		// A stream we finished or reset: the data is dropped, but the
		// connection window must not shrink for it.
		c.consumed(nil, int(n))
		return nil
	}
	data := f.Data()
	pad := int(n) - len(data)
	c.wmu.Lock()
	if n > st.inflow {
		c.wmu.Unlock()
		c.consumed(nil, int(n))
		c.resetStream(id, http2.ErrCodeFlowControl)
		return nil
	}
	st.inflow -= n
	c.wmu.Unlock()
	if pad > 0 {
		c.consumed(st, pad)
	}
	dropped, ok := st.push(data, f.StreamEnded())
	if !ok {
		c.consumed(nil, int(n)-pad)
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if dropped > 0 {
		c.consumed(st, dropped)
	}
	return nil
}

// consumed returns n received bytes to the peer's send windows (the
// stream's too when st is not nil) once enough have accumulated to be worth
// a WINDOW_UPDATE frame.
func (c *conn) consumed(st *stream, n int) {
	if n <= 0 {
		return
	}
	c.wmu.Lock()
	c.connUnacked += int32(n)
	kick := false
	if c.connUnacked >= c.cfg.ConnWindow/4 {
		c.wbuf = appendWindowUpdate(c.wbuf, 0, uint32(c.connUnacked))
		c.inflow += c.connUnacked
		c.connUnacked = 0
		kick = true
	}
	if st != nil && !st.remoteDone {
		st.unacked += int32(n)
		if st.unacked >= c.cfg.StreamWindow/4 {
			c.wbuf = appendWindowUpdate(c.wbuf, st.id, uint32(st.unacked))
			st.inflow += st.unacked
			st.unacked = 0
			kick = true
		}
	}
	if kick && c.werr == nil {
		c.kickLocked()
	}
	c.wmu.Unlock()
}

// resetStream sends RST_STREAM and fails the stream if it is open.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	if id == 0 {
		return
	}
	c.smu.Lock()
	st := c.streams[id]
	delete(c.streams, id)
	c.smu.Unlock()
	c.wmu.Lock()
	c.wbuf = appendRSTStream(c.wbuf, id, code)
	c.kickLocked()
	c.wmu.Unlock()
	if st != nil {
		st.fail(errStreamReset)
		c.maybeFinishGoAway()
	}
}

// goAway starts a graceful close: GOAWAY tells the peer which streams will
// be served; the connection closes when they are done.
func (c *conn) goAway() {
	c.smu.Lock()
	if c.goingAway || c.dead {
		c.smu.Unlock()
		return
	}
	c.goingAway = true
	last := c.lastID
	n := len(c.streams)
	c.wmu.Lock()
	c.wbuf = appendGoAway(c.wbuf, last, http2.ErrCodeNo)
	c.kickLocked()
	c.wmu.Unlock()
	c.smu.Unlock()
	if n == 0 {
		c.abort(nil)
	}
}

func (c *conn) maybeFinishGoAway() {
	c.smu.Lock()
	done := c.goingAway && len(c.streams) == 0
	c.smu.Unlock()
	if done {
		c.abort(nil)
	}
}

// kickLocked wakes the flusher unless it is already due to run.
func (c *conn) kickLocked() {
	if c.flushing {
		return
	}
	c.flushing = true
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// flusher writes what handlers and the reader queued, in batches, until the
// connection closes; then it writes the rest (bounded by CloseFlushTimeout)
// and closes the socket.
func (c *conn) flusher() {
	defer close(c.flushDone)
	for {
		select {
		case <-c.kick:
			// Let the handlers that are already runnable queue their
			// responses first: on loopback a write(2) also runs the
			// receiver's TCP input, so it costs as much as several
			// requests' handling, and without this yield almost every
			// response went out in a write of its own. With no handler
			// running there is nothing to wait for, and the yield would
			// only let unrelated goroutines (the event bus's) go first.
			if c.running.Load() > 0 {
				runtime.Gosched()
			}
			c.drain()
		case <-c.closing:
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.CloseFlushTimeout))
			c.drain()
			c.nc.Close()
			c.closeWrites()
			return
		}
	}
}

// closeWrites makes every later write fail with errConnClosed (unless an
// earlier error is already sticky) and wakes the writers waiting for room.
func (c *conn) closeWrites() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr == nil {
		c.werr = errConnClosed
	}
	c.wcond.Broadcast()
}

// drain writes what is pending, everything queued so far in one write(2)
// (writev when payloads were handed off), until the queue is empty or a
// write fails (the error becomes sticky).
func (c *conn) drain() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for (len(c.wbuf) > 0 || len(c.segs) > 0) && c.werr == nil {
		batch, segs, mark, taken := c.wbuf, c.segs, c.segMark, c.handoff
		c.wbuf = c.spare[:0]
		c.spare = nil
		c.segs = c.spareSegs[:0]
		c.spareSegs = nil
		c.segMark, c.segBytes = 0, 0
		c.openData = -1
		c.writing = true
		c.wcond.Broadcast()
		c.wmu.Unlock()
		var err error
		if len(segs) == 0 {
			_, err = c.nc.Write(batch)
		} else {
			if mark < len(batch) {
				segs = append(segs, batch[mark:])
			}
			bufs := net.Buffers(segs)
			_, err = bufs.WriteTo(c.vw)
		}
		c.wmu.Lock()
		c.writing = false
		c.written = taken
		clear(segs[:cap(segs)]) // drop references to handler memory
		c.spareSegs = segs[:0]
		if err != nil {
			c.werr = err
			c.wbuf = nil
			c.abort(err)
			break
		}
		if cap(batch) <= retainBuffer {
			c.spare = batch[:0]
		}
	}
	if c.werr != nil {
		c.wbuf = nil
		clear(c.segs)
		c.segs, c.segMark, c.segBytes = nil, 0, 0
		c.openData = -1
		c.written = c.handoff // nothing queued will be written
	}
	c.flushing = false
	c.wcond.Broadcast()
}

// pendingLocked is the number of queued, unwritten bytes.
func (c *conn) pendingLocked() int { return len(c.wbuf) + c.segBytes }

// flooded reports (under wmu) whether the peer makes the reader queue
// answers (PING and SETTINGS acks) far faster than it reads them: the
// reader never blocks on a full buffer, so this bounds its memory instead.
func (c *conn) flooded() bool {
	return len(c.wbuf) > 4*c.cfg.MaxPending
}

// appendHeaderBlockLocked appends c.hbuf as HEADERS (+CONTINUATION) frames.
func (c *conn) appendHeaderBlockLocked(id uint32, endStream bool) {
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), c.peerMaxFrame)
		var flags http2.Flags
		t := http2.FrameContinuation
		if first {
			t = http2.FrameHeaders
			if endStream {
				flags |= http2.FlagHeadersEndStream
			}
		}
		if n == len(block) {
			flags |= http2.FlagHeadersEndHeaders
		}
		c.wbuf = appendFrameHeader(c.wbuf, n, t, flags, id)
		c.wbuf = append(c.wbuf, block[:n]...)
		block = block[n:]
		first = false
	}
	c.hbuf.Reset()
}

func appendFrameHeader(b []byte, length int, t http2.FrameType, flags http2.Flags, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

func appendWindowUpdate(b []byte, id, inc uint32) []byte {
	b = appendFrameHeader(b, 4, http2.FrameWindowUpdate, 0, id)
	return append(b, byte(inc>>24)&0x7f, byte(inc>>16), byte(inc>>8), byte(inc))
}

func appendRSTStream(b []byte, id uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 4, http2.FrameRSTStream, 0, id)
	return append(b, byte(code>>24), byte(code>>16), byte(code>>8), byte(code))
}

func appendGoAway(b []byte, last uint32, code http2.ErrCode, debug ...byte) []byte {
	b = appendFrameHeader(b, 8+len(debug), http2.FrameGoAway, 0, 0)
	b = append(b, byte(last>>24)&0x7f, byte(last>>16), byte(last>>8), byte(last),
		byte(code>>24), byte(code>>16), byte(code>>8), byte(code))
	return append(b, debug...)
}

var statusText [600]string

func statusString(code int) string {
	if code >= 0 && code < len(statusText) {
		if s := statusText[code]; s != "" {
			return s
		}
	}
	return strconv.Itoa(code)
}

func init() {
	for i := 100; i < len(statusText); i++ {
		statusText[i] = strconv.Itoa(i)
	}
}
