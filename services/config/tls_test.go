package config_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/tlstest"
	"github.com/concord-kv/concord/services/config"
)

func certs(t *testing.T) *tlstest.Files {
	t.Helper()
	f, err := tlstest.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func leaf(t *testing.T, c *tls.Config) *x509.Certificate {
	t.Helper()
	cert := c.Certificates
	if c.GetCertificate != nil {
		got, err := c.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		cert = []tls.Certificate{*got}
	}
	if len(cert) != 1 {
		t.Fatalf("%d certificates", len(cert))
	}
	x, err := x509.ParseCertificate(cert[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// etcd's client TLS flags: https:// client URLs are served with the
// certificate, and --client-cert-auth requires client certificates signed
// by --trusted-ca-file; the advertised URLs follow the listen URLs.
func TestClientTLSFlags(t *testing.T) {
	f := certs(t)
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379,http://127.0.0.1:2378",
		"--cert-file", f.ServerCert, "--key-file", f.ServerKey,
		"--trusted-ca-file", f.CA, "--client-cert-auth")
	if err != nil {
		t.Fatal(err)
	}
	if ct := c.ClientTLS; ct.CertFile != f.ServerCert || ct.KeyFile != f.ServerKey || ct.TrustedCAFile != f.CA || !ct.ClientCertAuth || ct.AutoTLS {
		t.Fatalf("ClientTLS = %+v", ct)
	}
	if c.AdvertiseClientURLs[0].String() != "https://127.0.0.1:2379" {
		t.Errorf("advertised = %v", c.AdvertiseClientURLs)
	}
	if !config.IsTLS(c.ListenClientURLs[0]) || config.IsTLS(c.ListenClientURLs[1]) {
		t.Errorf("IsTLS wrong for %v", c.ListenClientURLs)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	if sc.ClientAuth != tls.RequireAndVerifyClientCert || sc.ClientCAs == nil {
		t.Errorf("client auth = %v, CAs %v", sc.ClientAuth, sc.ClientCAs)
	}
	if got := leaf(t, sc); got.Subject.CommonName != "concord test server" {
		t.Errorf("served certificate %q", got.Subject.CommonName)
	}

	// As etcd: --trusted-ca-file alone requires client certificates too;
	// --client-cert-auth alone verifies them against the system's roots.
	for _, args := range [][]string{{"--trusted-ca-file", f.CA}, {"--client-cert-auth"}} {
		c, err := load(t, append([]string{"--listen-client-urls", "https://127.0.0.1:2379",
			"--cert-file", f.ServerCert, "--key-file", f.ServerKey}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
		if err != nil {
			t.Fatal(err)
		}
		if sc.ClientAuth != tls.RequireAndVerifyClientCert || sc.ClientCAs == nil {
			t.Errorf("%v: client auth = %v, CAs %v", args, sc.ClientAuth, sc.ClientCAs)
		}
	}

	// Only http:// URLs: the files are ignored, as etcd does.
	c, err = load(t, "--cert-file", f.ServerCert, "--key-file", f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	if sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs); sc != nil || err != nil {
		t.Errorf("ServerConfig for http:// URLs = %v, %v; want nil", sc, err)
	}

	// Environment variables, as for every flag.
	t.Setenv("ETCD_CERT_FILE", f.ServerCert)
	t.Setenv("ETCD_KEY_FILE", f.ServerKey)
	if c, err = load(t, "--listen-client-urls", "https://127.0.0.1:2379"); err != nil || c.ClientTLS.CertFile != f.ServerCert {
		t.Errorf("ETCD_CERT_FILE: %+v, %v", c.ClientTLS, err)
	}
}

func TestClientTLSInvalid(t *testing.T) {
	f := certs(t)
	for name, tc := range map[string]struct {
		args []string
		msg  string
	}{
		"https without cert": {[]string{"--listen-client-urls", "https://127.0.0.1:2379"},
			"TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"},
		"unixs without cert": {[]string{"--listen-client-urls", "unixs://sock:1"}, "must be provided"},
		"cert without key":   {[]string{"--cert-file", f.ServerCert}, "--cert-file and --key-file must be given together"},
		"ftp":                {[]string{"--listen-client-urls", "ftp://127.0.0.1:2379"}, "scheme must be"},
	} {
		_, err := load(t, tc.args...)
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want ErrInvalid with %q", name, err, tc.msg)
		}
	}
	// Files that cannot be read fail when the TLS config is built.
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379", "--cert-file", "/nonexistent.pem", "--key-file", f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClientTLS.ServerConfig(c.ListenClientURLs); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("missing cert file: %v, want ErrInvalid", err)
	}
	c.ClientTLS = config.TLSInfo{CertFile: f.ServerCert, KeyFile: f.ServerKey, TrustedCAFile: f.ServerKey}
	if _, err := c.ClientTLS.ServerConfig(c.ListenClientURLs); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("a CA file without a certificate: %v, want ErrInvalid", err)
	}
}

// --auto-tls serves a self-signed certificate for the https:// URLs' hosts.
func TestAutoTLS(t *testing.T) {
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379,https://localhost:2380", "--auto-tls")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	x := leaf(t, sc)
	if err := x.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if err := x.VerifyHostname("localhost"); err != nil {
		t.Error(err)
	}
	if !x.NotAfter.After(time.Now().Add(300 * 24 * time.Hour)) {
		t.Errorf("expires %v", x.NotAfter)
	}
	if !x.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("IPs %v", x.IPAddresses)
	}
}

// A certificate rotated on disk is served from the next handshake on; a
// half-written rotation keeps the previous certificate.
func TestCertReload(t *testing.T) {
	a, b := certs(t), certs(t)
	dir := t.TempDir()
	cert, key := dir+"/cert.pem", dir+"/key.pem"
	cp := func(from, to string, mtime time.Time) {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(to, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	cp(a.ServerCert, cert, t0)
	cp(a.ServerKey, key, t0)
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379", "--cert-file", cert, "--key-file", key)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	first := leaf(t, sc)
	cp(b.ServerCert, cert, t0.Add(time.Minute)) // key not rotated yet: mismatch
	if got := leaf(t, sc); !got.Equal(first) {
		t.Error("a mismatched pair replaced the served certificate")
	}
	cp(b.ServerKey, key, t0.Add(time.Minute))
	if got := leaf(t, sc); got.Equal(first) {
		t.Error("the rotated certificate is not served")
	}
}

// The split processes take the same serving flags, and etcd grpc-proxy's
// --cacert, --cert and --key to dial https:// endpoints.
func TestSplitTLSFlags(t *testing.T) {
	f := certs(t)
	c, err := loadSplit(t, config.RoleGateway, "--consensus-endpoints", "https://127.0.0.1:2379",
		"--watchfanout-endpoints", "https://127.0.0.1:2479", "--leasesvc-endpoints", "https://127.0.0.1:2579",
		"--listen-client-urls", "https://127.0.0.1:3000", "--cert-file", f.ServerCert, "--key-file", f.ServerKey,
		"--trusted-ca-file", f.CA, "--client-cert-auth",
		"--cacert", f.CA, "--cert", f.ClientCert, "--key", f.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClientTLS.CertFile != f.ServerCert || !c.ClientTLS.ClientCertAuth {
		t.Errorf("ClientTLS = %+v", c.ClientTLS)
	}
	if want := (config.EndpointTLS{CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey}); c.EndpointTLS != want {
		t.Errorf("EndpointTLS = %+v, want %+v", c.EndpointTLS, want)
	}
	cc, err := c.EndpointTLS.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cc.RootCAs == nil || len(cc.Certificates) != 1 || cc.InsecureSkipVerify {
		t.Errorf("client TLS = %+v", cc)
	}
	for _, role := range []config.Role{config.RoleWatchfanout, config.RoleLeasesvc} {
		if _, err := loadSplit(t, role, "--listen-client-urls", "https://127.0.0.1:3000", "--auto-tls", "--insecure-skip-tls-verify"); err != nil {
			t.Errorf("%s: %v", role, err)
		}
	}
	if _, err := loadSplit(t, config.RoleLeasesvc, "--cert", f.ClientCert); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("--cert without --key: %v, want ErrInvalid", err)
	}
	if _, err := (config.EndpointTLS{CAFile: "/nonexistent"}).ClientConfig(); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("missing --cacert file: %v, want ErrInvalid", err)
	}
	cs, err := loadConsensus(t, "--listen-client-urls", "https://127.0.0.1:2379", "--auto-tls")
	if err != nil || !cs.ClientTLS.AutoTLS {
		t.Errorf("consensus --auto-tls: %+v, %v", cs.ClientTLS, err)
	}
}

// handshake runs a TLS handshake over loopback TCP between a server and a
// client config, returning the server's and the client's errors.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		sc := tls.Server(c, server)
		err = sc.Handshake()
		if err == nil {
			_, err = sc.Write([]byte{1})
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cc := client.Clone()
	cc.ServerName = "127.0.0.1"
	tc := tls.Client(c, cc)
	cerr = tc.Handshake()
	if cerr == nil {
		// TLS 1.3: the server's verdict on the client certificate
		// arrives after the client's handshake is done; a server that
		// accepted it writes one byte.
		_, cerr = tc.Read(make([]byte, 1))
	}
	return <-done, cerr
}

// etcd's peer TLS flags: https:// peer URLs are served with
// --peer-cert-file, --peer-client-cert-auth requires peers to present a
// certificate signed by --peer-trusted-ca-file, and a member dials its
// peers presenting its own certificate and trusting that CA.
func TestPeerTLS(t *testing.T) {
	f := certs(t)
	c, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380",
		"--initial-cluster", "a=https://127.0.0.1:2380,b=https://127.0.0.1:2381",
		"--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey,
		"--peer-trusted-ca-file", f.CA, "--peer-client-cert-auth")
	if err != nil {
		t.Fatal(err)
	}
	want := config.TLSInfo{CertFile: f.ServerCert, KeyFile: f.ServerKey, TrustedCAFile: f.CA, ClientCertAuth: true}
	if c.PeerTLS.CertFile != want.CertFile || c.PeerTLS.KeyFile != want.KeyFile || c.PeerTLS.TrustedCAFile != want.TrustedCAFile || !c.PeerTLS.ClientCertAuth || c.PeerTLS.AutoTLS {
		t.Fatalf("PeerTLS = %+v, want %+v", c.PeerTLS, want)
	}
	if ct := c.ClientTLS; ct.CertFile != "" || ct.KeyFile != "" || ct.TrustedCAFile != "" || ct.ClientCertAuth {
		t.Errorf("peer flags set the client TLS: %+v", ct)
	}
	server, client, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
	if err != nil || server == nil || client == nil {
		t.Fatalf("PeerConfigs = %v, %v, %v", server, client, err)
	}
	// Two members with the same flags talk to each other.
	if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
		t.Fatalf("member to member: server %v, client %v", serr, cerr)
	}
	// A peer without a certificate is refused.
	bare := &tls.Config{RootCAs: f.Pool, MinVersion: tls.VersionTLS12}
	if serr, _ := handshake(t, server, bare); serr == nil {
		t.Error("a peer without a certificate was accepted under --peer-client-cert-auth")
	}
	// A member trusting another CA does not accept this one's certificate.
	other, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380",
		"--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey, "--peer-trusted-ca-file", f.OtherCA)
	if err != nil {
		t.Fatal(err)
	}
	oserver, oclient, err := other.PeerTLS.PeerConfigs(other.ListenPeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	if _, cerr := handshake(t, server, oclient); cerr == nil {
		t.Error("a member dialing with --peer-trusted-ca-file of another CA accepted the peer's certificate")
	}
	if serr, _ := handshake(t, oserver, client); serr == nil {
		t.Error("a member trusting another CA accepted the peer's client certificate")
	}

	// http:// peer URLs need no certificate; no server TLS then.
	plain, err := load(t, "--listen-peer-urls", "http://127.0.0.1:2380")
	if err != nil {
		t.Fatal(err)
	}
	if s, cl, err := plain.PeerTLS.PeerConfigs(plain.ListenPeerURLs); s != nil || cl == nil || err != nil {
		t.Errorf("http:// peer URLs: %v, %v, %v", s, cl, err)
	}
}

// A peer certificate naming addresses must name the one the peer connects
// from (etcd's checkSAN).
func TestPeerTLSChecksSAN(t *testing.T) {
	f := certs(t)
	c, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380",
		"--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey,
		"--peer-trusted-ca-file", f.CA, "--peer-client-cert-auth")
	if err != nil {
		t.Fatal(err)
	}
	server, _, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	// The client certificate names no address: accepted, as in etcd.
	noSAN, err := f.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, server, noSAN); serr != nil || cerr != nil {
		t.Errorf("certificate without SANs: server %v, client %v", serr, cerr)
	}
	// A certificate for another address is refused.
	dir := t.TempDir()
	certFile, keyFile := dir+"/cert.pem", dir+"/key.pem"
	if err := f.IssueClient(certFile, keyFile, net.IPv4(10, 9, 8, 7)); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	wrong := &tls.Config{RootCAs: f.Pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if serr, _ := handshake(t, server, wrong); serr == nil || !strings.Contains(serr.Error(), "does not name the address") {
		t.Errorf("certificate for 10.9.8.7 connecting from 127.0.0.1: server %v", serr)
	}
}

func TestPeerTLSInvalid(t *testing.T) {
	f := certs(t)
	for name, tc := range map[string]struct {
		args []string
		msg  string
	}{
		"https without cert": {[]string{"--listen-peer-urls", "https://127.0.0.1:2380"},
			"cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"},
		"cert without key": {[]string{"--peer-cert-file", f.ServerCert}, "--peer-cert-file and --peer-key-file must be given together"},
		"unix":             {[]string{"--listen-peer-urls", "unix://sock:1"}, "scheme must be http or https"},
	} {
		_, err := load(t, tc.args...)
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: err = %v, want ErrInvalid with %q", name, err, tc.msg)
		}
	}
	// A client certificate does not serve the peer URLs.
	if _, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380", "--cert-file", f.ServerCert, "--key-file", f.ServerKey); err == nil {
		t.Error("https:// peer URLs accepted with only the client certificate")
	}
	c, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380", "--peer-cert-file", "/nonexistent.pem", "--peer-key-file", f.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "--peer-cert-file") {
		t.Errorf("missing peer cert file: %v, want ErrInvalid naming --peer-cert-file", err)
	}
}

