package h2conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns a wrapped server side and the raw client side of a
// loopback TCP connection.
func tcpPair(t *testing.T, cfg Config) (*Conn, net.Conn) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := NewListener(raw, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- res{c, err}
	}()
	client, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	server, ok := r.c.(*Conn)
	if !ok {
		t.Fatalf("Accept returned %T, want *Conn", r.c)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// fakeConn records writes; a write blocks while gate is closed (nil channel
// = never blocks) and fails with failErr when set. SetWriteDeadline
// releases blocked writes with a timeout error.
type fakeConn struct {
	net.Conn // nil: unused methods panic

	mu       sync.Mutex
	writes   [][]byte
	gate     chan struct{} // writes wait for it to be closed; nil = open
	failErr  error
	deadline chan struct{} // closed by SetWriteDeadline
	closed   bool
	entered  chan struct{} // receives once per Write call, if non-nil

	reads  int
	source *bytes.Reader
}

func newFakeConn() *fakeConn { return &fakeConn{deadline: make(chan struct{})} }

func (f *fakeConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-f.deadline:
			return 0, os.ErrDeadlineExceeded
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failErr != nil {
		return 0, f.failErr
	}
	f.writes = append(f.writes, bytes.Clone(p))
	return len(p), nil
}

func (f *fakeConn) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return f.source.Read(p)
}

func (f *fakeConn) SetWriteDeadline(time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.deadline:
	default:
		close(f.deadline)
	}
	return nil
}

func (f *fakeConn) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeConn) written() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return bytes.Join(f.writes, nil)
}

func (f *fakeConn) writeCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes)
}

func TestConfigValidate(t *testing.T) {
	if _, err := New(newFakeConn(), Config{MaxPending: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("MaxPending -1: err = %v, want ErrInvalidConfig", err)
	}
	if _, err := NewListener(nil, Config{CloseFlushTimeout: -time.Second}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative CloseFlushTimeout: err = %v, want ErrInvalidConfig", err)
	}
}

// A lone small write reaches the peer without any Flush, later write or
// Close: nothing waits for more data.
func TestWriteFlushedWhenIdle(t *testing.T) {
	server, client := tcpPair(t, Config{})
	if _, err := server.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := client.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("peer did not receive an unflushed write: %v", err)
	}
	if string(got) != "ping" {
		t.Fatalf("got %q", got)
	}
}

