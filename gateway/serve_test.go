package gateway_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/gateway"
)

// serve runs g on a loopback listener until the test ends and returns its
// base URL.
func serve(t *testing.T, g *gateway.Gateway) string {
	t.Helper()
	return "http://" + serveOn(t, g, g.Serve)
}

func postConnectJSON(t *testing.T, client *http.Client, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// RPC responses carry no Date header (gRPC has no use for it); plain HTTP
// endpoints keep it.
func TestRPCResponsesHaveNoDate(t *testing.T) {
	g, err := gateway.New(gateway.Config{}, newFake())
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, g)
	client := &http.Client{Timeout: 10 * time.Second}
	resp := postConnectJSON(t, client, base+"/etcdserverpb.KV/Range", `{"key":"Zm9v"}`)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Range: status %d: %s", resp.StatusCode, body)
	}
	if d, ok := resp.Header["Date"]; ok {
		t.Errorf("RPC response has a Date header: %q", d)
	}
	hresp, err := client.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	hresp.Body.Close()
	if hresp.Header.Get("Date") == "" {
		t.Error("/health lost its Date header")
	}
}

// WithHTTPHandler mounts plain HTTP handlers on the client port; an RPC
// path always reaches its service.
func TestWithHTTPHandler(t *testing.T) {
	debug := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "debug here") })
	shadow := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "shadowed") })
	g, err := gateway.New(gateway.Config{}, newFake(),
		gateway.WithHTTPHandler("/debug/", debug),
		gateway.WithHTTPHandler("/etcdserverpb.KV/", shadow))
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, g)
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/debug/anything")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "debug here" {
		t.Fatalf("/debug/anything: %d %q", resp.StatusCode, body)
	}
	rresp := postConnectJSON(t, client, base+"/etcdserverpb.KV/Range", `{"key":"Zm9v"}`)
	rbody, _ := io.ReadAll(rresp.Body)
	if rresp.StatusCode != http.StatusOK || strings.Contains(string(rbody), "shadowed") {
		t.Fatalf("Range was shadowed by an extra handler: %d %q", rresp.StatusCode, rbody)
	}
}
