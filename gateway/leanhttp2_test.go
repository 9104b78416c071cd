package gateway_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/gateway"
)

// The default Config serves clientv3 (grpc-go) over gateway/h2server, and
// HTTP/1.1 (curl's JSON) on the same port over net/http. (With
// CONCORD_TEST_NET_HTTP2=1 the whole suite, this test too, runs over
// net/http's HTTP/2 server instead.)
func TestLeanHTTP2(t *testing.T) {
	const limit = 64 << 10
	f, cli, addr := setup(t, gateway.Config{MaxRequestBytes: limit})
	ctx := testCtx(t)
	if _, err := cli.Put(ctx, "foo", "bar"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "foo")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "bar" {
		t.Fatalf("get = %v, %v", resp, err)
	}
	// Errors travel in trailers; a too large request is refused before
	// the backend; a message beyond the transport limit (larger than the
	// 64 KiB initial window) is ResourceExhausted.
	before := f.calls.Load()
	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit+1)); !errors.Is(err, rpctypes.ErrRequestTooLarge) {
		t.Fatalf("put above the limit: %v", err)
	}
	if f.calls.Load() != before {
		t.Fatal("too large request reached the backend")
	}
	if _, err := cli.Put(ctx, "k", strings.Repeat("x", limit+512<<10+1)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("put above the read limit: %v", err)
	}
	// Large responses cross the flow-control windows.
	big := strings.Repeat("v", 3<<20)
	f.mu.Lock()
	f.putLocked(&pb.PutRequest{Key: []byte("big"), Value: []byte(big)})
	f.mu.Unlock()
	if r, err := cli.Get(ctx, "big"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != big {
		t.Fatalf("large get: %v", err)
	}

	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	hr, err := http.Post("http://"+addr+"/etcdserverpb.KV/Range", "application/json", bytes.NewBufferString(`{"key":"Zm9v"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hr.Body)
	hr.Body.Close()
	if hr.StatusCode != 200 || hr.ProtoMajor != 1 || !bytes.Contains(body, []byte(`"YmFy"`)) {
		t.Fatalf("HTTP/1.1 JSON: %s %d %s", hr.Proto, hr.StatusCode, body)
	}
}
