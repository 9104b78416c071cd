package e2e

import (
	"crypto/tls"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/tlstest"
)

// TestClientTLS starts etcd and concord with the same client TLS flags
// (https:// client URL, --cert-file, --key-file, --trusted-ca-file,
// --client-cert-auth) and runs the real etcdctl against both with --cacert,
// --cert and --key: put, get and a watch over gRPC, etcd's JSON gateway over
// HTTP/1.1, and the refusals of a client without a certificate or without
// the CA.
func TestClientTLS(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			certs, err := tlstest.Generate(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			s := startServer(t, im, serverOptions{tls: certs, clientCertAuth: true})
			ep := "https://" + s.Endpoint()
			auth := []string{"--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}
			ctl := func(args ...string) string { return mustCtl(t, ep, append(auth, args...)...) }

			if out := ctl("put", "foo", "bar"); out != "OK\n" {
				t.Fatalf("put: %q", out)
			}
			if out := ctl("get", "foo"); out != "foo\nbar\n" {
				t.Fatalf("get: %q", out)
			}
			w := startBgCtl(t, ep, false, append(auth, "watch", "foo", "--rev=1")...)
			if !w.wait(3, 0) {
				t.Fatalf("watch from revision 1: %+v", w.result())
			}
			ctl("put", "foo", "baz")
			if !w.wait(6, 0) {
				t.Fatalf("watch: %+v", w.result())
			}
			w.kill()
			if got := w.result().stdout; got != "PUT\nfoo\nbar\nPUT\nfoo\nbaz\n" {
				t.Fatalf("watch output %q", got)
			}

			// etcd's JSON gateway over HTTP/1.1, as curl --cacert --cert --key.
			cc, err := certs.ClientConfig(true)
			if err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{TLSClientConfig: cc, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post(ep+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"Zm9v"}`))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || !strings.Contains(string(body), `"value":"YmF6"`) {
				t.Fatalf("POST /v3/kv/range: %s %d %s", resp.Proto, resp.StatusCode, body)
			}

			// Refusals: no client certificate, or a server the client
			// cannot verify. Short timeouts: both only time out.
			short := []string{"--dial-timeout=2s", "--command-timeout=3s"}
			// etcd and concord fail them alike: the handshake error, then
			// etcdctl's deadline. With TLS 1.3 the client finishes its
			// handshake before the server checks its certificate, so a
			// client without one may see its first write fail (the server
			// closed) rather than the server's "certificate required" alert.
			for name, tc := range map[string]struct {
				args []string
				want []string // any of
			}{
				"no client certificate": {[]string{"--cacert", certs.CA},
					[]string{"remote error: tls: certificate required", "broken pipe", "connection reset by peer"}},
				"untrusted server": {[]string{"--cacert", certs.OtherCA, "--cert", certs.ClientCert, "--key", certs.ClientKey},
					[]string{"certificate signed by unknown authority"}},
			} {
				r := runCtl(t, ep, "", append(append(short, tc.args...), "get", "foo")...)
				if r.exit != 1 || r.stdout != "" || !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(r.stderr, w) }) ||
					!strings.Contains(r.stderr, "Error: context deadline exceeded") {
					t.Errorf("%s: etcdctl get = exit %d, stdout %q, stderr %s; want exit 1 with one of %q", name, r.exit, r.stdout, r.stderr, tc.want)
				}
			}
			// A cleartext request on the TLS port is not served: etcd
			// closes the connection; concord answers 400 "Client sent an
			// HTTP request to an HTTPS server", as Go's HTTPS servers do.
			hresp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + s.Endpoint() + "/health")
			switch {
			case im == etcdImpl && err == nil:
				hresp.Body.Close()
				t.Errorf("cleartext GET /health on etcd's TLS port: %d, want the connection closed", hresp.StatusCode)
			case im == concordImpl && err != nil:
				t.Errorf("cleartext GET /health on concord's TLS port: %v, want 400", err)
			case im == concordImpl:
				hbody, _ := io.ReadAll(hresp.Body)
				hresp.Body.Close()
				if hresp.StatusCode != http.StatusBadRequest || !strings.Contains(string(hbody), "HTTP request to an HTTPS server") {
					t.Errorf("cleartext GET /health on the TLS port: %d %q", hresp.StatusCode, hbody)
				}
			}
		})
	}
}
