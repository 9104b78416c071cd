package config

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/spf13/pflag"
)

// Client TLS flags: etcd's for serving (https:// client URLs), etcd's
// grpc-proxy's for the endpoints the split processes call.
const (
	fCertFile              = "cert-file"
	fKeyFile               = "key-file"
	fTrustedCAFile         = "trusted-ca-file"
	fClientCertAuth        = "client-cert-auth"
	fAutoTLS               = "auto-tls"
	fCACert                = "cacert"
	fCert                  = "cert"
	fKey                   = "key"
	fInsecureSkipTLSVerify = "insecure-skip-tls-verify"
)

// Peer TLS flags, etcd's: the same meaning for --listen-peer-urls as the
// client ones for the client URLs, and the certificate a member presents
// when it dials the https:// peer URLs of the others.
const (
	fPeerCertFile       = "peer-cert-file"
	fPeerKeyFile        = "peer-key-file"
	fPeerTrustedCAFile  = "peer-trusted-ca-file"
	fPeerClientCertAuth = "peer-client-cert-auth"
	fPeerAutoTLS        = "peer-auto-tls"
)

// TLSInfo is one side's TLS files and switches, as etcd's transport.TLSInfo:
// the client URLs' (--cert-file, --key-file, --trusted-ca-file,
// --client-cert-auth, --auto-tls) or the peer URLs' (the same with
// --peer-). One loader builds the server TLS of both and the peers' client
// TLS, so the two cannot drift apart. http:// URLs ignore it, as etcd's do.
type TLSInfo struct {
	CertFile, KeyFile string
	// TrustedCAFile verifies client certificates; as in etcd, setting it
	// requires them, ClientCertAuth or not. Peers also verify the
	// certificates of the members they dial with it.
	TrustedCAFile string
	// ClientCertAuth refuses clients without a certificate signed by
	// TrustedCAFile (or, without it, by the system's roots).
	ClientCertAuth bool
	// AutoTLS serves a generated self-signed certificate when no
	// CertFile is given.
	AutoTLS bool

	// peer names the --peer-* flags in errors and selects etcd's peer
	// wording.
	peer bool
}

func clientTLSFlags(fs *pflag.FlagSet) {
	fs.String(fCertFile, "", "path to the client server TLS cert file (for https:// client URLs)")
	fs.String(fKeyFile, "", "path to the client server TLS key file")
	fs.String(fTrustedCAFile, "", "path to the client server TLS trusted CA cert file; clients must then present a certificate it signed")
	fs.Bool(fClientCertAuth, false, "enable client cert authentication: clients must present a certificate signed by --trusted-ca-file")
	fs.Bool(fAutoTLS, false, "client TLS using a generated self-signed certificate (when no --cert-file is given)")
}

func peerTLSFlags(fs *pflag.FlagSet) {
	fs.String(fPeerCertFile, "", "path to the peer server TLS cert file (for https:// peer URLs; also the client certificate presented to peers)")
	fs.String(fPeerKeyFile, "", "path to the peer server TLS key file")
	fs.String(fPeerTrustedCAFile, "", "path to the peer server TLS trusted CA file; peers must then present a certificate it signed, and the certificates of the peers dialed are verified with it")
	fs.Bool(fPeerClientCertAuth, false, "enable peer client cert authentication: peers must present a certificate signed by --peer-trusted-ca-file")
	fs.Bool(fPeerAutoTLS, false, "peer TLS using a generated self-signed certificate (when no --peer-cert-file is given)")
}

// loadTLS reads one side's TLS flags: the client ones, or with peer the
// --peer-* ones (the same names, prefixed).
func loadTLS(v getter, peer bool) TLSInfo {
	t := TLSInfo{peer: peer}
	t.CertFile = v.GetString(t.flag(fCertFile))
	t.KeyFile = v.GetString(t.flag(fKeyFile))
	t.TrustedCAFile = v.GetString(t.flag(fTrustedCAFile))
	t.ClientCertAuth = v.GetBool(t.flag(fClientCertAuth))
	t.AutoTLS = v.GetBool(t.flag(fAutoTLS))
	return t
}

type getter interface {
	GetString(string) string
	GetBool(string) bool
}

// asPeer is t naming the --peer-* flags, however it was built.
func (t TLSInfo) asPeer() TLSInfo {
	t.peer = true
	return t
}

// flag is the name of one of t's flags, given by its client name.
func (t TLSInfo) flag(name string) string {
	if t.peer {
		return "peer-" + name
	}
	return name
}

// IsTLS reports whether a client or peer URL is served over TLS.
func IsTLS(u url.URL) bool { return u.Scheme == "https" || u.Scheme == "unixs" }

