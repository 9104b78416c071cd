package h2server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/concord-kv/concord/gateway/h2server"
	"github.com/concord-kv/concord/internal/h2test"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is a Split serving an h2server.Server and a net/http server on one
// listener.
type env struct {
	addr string
	srv  *h2server.Server
	cli  *http.Client
	tr   *http2.Transport
}

func start(t testing.TB, cfg h2server.Config, h http.Handler) *env {
	t.Helper()
	srv, err := h2server.New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split := h2server.NewSplit(ln, srv)
	h1 := &http.Server{Handler: h}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = split.Serve(ctx) }()
	go func() { defer wg.Done(); _ = h1.Serve(split.HTTP1()) }()
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	e := &env{addr: ln.Addr().String(), srv: srv, tr: tr, cli: &http.Client{Transport: tr}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		h1.Close()
		split.Close()
		cancel()
		wg.Wait()
	})
	return e
}

func (e *env) url(p string) string { return "http://" + e.addr + p }

func TestUnaryHeadersAndTrailers(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("read body: %v", err)
		}
		if r.Proto != "HTTP/2.0" || r.ProtoMajor != 2 || r.URL.Path != "/pkg.Svc/Method" || r.Host == "" || r.RemoteAddr == "" {
			t.Errorf("request fields: %q %d %q %q %q", r.Proto, r.ProtoMajor, r.URL.Path, r.Host, r.RemoteAddr)
		}
		if r.ContentLength != int64(len(body)) {
			t.Errorf("ContentLength = %d, body %d", r.ContentLength, len(body))
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "X-Declared")
		w.Header().Set("X-Echo", r.Header.Get("X-In"))
		w.WriteHeader(http.StatusOK)
		w.Write(append([]byte("echo:"), body...))
		w.Header().Set("X-Declared", "d")
		w.Header().Add(http.TrailerPrefix+"Grpc-Status", "0")
		w.Header().Add(http.TrailerPrefix+"Grpc-Message", "fine")
	}))
	req, _ := http.NewRequest("POST", e.url("/pkg.Svc/Method"), strings.NewReader("hello"))
	req.Header.Set("X-In", "in")
	req.ContentLength = 5
	resp, err := e.cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "echo:hello" || resp.Header.Get("X-Echo") != "in" || resp.Header.Get("Content-Type") != "application/grpc" {
		t.Errorf("response %q headers %v", body, resp.Header)
	}
	if resp.Header.Get("X-Declared") != "" {
		t.Errorf("declared trailer sent as header: %v", resp.Header)
	}
	want := map[string]string{"Grpc-Status": "0", "Grpc-Message": "fine", "X-Declared": "d"}
	for k, v := range want {
		if resp.Trailer.Get(k) != v {
			t.Errorf("trailer %s = %q, want %q (all %v)", k, resp.Trailer.Get(k), v, resp.Trailer)
		}
	}
}

func TestRequestTrailersAndNoBody(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s|%s|%d", b, r.Trailer.Get("X-T"), r.ContentLength)
	}))
	req, _ := http.NewRequest("POST", e.url("/t"), io.NopCloser(strings.NewReader("abc")))
	req.Trailer = http.Header{"X-T": []string{"tv"}}
	resp, err := e.cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "abc|tv|-1" {
		t.Errorf("got %q", b)
	}
	resp, err = e.cli.Get(e.url("/t"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "||0" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("GET: %q %v", b, resp.Header)
	}
}

// Bodies far beyond the stream and connection windows flow both ways.
func TestLargeBodies(t *testing.T) {
	e := start(t, h2server.Config{StreamWindow: 65535, ConnWindow: 65535}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Echo while reading: the response is larger than the client's
		// windows too, so both directions need WINDOW_UPDATEs.
		if _, err := io.Copy(w, r.Body); err != nil {
			t.Errorf("copy: %v", err)
		}
	}))
	in := make([]byte, 3<<20)
	rand.Read(in)
	resp, err := e.cli.Post(e.url("/big"), "application/octet-stream", bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(in, out) {
		t.Fatalf("echo differs: %d bytes in, %d out", len(in), len(out))
	}
}

