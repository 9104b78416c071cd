package h2server

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// outBuffer is how many response body bytes a stream collects before it
// frames them; a unary response normally fits, so headers, body and
// trailers are queued together when the handler returns.
const outBuffer = 16 << 10

var outPool = sync.Pool{New: func() any { b := make([]byte, 0, outBuffer); return &b }}

// stream is one request/response exchange. It is also the request's
// context (streamCtx), its body (requestBody) and its ResponseWriter
// (responseWriter): pointer conversions, not allocations.
type stream struct {
	c   *conn
	id  uint32
	req *http.Request

	// Context state.
	cmu    sync.Mutex
	done   chan struct{}
	cerr   error
	afters []*afterFunc // few: one per context derived and not yet cancelled

	// Request body, written by the reader, read by the handler.
	bmu        sync.Mutex
	bcond      sync.Cond
	body       []byte
	boff       int
	eof        bool // END_STREAM received
	berr       error
	bodyClosed bool

	// Under conn.wmu: flow control and write state.
	sendWindow int64
	inflow     int32
	unacked    int32
	remoteDone bool // no more window updates are useful
	reset      bool // the stream was reset; writes fail
	ended      bool // END_STREAM was sent

	// Owned by the handler goroutine.
	hdr         http.Header
	status      int
	wroteHeader bool
	sentHeader  bool
	out         *[]byte

	// Storage that saves an allocation per stream: the request's URL, a
	// small request body (a typical RPC's fits), the trailer list.
	url       url.URL
	bodyArr   [inlineBody]byte
	trailerFs [4]hpack.HeaderField
}

// inlineBody is the request body size a stream holds without allocating.
const inlineBody = 128

type afterFunc struct{ f func() }

// onHeaders opens a stream, or takes a request's trailers.
func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= c.lastID {
		c.smu.Lock()
		st := c.streams[id]
		c.smu.Unlock()
		if st == nil {
			// A stream this side already finished or reset: frames the
			// peer sent before it learned that are ignored (RFC 9113
			// 5.4.2); the framer has already kept HPACK state in step.
			return nil
		}
		if !f.StreamEnded() {
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		tr := make(http.Header, len(f.RegularFields()))
		for _, hf := range f.RegularFields() {
			k := canonicalKey(hf.Name)
			tr[k] = append(tr[k], hf.Value)
		}
		st.bmu.Lock()
		if !st.eof {
			st.req.Trailer = tr
		}
		st.bmu.Unlock()
		if _, ok := st.push(nil, true); !ok {
			c.resetStream(id, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	c.smu.Lock()
	if c.goingAway || c.dead {
		// After GOAWAY new streams are ignored; the peer retries them
		// elsewhere.
		c.smu.Unlock()
		return nil
	}
	c.lastID = id
	// Handlers of streams the peer already reset count too, so that
	// opening and resetting streams in a loop cannot start unbounded
	// handlers (the "rapid reset" attack).
	if uint32(max(len(c.streams), int(c.running.Load()))) >= c.cfg.MaxConcurrentStreams {
		c.smu.Unlock()
		c.wmu.Lock()
		c.wbuf = appendRSTStream(c.wbuf, id, http2.ErrCodeRefusedStream)
		c.kickLocked()
		c.wmu.Unlock()
		return nil
	}
	c.smu.Unlock()

	st := &stream{c: c, id: id, inflow: c.cfg.StreamWindow}
	st.bcond.L = &st.bmu
	// A header block beyond MaxHeaderListSize arrives truncated (the
	// framer keeps decoding to keep HPACK in step); the request is refused.
	req, ok := c.newRequest(st, f)
	if !ok || f.Truncated {
		c.wmu.Lock()
		c.wbuf = appendRSTStream(c.wbuf, id, http2.ErrCodeProtocol)
		c.kickLocked()
		c.wmu.Unlock()
		return nil
	}
	st.req = req
	st.hdr = make(http.Header, 4)
	if f.StreamEnded() {
		st.eof = true
		st.remoteDone = true
	}
	c.smu.Lock()
	c.wmu.Lock()
	st.sendWindow = int64(c.peerInitWin)
	c.wmu.Unlock()
	c.streams[id] = st
	c.running.Add(1)
	c.handlers.Add(1)
	c.smu.Unlock()
	go c.runHandler(st)
	return nil
}

// newRequest builds the handler's *http.Request from a header block.
func (c *conn) newRequest(st *stream, f *http2.MetaHeadersFrame) (*http.Request, bool) {
	var method, path, scheme, authority string
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		default:
			return nil, false
		}
	}
	if method == "" || path == "" || scheme == "" || method == "CONNECT" {
		return nil, false
	}
	regular := f.RegularFields()
	h := make(http.Header, len(regular))
	// One backing array for every single-valued header, as net/http does:
	// one allocation instead of one per header.
	vals := make([]string, len(regular))
	for i, hf := range regular {
		if hf.Name == "host" {
			if authority == "" {
				authority = hf.Value
			}
			continue
		}
		k := canonicalKey(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
			continue
		}
		vals[i] = hf.Value
		h[k] = vals[i : i+1 : i+1]
	}
	var u *url.URL
	if strings.ContainsAny(path, "?%#") || path[0] != '/' {
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, false
		}
	} else {
		st.url.Path = path
		u = &st.url
	}
	cl := int64(-1)
	if f.StreamEnded() {
		cl = 0
	} else if v := h["Content-Length"]; len(v) == 1 {
		if n, err := strconv.ParseInt(v[0], 10, 64); err == nil && n >= 0 {
			cl = n
		}
	}
	tmpl := http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        h,
		Body:          (*requestBody)(st),
		ContentLength: cl,
		Host:          authority,
		RemoteAddr:    c.remoteAddr,
		TLS:           c.tls,
		RequestURI:    path,
	}
	return tmpl.WithContext((*streamCtx)(st)), true
}

