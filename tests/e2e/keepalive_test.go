package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// keepAliveFlags are the --grpc-keepalive-* both servers get: a 1 s
// interval (grpc-go's floor) and timeout, and a 100 ms min time.
var keepAliveFlags = []string{"--grpc-keepalive-interval=1s", "--grpc-keepalive-timeout=1s", "--grpc-keepalive-min-time=100ms"}

// TestGRPCKeepAlive starts etcd and concord with the same --grpc-keepalive-*
// flags and drives raw HTTP/2 connections, as a gRPC client's transport
// would, through the keep-alive: a silent client is pinged after the
// interval and disconnected after the timeout; one that answers stays; one
// that pings too often, without a stream open or with one, gets GOAWAY
// ENHANCE_YOUR_CALM "too_many_pings". The outcomes must be etcd's. (With
// CONCORD_E2E_LEAN_HTTP2=0, net/http's server polices no pings, a
// documented difference: only the server pings are compared.)
func TestGRPCKeepAlive(t *testing.T) {
	t.Parallel()
	police := leanHTTP2Flag() != "--lean-http2=false"
	outcomes := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: keepAliveFlags})
			var out []string
			out = append(out, unansweredPings(t, s.Endpoint())...)
			out = append(out, answeredPings(t, s.Endpoint())...)
			if police {
				out = append(out, tooManyPings(t, s.Endpoint(), false)...)
				out = append(out, tooManyPings(t, s.Endpoint(), true)...)
			}
			outcomes[im.name] = out
		})
	}
	if len(outcomes["etcd"]) == 0 {
		t.Fatal("no outcomes from etcd")
	}
	t.Logf("etcd's outcomes:\n%s", strings.Join(outcomes["etcd"], "\n"))
	compareOutcomes(t, outcomes["concord"], outcomes["etcd"])
}

// h2Client is a raw HTTP/2 client connection.
type h2Client struct {
	t  *testing.T
	nc net.Conn
	fr *http2.Framer
}

func dialH2(t *testing.T, addr string) *h2Client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &h2Client{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// event reads the next frame that matters to the keep-alive and describes
// it: the server's PING (answered when answer is set), a PING ack, GOAWAY,
// or the end of the connection ("closed"). SETTINGS are acknowledged.
func (c *h2Client) event(answer bool) (string, http2.Frame) {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.t.Fatalf("no frame within the deadline")
			}
			return "closed", nil
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.fr.WriteSettingsAck(); err != nil {
					c.t.Fatal(err)
				}
			}
		case *http2.PingFrame:
			if f.IsAck() {
				return fmt.Sprintf("PING ack %d", f.Data[0]), f
			}
			if answer {
				if err := c.fr.WritePing(true, f.Data); err != nil {
					c.t.Fatal(err)
				}
			}
			return "server PING", f
		case *http2.GoAwayFrame:
			return fmt.Sprintf("GOAWAY %v %q last stream %d", f.ErrCode, f.DebugData(), f.LastStreamID), f
		}
	}
}

// unansweredPings: a client that sends nothing after its SETTINGS is
// pinged an interval later and disconnected, without GOAWAY, a timeout
// after that.
func unansweredPings(t *testing.T, addr string) []string {
	c := dialH2(t, addr)
	start := time.Now()
	var out []string
	var pinged time.Time
	for {
		ev, _ := c.event(false)
		out = append(out, "silent client: "+ev)
		switch ev {
		case "server PING":
			if pinged.IsZero() {
				pinged = time.Now()
				if d := pinged.Sub(start); d < 900*time.Millisecond {
					t.Errorf("PING %v after the connection opened, before the 1 s interval", d)
				}
			}
		case "closed":
			if pinged.IsZero() {
				t.Errorf("closed before any PING")
			} else if d := time.Since(pinged); d < 900*time.Millisecond {
				t.Errorf("closed %v after the PING, before the 1 s timeout", d)
			}
			return out
		}
	}
}

// answeredPings: a client that answers the server's PINGs keeps its
// connection through several intervals.
func answeredPings(t *testing.T, addr string) []string {
	c := dialH2(t, addr)
	var out []string
	for len(out) < 3 {
		ev, _ := c.event(true)
		out = append(out, "answering client: "+ev)
		if ev == "closed" {
			return out
		}
	}
	if err := c.fr.WritePing(false, [8]byte{42}); err != nil {
		t.Fatal(err)
	}
	for {
		ev, _ := c.event(true)
		if ev != "server PING" {
			return append(out, "answering client: "+ev)
		}
	}
}

// tooManyPings: a client pinging faster than the min time, or more often
// than every two hours with no stream open, gets GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" at the third strike. With a stream open (a Watch that
// sends nothing), PINGs more than the min time apart are fine.
func tooManyPings(t *testing.T, addr string, stream bool) []string {
	c := dialH2(t, addr)
	what := "no stream: "
	var n byte
	ping := func() string {
		n++
		if err := c.fr.WritePing(false, [8]byte{n}); err != nil {
			t.Fatal(err)
		}
		for {
			if ev, _ := c.event(true); ev != "server PING" {
				return ev
			}
		}
	}
	var out []string
	if stream {
		what = "watch open: "
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/etcdserverpb.Watch/Watch"}, {":authority", addr},
			{"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		// Paced 300 ms apart, three times the min time: no strikes.
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for range 4 {
			out = append(out, what+"paced "+ping())
			<-tick.C
		}
	}
	for range 4 {
		ev := ping()
		out = append(out, what+ev)
		if ev == "closed" || ev[:6] == "GOAWAY" {
			break
		}
	}
	for {
		ev, _ := c.event(true)
		out = append(out, what+ev)
		if ev == "closed" {
			return out
		}
	}
}
