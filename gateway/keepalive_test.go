package gateway_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/internal/h2test"
)

// KeepAlive.Interval and Timeout work on both HTTP/2 servers: a client that
// sends nothing is pinged after Interval and, not answering, disconnected
// (without GOAWAY, as grpc-go does it). Real time, short durations: only
// the order of events is checked.
func TestKeepAliveServerPing(t *testing.T) {
	for _, netHTTP2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "lean", true: "nethttp2"}[netHTTP2], func(t *testing.T) {
			addr := startGateway(t, gateway.Config{NetHTTP2: netHTTP2, KeepAlive: gateway.KeepAlive{Interval: 200 * time.Millisecond, Timeout: 300 * time.Millisecond}}, newFake())
			_, fr := h2test.Dial(t, addr, 20*time.Second)
			pinged := false
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					if !pinged {
						t.Fatalf("connection ended (%v) before the server's PING", err)
					}
					if errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatal("the server did not close the connection after its PING went unanswered")
					}
					return
				}
				switch f := f.(type) {
				case *http2.PingFrame:
					if !f.IsAck() {
						pinged = true
					}
				case *http2.SettingsFrame:
					if !f.IsAck() {
						// Acknowledging the server's SETTINGS is the last
						// thing the client sends.
						if err := fr.WriteSettingsAck(); err != nil {
							t.Fatal(err)
						}
					}
				case *http2.GoAwayFrame:
					t.Errorf("GOAWAY %v before closing an unresponsive connection", f.ErrCode)
				}
			}
		})
	}
}

// A client pinging too often is sent GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings" by gateway/h2server, as by etcd (grpc-go); net/http's
// server answers every ping (KeepAlive documents it).
func TestKeepAliveTooManyPings(t *testing.T) {
	for _, netHTTP2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "lean", true: "nethttp2"}[netHTTP2], func(t *testing.T) {
			lean := !netHTTP2 && os.Getenv("CONCORD_TEST_NET_HTTP2") != "1"
			addr := startGateway(t, gateway.Config{NetHTTP2: netHTTP2}, newFake()) // etcd's defaults
			_, fr := h2test.Dial(t, addr, 20*time.Second)
			for i := byte(1); i <= 4; i++ {
				if err := fr.WritePing(false, [8]byte{i}); err != nil {
					t.Fatal(err)
				}
			}
			// One more PING, answered last if the connection lives.
			if !lean {
				if err := fr.WritePing(false, [8]byte{5}); err != nil {
					t.Fatal(err)
				}
			}
			acks := 0
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("read: %v after %d acks", err, acks)
				}
				switch f := f.(type) {
				case *http2.PingFrame:
					if f.IsAck() {
						acks++
						if !lean && f.Data == [8]byte{5} {
							return
						}
					}
				case *http2.GoAwayFrame:
					if !lean {
						t.Fatalf("net/http's server sent GOAWAY %v", f.ErrCode)
					}
					if f.ErrCode != http2.ErrCodeEnhanceYourCalm || string(f.DebugData()) != "too_many_pings" || acks != 4 {
						t.Fatalf("GOAWAY %v %q after %d acks, want ENHANCE_YOUR_CALM \"too_many_pings\" after 4", f.ErrCode, f.DebugData(), acks)
					}
					return
				}
			}
		})
	}
}

func TestKeepAliveConfig(t *testing.T) {
	var c gateway.Config
	c.SetDefaults()
	if c.KeepAlive != (gateway.KeepAlive{Interval: 2 * time.Hour, Timeout: 20 * time.Second, MinTime: 5 * time.Second}) {
		t.Errorf("defaults %+v, want etcd's", c.KeepAlive)
	}
	c.KeepAlive.Timeout = -time.Second
	if err := c.Validate(); !errors.Is(err, gateway.ErrInvalidConfig) {
		t.Errorf("negative timeout: %v", err)
	}
}
