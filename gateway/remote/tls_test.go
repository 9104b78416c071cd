package remote_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/concord-kv/concord/gateway/remote"
	"github.com/concord-kv/concord/internal/tlstest"
	"github.com/concord-kv/concord/proto/gen/etcdserverpbconnect"
)

// https:// endpoints are dialed over TLS with WithTLS's CA and client
// certificate; a server that requires client certificates refuses a client
// without one, and a client that does not trust the server's CA refuses it.
func TestConsensusOverTLS(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeKV{}
	path, h := etcdserverpbconnect.NewKVHandler(f)
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(mux)
	if srv.TLS, err = certs.ServerConfig(true); err != nil {
		t.Fatal(err)
	}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "https://") {
		t.Fatalf("server URL %s", srv.URL)
	}
	withCert, err := certs.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	noCert, err := certs.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(opts ...remote.DialOption) error {
		c, err := remote.NewConsensus(srv.URL, slog.New(slog.DiscardHandler), opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Range(ctx, &pb.RangeRequest{Key: []byte("k")})
		return err
	}
	if err := dial(remote.WithTLS(withCert)); err != nil {
		t.Fatalf("Range over TLS with a client certificate: %v", err)
	}
	if f.gets.Load() != 1 {
		t.Fatalf("the member served %d ranges, want 1", f.gets.Load())
	}
	if err := dial(remote.WithTLS(noCert)); err == nil {
		t.Error("Range without a client certificate succeeded")
	}
	if err := dial(); err == nil {
		t.Error("Range to a server signed by an unknown CA succeeded")
	}
	if f.gets.Load() != 1 {
		t.Fatalf("the member served %d ranges, want 1", f.gets.Load())
	}
}
