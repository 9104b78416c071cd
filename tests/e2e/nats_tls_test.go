package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/concord-kv/concord/internal/tlstest"
)

// TestSplitNATSTLS runs the split topology with the event bus over mutual
// TLS (--nats-cert-file, --nats-key-file, --nats-trusted-ca-file on the
// consensus member and on the watch fan-out, which dials a tls:// URL): a
// watch through the gateway gets its events from the bus, and NATS clients
// in cleartext or without a certificate signed by the CA are refused.
func TestSplitNATSTLS(t *testing.T) {
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cport, pport, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	natsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	curl := fmt.Sprintf("http://127.0.0.1:%d", cport)
	purl := fmt.Sprintf("http://127.0.0.1:%d", pport)
	startProc(t, "consensus", cport, "consensus", "--name", "c1", "--data-dir", t.TempDir(),
		"--listen-client-urls", curl, "--listen-peer-urls", purl, "--initial-cluster", "c1="+purl,
		"--nats-listen-addr", natsAddr,
		"--nats-cert-file", certs.ServerCert, "--nats-key-file", certs.ServerKey, "--nats-trusted-ca-file", certs.CA)
	wport, lport, gport := freePort(t), freePort(t), freePort(t)
	// The fan-out starts only once connected to the bus: running, it got
	// through the mutual TLS handshake.
	wf := startProc(t, "watchfanout", wport, "watchfanout", "--name", "wf1", "--consensus-endpoints", curl,
		"--nats-url", "tls://"+natsAddr,
		"--nats-cert-file", certs.ClientCert, "--nats-key-file", certs.ClientKey, "--nats-trusted-ca-file", certs.CA,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport))
	ls := startProc(t, "leasesvc", lport, "leasesvc", "--name", "ls1", "--consensus-endpoints", curl,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport))
	gw := startProc(t, "gateway", gport, "gateway", "--consensus-endpoints", curl,
		"--watchfanout-endpoints", wf.url(), "--leasesvc-endpoints", ls.url(),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport))
	ep := gw.endpoint()

	ctlPutGetWatch(t, ep, nil)

	// A live watch: once it delivers, a new revision must come over the bus.
	// The fan-out's only other source is polling consensus and reading the
	// revision from history, which would count a history read.
	w := startBgCtl(t, ep, false, "watch", "live")
	deadline := time.Now().Add(waitTimeout)
	for !strings.Contains(w.stdout.String(), "v1\n") {
		if time.Now().After(deadline) {
			t.Fatalf("live watch saw nothing: %+v", w.result())
		}
		mustCtl(t, ep, "put", "live", "v1")
		// The watch may not be registered yet: look for a second, then
		// write again.
		for wait := time.Now().Add(time.Second); time.Now().Before(wait) && !strings.Contains(w.stdout.String(), "v1\n"); {
			time.Sleep(pollInterval)
		}
	}
	before := historyReads(t, wf)
	mustCtl(t, ep, "put", "live", "v2")
	for !strings.Contains(w.stdout.String(), "v2\n") {
		if time.Now().After(deadline) {
			t.Fatalf("live watch missed v2: %+v", w.result())
		}
		time.Sleep(pollInterval)
	}
	if after := historyReads(t, wf); after != before {
		t.Fatalf("the fan-out read history (%s, then %s) for a live revision: the bus did not bring it", before, after)
	}

	// Refused: a client speaking NATS in cleartext, and TLS clients
	// without a certificate or with one another CA signed.
	other, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string][]nats.Option{
		"cleartext":             {nats.SetCustomDialer(cleartextDialer{})},
		"no client certificate": {nats.RootCAs(certs.CA)},
		"untrusted certificate": {nats.RootCAs(certs.CA), nats.ClientCert(other.ClientCert, other.ClientKey)},
	} {
		nc, err := nats.Connect("nats://"+natsAddr, append(opts, nats.Timeout(5*time.Second))...)
		if err == nil {
			// Had it connected, show that it could subscribe.
			_, serr := nc.SubscribeSync(">")
			ferr := nc.Flush()
			nc.Close()
			t.Errorf("%s: NATS client connected (subscribe: %v, flush: %v)", name, serr, ferr)
		}
	}
	// The same dial with the right certificate gets in: the refusals above
	// are the certificates', not the address's.
	nc, err := nats.Connect("nats://"+natsAddr, nats.RootCAs(certs.CA), nats.ClientCert(certs.ClientCert, certs.ClientKey), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("NATS client with the CA's certificate: %v", err)
	}
	nc.Close()
}

// cleartextDialer makes nats.go skip its TLS handshake: the client speaks
// NATS in cleartext whatever the server asks for.
type cleartextDialer struct{}

func (cleartextDialer) Dial(network, address string) (net.Conn, error) {
	return net.DialTimeout(network, address, 5*time.Second)
}
func (cleartextDialer) SkipTLSHandshake() bool { return true }

// historyReads is the fan-out's count of history reads (gap repairs and
// catch-ups).
func historyReads(t *testing.T, p *proc) string {
	t.Helper()
	code, body := httpGet(t, p.url()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s /metrics: status %d", p.name, code)
	}
	v, ok := seriesValue(body, "concord_watch_history_reads_total")
	if !ok {
		t.Fatalf("%s /metrics has no concord_watch_history_reads_total", p.name)
	}
	return v
}
