package gateway

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

func TestProcedures(t *testing.T) {
	kv := procedures("/etcdserverpb.KV/")
	for _, want := range []string{
		etcdserverpbconnect.KVRangeProcedure, etcdserverpbconnect.KVPutProcedure,
		etcdserverpbconnect.KVDeleteRangeProcedure, etcdserverpbconnect.KVTxnProcedure,
		etcdserverpbconnect.KVCompactProcedure,
	} {
		if unary, ok := kv[want]; !ok || !unary {
			t.Errorf("KV procedures %v: %s listed %v, unary %v; want listed and unary", kv, want, ok, unary)
		}
	}
	if unary, ok := kv[etcdserverpbconnect.KVRangeStreamProcedure]; !ok || unary {
		t.Errorf("server-streaming RangeStream: listed %v, unary %v; want listed, not unary", ok, unary)
	}
	lease := procedures("/etcdserverpb.Lease/")
	if unary, ok := lease[etcdserverpbconnect.LeaseLeaseKeepAliveProcedure]; !ok || unary {
		t.Errorf("bidi LeaseKeepAlive: listed %v, unary %v; want listed, not unary", ok, unary)
	}
	if !lease[etcdserverpbconnect.LeaseLeaseGrantProcedure] {
		t.Errorf("LeaseGrant missing from %v or not unary", lease)
	}
	if _, ok := lease["/etcdserverpb.Lease/Nope"]; ok {
		t.Errorf("unknown method listed: %v", lease)
	}
	if w := procedures("/etcdserverpb.Watch/"); len(w) != 1 || w[etcdserverpbconnect.WatchWatchProcedure] {
		t.Errorf("Watch has one bidi method, got %v", w)
	}
	if u := procedures("/no.such.Service/"); u != nil {
		t.Errorf("unknown service: %v, want nil (keep connect's flushing and answers)", u)
	}
}

// unaryWriter must not be a Flusher: connect refuses a streaming call on
// it instead of buffering the stream.
func TestUnaryWriterHidesFlush(t *testing.T) {
	rec := httptest.NewRecorder()
	var w http.ResponseWriter = unaryWriter{rec}
	if _, ok := w.(http.Flusher); ok {
		t.Fatal("unaryWriter implements http.Flusher")
	}
	if u, ok := w.(interface{ Unwrap() http.ResponseWriter }); !ok || u.Unwrap() != rec {
		t.Fatal("unaryWriter does not unwrap to the server's writer")
	}
	w.Header().Set("X-Test", "1")
	w.WriteHeader(http.StatusTeapot)
	if _, err := w.Write([]byte("body")); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusTeapot || rec.Body.String() != "body" || rec.Header().Get("X-Test") != "1" {
		t.Fatalf("writes did not reach the server's writer: %d %q %v", rec.Code, rec.Body.String(), rec.Header())
	}
}

// growStack grows a fresh goroutine's stack and returns normally, also
// when called repeatedly and from a deep stack.
func TestGrowStack(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		growStack()
		var recurse func(int)
		recurse = func(n int) {
			if n > 0 {
				growStack()
				recurse(n - 1)
			}
		}
		recurse(8)
	}()
	<-done
}