// runHandler serves one stream and finishes it.
func (c *conn) runHandler(st *stream) {
	defer c.handlers.Done()
	defer func() {
		c.smu.Lock()
		c.running.Add(-1)
		c.smu.Unlock()
	}()
	defer st.finish()
	defer func() {
		if r := recover(); r != nil {
			if r != http.ErrAbortHandler {
				c.cfg.Logger.Error("h2server: handler panicked", "remote", c.remoteAddr, "path", st.req.URL.Path, "panic", r)
			}
			st.abortStream(http2.ErrCodeInternal)
		}
	}()
	c.s.handler.ServeHTTP((*responseWriter)(st), st.req)
}

// abortStream resets the stream from the server side.
func (st *stream) abortStream(code http2.ErrCode) {
	c := st.c
	c.wmu.Lock()
	already := st.reset || st.ended
	st.reset = true
	if !already && c.werr == nil {
		c.wbuf = appendRSTStream(c.wbuf, st.id, code)
		c.kickLocked()
	}
	c.wcond.Broadcast()
	c.wmu.Unlock()
}

// finish completes the response after the handler returned, releases the
// stream and cancels its context.
func (st *stream) finish() {
	c := st.c
	rw := (*responseWriter)(st)
	if !st.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	_ = st.flush(nil, true)
	if st.out != nil {
		*st.out = (*st.out)[:0]
		outPool.Put(st.out)
		st.out = nil
	}
	// A client still sending a body we no longer read is told to stop.
	st.bmu.Lock()
	remoteOpen := !st.eof && st.berr == nil
	unread := len(st.body) - st.boff
	st.body, st.boff, st.bodyClosed = nil, 0, true
	st.bmu.Unlock()
	c.consumed(nil, unread)
	c.wmu.Lock()
	if remoteOpen && !st.reset && c.werr == nil {
		c.wbuf = appendRSTStream(c.wbuf, st.id, http2.ErrCodeNo)
		c.kickLocked()
	}
	st.reset = true
	c.wmu.Unlock()
	c.smu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
	}
	c.smu.Unlock()
	st.cancel(context.Canceled)
	c.maybeFinishGoAway()
}

// fail ends the stream from outside the handler: its context is cancelled,
// body reads and response writes fail.
func (st *stream) fail(err error) {
	c := st.c
	c.wmu.Lock()
	st.reset = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	st.bmu.Lock()
	if st.berr == nil && !st.eof {
		st.berr = err
	}
	st.bcond.Broadcast()
	st.bmu.Unlock()
	st.cancel(context.Canceled)
}

// push appends request body bytes. It reports how many bytes were dropped
// because the handler closed the body, and false when the stream had
// already ended its request (DATA after END_STREAM).
func (st *stream) push(data []byte, end bool) (dropped int, ok bool) {
	st.bmu.Lock()
	defer st.bmu.Unlock()
	if st.eof {
		return 0, false
	}
	if st.bodyClosed || st.berr != nil {
		dropped = len(data)
	} else {
		if st.boff == len(st.body) {
			st.body, st.boff = st.body[:0], 0
			if st.body == nil {
				st.body = st.bodyArr[:0]
			}
		}
		st.body = append(st.body, data...)
	}
	if end {
		st.eof = true
		st.c.wmu.Lock()
		st.remoteDone = true
		st.c.wmu.Unlock()
	}
	st.bcond.Signal()
	return dropped, true
}

