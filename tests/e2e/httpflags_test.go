package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/healthwait"
)

// TestCORSAndHostWhitelist starts etcd and concord with etcd's --cors and
// --host-whitelist and checks that their HTTP endpoints answer alike: 421
// for a Host not whitelisted (DNS rebinding), CORS headers for a listed
// Origin only, 200 to a preflight; gRPC clients are not affected.
func TestCORSAndHostWhitelist(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: []string{"--cors=http://console.example.com:8080", "--host-whitelist=127.0.0.1,etcd.local"}})
			mustCtl(t, s.Endpoint(), "put", "foo", "bar")
			base := "http://" + s.Endpoint()
			for _, c := range []struct {
				method, path, host, origin string
				status                     int
				body, allowOrigin          string
			}{
				{"POST", "/v3/kv/range", "rebound.example.com", "", 421, "the Host header was unrecognized", ""},
				{"GET", "/health", "rebound.example.com:2379", "", 421, `--host-whitelist "rebound.example.com"`, ""},
				{"POST", "/v3/kv/range", "etcd.local", "", 200, `"kvs"`, ""},
				{"POST", "/v3/kv/range", fmt.Sprintf("etcd.local:%d", 2379), "http://console.example.com:8080", 200, `"kvs"`, "http://console.example.com:8080"},
				{"GET", "/health", "", "http://console.example.com:8080", 200, `"health":"true"`, "http://console.example.com:8080"},
				{"GET", "/health", "", "http://other.example.com", 200, `"health":"true"`, ""},
				{"OPTIONS", "/v3/kv/put", "", "http://console.example.com:8080", 200, "", "http://console.example.com:8080"},
			} {
				req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(`{"key":"Zm9v"}`))
				if err != nil {
					t.Fatal(err)
				}
				if c.host != "" {
					req.Host = c.host
				}
				if c.origin != "" {
					req.Header.Set("Origin", c.origin)
				}
				resp, b := httpDo(t, req)
				if resp.StatusCode != c.status || !strings.Contains(b, c.body) || resp.Header.Get("Access-Control-Allow-Origin") != c.allowOrigin {
					t.Errorf("%s %s Host %q Origin %q: %d %q, Access-Control-Allow-Origin %q; want %d with %q, %q",
						c.method, c.path, c.host, c.origin, resp.StatusCode, b, resp.Header.Get("Access-Control-Allow-Origin"), c.status, c.body, c.allowOrigin)
				}
			}
		})
	}
}

// TestEtcdCommandLine starts etcd and concord with one command line full
// of etcd 3.7.3 flags, in both the --flag=value and Go's -flag value
// forms, and expects both to start and serve; concord notes the flags that
// mean nothing to it.
func TestEtcdCommandLine(t *testing.T) {
	t.Parallel()
	flags := []string{
		"--initial-cluster-state=new", "--initial-cluster-token=etcd-cluster", "--snapshot-count=10000",
		"-max-snapshots", "3", "-max-wals", "3", "--initial-election-tick-advance=false",
		"--backend-bbolt-freelist-type=map", "--backend-batch-interval=10ms", "--backend-batch-limit=1000",
		"--max-concurrent-streams=1000", "--grpc-keepalive-min-time=5s", "--grpc-keepalive-interval=2h", "--grpc-keepalive-timeout=20s",
		"--socket-reuse-port", "--socket-reuse-address", "--raft-read-timeout=5s", "--raft-write-timeout=5s",
		"--discovery-fallback=exit", "--strict-reconfig-check=true", "--pre-vote=true", "--cors=*", "--host-whitelist=*",
		"--logger=zap", "--log-outputs=stderr", "--log-level=info", "--log-format=json",
		"--auto-compaction-mode=periodic", "--auto-compaction-retention=1h", "--enable-pprof", "--metrics=basic",
		"--distributed-tracing-address=localhost:4317", "--corrupt-check-time=0s", "--compact-hash-check-time=1m",
		"--compaction-batch-limit=1000", "--compaction-sleep-interval=10ms", "--watch-progress-notify-interval=10m",
		"--downgrade-check-time=5s", "--warning-apply-duration=200ms", "--warning-unary-request-duration=1s",
		"--memory-mlock=false", "--bootstrap-defrag-threshold-megabytes=0", "--max-learners=2", "--snapshot-catchup-entries=1000",
		"--unsafe-no-fsync", "--force-new-cluster=false", "--feature-gates=InitialCorruptCheck=true",
	}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: flags})
			mustCtl(t, s.Endpoint(), "put", "foo", "bar")
			if got := mustCtl(t, s.Endpoint(), "get", "foo", "--print-value-only"); strings.TrimSpace(got) != "bar" {
				t.Errorf("get foo = %q", got)
			}
			if im == concordImpl && !strings.Contains(s.log.String(), "--max-wals has no effect in concord") {
				t.Error("concord did not note that --max-wals has no effect")
			}
		})
	}
}

// TestListenClientHTTPURLs starts etcd and concord with etcd's
// --listen-client-http-urls: the HTTP endpoints move to that URL, gRPC
// stays on the client URL, and both answer alike.
func TestListenClientHTTPURLs(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			requireBinary(t, im)
			var ports [3]int
			for i := range ports {
				p, err := probePort()
				if err != nil {
					t.Fatal(err)
				}
				ports[i] = p
			}
			grpcURL, httpURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
			peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
			var out syncBuffer
			cmd := exec.Command(im.bin, "--name", "e2e", "--data-dir", t.TempDir(),
				"--listen-client-urls", grpcURL, "--advertise-client-urls", grpcURL, "--listen-client-http-urls", httpURL,
				"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "e2e="+peerURL)
			cmd.Env = cleanEnv()
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { _ = cmd.Wait(); close(exited) }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("%s output:\n%s", im.name, out.Tail(logTail))
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			if err := healthwait.Wait(ctx, httpURL, exited, pollInterval); err != nil {
				t.Fatalf("/health on the HTTP URL: %v", err)
			}
			mustCtl(t, strings.TrimPrefix(grpcURL, "http://"), "put", "foo", "bar")
			resp, err := http.Post(httpURL+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"Zm9v"}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), `"value":"YmFy"`) {
				t.Errorf("JSON gateway on the HTTP URL: %d %q", resp.StatusCode, b)
			}
			// The client URL serves no HTTP endpoint any more.
			hc := &http.Client{Timeout: 2 * time.Second}
			if resp, err := hc.Get(grpcURL + "/health"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					t.Errorf("/health on the gRPC-only client URL: %d %q", resp.StatusCode, b)
				}
				t.Logf("/health on the client URL: %d", resp.StatusCode)
			} else {
				t.Logf("/health on the client URL: %v", err)
			}
		})
	}
}
