package gateway

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

func TestUnaryProcedures(t *testing.T) {
	kv := unaryProcedures("/etcdserverpb.KV/")
	for _, want := range []string{
		etcdserverpbconnect.KVRangeProcedure, etcdserverpbconnect.KVPutProcedure,
		etcdserverpbconnect.KVDeleteRangeProcedure, etcdserverpbconnect.KVTxnProcedure,
		etcdserverpbconnect.KVCompactProcedure,
	} {
		if !slices.Contains(kv, want) {
			t.Errorf("unary KV procedures %v lack %s", kv, want)
		}
	}
	if slices.Contains(kv, etcdserverpbconnect.KVRangeStreamProcedure) {
		t.Errorf("server-streaming RangeStream listed as unary")
	}
	lease := unaryProcedures("/etcdserverpb.Lease/")
	if slices.Contains(lease, etcdserverpbconnect.LeaseLeaseKeepAliveProcedure) {
		t.Errorf("bidi LeaseKeepAlive listed as unary: %v", lease)
	}
	if !slices.Contains(lease, etcdserverpbconnect.LeaseLeaseGrantProcedure) {
		t.Errorf("LeaseGrant missing from %v", lease)
	}
	if w := unaryProcedures("/etcdserverpb.Watch/"); len(w) != 0 {
		t.Errorf("Watch has no unary methods, got %v", w)
	}
	if u := unaryProcedures("/no.such.Service/"); len(u) != 0 {
		t.Errorf("unknown service: %v, want none (keep connect's flushing)", u)
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
