package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
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
			ctlPutGetWatch(t, ep, auth)

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

// TestSplitTLS runs the split topology with every client URL on https://
// and --client-cert-auth: the watch fan-out, the lease service and the
// gateway reach consensus and each other with --cacert, --cert and --key,
// and etcdctl reaches the gateway with its own.
func TestSplitTLS(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	split := startTLSSplit(t, certs)
	cons, gw, dial := split.cons, split.gw, split.dial

	ep := gw.url()
	ctl := func(args ...string) string { return mustCtl(t, ep, append(dial, args...)...) }
	ctlPutGetWatch(t, ep, dial)
	out := ctl("lease", "grant", "60")
	var id string
	if _, err := fmt.Sscanf(out, "lease %s granted", &id); err != nil {
		t.Fatalf("lease grant: %q", out)
	}
	if out := ctl("lease", "keep-alive", "--once", id); !strings.Contains(out, "keepalived with TTL") {
		t.Fatalf("lease keep-alive --once: %q", out)
	}
	// Consensus itself refuses a client without a certificate.
	r := runCtl(t, cons.url(), "", "--dial-timeout=2s", "--command-timeout=3s", "--cacert", certs.CA, "get", "foo")
	if r.exit == 0 {
		t.Fatalf("etcdctl without a client certificate reached consensus: %+v", r)
	}
}

// tlsSplit is a split topology (one consensus member, watch fan-out, lease
// service, gateway) with every client URL on https:// and
// --client-cert-auth; dial is the etcdctl TLS flags of the processes'
// client certificate.
type tlsSplit struct {
	cons, wf, ls, gw *proc
	dial             []string
}

// startTLSSplit starts a tlsSplit with certs; consensusArgs are added to
// the consensus member's flags.
func startTLSSplit(t *testing.T, certs *tlstest.Files, consensusArgs ...string) tlsSplit {
	t.Helper()
	return startTLSSplitWith(t, certs, tlsSplitOptions{consensusArgs: consensusArgs})
}

// tlsSplitOptions vary startTLSSplitWith's topology.
type tlsSplitOptions struct {
	consensusArgs []string
	// secretFile, if set, is every process's --internal-secret-file, and
	// only the gateway verifies client certificates: the others serve
	// https:// with a server certificate alone, and the processes present
	// none (dial is then the CA alone).
	secretFile string
}

// startTLSSplitWith is startTLSSplit with opts.
func startTLSSplitWith(t *testing.T, certs *tlstest.Files, opts tlsSplitOptions) tlsSplit {
	t.Helper()
	consensusArgs := opts.consensusArgs
	clientAuth := []string{"--trusted-ca-file", certs.CA, "--client-cert-auth"}
	dial := []string{"--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey}
	var secret []string
	if opts.secretFile != "" {
		secret = []string{"--internal-secret-file", opts.secretFile}
		dial = []string{"--cacert", certs.CA}
	}
	serveOnly := func(port int) []string {
		return append([]string{"--listen-client-urls", fmt.Sprintf("https://127.0.0.1:%d", port),
			"--cert-file", certs.ServerCert, "--key-file", certs.ServerKey}, secret...)
	}
	serve := func(port int) []string {
		if opts.secretFile != "" {
			return serveOnly(port)
		}
		return append(serveOnly(port), clientAuth...)
	}
	cport, pport, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	purl := fmt.Sprintf("http://127.0.0.1:%d", pport)
	cons := startTLSProc(t, "consensus", cport, certs, append(append([]string{"consensus", "--name", "c1", "--data-dir", t.TempDir(),
		"--listen-peer-urls", purl, "--initial-cluster", "c1=" + purl, "--nats-listen-addr", natsAddr}, consensusArgs...), serve(cport)...)...)
	wport, lport, gport := freePort(t), freePort(t), freePort(t)
	wf := startTLSProc(t, "watchfanout", wport, certs, append(append([]string{"watchfanout", "--name", "wf1",
		"--consensus-endpoints", cons.url(), "--nats-url", "nats://" + natsAddr}, serve(wport)...), dial...)...)
	ls := startTLSProc(t, "leasesvc", lport, certs, append(append([]string{"leasesvc", "--name", "ls1",
		"--consensus-endpoints", cons.url()}, serve(lport)...), dial...)...)
	gw := startTLSProc(t, "gateway", gport, certs, append(append([]string{"gateway", "--consensus-endpoints", cons.url(),
		"--watchfanout-endpoints", wf.url(), "--leasesvc-endpoints", ls.url()}, append(serveOnly(gport), clientAuth...)...), dial...)...)
	return tlsSplit{cons: cons, wf: wf, ls: ls, gw: gw, dial: dial}
}

// TestAutoTLS starts etcd and concord with --auto-tls on an https:// client
// URL: etcdctl reaches both with --insecure-skip-tls-verify, and refuses
// both without it (the certificate is self-signed).
func TestAutoTLS(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{autoTLS: true})
			ep := "https://" + s.Endpoint()
			if out := mustCtl(t, ep, "--insecure-skip-tls-verify", "put", "foo", "bar"); out != "OK\n" {
				t.Fatalf("put: %q", out)
			}
			if out := mustCtl(t, ep, "--insecure-skip-tls-verify", "get", "foo"); out != "foo\nbar\n" {
				t.Fatalf("get: %q", out)
			}
			r := runCtl(t, ep, "", "--dial-timeout=2s", "--command-timeout=3s", "get", "foo")
			if r.exit != 1 || !strings.Contains(r.stderr, "certificate") {
				t.Fatalf("etcdctl get verifying the self-signed certificate: %+v", r)
			}
		})
	}
}

