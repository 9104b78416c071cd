package eventbus

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/tlstest"
)

func genCerts(t *testing.T) *tlstest.Files {
	t.Helper()
	certs, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func serverFiles(c *tlstest.Files) TLSFiles {
	return TLSFiles{CertFile: c.ServerCert, KeyFile: c.ServerKey, CAFile: c.CA}
}

func clientFiles(c *tlstest.Files) TLSFiles {
	return TLSFiles{CertFile: c.ClientCert, KeyFile: c.ClientKey, CAFile: c.CA}
}

func hostPort(u string) string { return u[strings.Index(u, "://")+3:] }

// plaintextSubscribe speaks NATS in cleartext to addr: it reads the INFO,
// subscribes to the bus subject and pings. It returns what the server sent
// after INFO, up to a PONG or the connection's end, and whether the INFO
// announced that TLS is required.
func plaintextSubscribe(t *testing.T, addr string) (after string, tlsRequired bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading INFO: %v", err)
	}
	if _, err := io.WriteString(conn, "CONNECT {\"verbose\":false}\r\nSUB "+Subject+" 1\r\nPING\r\n"); err != nil {
		return "", strings.Contains(info, `"tls_required":true`) // closed already
	}
	tlsRequired = strings.Contains(info, `"tls_required":true`)
	for {
		line, err := r.ReadString('\n')
		after += line
		switch {
		case strings.HasPrefix(line, "PONG"):
			return after, tlsRequired
		case errors.Is(err, io.EOF) || err != nil && strings.Contains(err.Error(), "reset"):
			return after, tlsRequired
		case err != nil:
			t.Fatalf("reading after SUB: %v (got %q)", err, after)
		}
	}
}

func TestNATSTLSRefusesClientsWithoutTrustedCertificates(t *testing.T) {
	certs, other := genCerts(t), genCerts(t)
	srv := startNATS(t, NATSConfig{ListenAddr: "127.0.0.1:0", TLS: serverFiles(certs)})
	u := srv.ClientURL()
	refused := map[string][]ClientOption{
		"no TLS configured":       nil,
		"no client certificate":   {WithTLS(TLSFiles{CAFile: certs.CA})},
		"certificate of other CA": {WithTLS(TLSFiles{CertFile: other.ClientCert, KeyFile: other.ClientKey, CAFile: certs.CA})},
		"server not trusted":      {WithTLS(TLSFiles{CertFile: certs.ClientCert, KeyFile: certs.ClientKey, CAFile: other.CA})},
	}
	for name, opts := range refused {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		cli, err := ConnectNATS(ctx, u, append(opts, WithLogger(quietLogger()))...)
		cancel()
		if err == nil {
			cli.Close()
			t.Errorf("%s: ConnectNATS succeeded", name)
		}
	}
	// The server's certificate is what an untrusting client rejects.
	if _, err := ConnectNATS(context.Background(), u, WithLogger(quietLogger()),
		WithTLS(TLSFiles{CAFile: other.CA})); !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Errorf("client trusting another CA: %v, want an unknown authority error", err)
	}
	after, tlsRequired := plaintextSubscribe(t, hostPort(u))
	if !tlsRequired || strings.Contains(after, "PONG") {
		t.Fatalf("plaintext client: tls_required %v, then %q", tlsRequired, after)
	}
	// The right certificate gets in.
	cli, err := ConnectNATS(context.Background(), u, WithLogger(quietLogger()), WithTLS(clientFiles(certs)))
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
}