// --peer-auto-tls: one self-signed certificate serves the peer URLs and is
// presented to peers, whose own self-signed ones are not verified.
func TestPeerAutoTLS(t *testing.T) {
	c, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380", "--peer-auto-tls")
	if err != nil {
		t.Fatal(err)
	}
	server, client, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	if !client.InsecureSkipVerify || client.GetClientCertificate == nil {
		t.Errorf("auto TLS client: skip verify %v, certificate %v", client.InsecureSkipVerify, client.GetClientCertificate != nil)
	}
	if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
		t.Errorf("auto TLS member to member: server %v, client %v", serr, cerr)
	}
}

// etcd's --tls-min-version, --tls-max-version and --cipher-suites shape
// both sides' TLS, with etcd's validation.
func TestTLSVersionsAndCipherSuites(t *testing.T) {
	f := certs(t)
	serve := []string{"--listen-client-urls", "https://127.0.0.1:2379", "--cert-file", f.ServerCert, "--key-file", f.ServerKey}
	c, err := load(t, append(serve, "--tls-min-version", "TLS1.3")...)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	if sc.MinVersion != tls.VersionTLS13 {
		t.Fatalf("MinVersion = %x", sc.MinVersion)
	}
	tls12 := &tls.Config{RootCAs: f.Pool, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12}
	if _, cerr := handshake(t, sc, tls12); cerr == nil {
		t.Error("a TLS 1.2 client was served under --tls-min-version TLS1.3")
	}
	tls13 := &tls.Config{RootCAs: f.Pool, MinVersion: tls.VersionTLS13}
	if serr, cerr := handshake(t, sc, tls13); serr != nil || cerr != nil {
		t.Errorf("TLS 1.3 client: server %v, client %v", serr, cerr)
	}

	const suite = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
	c, err = load(t, append(serve, "--tls-max-version", "TLS1.2", "--cipher-suites", suite+",TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305")...)
	if err != nil {
		t.Fatal(err)
	}
	if sc, err = c.ClientTLS.ServerConfig(c.ListenClientURLs); err != nil {
		t.Fatal(err)
	}
	want := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
	if !slices.Equal(sc.CipherSuites, want) || sc.MaxVersion != tls.VersionTLS12 || sc.MinVersion != tls.VersionTLS12 {
		t.Fatalf("suites %x, versions %x-%x", sc.CipherSuites, sc.MinVersion, sc.MaxVersion)
	}
	other := tls12.Clone()
	other.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	if _, cerr := handshake(t, sc, other); cerr == nil {
		t.Error("a client offering only another suite was served")
	}
	same := tls12.Clone()
	same.CipherSuites = want[:1]
	if serr, cerr := handshake(t, sc, same); serr != nil || cerr != nil {
		t.Errorf("client with the configured suite: server %v, client %v", serr, cerr)
	}
	// The peer side takes the same shared flags.
	if c.PeerTLS.MaxVersion != tls.VersionTLS12 || !slices.Equal(c.PeerTLS.CipherSuites, want) {
		t.Errorf("peer TLS: %+v", c.PeerTLS)
	}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--cipher-suites", "TLS_NOPE"}, `unexpected TLS cipher suite "TLS_NOPE"`},
		{[]string{"--tls-min-version", "TLS1.1"}, `unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)`},
		{[]string{"--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"}, "min version (--tls-min-version) is greater than max version"},
		{[]string{"--tls-min-version", "TLS1.3", "--cipher-suites", suite}, "cipher suites cannot be configured when only TLS1.3 is enabled"},
	} {
		if _, err := load(t, tc.args...); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.msg)
		}
	}

	// etcd's configuration file spells the suites as a list.
	file := t.TempDir() + "/etcd.yaml"
	if err := os.WriteFile(file, []byte("cipher-suites: ["+suite+"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = load(t, "--config-file", file); err != nil || !slices.Equal(c.ClientTLS.CipherSuites, want[:1]) {
		t.Errorf("cipher-suites from YAML: %x, %v", c.ClientTLS.CipherSuites, err)
	}
}

