package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// jsonCall is one request to etcd's JSON gateway. stream marks a streaming
// method (watch, lease keep-alive): only its first `messages` lines are read.
type jsonCall struct {
	method, path, body string
	stream             bool
	messages           int
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// jsonGatewayCalls covers every service of the JSON gateway with etcd's
// request shapes, the errors a curl user meets, and the paths and methods it
// does not serve. {{lease}} is replaced by the ID of the lease granted first.
var jsonGatewayCalls = []jsonCall{
	{method: "POST", path: "/v3/kv/put", body: `{"key":"` + b64("foo") + `","value":"` + b64("bar") + `"}`},
	{method: "POST", path: "/v3/kv/put", body: `{"key":"` + b64("foo") + `","value":"` + b64("baz") + `","prev_kv":true}`},
	{method: "POST", path: "/v3/kv/put", body: `{"key":"` + b64("fop") + `","value":"` + b64("x") + `"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("foo") + `"}`},
	{method: "POST", path: "/v3beta/kv/range", body: `{"key":"` + b64("foo") + `"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("fo") + `","range_end":"` + b64("fp") + `","sort_order":"DESCEND","sort_target":"KEY","limit":"1"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("f") + `","range_end":"` + b64("g") + `","count_only":true}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("f") + `","range_end":"` + b64("g") + `","keys_only":true,"revision":"2"}`},
	{method: "POST", path: "/v3/kv/txn", body: `{"compare":[{"key":"` + b64("foo") + `","result":"EQUAL","target":"VALUE","value":"` + b64("baz") + `"}],` +
		`"success":[{"request_put":{"key":"` + b64("t") + `","value":"` + b64("1") + `"}},{"request_range":{"key":"` + b64("foo") + `"}}],` +
		`"failure":[{"request_delete_range":{"key":"` + b64("foo") + `"}}]}`},
	{method: "POST", path: "/v3/kv/txn", body: `{"compare":[{"key":"` + b64("foo") + `","target":"MOD","mod_revision":"1"}],"failure":[{"request_range":{"key":"` + b64("t") + `"}}]}`},
	{method: "POST", path: "/v3/kv/deleterange", body: `{"key":"` + b64("fop") + `","prev_kv":true}`},
	{method: "POST", path: "/v3/kv/compaction", body: `{"revision":"3","physical":true}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("foo") + `","revision":"2"}`},
	{method: "POST", path: "/v3/watch", body: `{"create_request":{"key":"` + b64("f") + `","range_end":"` + b64("g") + `","start_revision":"4","prev_kv":true}}`, stream: true, messages: 2},
	{method: "POST", path: "/v3/watch", body: `{"create_request":{"key":"` + b64("foo") + `","start_revision":"2"}}`, stream: true, messages: 1},

	// Errors a user meets first.
	{method: "POST", path: "/v3/kv/put", body: `{"key":""}`},
	{method: "POST", path: "/v3/kv/put", body: `{"key":"` + b64("k") + `","lease":"12345"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("a") + `","range_end":"` + b64("b") + `","revision":"1000"}`},
	{method: "POST", path: "/v3/kv/range", body: `not json`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"not base64!"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("foo") + `","unknown_field":1}`},
	{method: "GET", path: "/v3/kv/range"},
	{method: "POST", path: "/v3/kv/nothing", body: `{}`},

	// Leases.
	{method: "POST", path: "/v3/lease/grant", body: `{"TTL":"60"}`},
	{method: "POST", path: "/v3/kv/put", body: `{"key":"` + b64("leased") + `","value":"` + b64("v") + `","lease":"{{lease}}"}`},
	{method: "POST", path: "/v3/lease/timetolive", body: `{"ID":"{{lease}}","keys":true}`},
	{method: "POST", path: "/v3/lease/leases", body: `{}`},
	{method: "POST", path: "/v3/lease/keepalive", body: `{"ID":"{{lease}}"}`, stream: true, messages: 1},
	{method: "POST", path: "/v3/lease/revoke", body: `{"ID":"{{lease}}"}`},
	{method: "POST", path: "/v3/lease/revoke", body: `{"ID":"{{lease}}"}`},
	{method: "POST", path: "/v3/kv/range", body: `{"key":"` + b64("leased") + `"}`},

	// Cluster and maintenance.
	{method: "POST", path: "/v3/cluster/member/list", body: `{}`},
	{method: "POST", path: "/v3/maintenance/status", body: `{}`},
	{method: "POST", path: "/v3/maintenance/alarm", body: `{"action":"GET"}`},

	// Locks and elections (etcd's v3lock and v3election services).
	{method: "POST", path: "/v3/lock/lock", body: `{"name":"` + b64("mylock") + `"}`},
	{method: "POST", path: "/v3/election/leader", body: `{"name":"` + b64("myelection") + `"}`},
}

var (
	// reLeaseID finds the ID of a granted lease in a response.
	reLeaseID = regexp.MustCompile(`"ID":\s*"(\d+)"`)
	// jsonIDFields hold IDs that differ between any two clusters.
	jsonIDFields = map[string]bool{"cluster_id": true, "member_id": true, "ID": true, "leader": true, "memberID": true}
	// jsonVolatileFields depend on each server's internals (raft, storage
	// layout) and are compared by presence only.
	jsonVolatileFields = map[string]bool{"raft_term": true, "raftTerm": true, "raftIndex": true, "raftAppliedIndex": true,
		"dbSize": true, "dbSizeInUse": true, "peerURLs": true, "clientURLs": true}
)

// normalizeJSON decodes one JSON document and writes it back with sorted
// keys (protojson's spacing is randomized on purpose), replacing IDs by
// placeholders that keep equality and volatile numbers by "<n>".
func normalizeJSON(n *normalizer, s string) string {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return "<not JSON> " + s
	}
	var walk func(v any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			// Sorted, so that placeholders are numbered the same way for
			// both servers.
			for _, k := range slices.Sorted(maps.Keys(x)) {
				e := x[k]
				switch {
				case jsonIDFields[k]:
					x[k] = n.id(fmt.Sprint(e))
				case jsonVolatileFields[k]:
					x[k] = "<n>"
				case k == "TTL" && fmt.Sprint(e) != "-1" && fmt.Sprint(e) != "60":
					// A remaining TTL counts down on its own clock.
					x[k] = "<ttl>"
				case k == "key" && strings.HasPrefix(fmt.Sprint(e), b64("mylock/")[:8]):
					// A lock's key ends with the owning lease's ID in hex.
					x[k] = "<lock key>"
				default:
					x[k] = walk(e)
				}
			}
			return x
		case []any:
			for i := range x {
				x[i] = walk(x[i])
			}
			return x
		case string:
			// protobuf's error messages randomly use a non-breaking space
			// after "proto:", so that nobody depends on their exact text.
			return strings.ReplaceAll(x, "\u00a0", " ")
		}
		return v
	}
	var out strings.Builder
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(walk(v)); err != nil {
		return "<unencodable> " + s
	}
	return strings.TrimSuffix(out.String(), "\n")
}

// runJSONGateway runs the calls against s and returns a transcript of status
// codes and normalized bodies.
func runJSONGateway(t *testing.T, s *Server) []string {
	ctx := testCtx(t)
	n := newNormalizer()
	var lease string
	var out []string
	for _, c := range jsonGatewayCalls {
		body := strings.ReplaceAll(c.body, "{{lease}}", lease)
		line := fmt.Sprintf("%s %s %s\n", c.method, c.path, c.body)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		req, err := http.NewRequestWithContext(rctx, c.method, s.clientURL()+c.path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", line, err)
		}
		line += fmt.Sprintf("  status %d\n", resp.StatusCode)
		if c.stream {
			sc := bufio.NewScanner(resp.Body)
			for i := 0; i < c.messages && sc.Scan(); i++ {
				line += "  " + normalizeJSON(n, sc.Text()) + "\n"
			}
			if err := sc.Err(); err != nil {
				t.Fatalf("%s: reading the stream: %v", line, err)
			}
		} else {
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			line += "  " + normalizeJSON(n, string(b)) + "\n"
			if lease == "" && c.path == "/v3/lease/grant" {
				if m := reLeaseID.FindSubmatch(b); m != nil {
					lease = string(m[1])
				}
			}
		}
		resp.Body.Close()
		cancel()
		out = append(out, line)
	}
	return out
}

// TestJSONGateway sends the same curl-style JSON requests to etcd and to
// concord and requires the same status codes and bodies, IDs and raft
// internals aside.
func TestJSONGateway(t *testing.T) {
	t.Parallel()
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			transcripts[im.name] = runJSONGateway(t, startServer(t, im, serverOptions{}))
		})
	}
	if n := len(transcripts[etcdImpl.name]); n != len(jsonGatewayCalls) {
		t.Errorf("etcd's transcript has %d of %d calls", n, len(jsonGatewayCalls))
	}
	compareTranscripts(t, concordImpl.name, transcripts[etcdImpl.name], transcripts[concordImpl.name])
}