// A bidirectional stream: each line is answered and flushed before the
// client sends the next one.
func TestBidiStream(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(bytes.ToUpper(buf[:n]))
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", e.url("/bidi"), pr)
	resp, err := e.cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	for _, msg := range []string{"one", "two", "three"} {
		if _, err := pw.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		n, err := io.ReadAtLeast(resp.Body, buf, len(msg))
		if err != nil || string(buf[:n]) != strings.ToUpper(msg) {
			t.Fatalf("got %q, %v", buf[:n], err)
		}
	}
	pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Errorf("end of stream: %q %v", rest, err)
	}
}

// A server stream of many flushed messages, larger in total than the
// client's connection window.
func TestServerStream(t *testing.T) {
	const n, size = 200, 4096
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		msg := bytes.Repeat([]byte{'x'}, size)
		for range n {
			if _, err := w.Write(msg); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	}))
	resp, err := e.cli.Get(e.url("/stream"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(b) != n*size {
		t.Fatalf("read %d bytes, %v", len(b), err)
	}
}

// Cancelling the client's request (RST_STREAM) cancels the handler's
// context and fails its body reads.
func TestClientCancelCancelsContext(t *testing.T) {
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		// Derived contexts must see the cancellation too.
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		defer cancel()
		close(started)
		select {
		case <-ctx.Done():
			_, err := r.Body.Read(make([]byte, 1))
			cancelled <- err
		case <-time.After(10 * time.Second):
			cancelled <- errors.New("context not cancelled")
		}
	}))
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", e.url("/c"), pr)
	resp, err := e.cli.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	resp.Body.Close()
	if err := <-cancelled; err == nil || err == io.EOF {
		t.Fatalf("body read after cancel: %v", err)
	}
}

// rawConn is a hand-driven HTTP/2 client connection.
type rawConn struct {
	t   testing.TB
	nc  net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, fr := h2test.Dial(t, addr, 10*time.Second)
	rc := &rawConn{t: t, nc: nc, fr: fr}
	rc.enc = hpack.NewEncoder(&rc.hb)
	return rc
}

func (rc *rawConn) headers(id uint32, end bool, path string) {
	rc.hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "x"}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hb.Bytes(), EndHeaders: true, EndStream: end}); err != nil {
		rc.t.Fatal(err)
	}
}

// next reads frames until one matches.
func (rc *rawConn) next(match func(http2.Frame) bool) http2.Frame {
	rc.t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("read frame: %v", err)
		}
		if match(f) {
			return f
		}
	}
}

func TestMaxConcurrentStreamsAndPing(t *testing.T) {
	release := make(chan struct{})
	e := start(t, h2server.Config{MaxConcurrentStreams: 2}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	rc := dialRaw(t, e.addr)
	sf := rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.SettingsFrame); return ok }).(*http2.SettingsFrame)
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 2 {
		t.Errorf("advertised max streams %d %v", v, ok)
	}
	rc.headers(1, true, "/a")
	rc.headers(3, true, "/a")
	rc.headers(5, true, "/a")
	rst := rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Errorf("got RST %d %v, want stream 5 REFUSED_STREAM", rst.StreamID, rst.ErrCode)
	}
	rc.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	p := rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.PingFrame); return ok }).(*http2.PingFrame)
	if !p.IsAck() || p.Data != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} {
		t.Errorf("ping answer %+v", p)
	}
	// Resetting an admitted stream does not admit another while its
	// handler still runs.
	rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	rc.headers(7, true, "/a")
	rst = rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 7 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Errorf("after a reset: RST %d %v, want stream 7 REFUSED_STREAM", rst.StreamID, rst.ErrCode)
	}
	close(release)
	// The admitted stream that was not reset completes.
	f := rc.next(func(f http2.Frame) bool {
		return f.Header().StreamID != 0 && f.Header().Flags.Has(http2.FlagHeadersEndStream)
	})
	if f.Header().StreamID != 3 {
		t.Errorf("completed stream %d, want 3", f.Header().StreamID)
	}
}