// --client-crl-file and --peer-crl-file refuse revoked certificates, read
// at each handshake.
func TestCRL(t *testing.T) {
	f := certs(t)
	dir := t.TempDir()
	crl := dir + "/crl.pem"
	if err := f.Revoke(crl); err != nil { // revokes nothing yet
		t.Fatal(err)
	}
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379", "--cert-file", f.ServerCert, "--key-file", f.ServerKey,
		"--trusted-ca-file", f.CA, "--client-crl-file", crl,
		"--listen-peer-urls", "https://127.0.0.1:2380", "--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey,
		"--peer-trusted-ca-file", f.CA, "--peer-crl-file", crl)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	peerServer, peerClient, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	client, err := f.ClientConfig(true)
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, sc, client); serr != nil || cerr != nil {
		t.Fatalf("before revocation: server %v, client %v", serr, cerr)
	}
	if serr, cerr := handshake(t, peerServer, peerClient); serr != nil || cerr != nil {
		t.Fatalf("peer before revocation: server %v, client %v", serr, cerr)
	}
	if err := f.Revoke(crl, f.ClientCert, f.ServerCert); err != nil {
		t.Fatal(err)
	}
	if serr, _ := handshake(t, sc, client); serr == nil || !strings.Contains(serr.Error(), "revoked") {
		t.Errorf("revoked client certificate: server %v", serr)
	}
	if serr, _ := handshake(t, peerServer, peerClient); serr == nil || !strings.Contains(serr.Error(), "revoked") {
		t.Errorf("revoked peer certificate: server %v", serr)
	}

	if err := os.WriteFile(crl, []byte("not a CRL"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, "--client-crl-file", crl); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "--client-crl-file") {
		t.Errorf("bad CRL: %v", err)
	}
}