// Every byte arrives once, in order, across many writes of varying sizes
// (some larger than MaxPending), with back-pressure engaged.
func TestOrderAndNoLoss(t *testing.T) {
	// Writes of 2000 bytes and more bypass the pending buffer.
	server, client := tcpPair(t, Config{MaxPending: 1000, DirectWrite: 2000})
	var want bytes.Buffer
	var seq byte
	for i := range 3000 {
		p := make([]byte, 1+i%2500)
		for j := range p {
			p[j] = seq
			seq++
		}
		want.Write(p)
	}
	errc := make(chan error, 1)
	go func() {
		data := want.Bytes()
		for i := 0; len(data) > 0; i++ {
			n := min(len(data), 1+i%2500)
			if _, err := server.Write(data[:n]); err != nil {
				errc <- err
				return
			}
			data = data[n:]
		}
		errc <- server.Close() // flushes the rest, then EOF
	}()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("received %d bytes, want %d; first difference at %d", len(got), want.Len(), firstDiff(got, want.Bytes()))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Concurrent writers: each Write arrives whole (never interleaved with
// another), and each writer's writes arrive in its order.
func TestConcurrentWriters(t *testing.T) {
	t.Run("buffered", func(t *testing.T) { testConcurrentWriters(t, Config{MaxPending: 4096, DirectWrite: -1}) })
	// Every other writer's records are direct writes.
	t.Run("mixed", func(t *testing.T) { testConcurrentWriters(t, Config{MaxPending: 4096, DirectWrite: 64}) })
}

func testConcurrentWriters(t *testing.T, cfg Config) {
	server, client := tcpPair(t, cfg)
	const writers, perWriter = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		recLen := 32 + 32*(w%2) // 64 bytes: direct in "mixed"
		wg.Go(func() {
			rec := make([]byte, recLen)
			for i := range perWriter {
				binary.BigEndian.PutUint32(rec[0:], uint32(w))
				binary.BigEndian.PutUint32(rec[4:], uint32(i))
				for j := 8; j < recLen; j++ {
					rec[j] = byte(w + i + j)
				}
				if _, err := server.Write(rec); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	done := make(chan error, 1)
	go func() {
		wg.Wait()
		done <- server.Close()
	}()
	next := make([]int, writers)
	for range writers * perWriter {
		hdr := make([]byte, 8)
		if _, err := io.ReadFull(client, hdr); err != nil {
			t.Fatal(err)
		}
		w, i := int(binary.BigEndian.Uint32(hdr[0:])), int(binary.BigEndian.Uint32(hdr[4:]))
		if w >= writers || i != next[w] {
			t.Fatalf("record from writer %d seq %d, want seq %d", w, i, next[min(w, writers-1)])
		}
		recLen := 32 + 32*(w%2)
		rec := make([]byte, recLen)
		copy(rec, hdr)
		if _, err := io.ReadFull(client, rec[8:]); err != nil {
			t.Fatal(err)
		}
		for j := 8; j < recLen; j++ {
			if rec[j] != byte(w+i+j) {
				t.Fatalf("record (%d,%d) corrupted at byte %d: interleaved writes", w, i, j)
			}
		}
		next[w]++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after all records: n=%d err=%v, want EOF", n, err)
	}
}

// Writes made while a write is in progress share the next system call.
func TestCoalescesWhileWriting(t *testing.T) {
	f := newFakeConn()
	f.gate = make(chan struct{})
	f.entered = make(chan struct{}, 16)
	c, err := New(f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	<-f.entered // the flusher is now blocked writing "a"
	for _, s := range []string{"b", "c", "d", "e"} {
		if _, err := c.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	close(f.gate)
	f.gate, f.entered = nil, nil
	f.mu.Unlock()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := string(f.written()); got != "abcde" {
		t.Fatalf("written %q, want abcde", got)
	}
	if n := f.writeCalls(); n != 2 {
		t.Fatalf("%d underlying writes, want 2 (a, then bcde together)", n)
	}
}

// A direct write waits for the bytes accepted before it, is written in one
// piece by itself, and what is written meanwhile follows it.
func TestDirectWriteOrder(t *testing.T) {
	f := newFakeConn()
	gate := make(chan struct{})
	f.gate = gate
	f.entered = make(chan struct{}, 16)
	c, err := New(f, Config{DirectWrite: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	<-f.entered // the flusher is blocked writing "a"
	var released atomic.Bool
	direct := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("DIRECT-WRITE"))
		if err == nil && !released.Load() {
			err = errors.New("direct write returned before the bytes before it were written")
		}
		direct <- err
	}()
	released.Store(true)
	close(gate)
	if err := <-direct; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	got := make([]string, len(f.writes))
	for i, w := range f.writes {
		got[i] = string(w)
	}
	f.mu.Unlock()
	if want := []string{"a", "DIRECT-WRITE", "b"}; !slices.Equal(got, want) {
		t.Fatalf("underlying writes %q, want %q", got, want)
	}
}

// A Write that would exceed MaxPending waits until the flusher has taken
// the pending bytes.
func TestBackPressure(t *testing.T) {
	f := newFakeConn()
	gate := make(chan struct{})
	f.gate = gate
	f.entered = make(chan struct{}, 16)
	c, err := New(f, Config{MaxPending: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("12345678")); err != nil { // taken by the flusher
		t.Fatal(err)
	}
	<-f.entered
	if _, err := c.Write([]byte("abcdefgh")); err != nil { // fills pending
		t.Fatal(err)
	}
	var released atomic.Bool
	returned := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("X"))
		if err == nil && !released.Load() {
			err = errors.New("Write returned while MaxPending bytes were waiting")
		}
		returned <- err
	}()
	released.Store(true)
	close(gate)
	if err := <-returned; err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := string(f.written()); got != "12345678abcdefghX" {
		t.Fatalf("written %q", got)
	}
}

// A failed write is sticky: later writes and flushes report it.
func TestWriteErrorSticky(t *testing.T) {
	f := newFakeConn()
	boom := errors.New("boom")
	f.failErr = boom
	c, err := New(f, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("first write: %v (errors surface asynchronously)", err)
	}
	if err := c.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush = %v, want boom", err)
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, boom) {
		t.Fatalf("Write after failure = %v, want boom", err)
	}
	if err := c.CloseWrite(); !errors.Is(err, boom) {
		t.Fatalf("CloseWrite after failure = %v, want boom", err)
	}
}

// Close writes what is pending, then closes; it is idempotent, and the
// connection is unusable afterwards.
func TestCloseFlushesAndIsIdempotent(t *testing.T) {
	server, client := tcpPair(t, Config{})
	for range 100 {
		if _, err := server.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	if err := server.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1000 {
		t.Fatalf("peer got %d bytes before EOF, want 1000", len(got))
	}
	if _, err := server.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
	if err := server.Flush(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Flush after Close = %v, want net.ErrClosed", err)
	}
	if _, err := server.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

// Close does not hang on a peer that never reads: the final flush is
// bounded by the write deadline Close sets.
func TestCloseBoundedWhenPeerStuck(t *testing.T) {
	f := newFakeConn()
	f.gate = make(chan struct{}) // never opened: the peer does not read
	f.entered = make(chan struct{}, 16)
	c, err := New(f, Config{CloseFlushTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("stuck")); err != nil {
		t.Fatal(err)
	}
	<-f.entered
	if _, err := c.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !f.closed {
		t.Fatal("underlying connection not closed")
	}
	if err := c.Flush(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Flush after a timed-out close = %v, want the deadline error", err)
	}
}

// A writer blocked on back-pressure is released by Close.
func TestCloseReleasesBlockedWriter(t *testing.T) {
	f := newFakeConn()
	f.gate = make(chan struct{})
	f.entered = make(chan struct{}, 16)
	c, err := New(f, Config{MaxPending: 4, CloseFlushTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("1234")); err != nil {
		t.Fatal(err)
	}
	<-f.entered
	if _, err := c.Write([]byte("5678")); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("9"))
		blocked <- err
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err == nil {
		t.Fatal("blocked Write succeeded after Close")
	}
}

// Small reads are served from one underlying read.
func TestReadBuffered(t *testing.T) {
	f := newFakeConn()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	f.source = bytes.NewReader(payload)
	c, err := New(f, Config{ReadBuffer: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []byte
	hdr := make([]byte, 9)
	for len(got) < len(payload) {
		n, err := c.Read(hdr)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr[:n]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("read data differs")
	}
	if f.reads != 1 {
		t.Fatalf("%d underlying reads for 1 KiB in 9-byte reads, want 1", f.reads)
	}
	if n, err := c.Read(hdr); n != 0 || err != io.EOF {
		t.Fatalf("at end: n=%d err=%v, want EOF", n, err)
	}
	// Reads at least as large as the buffer bypass it.
	f.source = bytes.NewReader(payload)
	big := make([]byte, 8192)
	if n, err := c.Read(big); err != nil || n != len(payload) {
		t.Fatalf("large read: n=%d err=%v", n, err)
	}
}

// CloseWrite delivers everything written, then EOF, while the connection
// stays open for reading.
func TestCloseWrite(t *testing.T) {
	server, client := tcpPair(t, Config{})
	if _, err := server.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := server.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "last words" {
		t.Fatalf("got %q", got)
	}
	if _, err := client.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("read after CloseWrite: %q, %v", buf, err)
	}
}