// runJSONWebSocket drives the JSON gateway's streams over WebSocket, as a
// browser would through etcd's gateway: a watch (created, then an event for
// a put made over plain JSON) and a lease keep-alive, with the token
// subprotocol a browser uses for credentials. It returns a transcript of
// normalized messages.
func runJSONWebSocket(t *testing.T, s *Server) []string {
	ctx := testCtx(t)
	n := newNormalizer()
	wsURL := "ws" + strings.TrimPrefix(s.clientURL(), "http")
	post := func(path, body string) string {
		req, err := http.NewRequestWithContext(ctx, "POST", s.clientURL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, b := httpDo(t, req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: status %d, %s", path, resp.StatusCode, b)
		}
		return b
	}
	var out []string
	hide := strings.NewReplacer() // of IDs in what is sent
	dial := func(path string) *websocket.Conn {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		hdr := http.Header{"Sec-WebSocket-Protocol": []string{"Bearer, some-token"}}
		c, resp, err := websocket.DefaultDialer.DialContext(dctx, wsURL+path, hdr)
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		out = append(out, fmt.Sprintf("dial %s: status %d, subprotocol %q", path, resp.StatusCode, c.Subprotocol()))
		t.Cleanup(func() { c.Close() })
		return c
	}
	exchange := func(c *websocket.Conn, send string, replies int) {
		if send != "" {
			if err := c.WriteMessage(websocket.TextMessage, []byte(send)); err != nil {
				t.Fatalf("send %s: %v", send, err)
			}
			out = append(out, "send "+hide.Replace(send))
		}
		for range replies {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			typ, msg, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("after %q: %v", send, err)
			}
			out = append(out, fmt.Sprintf("  recv type %d %s", typ, normalizeJSON(n, string(msg))))
		}
	}

	w := dial("/v3/watch")
	exchange(w, `{"create_request":{"key":"`+b64("ws/")+`","range_end":"`+b64("ws0")+`"}}`, 1)
	post("/v3/kv/put", `{"key":"`+b64("ws/a")+`","value":"`+b64("1")+`"}`)
	exchange(w, "", 1)
	exchange(w, `{"create_request":{"key":"`+b64("ws/a")+`","start_revision":"1"}}`, 2)
	// A malformed request ends the request side only (etcd's gateway logs
	// it and answers nothing); events keep coming.
	exchange(w, `not json`, 0)
	post("/v3/kv/put", `{"key":"`+b64("ws/b")+`","value":"`+b64("2")+`"}`)
	exchange(w, "", 1)

	lease := reLeaseID.FindStringSubmatch(post("/v3/lease/grant", `{"TTL":"60"}`))
	if lease == nil {
		t.Fatal("no lease ID in the grant response")
	}
	hide = strings.NewReplacer(lease[1], "<lease>")
	k := dial("/v3/lease/keepalive")
	exchange(k, `{"ID":"`+lease[1]+`"}`, 1)
	exchange(k, `{"ID":"`+lease[1]+`"}`, 1)
	return out
}

// TestJSONGatewayWebSocket requires the same WebSocket transcript from
// concord as from etcd, whose gateway serves its streams over WebSocket
// (grpc-websocket-proxy).
func TestJSONGatewayWebSocket(t *testing.T) {
	t.Parallel()
	transcripts := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			transcripts[im.name] = runJSONWebSocket(t, startServer(t, im, serverOptions{}))
		})
	}
	want, got := transcripts["etcd"], transcripts["concord"]
	if len(want) == 0 || !slices.Equal(want, got) {
		t.Errorf("transcripts differ:\netcd:\n%s\nconcord:\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
	}
}