// Shutdown lets a running request finish, refuses new streams with GOAWAY
// and returns once the connection is gone.
func TestGracefulShutdown(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "done")
	}))
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := e.cli.Get(e.url("/slow"))
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{string(b), err}
	}()
	<-started
	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if r := <-res; r.err != nil || r.body != "done" {
		t.Fatalf("running request: %q %v", r.body, r.err)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// After GOAWAY the server ignores streams above its last stream ID, finishes
// the ones below it and then closes the connection.
func TestGoAwayOnRawConn(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	}))
	rc := dialRaw(t, e.addr)
	rc.headers(1, true, "/a")
	<-started
	shut := make(chan error, 1)
	go func() { shut <- e.srv.Shutdown(context.Background()) }()
	ga := rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.LastStreamID != 1 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("GOAWAY last=%d code=%v", ga.LastStreamID, ga.ErrCode)
	}
	rc.headers(3, true, "/a")
	close(release)
	var got []uint32
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			break // the server closed the connection
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) && (f.Header().Type == http2.FrameData || f.Header().Type == http2.FrameHeaders) {
			got = append(got, f.Header().StreamID)
		}
	}
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("completed streams %v, want [1]", got)
	}
	if len(started) != 0 {
		t.Error("a stream above GOAWAY's last stream ID reached the handler")
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

// Bad input ends the connection (GOAWAY or close), never the server.
func TestMalformedInput(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cases := map[string][]byte{
		"bad preface":         []byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
		"no settings first":   append([]byte(http2.ClientPreface), 0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8),
		"frame too large":     append([]byte(http2.ClientPreface), 0, 0, 0, 4, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0),
		"even stream headers": append(append([]byte(http2.ClientPreface), 0, 0, 0, 4, 0, 0, 0, 0, 0), 0, 0, 1, 1, 5, 0, 0, 0, 2, 0x82),
		"data on idle stream": append(append([]byte(http2.ClientPreface), 0, 0, 0, 4, 0, 0, 0, 0, 0), 0, 0, 1, 0, 0, 0, 0, 0, 9, 'x'),
		"bad hpack":           append(append([]byte(http2.ClientPreface), 0, 0, 0, 4, 0, 0, 0, 0, 0), 0, 0, 1, 1, 5, 0, 0, 0, 1, 0xff),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			nc.Write(in)
			// The server must close the connection (after an optional
			// GOAWAY), not hang or crash.
			if _, err := io.Copy(io.Discard, nc); err != nil {
				t.Fatalf("connection not closed: %v", err)
			}
		})
	}
	// The server still serves.
	resp, err := e.cli.Get(e.url("/ok"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// A header block beyond MaxHeaderListSize is refused, the connection lives.
// A header block a little beyond MaxHeaderListSize is refused with
// RST_STREAM and the connection lives on (far beyond it, the framer ends
// the connection, as net/http's does).
func TestHeaderListTooLarge(t *testing.T) {
	e := start(t, h2server.Config{MaxHeaderListSize: 1 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	rc.hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "x"}, {"x-a", strings.Repeat("x", 600)}, {"x-b", strings.Repeat("y", 600)}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rc.hb.Bytes(), EndStream: true, EndHeaders: true})
	rst := rc.next(func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok }).(*http2.RSTStreamFrame)
	if rst.StreamID != 1 {
		t.Fatalf("RST for stream %d", rst.StreamID)
	}
	// The connection still serves (HPACK state stayed in step).
	rc.headers(3, true, "/ok")
	rc.next(func(f http2.Frame) bool {
		return f.Header().StreamID == 3 && f.Header().Flags.Has(http2.FlagHeadersEndStream)
	})
}

// A peer that sends PINGs and never reads the answers is disconnected
// instead of growing the server's write buffer without bound.
func TestPingFlood(t *testing.T) {
	e := start(t, h2server.Config{MaxPending: 1 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	var err error
	for i := 0; i < 2_000_000 && err == nil; i++ {
		err = rc.fr.WritePing(false, [8]byte{})
	}
	if err == nil {
		t.Fatal("2M unread PINGs and the connection is still open")
	}
}

// HTTP/1.1 clients on the same port reach the net/http server.
func TestHTTP1Fallback(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	resp, err := http.Get(e.url("/h1"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if string(b) != "HTTP/1.1 /h1" {
		t.Errorf("got %q", b)
	}
}

func TestHandlerPanicResetsStream(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	resp, err := e.cli.Get(e.url("/p"))
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("no error from a stream whose handler panicked")
	}
}

func FuzzFrames(f *testing.F) {
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 5, 0, 0, 0, 1, 0x82})
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8})
	srv, err := h2server.New(h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	}))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeConn(context.Background(), a)
		}()
		go io.Copy(io.Discard, b)
		b.SetDeadline(time.Now().Add(time.Second))
		b.Write([]byte(http2.ClientPreface))
		b.Write(in)
		b.Close()
		<-done
	})
}

