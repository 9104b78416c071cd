// Package h2test opens raw HTTP/2 client connections for tests that need
// to see or send individual frames (PINGs, GOAWAY, SETTINGS), which no
// HTTP/2 client library exposes.
package h2test

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Dial opens a cleartext HTTP/2 connection to addr (prior knowledge, as
// gRPC clients do), sends the client preface and an empty SETTINGS frame,
// and returns the connection and a framer over it that reads header blocks
// as MetaHeadersFrames. Everything on the connection must happen within
// timeout; the connection is closed when the test ends.
func Dial(t testing.TB, addr string, timeout time.Duration) (net.Conn, *http2.Framer) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(timeout))
	fr := http2.NewFramer(nc, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return nc, fr
}
