package peer

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/concord-kv/concord/consensus"
	"github.com/concord-kv/concord/internal/tlstest"
)

// newTLSEndpoint is newEndpoint serving https:// with c, offering HTTP/2
// only as the peer server does.
func newTLSEndpoint(t testing.TB, c *tls.Config) *endpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c = c.Clone()
	c.NextProtos = []string{"h2"}
	e := &endpoint{url: "https://" + ln.Addr().String(), ln: ln}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	e.srv = &http.Server{Protocols: &protocols, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := e.h.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.Error(w, "no member", http.StatusServiceUnavailable)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = e.srv.Serve(tls.NewListener(ln, c)) }()
	t.Cleanup(func() { _ = e.srv.Close(); <-done })
	return e
}

func newTLSTransport(t testing.TB, c *tls.Config) *Transport {
	t.Helper()
	tr, err := New(Config{Logger: quiet, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, TLS: c})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Stop)
	return tr
}

// TestTLSWithClientCertAuth runs the transport over https:// with the
// receiver requiring a certificate signed by the CA (etcd's
// --peer-client-cert-auth): a sender presenting one delivers its messages
// and fetches the membership; one without a certificate is refused in the
// handshake, reported unreachable, and delivers nothing.
func TestTLSWithClientCertAuth(t *testing.T) {
	f, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := f.ServerConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	withCert, err := f.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	withoutCert, err := f.ClientConfig(false)
	if err != nil {
		t.Fatal(err)
	}

	b := newTLSTransport(t, withCert)
	fb := newFakeRaft()
	eb := newTLSEndpoint(t, srvCfg)
	eb.serve(b)
	if err := b.Start(consensus.LocalMember{ID: 2, ClusterID: 7}, fb); err != nil {
		t.Fatal(err)
	}

	a := newTLSTransport(t, withCert)
	fa := newFakeRaft()
	if err := a.Start(consensus.LocalMember{ID: 1, ClusterID: 7}, fa); err != nil {
		t.Fatal(err)
	}
	a.AddPeer(2, []string{eb.url})
	const n = 100
	msgs := make([]*raftpb.Message, n)
	for i := range n {
		msgs[i] = msg(1, 2, uint64(i))
	}
	a.Send(msgs)
	waitFor(t, "every message over TLS", func() bool { return len(fb.messages()) == n })
	for i, m := range fb.messages() {
		if m.GetIndex() != uint64(i) {
			t.Fatalf("message %d has index %d", i, m.GetIndex())
		}
	}
	if u := fa.unreachableCount(2); u != 0 {
		t.Errorf("peer reported unreachable %d times over a healthy TLS link", u)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m, err := a.FetchMembership(ctx, []string{eb.url}); err != nil || m.ClusterID != 7 {
		t.Fatalf("membership over TLS = %+v, %v", m, err)
	}

	// No client certificate: refused before any call is served.
	c := newTLSTransport(t, withoutCert)
	fc := newFakeRaft()
	if err := c.Start(consensus.LocalMember{ID: 3, ClusterID: 7}, fc); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchMembership(ctx, []string{eb.url}); err == nil {
		t.Fatal("membership fetched by a peer without a certificate")
	}
	c.AddPeer(2, []string{eb.url})
	waitFor(t, "the certificate-less sender to be reported unreachable", func() bool {
		c.Send([]*raftpb.Message{msg(3, 2, 1)})
		return fc.unreachableCount(2) > 0
	})
	for _, m := range fb.messages() {
		if m.GetFrom() == 3 {
			t.Fatalf("a peer without a certificate delivered %v", m)
		}
	}

	// A cleartext transport cannot talk to the https:// endpoint either.
	if _, err := newTransport(t).FetchMembership(ctx, []string{"http://" + eb.ln.Addr().String()}); err == nil {
		t.Fatal("membership fetched in cleartext from a TLS peer port")
	}
}