// --peer-cert-allowed-cn, --peer-cert-allowed-hostname and
// --client-cert-allowed-hostname narrow the verified certificates.
func TestAllowedNames(t *testing.T) {
	f := certs(t)
	peer := func(args ...string) (server, client *tls.Config) {
		t.Helper()
		c, err := load(t, append([]string{"--listen-peer-urls", "https://127.0.0.1:2380", "--peer-cert-file", f.ServerCert,
			"--peer-key-file", f.ServerKey, "--peer-trusted-ca-file", f.CA}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		server, client, err = c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
		if err != nil {
			t.Fatal(err)
		}
		return server, client
	}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--peer-cert-allowed-cn", "someone,concord test server"}, true},
		{[]string{"--peer-cert-allowed-cn", "someone else"}, false},
		{[]string{"--peer-cert-allowed-hostname", "localhost"}, true},
		{[]string{"--peer-cert-allowed-hostname", "example.com"}, false},
	} {
		server, client := peer(tc.args...)
		serr, _ := handshake(t, server, client)
		if (serr == nil) != tc.ok {
			t.Errorf("%v: server %v, want accepted %v", tc.args, serr, tc.ok)
		}
		if !tc.ok && (serr == nil || !strings.Contains(serr.Error(), "client certificate authentication failed")) {
			t.Errorf("%v: error %v", tc.args, serr)
		}
	}
	if _, err := load(t, "--peer-cert-allowed-cn", "a", "--peer-cert-allowed-hostname", "b"); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "mutually exclusive") {
		t.Errorf("CN and hostname together: %v", err)
	}

	// Clients: the certificate must be valid for an allowed host name.
	dir := t.TempDir()
	if err := f.IssueClient(dir+"/c.pem", dir+"/k.pem", net.IPv4(127, 0, 0, 1)); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(dir+"/c.pem", dir+"/k.pem")
	if err != nil {
		t.Fatal(err)
	}
	client := &tls.Config{RootCAs: f.Pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	for host, ok := range map[string]bool{"127.0.0.1": true, "10.0.0.1": false} {
		c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379", "--cert-file", f.ServerCert, "--key-file", f.ServerKey,
			"--trusted-ca-file", f.CA, "--client-cert-allowed-hostname", host)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
		if err != nil {
			t.Fatal(err)
		}
		if serr, _ := handshake(t, sc, client); (serr == nil) != ok {
			t.Errorf("--client-cert-allowed-hostname %s: server %v, want accepted %v", host, serr, ok)
		}
	}
}

