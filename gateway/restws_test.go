package gateway_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/watchfanout"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// TestJSONWebSocketEndsOnClose opens a watch over the JSON gateway's
// WebSocket and closes the gateway under it: Serve and Close return, the
// client sees its connection end, and (TestMain's goleak) no goroutine of
// the session is left behind, although http.Server does not track hijacked
// connections.
func TestJSONWebSocketEndsOnClose(t *testing.T) {
	bus := eventbus.NewMemory()
	defer bus.Close()
	model := watchtest.NewModel(func(r eventbus.Revision) {
		_ = bus.Publish(context.Background(), []eventbus.Revision{r})
	})
	f, err := watchfanout.New(watchfanout.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, bus, model)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := gateway.New(gateway.Config{}, newFake(), gateway.WithWatch(gateway.NewWatchService(f)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx, ln) }()

	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, _, err := websocket.DefaultDialer.DialContext(dctx, "ws://"+ln.Addr().String()+"/v3/watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	create := `{"create_request":{"key":"` + base64.StdEncoding.EncodeToString([]byte("k")) + `"}}`
	if err := c.WriteMessage(websocket.TextMessage, []byte(create)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, msg, err := c.ReadMessage(); err != nil || !strings.Contains(string(msg), `"created":true`) {
		t.Fatalf("first message %s, %v; want the watch created", msg, err)
	}

	closed := make(chan error, 1)
	go func() {
		cancel()
		if err := <-served; err != nil {
			closed <- err
			return
		}
		closed <- g.Close()
	}()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Serve/Close: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the gateway did not close while a WebSocket session was open")
	}
	// The stream's last word may be its error (context canceled), as a
	// closed stream's is over HTTP; then the connection ends.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := 0; ; i++ {
		_, msg, err := c.ReadMessage()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the WebSocket connection stayed open after the gateway closed")
			}
			break
		}
		if i > 0 || !strings.Contains(string(msg), `"error"`) {
			t.Fatalf("read %s after the gateway closed; want at most the stream's error", msg)
		}
	}
}