// TestNATSTLSWithoutCA: with a certificate but no trusted CA the server
// requires TLS but not client certificates.
func TestNATSTLSWithoutCA(t *testing.T) {
	certs := genCerts(t)
	srv := startNATS(t, NATSConfig{ListenAddr: "127.0.0.1:0",
		TLS: TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey}})
	cli, err := ConnectNATS(context.Background(), srv.ClientURL(), WithLogger(quietLogger()), WithTLS(TLSFiles{CAFile: certs.CA}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c := subscribe(t, cli)
	waitFor(t, "a beat over TLS without a client certificate", func() bool {
		if err := srv.PublishProgress(context.Background(), 3); err != nil {
			t.Fatal(err)
		}
		return len(c.get()) > 0
	})
	if after, tlsRequired := plaintextSubscribe(t, hostPort(srv.ClientURL())); !tlsRequired || strings.Contains(after, "PONG") {
		t.Fatalf("plaintext client: tls_required %v, then %q", tlsRequired, after)
	}
}

// TestNATSTLSConfigRejected: half-configured TLS, on either end, and files
// that cannot be read are ErrInvalidConfig.
func TestNATSTLSConfigRejected(t *testing.T) {
	certs := genCerts(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	servers := map[string]NATSConfig{
		"cert without key":     {ListenAddr: "127.0.0.1:0", TLS: TLSFiles{CertFile: certs.ServerCert}},
		"key without cert":     {ListenAddr: "127.0.0.1:0", TLS: TLSFiles{KeyFile: certs.ServerKey}},
		"CA without cert":      {ListenAddr: "127.0.0.1:0", TLS: TLSFiles{CAFile: certs.CA}},
		"no listener":          {TLS: serverFiles(certs)},
		"cluster without CA":   {ListenAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", TLS: TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey}},
		"negative TLS timeout": {ListenAddr: "127.0.0.1:0", TLS: serverFiles(certs), TLSTimeout: -time.Second},
		"missing cert file":    {ListenAddr: "127.0.0.1:0", TLS: TLSFiles{CertFile: missing, KeyFile: certs.ServerKey}},
		"CA file not PEM":      {ListenAddr: "127.0.0.1:0", TLS: TLSFiles{CertFile: certs.ServerCert, KeyFile: certs.ServerKey, CAFile: certs.ServerKey}},
	}
	for name, cfg := range servers {
		cfg.Logger = quietLogger()
		if n, err := StartNATS(context.Background(), cfg); !errors.Is(err, ErrInvalidConfig) {
			if n != nil {
				n.Close()
			}
			t.Errorf("server, %s: StartNATS = %v, want ErrInvalidConfig", name, err)
		}
	}
	clients := map[string]TLSFiles{
		"cert without key":  {CertFile: certs.ClientCert},
		"key without cert":  {KeyFile: certs.ClientKey},
		"missing CA file":   {CAFile: missing},
		"missing cert file": {CertFile: missing, KeyFile: certs.ClientKey},
	}
	for name, f := range clients {
		// Nothing listens on this URL: the files must be refused first.
		if _, err := ConnectNATS(context.Background(), "tls://127.0.0.1:1", WithLogger(quietLogger()), WithTLS(f)); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("client, %s: ConnectNATS = %v, want ErrInvalidConfig", name, err)
		}
	}
}

// TestNATSClusterRoutesTLS is TestNATSClusterRoutes with mutual TLS on the
// routes; a member whose certificate another CA signed does not join.
func TestNATSClusterRoutesTLS(t *testing.T) {
	certs := genCerts(t)
	t.Run("joined", func(t *testing.T) { testClusterRoutes(t, serverFiles(certs)) })
	t.Run("untrusted member", func(t *testing.T) {
		other := genCerts(t)
		log := &logWatch{want: "handshake error", seen: make(chan struct{})}
		a := startNATS(t, NATSConfig{ServerName: "a", ListenAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0",
			TLS: serverFiles(certs), Logger: slog.New(log)})
		// b trusts a's CA, so only a can refuse: b's certificate is not
		// signed by it.
		b := startNATS(t, NATSConfig{ServerName: "b", ListenAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0",
			Routes: []string{a.ClusterURL()},
			TLS:    TLSFiles{CertFile: other.ServerCert, KeyFile: other.ServerKey, CAFile: certs.CA}})
		select {
		case <-log.seen:
		case <-time.After(waitTimeout):
			t.Fatal("a logged no TLS handshake error for b's route")
		}
		if n, m := a.srv.NumRoutes(), b.srv.NumRoutes(); n != 0 || m != 0 {
			t.Fatalf("routes a=%d b=%d after a refused b's certificate", n, m)
		}
	})
}

// logWatch is a slog handler closing seen at the first record whose
// message holds want.
type logWatch struct {
	want string
	seen chan struct{}
	once sync.Once
}

func (l *logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (l *logWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, l.want) {
		l.once.Do(func() { close(l.seen) })
	}
	return nil
}
func (l *logWatch) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logWatch) WithGroup(string) slog.Handler      { return l }

// TestNATSTLSServerCertificateRotation: the server serves a new certificate
// once its files change, and keeps the current one while they do not load.
func TestNATSTLSServerCertificateRotation(t *testing.T) {
	a, b := genCerts(t), genCerts(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	install := func(certSrc, keySrc string, at time.Time) {
		t.Helper()
		for dst, src := range map[string]string{cert: certSrc, key: keySrc} {
			pem, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, pem, 0o600); err != nil {
				t.Fatal(err)
			}
			// An explicit time: a rotation must not go unnoticed for
			// sharing the previous files' modification time.
			if err := os.Chtimes(dst, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := time.Now()
	install(a.ServerCert, a.ServerKey, now.Add(-time.Hour))
	srv := startNATS(t, NATSConfig{ListenAddr: "127.0.0.1:0", TLS: TLSFiles{CertFile: cert, KeyFile: key, CAFile: a.CA}})
	// Trusts the server certificate of b only; presents a's client
	// certificate, which the server (trusting a's CA) accepts.
	trustsB := WithTLS(TLSFiles{CertFile: a.ClientCert, KeyFile: a.ClientKey, CAFile: b.CA})
	connect := func() error {
		cli, err := ConnectNATS(context.Background(), srv.ClientURL(), WithLogger(quietLogger()), trustsB)
		if err == nil {
			cli.Close()
		}
		return err
	}
	if err := connect(); !errors.As(err, new(x509.UnknownAuthorityError)) {
		t.Fatalf("before the rotation: %v, want an unknown authority error", err)
	}
	install(b.ServerCert, b.ServerKey, now)
	if err := connect(); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	// A key that does not load (a rotation half done) keeps b's pair.
	if err := os.WriteFile(key, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(key, now.Add(time.Hour), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := connect(); err != nil {
		t.Fatalf("with a broken key file: %v", err)
	}
}
