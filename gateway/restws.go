package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
)

// The JSON gateway's streams (POST /v3/watch, /v3/lease/keepalive, election
// observe) also answer a WebSocket upgrade, as etcd's do: etcd wraps its
// grpc-gateway in github.com/tmc/grpc-websocket-proxy. Each text message
// the client sends is one JSON request, each JSON message of the response
// stream is one text message back. The wire behaviour follows that proxy:
//   - the request becomes a POST to the same path whatever the upgrade's
//     method (etcd's request mutator);
//   - "Sec-WebSocket-Protocol: Bearer, TOKEN" becomes "Authorization:
//     Bearer TOKEN" (and the reply names the "Bearer" subprotocol), a
//     "token" cookie likewise; Origin and Referer are passed on;
//   - any origin may connect (CheckOrigin accepts all, as etcd's does);
//     --cors decides what a browser may read of plain responses only.
//
// Unlike that proxy, every goroutine of a session is owned: the session
// ends when either side does or when the gateway closes, and
// restGateway.close waits for it (hijacked connections are outside
// http.Server's shutdown).

// wsUpgrader upgrades with etcd's proxy's settings.
var wsUpgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

// wsForwardedHeaders are the upgrade's headers passed to the stream's
// request.
var wsForwardedHeaders = []string{"Origin", "Referer"}

// errWebSocketDone ends a session's pipes once one side has finished.
var errWebSocketDone = errors.New("websocket session ended")

// serveWebSocket runs one WebSocket session over the JSON handler h.
func (r *restGateway) serveWebSocket(w http.ResponseWriter, req *http.Request, h http.Handler) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	defer r.wg.Done()

	var respHeader http.Header
	if strings.HasPrefix(req.Header.Get("Sec-WebSocket-Protocol"), "Bearer") {
		respHeader = http.Header{"Sec-WebSocket-Protocol": []string{"Bearer"}}
	}
	conn, err := wsUpgrader.Upgrade(w, req, respHeader)
	if err != nil {
		// Upgrade has answered the client with the reason.
		return
	}
	defer conn.Close()
	if r.maxMessageBytes > 0 {
		conn.SetReadLimit(int64(r.maxMessageBytes))
	}

	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(r.ctx, cancel) // the gateway closing ends the session
	defer stop()

	bodyR, bodyW := io.Pipe()
	respR, respW := io.Pipe()
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, req.URL.String(), bodyR)
	if err != nil {
		return
	}
	out.Header.Set("Content-Type", "application/json")
	for _, name := range wsForwardedHeaders {
		if v := req.Header.Get(name); v != "" {
			out.Header.Set(name, v)
		}
	}
	if _, token, ok := strings.Cut(req.Header.Get("Sec-WebSocket-Protocol"), "Bearer,"); ok {
		out.Header.Set("Authorization", "Bearer "+strings.TrimSpace(token))
	}
	if c, err := req.Cookie("token"); err == nil {
		out.Header.Set("Authorization", "Bearer "+c.Value)
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the stream itself
		defer wg.Done()
		defer respW.CloseWithError(io.EOF)
		h.ServeHTTP(&wsResponseWriter{w: respW, header: http.Header{}}, out)
	}()
	go func() { // client messages → request body, one JSON value per line
		defer wg.Done()
		defer cancel()
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				bodyW.CloseWithError(io.EOF)
				return
			}
			msg = append(msg, '\n')
			if _, err := bodyW.Write(msg); err != nil {
				return
			}
		}
	}()

	// Response lines → client messages, on this goroutine.
	scanner := bufio.NewScanner(respR)
	scanner.Buffer(make([]byte, 0, 64*1024), math.MaxInt32)
	for scanner.Scan() {
		line := scanner.Bytes()
		if len(line) == 0 {
			continue
		}
		if err := conn.WriteMessage(websocket.TextMessage, line); err != nil {
			break
		}
	}
	cancel()
	respR.CloseWithError(errWebSocketDone)
	bodyW.CloseWithError(io.EOF) // a clean end of the request side: nothing to log
	conn.Close()                 // ends the read loop
	wg.Wait()
}

// wsResponseWriter is the stream's ResponseWriter: the body goes into the
// session's pipe; status and headers have no WebSocket counterpart.
type wsResponseWriter struct {
	w      io.Writer
	header http.Header
}

func (w *wsResponseWriter) Header() http.Header         { return w.header }
func (w *wsResponseWriter) Write(b []byte) (int, error) { return w.w.Write(b) }
func (w *wsResponseWriter) WriteHeader(int)             {}

// Flush is a no-op: the pipe hands every write over as it happens.
func (w *wsResponseWriter) Flush() {}
