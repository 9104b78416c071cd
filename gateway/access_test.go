package gateway_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway"
)

func doHTTP(t *testing.T, method, url, host, origin, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestCORS: etcd's --cors on the HTTP routes: by default every response
// allows any origin; with a list, only a listed Origin is echoed back;
// OPTIONS (a browser's preflight) is answered 200.
func TestCORS(t *testing.T) {
	base := "http://" + startGateway(t, gateway.Config{}, newFake())
	resp, _ := doHTTP(t, http.MethodPost, base+"/v3/kv/range", "", "", `{"key":"Zm9v"}`)
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		resp.Header.Get("Access-Control-Allow-Methods") != "POST, GET, OPTIONS, PUT, DELETE" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "accept, content-type, authorization" {
		t.Errorf("default CORS: %d %v", resp.StatusCode, resp.Header)
	}

	base = "http://" + startGateway(t, gateway.Config{CORS: []string{"http://console.example.com"}}, newFake())
	resp, _ = doHTTP(t, http.MethodGet, base+"/health", "", "http://console.example.com", "")
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://console.example.com" {
		t.Errorf("listed origin: Access-Control-Allow-Origin %q", got)
	}
	resp, _ = doHTTP(t, http.MethodGet, base+"/health", "", "http://evil.example.com", "")
	if got := resp.Header.Values("Access-Control-Allow-Origin"); len(got) != 0 {
		t.Errorf("unlisted origin: Access-Control-Allow-Origin %q", got)
	}
	resp, body := doHTTP(t, http.MethodOptions, base+"/v3/kv/put", "", "http://console.example.com", "")
	if resp.StatusCode != 200 || body != "" || resp.Header.Get("Access-Control-Allow-Origin") != "http://console.example.com" {
		t.Errorf("preflight: %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

// TestHostWhitelist: etcd's --host-whitelist answers a cleartext HTTP
// request for another host 421 Misdirected Request, with etcd's text, and
// lets listed hosts and gRPC clients (HTTP/2) through.
func TestHostWhitelist(t *testing.T) {
	f := newFake()
	addr := startGateway(t, gateway.Config{HostWhitelist: []string{"etcd.local", "127.0.0.1"}}, f)
	base := "http://" + addr
	resp, body := doHTTP(t, http.MethodPost, base+"/v3/kv/range", "rebound.attacker.com:2379", "", `{"key":"Zm9v"}`)
	if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(body, "the Host header was unrecognized") ||
		!strings.Contains(body, `--host-whitelist "rebound.attacker.com"`) {
		t.Errorf("unlisted host: %d %q", resp.StatusCode, body)
	}
	// Connect over HTTP/1.1 is what a browser would send: refused too.
	resp, _ = doHTTP(t, http.MethodPost, base+"/etcdserverpb.KV/Range", "rebound.attacker.com", "", `{}`)
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("Connect from an unlisted host: %d", resp.StatusCode)
	}
	for _, host := range []string{"etcd.local:2379", "etcd.local", addr} {
		if resp, body := doHTTP(t, http.MethodPost, base+"/v3/kv/range", host, "", `{"key":"Zm9v"}`); resp.StatusCode != 200 {
			t.Errorf("listed host %q: %d %q", host, resp.StatusCode, body)
		}
	}
	// gRPC clients dial by address (the Host is 127.0.0.1:port here, but
	// any name works, as etcd does not check gRPC).
	cli := newClient(t, addr)
	if _, err := cli.Put(testCtx(t), "k", "v"); err != nil {
		t.Errorf("gRPC put with a host whitelist: %v", err)
	}
	if r, err := f.Range(context.Background(), &pb.RangeRequest{Key: []byte("k")}); err != nil || len(r.Kvs) != 1 {
		t.Errorf("the put did not reach the backend: %v, %v", r, err)
	}
}

// TestSeparateHTTP: etcd's --listen-client-http-urls: the HTTP endpoints
// move to their own listener, the client listener keeps the RPCs only.
func TestSeparateHTTP(t *testing.T) {
	g, err := gateway.New(gateway.Config{SeparateHTTP: true}, newFake())
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := serveOn(t, g, g.Serve)
	httpAddr := serveOn(t, g, func(ctx context.Context, ln net.Listener) error { return g.ServeHTTPOnly(ctx, ln, false) })

	if resp, body := doHTTP(t, http.MethodPost, "http://"+httpAddr+"/v3/kv/put", "", "", `{"key":"Zm9v","value":"YmFy"}`); resp.StatusCode != 200 || !strings.Contains(body, "header") {
		t.Errorf("JSON gateway on the HTTP listener: %d %q", resp.StatusCode, body)
	}
	if resp, _ := doHTTP(t, http.MethodGet, "http://"+httpAddr+"/health", "", "", ""); resp.StatusCode != 200 {
		t.Errorf("/health on the HTTP listener: %d", resp.StatusCode)
	}
	if resp, _ := doHTTP(t, http.MethodPost, "http://"+httpAddr+"/etcdserverpb.KV/Range", "", "", `{}`); resp.StatusCode != 404 {
		t.Errorf("an RPC on the HTTP listener: %d, want 404", resp.StatusCode)
	}
	if resp, _ := doHTTP(t, http.MethodPost, "http://"+grpcAddr+"/v3/kv/range", "", "", `{"key":"Zm9v"}`); resp.StatusCode != 404 {
		t.Errorf("JSON gateway on the gRPC listener: %d, want 404", resp.StatusCode)
	}
	cli := newClient(t, grpcAddr)
	if r, err := cli.Get(testCtx(t), "foo"); err != nil || len(r.Kvs) != 1 {
		t.Errorf("gRPC get on the client listener: %v, %v", r, err)
	}
}
