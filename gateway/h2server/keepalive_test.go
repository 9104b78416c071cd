package h2server_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/concord-kv/concord/gateway/h2server"
	"github.com/concord-kv/concord/internal/clocktest"
)

// parkTimeout bounds, in real time, how long a test waits for the server's
// keep-alive goroutine to wait on the manual clock again.
const parkTimeout = 10 * time.Second

// roundTrip makes sure the server has read everything rc wrote so far: it
// sends a PING and reads frames until its ack, returning the frames read
// before it.
func (rc *rawConn) roundTrip(data [8]byte) []http2.Frame {
	rc.t.Helper()
	if err := rc.fr.WritePing(false, data); err != nil {
		rc.t.Fatal(err)
	}
	var before []http2.Frame
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("read frame: %v (frames before: %v)", err, before)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == data {
			return before
		}
		before = append(before, copyFrame(f))
	}
}

// copyFrame keeps what a test checks of f (the Framer reuses frames).
func copyFrame(f http2.Frame) http2.Frame {
	switch f := f.(type) {
	case *http2.PingFrame:
		c := *f
		return &c
	case *http2.GoAwayFrame:
		c := *f
		return &c
	}
	return f
}

// untilClosed reads frames until the connection ends, returning them and
// the read error.
func (rc *rawConn) untilClosed() ([]http2.Frame, error) {
	var got []http2.Frame
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return got, err
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			c := *ga
			c2 := append([]byte(nil), ga.DebugData()...)
			got = append(got, &goAway{GoAwayFrame: c, debug: string(c2)})
			continue
		}
		got = append(got, copyFrame(f))
	}
}

type goAway struct {
	http2.GoAwayFrame
	debug string
}

func isServerPing(f http2.Frame) bool {
	p, ok := f.(*http2.PingFrame)
	return ok && !p.IsAck()
}

func countServerPings(fs []http2.Frame) int {
	n := 0
	for _, f := range fs {
		if isServerPing(f) {
			n++
		}
	}
	return n
}

func awaitPark(t *testing.T, clk *clocktest.Clock) {
	t.Helper()
	if !clk.AwaitWaiters(1, parkTimeout) {
		t.Fatal("the keep-alive goroutine did not wait on the clock")
	}
}