// --peer-skip-client-san-verification turns etcd's SAN check off, and
// --peer-client-cert-file is what a member presents when it dials.
func TestPeerSANSkipAndClientCert(t *testing.T) {
	f := certs(t)
	dir := t.TempDir()
	if err := f.IssueClient(dir+"/c.pem", dir+"/k.pem", net.IPv4(10, 9, 8, 7)); err != nil {
		t.Fatal(err)
	}
	c, err := load(t, "--listen-peer-urls", "https://127.0.0.1:2380", "--peer-cert-file", f.ServerCert, "--peer-key-file", f.ServerKey,
		"--peer-trusted-ca-file", f.CA, "--peer-client-cert-auth", "--peer-skip-client-san-verification",
		"--peer-client-cert-file", dir+"/c.pem", "--peer-client-key-file", dir+"/k.pem")
	if err != nil {
		t.Fatal(err)
	}
	server, client, err := c.PeerTLS.PeerConfigs(c.ListenPeerURLs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := x509.ParseCertificate(got.Certificate[0])
	if err != nil || x.Subject.CommonName != "concord test client with addresses" {
		t.Fatalf("dialing certificate %v, %v", x.Subject, err)
	}
	// That certificate names 10.9.8.7, not the loopback it connects from:
	// accepted only because the SAN check is off.
	if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
		t.Errorf("SAN check skipped: server %v, client %v", serr, cerr)
	}
	if _, err := load(t, "--peer-client-cert-file", dir+"/c.pem"); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "--peer-client-cert-file and --peer-client-key-file must be given together") {
		t.Errorf("cert without key: %v", err)
	}
}

// --self-signed-cert-validity sets how long --auto-tls certificates last.
func TestSelfSignedCertValidity(t *testing.T) {
	c, err := load(t, "--listen-client-urls", "https://127.0.0.1:2379", "--auto-tls", "--self-signed-cert-validity", "3")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.ClientTLS.ServerConfig(c.ListenClientURLs)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(leaf(t, sc).NotAfter); left < 3*364*24*time.Hour || left > 3*366*24*time.Hour {
		t.Errorf("certificate valid for %v more, want about 3 years", left)
	}
}