// validate checks t for the listen URLs urls; like etcd, an https URL
// without a certificate is an error.
func (t TLSInfo) validate(urls []url.URL) error {
	if (t.CertFile == "") != (t.KeyFile == "") {
		return fmt.Errorf("%w: --%s and --%s must be given together", ErrInvalid, t.flag(fCertFile), t.flag(fKeyFile))
	}
	for _, u := range urls {
		switch {
		case t.peer && u.Scheme != "http" && u.Scheme != "https":
			return fmt.Errorf("%w: peer URL %q: the scheme must be http or https", ErrInvalid, u.String())
		case !t.peer && u.Scheme != "http" && u.Scheme != "unix" && !IsTLS(u):
			return fmt.Errorf("%w: client URL %q: the scheme must be http, https, unix or unixs", ErrInvalid, u.String())
		case IsTLS(u) && t.CertFile == "" && !t.AutoTLS && t.peer:
			// etcd's wording (transport.newTLSListener), with the flags.
			return fmt.Errorf("%w: cannot listen on TLS for %s: KeyFile and CertFile are not presented (--%s, --%s or --%s)",
				ErrInvalid, u.Host, fPeerCertFile, fPeerKeyFile, fPeerAutoTLS)
		case IsTLS(u) && t.CertFile == "" && !t.AutoTLS:
			return fmt.Errorf("%w: TLS key/cert (--%s, --%s) must be provided for client url %s with HTTPS scheme", ErrInvalid, fCertFile, fKeyFile, u.String())
		}
	}
	return nil
}

// tlsHosts are the host names of the TLS URLs among urls.
func tlsHosts(urls []url.URL) []string {
	var hosts []string
	for _, u := range urls {
		if IsTLS(u) {
			hosts = append(hosts, u.Hostname())
		}
	}
	return hosts
}

// keyPair is the certificate source of t: the files, read again when they
// change, or with AutoTLS (and no files) one certificate generated for
// hosts. Nil without either.
func (t TLSInfo) keyPair(hosts []string) (func() (*tls.Certificate, error), error) {
	switch {
	case t.CertFile != "":
		r := &certReloader{certFile: t.CertFile, keyFile: t.KeyFile, flags: "--" + t.flag(fCertFile) + "/--" + t.flag(fKeyFile)}
		if _, err := r.get(); err != nil {
			return nil, err
		}
		return r.get, nil
	case t.AutoTLS:
		cert, err := selfSigned(hosts)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", t.flag(fAutoTLS), err)
		}
		return func() (*tls.Certificate, error) { return &cert, nil }, nil
	}
	return nil, nil
}

// ServerConfig is the server TLS of the https:// URLs among urls, or nil if
// there is none. Certificate files are read again when they change (as etcd
// reads them per handshake), so a rotated certificate is served without a
// restart; the trusted CA is read once.
func (t TLSInfo) ServerConfig(urls []url.URL) (*tls.Config, error) {
	hosts := tlsHosts(urls)
	if len(hosts) == 0 {
		return nil, nil
	}
	kp, err := t.keyPair(hosts)
	if err != nil {
		return nil, err
	}
	return t.serverConfig(kp)
}

func (t TLSInfo) serverConfig(kp func() (*tls.Certificate, error)) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if kp == nil {
		return nil, fmt.Errorf("%w: no certificate (--%s, --%s or --%s)", ErrInvalid, t.flag(fCertFile), t.flag(fKeyFile), t.flag(fAutoTLS))
	}
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp() }
	// As etcd (transport.TLSInfo.ServerConfig): either flag requires a
	// client certificate, verified against --trusted-ca-file, or without
	// it against the system's roots.
	switch {
	case t.TrustedCAFile != "":
		pool, err := certPool(t.flag(fTrustedCAFile), t.TrustedCAFile)
		if err != nil {
			return nil, err
		}
		c.ClientCAs = pool
	case t.ClientCertAuth:
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("--%s without --%s: the system's roots: %w", t.flag(fClientCertAuth), t.flag(fTrustedCAFile), err)
		}
		c.ClientCAs = pool
	}
	if t.TrustedCAFile != "" || t.ClientCertAuth {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// PeerConfigs are a member's peer TLS: the server TLS of its https:// peer
// URLs among listen (nil if none), and the client TLS it dials https://
// peers with, as etcd's peer transport (TLSInfo.ClientConfig): its
// certificate as the client certificate, the peers' verified against
// --peer-trusted-ca-file (the system's roots without it), and, with
// --peer-auto-tls, not verified at all since every member's is
// self-signed. With --peer-auto-tls both ends use one generated
// certificate.
func (t TLSInfo) PeerConfigs(listen []url.URL) (server, client *tls.Config, err error) {
	t = t.asPeer()
	hosts := tlsHosts(listen)
	kp, err := t.keyPair(hosts)
	if err != nil {
		return nil, nil, err
	}
	if len(hosts) > 0 {
		if server, err = t.serverConfig(kp); err != nil {
			return nil, nil, err
		}
		// etcd checks that a peer's certificate names the address it
		// connects from (transport.checkSAN).
		base := server
		server = &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c := base.Clone()
			if c.ClientAuth == tls.RequireAndVerifyClientCert {
				c.VerifyConnection = sanChecker(hello.Context(), hello.Conn.RemoteAddr())
			}
			return c, nil
		}}
	}
	client = &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CertFile == "" && t.AutoTLS {
		client.InsecureSkipVerify = true //nolint:gosec // etcd's --peer-auto-tls: self-signed peers
	}
	if t.TrustedCAFile != "" {
		if client.RootCAs, err = certPool(t.flag(fTrustedCAFile), t.TrustedCAFile); err != nil {
			return nil, nil, err
		}
	}
	if kp != nil {
		client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp() }
	}
	return server, client, nil
}