// The server pings a connection after KeepAlive.Time without reading from
// it, waits KeepAlive.Timeout for anything to arrive, and closes it
// (without GOAWAY, as grpc-go) when nothing does; anything read meanwhile
// postpones the next PING to Time after it.
func TestKeepAlivePingAndTimeout(t *testing.T) {
	clk := clocktest.New()
	e := start(t, h2server.Config{KeepAlive: h2server.KeepAlive{Time: 10 * time.Second, Timeout: 5 * time.Second}, Clock: clk},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	if got := rc.roundTrip([8]byte{1}); countServerPings(got) != 0 {
		t.Fatalf("PING before any time passed: %v", got)
	}
	awaitPark(t, clk)
	clk.Advance(9 * time.Second)
	if got := rc.roundTrip([8]byte{2}); countServerPings(got) != 0 {
		t.Fatalf("PING 9 s into a 10 s interval: %v", got)
	}
	awaitPark(t, clk)
	// The client's PING at 9 s was read: 10 s of silence after it is due
	// at 19 s. The timer fires at 10 s, sees the read and waits until 19 s.
	clk.Advance(time.Second)
	awaitPark(t, clk)
	clk.Advance(9 * time.Second)
	awaitPark(t, clk)
	p := rc.next(isServerPing).(*http2.PingFrame)
	if p.Data != [8]byte{} {
		t.Errorf("keep-alive PING data %x, want zeros (grpc-go's)", p.Data)
	}
	// Answered 1 s later: the connection lives on, and the next PING is
	// due 10 s after the answer.
	clk.Advance(time.Second)
	if err := rc.fr.WritePing(true, p.Data); err != nil {
		t.Fatal(err)
	}
	rc.roundTrip([8]byte{3})
	awaitPark(t, clk)
	clk.Advance(4 * time.Second) // the timeout's end: something was read
	awaitPark(t, clk)
	clk.Advance(4 * time.Second) // 8 s after the answer
	if got := rc.roundTrip([8]byte{4}); countServerPings(got) != 0 {
		t.Fatalf("PING 8 s after the last read: %v", got)
	}
	// That PING was itself read (at 28 s): silence from here on.
	awaitPark(t, clk)
	clk.Advance(10 * time.Second)
	awaitPark(t, clk)
	rc.next(isServerPing)
	clk.Advance(4 * time.Second)
	awaitPark(t, clk)
	clk.Advance(time.Second)
	got, err := rc.untilClosed()
	if err == nil || !(errors.Is(err, io.EOF) || isReset(err)) {
		t.Fatalf("after an unanswered PING: read error %v, want the connection closed", err)
	}
	for _, f := range got {
		if _, ok := f.(*goAway); ok {
			t.Errorf("GOAWAY before closing an unresponsive connection (grpc-go sends none): %+v", f)
		}
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// A client that pings more often than KeepAlive.MinTime (here: with no
// stream open, more often than every two hours) gets two strikes for free
// and GOAWAY ENHANCE_YOUR_CALM "too_many_pings" at the third, after the
// PING's ack, and the connection closes.
func TestTooManyPingsWithoutStream(t *testing.T) {
	clk := clocktest.New()
	e := start(t, h2server.Config{KeepAlive: h2server.KeepAlive{MinTime: 5 * time.Second}, Clock: clk},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	// 10 s apart: within MinTime, but without a stream the bar is 2 h.
	for i := byte(1); i <= 3; i++ {
		rc.roundTrip([8]byte{i})
		clk.Advance(10 * time.Second)
	}
	if err := rc.fr.WritePing(false, [8]byte{4}); err != nil {
		t.Fatal(err)
	}
	checkTooManyPings(t, rc, 0, [8]byte{4})
}

// checkTooManyPings reads the last PING's ack, then GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings" naming lastID, then the end of the
// connection.
func checkTooManyPings(t *testing.T, rc *rawConn, lastID uint32, last [8]byte) {
	t.Helper()
	got, err := rc.untilClosed()
	if err == nil {
		t.Fatal("connection still open")
	}
	var acked bool
	for _, f := range got {
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == last {
			acked = true
		}
		if ga, ok := f.(*goAway); ok {
			if !acked {
				t.Error("GOAWAY before the ack of the last PING")
			}
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || ga.debug != "too_many_pings" || ga.LastStreamID != lastID {
				t.Errorf("GOAWAY %v %q last stream %d, want ENHANCE_YOUR_CALM \"too_many_pings\" %d", ga.ErrCode, ga.debug, ga.LastStreamID, lastID)
			}
			return
		}
	}
	t.Fatalf("no GOAWAY before the connection closed (%v): %v", err, got)
}

// With a stream open, PINGs MinTime apart are fine however many; faster
// ones are strikes, which the server clears by sending HEADERS or DATA,
// and the third strike in a row ends the connection.
func TestPingPolicyWithStream(t *testing.T) {
	clk := clocktest.New()
	send := make(chan struct{})
	e := start(t, h2server.Config{KeepAlive: h2server.KeepAlive{MinTime: 5 * time.Second}, Clock: clk},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for {
				select {
				case <-send:
					io.WriteString(w, "x")
					w.(http.Flusher).Flush()
				case <-r.Context().Done():
					return
				}
			}
		}))
	rc := dialRaw(t, e.addr)
	rc.headers(1, false, "/stream")
	rc.roundTrip([8]byte{0}) // the stream is open once HEADERS was read
	for i := byte(1); i <= 6; i++ {
		clk.Advance(5 * time.Second)
		rc.roundTrip([8]byte{i}) // fails on GOAWAY and close
	}
	// Two quick PINGs are two strikes; DATA from the server clears them.
	rc.roundTrip([8]byte{7})
	rc.roundTrip([8]byte{8})
	send <- struct{}{}
	rc.next(func(f http2.Frame) bool { return f.Header().Type == http2.FrameData && f.Header().StreamID == 1 })
	rc.roundTrip([8]byte{9})  // clears, no strike
	rc.roundTrip([8]byte{10}) // strike 1
	rc.roundTrip([8]byte{11}) // strike 2
	if err := rc.fr.WritePing(false, [8]byte{12}); err != nil {
		t.Fatal(err)
	}
	checkTooManyPings(t, rc, 1, [8]byte{12})
}

// PermitWithoutStream applies MinTime to a connection with no stream.
func TestPingPolicyPermitWithoutStream(t *testing.T) {
	clk := clocktest.New()
	e := start(t, h2server.Config{KeepAlive: h2server.KeepAlive{MinTime: 5 * time.Second, PermitWithoutStream: true}, Clock: clk},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	for i := byte(1); i <= 6; i++ {
		rc.roundTrip([8]byte{i})
		clk.Advance(5 * time.Second)
	}
	rc.roundTrip([8]byte{7}) // 5 s after the previous one
	rc.roundTrip([8]byte{8}) // strike 1
	rc.roundTrip([8]byte{9}) // strike 2
	if err := rc.fr.WritePing(false, [8]byte{10}); err != nil {
		t.Fatal(err)
	}
	checkTooManyPings(t, rc, 0, [8]byte{10})
}

// Without KeepAlive the server neither pings nor polices pings.
func TestNoKeepAliveByDefault(t *testing.T) {
	e := start(t, h2server.Config{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rc := dialRaw(t, e.addr)
	for i := 0; i < 100; i++ {
		if got := rc.roundTrip([8]byte{byte(i)}); countServerPings(got) != 0 {
			t.Fatalf("server PING without KeepAlive: %v", got)
		}
	}
}

func TestKeepAliveValidate(t *testing.T) {
	for _, ka := range []h2server.KeepAlive{{Time: -1}, {Timeout: -1}, {MinTime: -1}} {
		if _, err := h2server.New(h2server.Config{KeepAlive: ka}, http.NotFoundHandler()); !errors.Is(err, h2server.ErrInvalidConfig) {
			t.Errorf("%+v: err %v, want ErrInvalidConfig", ka, err)
		}
	}
}

// Every DATA frame the server sends clears the ping strikes, not only the
// first of a long write: grpc-go clients send a BDP ping after receiving
// data, several during one large response.
func TestPingStrikesClearedPerDataFrame(t *testing.T) {
	clk := clocktest.New()
	const window = 65535 // the client's initial windows
	e := start(t, h2server.Config{KeepAlive: h2server.KeepAlive{MinTime: 5 * time.Second}, Clock: clk},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write(make([]byte, 6*window)) // one Write, many frames
		}))
	rc := dialRaw(t, e.addr)
	rc.headers(1, true, "/big")
	got := 0
	for cycle := byte(1); cycle <= 5; cycle++ {
		// The server is blocked on the window once it has sent it all.
		for got < int(cycle)*window {
			f := rc.next(func(f http2.Frame) bool {
				if _, ok := f.(*http2.GoAwayFrame); ok {
					t.Fatalf("GOAWAY in cycle %d", cycle)
				}
				return f.Header().Type == http2.FrameData && f.Header().StreamID == 1
			})
			got += len(f.(*http2.DataFrame).Data())
		}
		// Data was sent since the last PING: this one is no strike.
		rc.roundTrip([8]byte{cycle})
		rc.fr.WriteWindowUpdate(0, window)
		rc.fr.WriteWindowUpdate(1, window)
	}
	rc.next(func(f http2.Frame) bool {
		if _, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatal("GOAWAY")
		}
		return f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream)
	})
}