// requestBody is the request's Body.
type requestBody stream

func (b *requestBody) Read(p []byte) (int, error) {
	st := (*stream)(b)
	st.bmu.Lock()
	for st.boff == len(st.body) && !st.eof && st.berr == nil && !st.bodyClosed {
		st.bcond.Wait()
	}
	if st.bodyClosed {
		st.bmu.Unlock()
		return 0, http.ErrBodyReadAfterClose
	}
	if st.boff < len(st.body) {
		n := copy(p, st.body[st.boff:])
		st.boff += n
		st.bmu.Unlock()
		st.c.consumed(st, n)
		return n, nil
	}
	err := st.berr
	st.bmu.Unlock()
	if err != nil {
		return 0, err
	}
	return 0, io.EOF
}

func (b *requestBody) Close() error {
	st := (*stream)(b)
	st.bmu.Lock()
	unread := len(st.body) - st.boff
	st.body, st.boff, st.bodyClosed = nil, 0, true
	st.bcond.Broadcast()
	st.bmu.Unlock()
	st.c.consumed(nil, unread)
	return nil
}

// streamCtx is the request's context. It implements the AfterFunc method
// the context package looks for, so contexts derived from it do not start
// a goroutine to watch it.
type streamCtx stream

func (x *streamCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

// Value answers http.LocalAddrContextKey, as net/http's request contexts
// do: the address the connection was accepted on.
func (x *streamCtx) Value(key any) any {
	if key == http.LocalAddrContextKey {
		return x.c.nc.LocalAddr()
	}
	return nil
}

func (x *streamCtx) Done() <-chan struct{} {
	st := (*stream)(x)
	st.cmu.Lock()
	if st.done == nil {
		st.done = make(chan struct{})
		if st.cerr != nil {
			close(st.done)
		}
	}
	d := st.done
	st.cmu.Unlock()
	return d
}

func (x *streamCtx) Err() error {
	st := (*stream)(x)
	st.cmu.Lock()
	err := st.cerr
	st.cmu.Unlock()
	return err
}

func (x *streamCtx) String() string { return "h2server.streamCtx" }

// AfterFunc arranges for f to run once the context is cancelled.
func (x *streamCtx) AfterFunc(f func()) func() bool {
	st := (*stream)(x)
	a := &afterFunc{f: f}
	st.cmu.Lock()
	if st.cerr != nil {
		st.cmu.Unlock()
		go f()
		return func() bool { return false }
	}
	st.afters = append(st.afters, a)
	st.cmu.Unlock()
	return func() bool {
		st.cmu.Lock()
		defer st.cmu.Unlock()
		for i, x := range st.afters {
			if x == a {
				st.afters = append(st.afters[:i], st.afters[i+1:]...)
				return true
			}
		}
		return false
	}
}

func (st *stream) cancel(err error) {
	st.cmu.Lock()
	if st.cerr != nil {
		st.cmu.Unlock()
		return
	}
	st.cerr = err
	if st.done != nil {
		close(st.done)
	}
	afters := st.afters
	st.afters = nil
	st.cmu.Unlock()
	for _, a := range afters {
		a.f()
	}
}

// responseWriter is the handler's http.ResponseWriter and http.Flusher.
type responseWriter stream

func (w *responseWriter) Header() http.Header { return w.hdr }

func (w *responseWriter) WriteHeader(code int) {
	if w.wroteHeader || code < 200 || code > 999 {
		// Informational responses are not sent; an invalid code is
		// ignored as a later Write would then send 200.
		return
	}
	w.wroteHeader = true
	w.status = code
}

func (w *responseWriter) Write(p []byte) (int, error) {
	st := (*stream)(w)
	if !st.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(st.status) || st.req.Method == http.MethodHead {
		return 0, http.ErrBodyNotAllowed
	}
	if st.out == nil {
		st.out = outPool.Get().(*[]byte)
	}
	if len(*st.out)+len(p) <= outBuffer {
		*st.out = append(*st.out, p...)
		return len(p), nil
	}
	if err := st.flush(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *responseWriter) Flush() {
	st := (*stream)(w)
	if !st.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = st.flush(nil, false)
}

func bodyAllowed(code int) bool {
	return code != http.StatusNoContent && code != http.StatusNotModified
}

// flush queues the headers (if not yet sent), the buffered body and extra
// as frames; with end, also the trailers and END_STREAM.
func (st *stream) flush(extra []byte, end bool) error {
	c := st.c
	var buffered []byte
	if st.out != nil {
		buffered = *st.out
	}
	var trailers []hpack.HeaderField
	if end {
		trailers = st.trailers()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if st.reset || st.ended {
		return errStreamReset
	}
	if c.werr != nil {
		return c.werr
	}
	// A plain store under the lock already held: clears the peer's ping
	// strikes at its next PING (KeepAlive.MinTime), as grpc-go does for
	// every HEADERS and DATA it writes.
	c.sentStreamFrames = true
	noBody := len(buffered) == 0 && len(extra) == 0
	if !st.sentHeader {
		st.encodeHeaders(buffered, extra)
		st.sentHeader = true
		last := end && noBody && len(trailers) == 0
		c.appendHeaderBlockLocked(st.id, last)
		if last {
			st.ended = true
		}
	}
	if err := st.appendDataLocked(buffered, end && len(extra) == 0 && len(trailers) == 0, false); err != nil {
		return err
	}
	if st.out != nil {
		*st.out = (*st.out)[:0]
	}
	if err := st.appendDataLocked(extra, end && len(trailers) == 0, len(extra) >= handoffMin); err != nil {
		return err
	}
	if end && !st.ended {
		if len(trailers) > 0 {
			for _, f := range trailers {
				_ = c.henc.WriteField(f)
			}
			c.appendHeaderBlockLocked(st.id, true)
		} else {
			c.wbuf = appendFrameHeader(c.wbuf, 0, http2.FrameData, http2.FlagDataEndStream, st.id)
		}
		st.ended = true
	}
	c.kickLocked()
	return nil
}

// handoffMin is the smallest Write whose bytes are queued by reference
// rather than copied (on sockets that take writev).
const handoffMin = 32 << 10

// appendDataLocked frames p as DATA within the flow-control windows,
// waiting (and releasing wmu) while they are closed. last marks the final
// frame with END_STREAM (only if p is not empty). With borrow (and a
// socket that takes writev) p is queued by reference, and appendDataLocked
// returns only once the flusher is done with it: the caller may reuse p.
func (st *stream) appendDataLocked(p []byte, last, borrow bool) error {
	c := st.c
	borrow = borrow && c.vectored
	handed := false
	for len(p) > 0 {
		for (st.sendWindow <= 0 || c.sendWindow <= 0 || c.pendingLocked() >= c.cfg.MaxPending) && !st.reset && c.werr == nil {
			if c.pendingLocked() > 0 {
				c.kickLocked()
			}
			c.wcond.Wait()
		}
		if st.reset || c.werr != nil {
			break
		}
		if !borrow && c.extendDataLocked(st, &p, last) {
			continue
		}
		n := int64(min(len(p), c.peerMaxFrame))
		n = min(n, st.sendWindow, c.sendWindow)
		var flags http2.Flags
		if last && int(n) == len(p) {
			flags = http2.FlagDataEndStream
			st.ended = true
		}
		c.openData, c.openDataStream = -1, st.id
		if !borrow && flags == 0 {
			c.openData = len(c.wbuf)
		}
		c.wbuf = appendFrameHeader(c.wbuf, int(n), http2.FrameData, flags, st.id)
		// Per frame, as grpc-go: a client's BDP pings follow the DATA
		// of one long write.
		c.sentStreamFrames = true
		if borrow {
			c.segs = append(c.segs, c.wbuf[c.segMark:len(c.wbuf):len(c.wbuf)], p[:n:n])
			c.segMark = len(c.wbuf)
			c.segBytes += int(n)
			handed = true
		} else {
			c.wbuf = append(c.wbuf, p[:n]...)
			c.openDataEnd = len(c.wbuf)
		}
		st.sendWindow -= n
		c.sendWindow -= n
		p = p[n:]
	}
	if handed {
		// Pieces of p may be queued, or being written, even if the stream
		// was reset meanwhile: wait until the flusher is done with them,
		// or until nothing more will be written.
		c.handoff++
		mine := c.handoff
		c.kickLocked()
		for c.written < mine && (c.werr == nil || c.writing) {
			c.wcond.Wait()
		}
	}
	if st.reset {
		return errStreamReset
	}
	if c.werr != nil {
		return c.werr
	}
	return nil
}

// extendDataLocked appends as much of *p as fits (frame size and both
// send windows) to st's DATA frame at the end of wbuf, if that frame is
// still open (conn.openData), and takes it off *p; with last, a frame
// that takes the rest of *p gets END_STREAM. It reports whether it
// appended anything.
func (c *conn) extendDataLocked(st *stream, p *[]byte, last bool) bool {
	if c.openData < c.segMark || c.openDataStream != st.id || c.openDataEnd != len(c.wbuf) {
		return false
	}
	h := c.wbuf[c.openData : c.openData+9]
	size := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	n := int64(min(len(*p), c.peerMaxFrame-size))
	n = min(n, st.sendWindow, c.sendWindow)
	if n <= 0 {
		return false
	}
	size += int(n)
	h[0], h[1], h[2] = byte(size>>16), byte(size>>8), byte(size)
	c.wbuf = append(c.wbuf, (*p)[:n]...)
	c.openDataEnd = len(c.wbuf)
	if last && int(n) == len(*p) {
		h[4] |= byte(http2.FlagDataEndStream)
		st.ended = true
		c.openData = -1
	}
	st.sendWindow -= n
	c.sendWindow -= n
	*p = (*p)[n:]
	return true
}

// encodeHeaders HPACK-encodes the response headers into c.hbuf. Declared
// trailers and TrailerPrefix keys are left for the trailers.
func (st *stream) encodeHeaders(buffered, extra []byte) {
	c := st.c
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(st.status)})
	declared := st.hdr["Trailer"]
	if _, ok := st.hdr["Content-Type"]; !ok && bodyAllowed(st.status) {
		sniff := buffered
		if len(sniff) == 0 {
			sniff = extra
		}
		if len(sniff) > 0 {
			_ = c.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: http.DetectContentType(sniff)})
		}
	}
	for k, vs := range st.hdr {
		if len(vs) == 0 || strings.HasPrefix(k, http.TrailerPrefix) || isConnHeader(k) || k == "Trailer" {
			continue
		}
		if len(declared) > 0 && isDeclared(declared, k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		name := lowerKey(k)
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				continue
			}
			_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
}

