package healthwait_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/healthwait"
)

func TestWait(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if err := healthwait.Wait(ctx, srv.URL, nil, time.Millisecond); err != nil || calls.Load() != 3 {
		t.Fatalf("Wait = %v after %d calls, want nil after 3", err, calls.Load())
	}

	exited := make(chan struct{})
	close(exited)
	if err := healthwait.Wait(ctx, "http://127.0.0.1:1", exited, time.Millisecond); !errors.Is(err, healthwait.ErrExited) {
		t.Fatalf("Wait on an exited process = %v", err)
	}

	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := healthwait.Wait(short, "http://127.0.0.1:1", nil, time.Millisecond); !errors.Is(err, healthwait.ErrTimeout) {
		t.Fatalf("Wait past its deadline = %v", err)
	}
}

func TestWaitTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	if err := healthwait.WaitTLS(ctx, srv.URL, &tls.Config{RootCAs: pool}, nil, time.Millisecond); err != nil {
		t.Fatalf("WaitTLS trusting the server = %v", err)
	}
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := healthwait.WaitTLS(short, srv.URL, &tls.Config{}, nil, time.Millisecond); !errors.Is(err, healthwait.ErrTimeout) {
		t.Fatalf("WaitTLS not trusting the server = %v, want ErrTimeout", err)
	}
}