// TestTrustedCAOnly: as etcd does, --trusted-ca-file without
// --client-cert-auth still requires a client certificate it signed.
func TestTrustedCAOnly(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			certs, err := tlstest.Generate(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			s := startServer(t, im, serverOptions{tls: certs, extra: []string{"--trusted-ca-file", certs.CA}})
			ep := "https://" + s.Endpoint()
			if out := mustCtl(t, ep, "--cacert", certs.CA, "--cert", certs.ClientCert, "--key", certs.ClientKey, "put", "foo", "bar"); out != "OK\n" {
				t.Fatalf("put with a client certificate: %q", out)
			}
			r := runCtl(t, ep, "", "--dial-timeout=2s", "--command-timeout=3s", "--cacert", certs.CA, "get", "foo")
			if r.exit != 1 || r.stdout != "" {
				t.Fatalf("etcdctl get without a client certificate: %+v", r)
			}
		})
	}
}

// ctlPutGetWatch runs etcdctl with flags against ep: put foo=bar, get it,
// then a watch from revision 1 that sees it and a second put.
func ctlPutGetWatch(t *testing.T, ep string, flags []string) {
	t.Helper()
	ctl := func(args ...string) string { return mustCtl(t, ep, append(slices.Clone(flags), args...)...) }
	if out := ctl("put", "foo", "bar"); out != "OK\n" {
		t.Fatalf("put: %q", out)
	}
	if out := ctl("get", "foo"); out != "foo\nbar\n" {
		t.Fatalf("get: %q", out)
	}
	w := startBgCtl(t, ep, false, append(slices.Clone(flags), "watch", "foo", "--rev=1")...)
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
}

// TestTLSHardening starts etcd and concord with etcd's hardening flags
// (--client-crl-file, --client-cert-allowed-hostname, --tls-min-version,
// --cipher-suites with --tls-max-version) and checks that etcdctl gets the
// same answers from both: a client whose certificate is revoked, or not
// valid for an allowed host name, is refused; an allowed one works.
func TestTLSHardening(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	allowed, revoked := dir+"/allowed", dir+"/revoked"
	for _, p := range []string{allowed, revoked} {
		if err := certs.IssueClient(p+".pem", p+"-key.pem", net.IPv4(127, 0, 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	crl := dir + "/crl.pem"
	if err := certs.Revoke(crl, revoked+".pem"); err != nil {
		t.Fatal(err)
	}
	short := []string{"--dial-timeout=2s", "--command-timeout=3s"}
	for _, flags := range [][]string{
		{"--client-crl-file", crl, "--client-cert-allowed-hostname", "127.0.0.1", "--tls-min-version", "TLS1.3"},
		{"--client-crl-file", crl, "--tls-max-version", "TLS1.2", "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"},
	} {
		for _, im := range impls {
			t.Run(im.name+"/"+flags[2], func(t *testing.T) {
				s := startServer(t, im, serverOptions{tls: certs, clientCertAuth: true, extra: flags,
					readyCert: [2]string{allowed + ".pem", allowed + "-key.pem"}})
				ep := "https://" + s.Endpoint()
				ctlPutGetWatch(t, ep, []string{"--cacert", certs.CA, "--cert", allowed + ".pem", "--key", allowed + "-key.pem"})
				refused := map[string][]string{"revoked": {"--cert", revoked + ".pem", "--key", revoked + "-key.pem"}}
				if flags[2] == "--client-cert-allowed-hostname" {
					// The plain client certificate names no host.
					refused["not an allowed host"] = []string{"--cert", certs.ClientCert, "--key", certs.ClientKey}
				}
				for name, args := range refused {
					r := runCtl(t, ep, "", append(append(short, append([]string{"--cacert", certs.CA}, args...)...), "get", "foo")...)
					if r.exit != 1 || r.stdout != "" || !strings.Contains(r.stderr, "Error: context deadline exceeded") {
						t.Errorf("%s: etcdctl get = exit %d, stdout %q, stderr %s; want a refusal", name, r.exit, r.stdout, r.stderr)
					}
				}
			})
		}
	}
}