// trailers collects the response trailers: keys declared in the Trailer
// header and keys set with http.TrailerPrefix (connect's gRPC form).
func (st *stream) trailers() []hpack.HeaderField {
	out := st.trailerFs[:0]
	for _, d := range st.hdr["Trailer"] {
		for _, k := range strings.Split(d, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			for _, v := range st.hdr[k] {
				if httpguts.ValidHeaderFieldValue(v) {
					out = append(out, hpack.HeaderField{Name: lowerKey(k), Value: v})
				}
			}
		}
	}
	for k, vs := range st.hdr {
		if !strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		name := lowerKey(k[len(http.TrailerPrefix):])
		if name == "" || !httpguts.ValidHeaderFieldName(name) || isConnHeader(canonicalKey(name)) {
			continue
		}
		for _, v := range vs {
			if httpguts.ValidHeaderFieldValue(v) {
				out = append(out, hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
	return out
}

func isDeclared(declared []string, k string) bool {
	for _, d := range declared {
		for _, x := range strings.Split(d, ",") {
			if strings.EqualFold(strings.TrimSpace(x), k) {
				return true
			}
		}
	}
	return false
}

func isConnHeader(k string) bool {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Content-Length":
		// Content-Length is dropped too: DATA framing carries the length,
		// and a handler's wrong value must not break the stream.
		return true
	}
	return false
}

// Header-name caches: HTTP/2 names are lowercase on the wire, Go's are
// canonical; converting the common ones must not allocate per request.
var (
	canonByLower = map[string]string{}
	lowerByCanon = map[string]string{}
)

func init() {
	for _, k := range []string{
		"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Connect-Accept-Encoding", "Connect-Content-Encoding", "Connect-Protocol-Version",
		"Connect-Timeout-Ms", "Content-Encoding", "Content-Length", "Content-Type", "Cookie",
		"Date", "Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Message", "Grpc-Status",
		"Grpc-Status-Details-Bin", "Grpc-Timeout", "Hasleader", "Origin", "Referer", "Te",
		"Token", "Trailer", "User-Agent", "Vary", "X-Grpc-Web", "X-User-Agent",
		"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Location",
		"Client-Api-Version", // etcd's clientv3 sends it with every call
	} {
		l := strings.ToLower(k)
		canonByLower[l] = k
		lowerByCanon[k] = l
	}
}

func canonicalKey(lower string) string {
	if k, ok := canonByLower[lower]; ok {
		return k
	}
	return http.CanonicalHeaderKey(lower)
}

func lowerKey(k string) string {
	if l, ok := lowerByCanon[k]; ok {
		return l
	}
	return strings.ToLower(k)
}
