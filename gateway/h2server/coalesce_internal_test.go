package h2server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// dataFrame is one DATA frame read back from a write buffer.
type dataFrame struct {
	stream uint32
	size   int
	end    bool
}

// queuedData parses c.wbuf (everything queued and not handed to the
// flusher) and returns its DATA frames and, per stream, their payloads.
func queuedData(t *testing.T, c *conn) ([]dataFrame, map[uint32][]byte) {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(c.wbuf))
	var frames []dataFrame
	payload := map[uint32][]byte{}
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) {
			return frames, payload
		}
		if err != nil {
			t.Fatalf("queued frames do not parse: %v", err)
		}
		df, ok := f.(*http2.DataFrame)
		if !ok {
			t.Fatalf("queued a %v frame, want only DATA", f.Header().Type)
		}
		frames = append(frames, dataFrame{df.StreamID, len(df.Data()), df.StreamEnded()})
		payload[df.StreamID] = append(payload[df.StreamID], df.Data()...)
	}
}

// newTestConn is a conn whose flusher does not run, so that what handlers
// queue stays in wbuf, with send windows wide open.
func newTestConn(t *testing.T) (*conn, net.Conn) {
	t.Helper()
	srv, err := New(Config{}, http.NotFoundHandler())
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	c := newConn(srv, a)
	c.sendWindow = 1 << 30
	return c, b
}

func newTestStream(c *conn, id uint32) *stream {
	return &stream{c: c, id: id, sendWindow: 1 << 30, hdr: http.Header{}, sentHeader: true}
}

func message(i, n int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, n) }

// A stream's messages queued back to back share DATA frames up to the
// peer's frame size; a frame of another stream in between, END_STREAM and a
// hand-off to the flusher each start a new frame.
func TestDataFramesCoalesce(t *testing.T) {
	c, peer := newTestConn(t)
	st1, st3 := newTestStream(c, 1), newTestStream(c, 3)
	var want1, want3 []byte
	send := func(st *stream, msg []byte, end bool) {
		t.Helper()
		if err := st.flush(msg, end); err != nil {
			t.Fatal(err)
		}
		if st.id == 1 {
			want1 = append(want1, msg...)
		} else {
			want3 = append(want3, msg...)
		}
	}

	// 300 messages of 100 bytes: 30,000 bytes in two frames of at most
	// 16 KiB, not 300 frames.
	for i := range 300 {
		send(st1, message(i, 100), false)
	}
	frames, payload := queuedData(t, c)
	if len(frames) != 2 || frames[0].size != c.peerMaxFrame || frames[1].size != 30000-c.peerMaxFrame {
		t.Fatalf("300 messages of 100 bytes queued as %d frames (first %+v), want frames of %d and %d bytes", len(frames), frames[0], c.peerMaxFrame, 30000-c.peerMaxFrame)
	}
	if !bytes.Equal(payload[1], want1) {
		t.Fatal("stream 1's payload differs from what it wrote")
	}
	if st1.sendWindow != 1<<30-30000 || c.sendWindow != 1<<30-30000 {
		t.Fatalf("send windows %d and %d after 30000 bytes, want both %d", st1.sendWindow, c.sendWindow, 1<<30-30000)
	}

	// Interleaved streams keep their frames apart; the last message with
	// END_STREAM joins its stream's open frame and closes it.
	send(st3, message(0, 10), false)
	send(st1, message(1, 10), false)
	send(st1, message(2, 10), true)
	send(st3, message(3, 10), false)
	frames, payload = queuedData(t, c)
	tail := frames[2:]
	wantTail := []dataFrame{{3, 10, false}, {1, 20, true}, {3, 10, false}}
	if len(tail) != len(wantTail) {
		t.Fatalf("interleaved writes queued as %+v, want %+v", tail, wantTail)
	}
	for i := range tail {
		if tail[i] != wantTail[i] {
			t.Fatalf("interleaved writes queued as %+v, want %+v", tail, wantTail)
		}
	}
	if !bytes.Equal(payload[1], want1) || !bytes.Equal(payload[3], want3) {
		t.Fatal("a stream's payload differs from what it wrote")
	}

	// Once the flusher took the buffer, the next write starts a frame.
	go io.Copy(io.Discard, peer)
	c.drain()
	send(st3, message(4, 10), false)
	frames, _ = queuedData(t, c)
	if len(frames) != 1 || frames[0] != (dataFrame{3, 10, false}) {
		t.Fatalf("after a drain queued %+v, want one new frame of 10 bytes", frames)
	}
}

// A frame only grows within the send windows: the part of a write beyond
// them waits for a WINDOW_UPDATE and then joins the same frame, since
// nothing was queued after it.
func TestCoalescedDataRespectsWindows(t *testing.T) {
	c, _ := newTestConn(t)
	st := newTestStream(c, 1)
	st.sendWindow = 150
	if err := st.flush(message(0, 100), false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.flush(message(1, 100), false) }()
	// The second write fills the window and waits for more.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.wmu.Lock()
		closed := st.sendWindow == 0
		c.wmu.Unlock()
		if closed {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("a write beyond the window returned (%v) without waiting", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the second write did not use the rest of the window")
		}
		runtime.Gosched()
	}
	frames, _ := queuedData(t, c)
	if len(frames) != 1 || frames[0].size != 150 || st.sendWindow != 0 {
		t.Fatalf("queued %+v with window %d, want one frame of 150 bytes and window 0", frames, st.sendWindow)
	}
	c.wmu.Lock()
	st.sendWindow += 1000
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	frames, _ = queuedData(t, c)
	if len(frames) != 1 || frames[0].size != 200 || st.sendWindow != 950 {
		t.Fatalf("queued %+v with window %d, want one frame of 200 bytes and window 950", frames, st.sendWindow)
	}
}
