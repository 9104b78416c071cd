package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/connectivity"

	"github.com/concord-kv/concord/internal/h2test"
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
	nc, fr := h2test.Dial(t, addr, 30*time.Second)
	return &h2Client{t: t, nc: nc, fr: fr}
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

// TestGRPCKeepAliveClients runs grpc-go clients (clientv3) with keep-alive
// against etcd and concord at etcd's default --grpc-keepalive-* (min time
// 5 s): one pinging every 10 s (grpc-go's floor) with PermitWithoutStream
// and no stream open is sent GOAWAY too_many_pings at its third keep-alive
// ping, 30 s in (the first of its pings, which strikes nothing, is grpc-go's
// BDP ping after the Put's response), then reconnects for its next call;
// one with a watch open pings every 10 s undisturbed and its watch delivers
// the next event. The outcomes must be etcd's. The servers run side by
// side: each takes ~30 s.
func TestGRPCKeepAliveClients(t *testing.T) {
	t.Parallel()
	if leanHTTP2Flag() == "--lean-http2=false" {
		// net/http's HTTP/2 server polices no pings (README,
		// --grpc-keepalive-min-time): concord then differs from etcd as
		// documented, and that is what is checked.
		got := keepAliveClientOutcomes(t, startServer(t, concordImpl, serverOptions{}))
		compareOutcomes(t, got, []string{
			"idle client pinging every 10 s without streams: connection lost false",
			"client pinging every 10 s with a watch open: connection lost false",
			"put after the GOAWAY: ok",
			"watch event k=v1",
		})
		return
	}
	var mu sync.Mutex
	outcomes := map[string][]string{}
	t.Run("servers", func(t *testing.T) {
		for _, im := range impls {
			t.Run(im.name, func(t *testing.T) {
				t.Parallel()
				out := keepAliveClientOutcomes(t, startServer(t, im, serverOptions{}))
				mu.Lock()
				outcomes[im.name] = out
				mu.Unlock()
			})
		}
	})
	if len(outcomes["etcd"]) == 0 {
		t.Fatal("no outcomes from etcd")
	}
	t.Logf("etcd's outcomes:\n%s", strings.Join(outcomes["etcd"], "\n"))
	compareOutcomes(t, outcomes["concord"], outcomes["etcd"])
}

func keepAliveClientOutcomes(t *testing.T, s *Server) []string {
	dial := func(permitWithoutStream bool) *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{
			Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
			DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second, PermitWithoutStream: permitWithoutStream,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	idle, watcher := dial(true), dial(false)
	var out []string
	note := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if _, err := idle.Put(ctx, "k", "v0"); err != nil {
		t.Fatal(err)
	}
	wch := watcher.Watch(ctx, "k", clientv3.WithCreatedNotify())
	if r := <-wch; !r.Created {
		t.Fatalf("watch not created: %+v", r)
	}
	start := time.Now()
	wctx, stopWatching := context.WithCancel(ctx)
	watcherLost := make(chan bool, 1)
	go func() { watcherLost <- watcher.ActiveConnection().WaitForStateChange(wctx, connectivity.Ready) }()

	lctx, lcancel := context.WithTimeout(ctx, 70*time.Second)
	lost := idle.ActiveConnection().WaitForStateChange(lctx, connectivity.Ready)
	lcancel()
	note("idle client pinging every 10 s without streams: connection lost %v", lost)
	if d := time.Since(start); lost && d < 25*time.Second {
		t.Errorf("idle client's connection lost after %v, before its third keep-alive ping", d)
	}
	stopWatching()
	note("client pinging every 10 s with a watch open: connection lost %v", <-watcherLost)
	if _, err := idle.Put(ctx, "k", "v1"); err != nil {
		note("put after the GOAWAY: %v", err)
	} else {
		note("put after the GOAWAY: ok")
	}
	select {
	case r := <-wch:
		if len(r.Events) == 1 {
			note("watch event %s=%s", r.Events[0].Kv.Key, r.Events[0].Kv.Value)
		} else {
			note("watch response without the event: %v", r.Err())
		}
	case <-ctx.Done():
		note("no watch event")
	}
	return out
}