// The request context behaves like a cancelled context.Context once the
// handler returns: AfterFunc callbacks run unless stopped, derived contexts
// end, Err is Canceled.
func TestRequestContextSemantics(t *testing.T) {
	ran := make(chan string, 3)
	var kept context.Context
	var local any
	done := make(chan struct{})
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if ctx.Err() != nil {
			t.Errorf("Err before the end: %v", ctx.Err())
		}
		local = ctx.Value(http.LocalAddrContextKey)
		stop := context.AfterFunc(ctx, func() { ran <- "stopped" })
		context.AfterFunc(ctx, func() { ran <- "kept" })
		if !stop() {
			t.Error("stop of a pending AfterFunc returned false")
		}
		child, cancel := context.WithCancel(context.WithValue(ctx, struct{}{}, 1))
		_ = cancel
		kept = child
		close(done)
	}))
	resp, err := e.cli.Get(e.url("/ctx"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-done
	if a, ok := local.(net.Addr); !ok || a.String() != e.addr {
		t.Errorf("LocalAddrContextKey = %v, want the listener's %s, as net/http gives", local, e.addr)
	}
	select {
	case <-kept.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("derived context not cancelled after the handler returned")
	}
	if !errors.Is(kept.Err(), context.Canceled) {
		t.Errorf("derived Err = %v", kept.Err())
	}
	select {
	case s := <-ran:
		if s != "kept" {
			t.Errorf("AfterFunc %q ran", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc did not run")
	}
	select {
	case s := <-ran:
		t.Errorf("AfterFunc %q ran too", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// Many concurrent unary calls on one connection: every response carries its
// own request's body and trailers (HPACK state and frame order stay
// consistent while handlers append concurrently).
func TestConcurrentUnary(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Len", fmt.Sprint(len(b)))
		w.Write(b)
		w.Header().Set(http.TrailerPrefix+"X-Echo", string(b[:min(len(b), 16)]))
	}))
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				msg := strings.Repeat(fmt.Sprintf("g%di%d-", g, i), 1+(g*i)%3000)
				resp, err := e.cli.Post(e.url("/u"), "text/plain", strings.NewReader(msg))
				if err != nil {
					t.Error(err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != msg || resp.Header.Get("X-Len") != fmt.Sprint(len(msg)) || resp.Trailer.Get("X-Echo") != msg[:min(len(msg), 16)] {
					t.Errorf("call g%d i%d: %d bytes, %v, header %q trailer %q", g, i, len(b), err, resp.Header.Get("X-Len"), resp.Trailer.Get("X-Echo"))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Large writes are queued by reference (written with writev) rather than
// copied: Write must not return before the bytes are on the socket, since
// the handler reuses its buffer at once. Streams interleave on one
// connection, with small-write frames between the large ones.
func TestLargeWritesReuseBuffer(t *testing.T) {
	const chunk, chunks = 200 << 10, 5
	e := start(t, h2server.Config{MaxPending: 256 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seed, _ := strconv.Atoi(r.URL.Query().Get("seed"))
		buf := make([]byte, chunk)
		for i := range chunks {
			for j := range buf {
				buf[j] = byte(seed + i + j/7)
			}
			if _, err := w.Write(buf); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			if _, err := w.Write([]byte{byte(i)}); err != nil { // a small, copied write in between
				t.Errorf("write: %v", err)
				return
			}
		}
	}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := e.cli.Get(e.url(fmt.Sprintf("/big?seed=%d", g)))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Error(err)
				return
			}
			want := make([]byte, 0, chunks*(chunk+1))
			for i := range chunks {
				for j := range chunk {
					want = append(want, byte(g+i+j/7))
				}
				want = append(want, byte(i))
			}
			if !bytes.Equal(got, want) {
				t.Errorf("stream %d: body differs (%d bytes, want %d)", g, len(got), len(want))
			}
		}()
	}
	wg.Wait()
}

// Close after a Shutdown that timed out ends a stream the client keeps open
// (a watch): the handler's context is cancelled and ServeConn returns.
func TestCloseAfterShutdownTimeoutCancelsOpenStreams(t *testing.T) {
	started := make(chan struct{})
	ended := make(chan struct{})
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(started)
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		<-ctx.Done()
		close(ended)
	}))
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequest("POST", e.url("/watch"), pr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if resp, err := e.cli.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-started
	sctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(sctx); err == nil {
		t.Fatal("Shutdown returned nil with a stream open")
	}
	e.srv.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the open stream's context was not cancelled by Close")
	}
}
