package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/tlstest"
)

// TestPeerTLS starts a 3-member etcd and a 3-member concord cluster with the
// same peer TLS flags, as kubeadm runs etcd: https:// peer URLs in
// --listen-peer-urls, --initial-advertise-peer-urls and --initial-cluster,
// --peer-cert-file/--peer-key-file, --peer-trusted-ca-file and
// --peer-client-cert-auth. A write through one member is read (linearizably,
// so through the leader over the peer links) through another, the member
// list shows the https:// peer URLs, a TLS client without a certificate is
// refused on a peer port, and a learner added with an https:// peer URL
// joins and catches up.
func TestPeerTLS(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			certs, err := tlstest.Generate(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			c := startClusterWith(t, im, clusterSize, serverOptions{peerTLS: certs, peerClientCertAuth: true})
			first, last := c.members[0], c.members[len(c.members)-1]
			for _, m := range c.waitMembers(last) {
				if len(m.PeerURLs) != 1 || !strings.HasPrefix(m.PeerURLs[0], "https://") {
					t.Errorf("member %s peer URLs %v, want one https:// URL", m.Name, m.PeerURLs)
				}
			}
			if out := mustCtl(t, first.Endpoint(), "put", "foo", "bar"); out != "OK\n" {
				t.Fatalf("put through %s: %q", first.opts.name, out)
			}
			if out := mustCtl(t, last.Endpoint(), "get", "foo"); out != "foo\nbar\n" {
				t.Fatalf("get through %s: %q", last.opts.name, out)
			}
			if out := mustCtl(t, c.members[1].Endpoint(), "get", "foo", "--consistency=s"); out != "foo\nbar\n" {
				t.Fatalf("serializable get through %s: %q", c.members[1].opts.name, out)
			}
			checkKeepAliveEverywhere(t, c)

			// A peer without a certificate: the server's verdict arrives
			// after the client's TLS 1.3 handshake, on the first read.
			err = peerHandshake(first.peerPort, &tls.Config{RootCAs: certs.Pool, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
			if err == nil || !strings.Contains(err.Error(), "certificate required") {
				t.Errorf("TLS client without a certificate on %s's peer port: %v, want the certificate required alert", im.name, err)
			}
			// The same client with a certificate from the CA gets through
			// the handshake.
			cc, err := certs.ClientConfig(true)
			if err != nil {
				t.Fatal(err)
			}
			cc.NextProtos = []string{"h2"}
			if err := peerHandshake(first.peerPort, cc); err != nil {
				t.Errorf("TLS client with a CA-signed certificate on %s's peer port: %v", im.name, err)
			}

			// A member joining with --initial-cluster-state existing
			// learns the cluster and catches up over the TLS peer links.
			j, out := addLearner(t, c, im, serverOptions{peerTLS: certs, peerClientCertAuth: true})
			ic := initialRe.FindStringSubmatch(out)
			if ic == nil || !strings.Contains(ic[1], "m4="+j.peerURL()) {
				t.Fatalf("member add output:\n%s", out)
			}
			j.opts.initialCluster = ic[1]
			j.opts.extra = []string{"--initial-cluster-state", "existing"}
			if err := j.start(); err != nil {
				t.Fatalf("start the joining member: %v", err)
			}
			if got := ctlUntil(t, j.Endpoint(), nil, "get", "foo", "--consistency=s"); got != "foo\nbar\n" {
				t.Fatalf("serializable read on the member that joined: %q", got)
			}
		})
	}
}

// peerHandshake dials the peer port over TLS and waits briefly for the
// server's first bytes (HTTP/2 SETTINGS) or its refusal; a server that
// sends nothing in time also counts as accepting.
func peerHandshake(port int, c *tls.Config) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), c)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The client preface, so an HTTP/2 server answers with its SETTINGS.
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// TestPeerAutoTLS starts 3-member etcd and concord clusters with https://
// peer URLs and --peer-auto-tls: every member serves and presents its own
// self-signed certificate, and peers do not verify them.
func TestPeerAutoTLS(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			c := startClusterWith(t, im, clusterSize, serverOptions{peerAutoTLS: true})
			first, last := c.members[0], c.members[len(c.members)-1]
			c.waitMembers(last)
			if out := mustCtl(t, first.Endpoint(), "put", "foo", "bar"); out != "OK\n" {
				t.Fatalf("put through %s: %q", first.opts.name, out)
			}
			if out := mustCtl(t, last.Endpoint(), "get", "foo"); out != "foo\nbar\n" {
				t.Fatalf("get through %s: %q", last.opts.name, out)
			}
			checkKeepAliveEverywhere(t, c)
			// The peer port speaks TLS with a self-signed certificate.
			err := peerHandshake(first.peerPort, &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("verifying %s's auto TLS peer certificate: %v, want a verification failure", im.name, err)
			}
		})
	}
}

// TestPeerTLSWithoutCert starts etcd and concord with an https:// peer URL
// and no peer certificate: both refuse to start, with etcd's words.
func TestPeerTLSWithoutCert(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			requireBinary(t, im)
			client, peer, err := freePorts()
			if err != nil {
				t.Fatal(err)
			}
			peerURL := fmt.Sprintf("https://127.0.0.1:%d", peer)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, im.bin, "--name", "e2e", "--data-dir", t.TempDir(),
				"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client),
				"--advertise-client-urls", fmt.Sprintf("http://127.0.0.1:%d", client),
				"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
				"--initial-cluster", "e2e="+peerURL)
			cmd.Env = cleanEnv()
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || ctx.Err() != nil {
				t.Fatalf("%s with an https:// peer URL and no certificate: %v, want a failed start\n%s", im.name, err, out)
			}
			want := fmt.Sprintf("cannot listen on TLS for 127.0.0.1:%d: KeyFile and CertFile are not presented", peer)
			if !strings.Contains(string(out), want) {
				t.Errorf("%s output does not say %q:\n%s", im.name, want, out)
			}
		})
	}
}