// sanLookupTimeout bounds resolving the DNS names of a peer's certificate.
const sanLookupTimeout = 5 * time.Second

// sanChecker is etcd's checkSAN for a peer connecting from remote: a
// certificate naming IP addresses or DNS names must name remote's address
// (a DNS name by resolving to it, within the handshake's ctx); one naming
// neither is accepted.
func sanChecker(ctx context.Context, remote net.Addr) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		cert := cs.PeerCertificates[0]
		if len(cert.IPAddresses) == 0 && len(cert.DNSNames) == 0 {
			return nil
		}
		host, _, err := net.SplitHostPort(remote.String())
		if err != nil {
			return fmt.Errorf("peer certificate check: %w", err)
		}
		ip := net.ParseIP(host)
		for _, a := range cert.IPAddresses {
			if a.Equal(ip) {
				return nil
			}
		}
		// The handshake's ctx ends with the server, not with the
		// handshake timeout: bound the lookups too.
		ctx, cancel := context.WithTimeout(ctx, sanLookupTimeout)
		defer cancel()
		for _, name := range cert.DNSNames {
			addrs, err := net.DefaultResolver.LookupIPAddr(ctx, name)
			if err != nil {
				continue
			}
			for _, a := range addrs {
				if a.IP.Equal(ip) {
					return nil
				}
			}
		}
		return fmt.Errorf("peer certificate (IP addresses %v, DNS names %v) does not name the address %s it connects from", cert.IPAddresses, cert.DNSNames, host)
	}
}

func certPool(flag, file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: --%s: %v", ErrInvalid, flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: --%s: no PEM certificate in %s", ErrInvalid, flag, file)
	}
	return pool, nil
}

// certReloader serves a key pair from files, loading them again when either
// file's modification time changes; a pair that fails to load (a rotation
// half done) keeps the previous one in service.
type certReloader struct {
	certFile, keyFile string
	flags             string // the flags naming the files, for errors

	mu     sync.Mutex
	cert   *tls.Certificate
	mtimes [2]time.Time
}

func (r *certReloader) get() (*tls.Certificate, error) {
	var mt [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		if st, err := os.Stat(f); err == nil {
			mt[i] = st.ModTime()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && mt == r.mtimes {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if r.cert != nil {
			return r.cert, nil
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, r.flags, err)
	}
	r.cert, r.mtimes = &cert, mt
	return r.cert, nil
}

// selfSigned makes a certificate for hosts (IP addresses or names), valid
// for a year, as etcd's --auto-tls does; clients cannot verify it and must
// skip verification (etcdctl --insecure-skip-tls-verify).
func selfSigned(hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"concord"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// EndpointTLS is how a split process dials https:// endpoints of the
// others (--consensus-endpoints, --watchfanout-endpoints,
// --leasesvc-endpoints): etcd grpc-proxy's --cacert, --cert, --key and
// --insecure-skip-tls-verify. http:// endpoints ignore it.
type EndpointTLS struct {
	// CAFile verifies the endpoints' certificates; "" trusts the system's
	// roots.
	CAFile string
	// CertFile and KeyFile are the client certificate presented to
	// endpoints that authenticate clients (--client-cert-auth).
	CertFile, KeyFile  string
	InsecureSkipVerify bool
}

func endpointTLSFlags(fs *pflag.FlagSet) {
	fs.String(fCACert, "", "verify the TLS certificates of https:// endpoints (consensus, watchfanout, leasesvc) with this CA bundle (default: the system's roots)")
	fs.String(fCert, "", "client TLS certificate presented to https:// endpoints")
	fs.String(fKey, "", "client TLS key of --cert")
	fs.Bool(fInsecureSkipTLSVerify, false, "do not verify the certificates of https:// endpoints")
}

func loadEndpointTLS(v getter) EndpointTLS {
	return EndpointTLS{
		CAFile:             v.GetString(fCACert),
		CertFile:           v.GetString(fCert),
		KeyFile:            v.GetString(fKey),
		InsecureSkipVerify: v.GetBool(fInsecureSkipTLSVerify),
	}
}

func (e EndpointTLS) validate() error {
	if (e.CertFile == "") != (e.KeyFile == "") {
		return fmt.Errorf("%w: --%s and --%s must be given together", ErrInvalid, fCert, fKey)
	}
	return nil
}

// ClientConfig is the client TLS for https:// endpoints.
func (e EndpointTLS) ClientConfig() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: e.InsecureSkipVerify} //nolint:gosec // the operator asked for it
	if e.CAFile != "" {
		pool, err := certPool(fCACert, e.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if e.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --%s/--%s: %v", ErrInvalid, fCert, fKey, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
