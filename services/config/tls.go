package config

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
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

// etcd's further TLS flags. The CRL, the allowed names and the dialing
// certificate exist per side (the client names here, --peer- for the
// peer side, except the allowed CNs and the SAN switch, which only peers
// have); versions, suites and the self-signed validity are shared.
const (
	fCRLFile                 = "crl-file" // --client-crl-file, --peer-crl-file
	fClientCertAllowedHost   = "client-cert-allowed-hostname"
	fPeerCertAllowedCN       = "peer-cert-allowed-cn"
	fPeerCertAllowedHost     = "peer-cert-allowed-hostname"
	fPeerSkipClientSANVerify = "peer-skip-client-san-verification"
	fClientCertFile          = "client-cert-file" // also --peer-client-cert-file
	fClientKeyFile           = "client-key-file"  // also --peer-client-key-file
	fCipherSuites            = "cipher-suites"
	fTLSMinVersion           = "tls-min-version"
	fTLSMaxVersion           = "tls-max-version"
	fSelfSignedCertValidity  = "self-signed-cert-validity"
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

	// CRLFile is a certificate revocation list: a client (a peer) whose
	// certificate chain holds a revoked serial is refused. As in etcd it
	// is read at every handshake, so a new list applies at once.
	CRLFile string
	// AllowedCNs and AllowedHostnames restrict the verified client
	// certificates to those with one of the common names (peers only) or
	// valid for one of the host names; at most one of them is set.
	AllowedCNs, AllowedHostnames []string
	// SkipClientSANVerify turns off the check that a peer's certificate
	// names the address it connects from (peers only).
	SkipClientSANVerify bool
	// ClientCertFile and ClientKeyFile are the certificate presented when
	// dialing: to peers instead of CertFile. On the client side etcd
	// presents it to itself from its JSON gateway; concord's JSON gateway
	// calls the handlers in memory, so there it is only checked.
	ClientCertFile, ClientKeyFile string
	// ServerName, when set, is the name dialed peers' certificates must be
	// valid for instead of the host dialed (peers only): as in etcd, the
	// --discovery-srv domain when the discovered peers are https:// and no
	// --peer-trusted-ca-file is given.
	ServerName string

	// MinVersion and MaxVersion bound the TLS versions (0: TLS 1.2, and
	// Go's newest), CipherSuites the TLS 1.2 suites (nil: Go's); the same
	// for both sides, as etcd's --tls-min-version, --tls-max-version and
	// --cipher-suites.
	MinVersion, MaxVersion uint16
	CipherSuites           []uint16
	// SelfSignedValidity is how long an AutoTLS certificate is valid
	// (--self-signed-cert-validity, in years; 0 means one year).
	SelfSignedValidity time.Duration

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
	fs.String("client-"+fCRLFile, "", "path to the client certificate revocation list file; clients presenting a revoked certificate are refused")
	fs.String(fClientCertAllowedHost, "", "comma-separated list of SAN hostnames for client cert authentication: a client certificate must be valid for one of them")
	fs.String(fClientCertFile, "", "path to an explicit client TLS cert file (etcd presents it from its JSON gateway to itself; concord's JSON gateway needs none, so it is only checked)")
	fs.String(fClientKeyFile, "", "path to the key of --client-cert-file")
	fs.String(fCipherSuites, "", "comma-separated list of supported TLS cipher suites between client/server and peers, as Go names them (empty: Go's)")
	fs.String(fTLSMinVersion, "TLS1.2", "minimum TLS version supported: TLS1.2 or TLS1.3")
	fs.String(fTLSMaxVersion, "", "maximum TLS version supported: TLS1.2 or TLS1.3 (empty: Go's newest)")
	fs.Uint(fSelfSignedCertValidity, 1, "validity, in years, of the certificates --auto-tls and --peer-auto-tls generate")
}

func peerTLSFlags(fs *pflag.FlagSet) {
	fs.String(fPeerCertFile, "", "path to the peer server TLS cert file (for https:// peer URLs; also the client certificate presented to peers)")
	fs.String(fPeerKeyFile, "", "path to the peer server TLS key file")
	fs.String(fPeerTrustedCAFile, "", "path to the peer server TLS trusted CA file; peers must then present a certificate it signed, and the certificates of the peers dialed are verified with it")
	fs.Bool(fPeerClientCertAuth, false, "enable peer client cert authentication: peers must present a certificate signed by --peer-trusted-ca-file")
	fs.Bool(fPeerAutoTLS, false, "peer TLS using a generated self-signed certificate (when no --peer-cert-file is given)")
	fs.String("peer-"+fCRLFile, "", "path to the peer certificate revocation list file; peers presenting a revoked certificate are refused")
	fs.String(fPeerCertAllowedCN, "", "comma-separated list of allowed CNs for inter-peer TLS authentication")
	fs.String(fPeerCertAllowedHost, "", "comma-separated list of allowed SAN hostnames for inter-peer TLS authentication")
	fs.Bool(fPeerSkipClientSANVerify, false, "skip the check that a peer's client certificate names the address it connects from")
	fs.String("peer-"+fClientCertFile, "", "path to an explicit peer client TLS cert file, presented when dialing peers (default: --peer-cert-file)")
	fs.String("peer-"+fClientKeyFile, "", "path to the key of --peer-client-cert-file")
}

// loadTLS reads one side's TLS flags: the client ones, or with peer the
// --peer-* ones (the same names, prefixed), and the shared ones.
func loadTLS(v getter, peer bool) (TLSInfo, error) {
	t := TLSInfo{peer: peer}
	t.CertFile = v.GetString(t.flag(fCertFile))
	t.KeyFile = v.GetString(t.flag(fKeyFile))
	t.TrustedCAFile = v.GetString(t.flag(fTrustedCAFile))
	t.ClientCertAuth = v.GetBool(t.flag(fClientCertAuth))
	t.AutoTLS = v.GetBool(t.flag(fAutoTLS))
	if peer {
		t.CRLFile = v.GetString("peer-" + fCRLFile)
		t.AllowedCNs = stringList(v, fPeerCertAllowedCN)
		t.AllowedHostnames = stringList(v, fPeerCertAllowedHost)
		t.SkipClientSANVerify = v.GetBool(fPeerSkipClientSANVerify)
		t.ClientCertFile = v.GetString("peer-" + fClientCertFile)
		t.ClientKeyFile = v.GetString("peer-" + fClientKeyFile)
	} else {
		t.CRLFile = v.GetString("client-" + fCRLFile)
		t.AllowedCNs = stringList(v, fClientCertAllowedCN)
		t.AllowedHostnames = stringList(v, fClientCertAllowedHost)
		t.ClientCertFile = v.GetString(fClientCertFile)
		t.ClientKeyFile = v.GetString(fClientKeyFile)
	}
	var err error
	if t.MinVersion, err = tlsVersion(fTLSMinVersion, v.GetString(fTLSMinVersion)); err != nil {
		return t, err
	}
	if t.MaxVersion, err = tlsVersion(fTLSMaxVersion, v.GetString(fTLSMaxVersion)); err != nil {
		return t, err
	}
	for _, name := range stringList(v, fCipherSuites) {
		id, ok := cipherSuite(name)
		if !ok {
			return t, fmt.Errorf("%w: --%s: unexpected TLS cipher suite %q", ErrInvalid, fCipherSuites, name)
		}
		t.CipherSuites = append(t.CipherSuites, id)
	}
	t.SelfSignedValidity = time.Duration(v.GetUint(fSelfSignedCertValidity)) * 365 * 24 * time.Hour
	return t, nil
}

type getter interface {
	Get(string) any
	GetString(string) string
	GetBool(string) bool
	GetUint(string) uint
}

// stringList reads a comma-separated flag, or a YAML list (etcd's
// configuration file spells cipher-suites and the allowed names as lists).
func stringList(v getter, name string) []string {
	var parts []string
	switch x := v.Get(name).(type) {
	case []any:
		for _, e := range x {
			parts = append(parts, fmt.Sprint(e))
		}
	case []string:
		parts = x
	default:
		parts = strings.Split(v.GetString(name), ",")
	}
	var out []string
	for _, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// tlsVersion parses etcd's TLS version names; "" is 0 (Go's choice).
func tlsVersion(flag, s string) (uint16, error) {
	switch s {
	case "":
		return 0, nil
	case "TLS1.2":
		return tls.VersionTLS12, nil
	case "TLS1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%w: --%s: unexpected TLS version %q (must be one of: TLS1.2, TLS1.3)", ErrInvalid, flag, s)
}

// cipherSuite looks a suite up by Go's name, insecure ones included, and
// by the two short ChaCha20 names etcd also accepts.
func cipherSuite(name string) (uint16, bool) {
	for _, c := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if c.Name == name {
			return c.ID, true
		}
	}
	switch name {
	case "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305":
		return tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, true
	case "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305":
		return tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true
	}
	return 0, false
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
	if err := t.validateExtras(); err != nil {
		return err
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

// validateExtras checks etcd's further TLS settings with etcd's rules, and
// reads the files they name so that a bad one fails at start, not at the
// first handshake.
func (t TLSInfo) validateExtras() error {
	switch {
	case t.MaxVersion != 0 && t.MinVersion > t.MaxVersion:
		return fmt.Errorf("%w: min version (--%s) is greater than max version (--%s)", ErrInvalid, fTLSMinVersion, fTLSMaxVersion)
	case t.MinVersion == tls.VersionTLS13 && len(t.CipherSuites) > 0:
		return fmt.Errorf("%w: cipher suites cannot be configured when only TLS1.3 is enabled", ErrInvalid)
	case len(t.AllowedCNs) > 0 && len(t.AllowedHostnames) > 0:
		return fmt.Errorf("%w: AllowedCNs and AllowedHostnames are mutually exclusive (cns=%q, hostnames=%q)", ErrInvalid, t.AllowedCNs, t.AllowedHostnames)
	case (t.ClientCertFile == "") != (t.ClientKeyFile == ""):
		return fmt.Errorf("%w: --%s and --%s must be given together", ErrInvalid, t.flag(fClientCertFile), t.flag(fClientKeyFile))
	}
	if t.ClientCertFile != "" {
		if _, err := tls.LoadX509KeyPair(t.ClientCertFile, t.ClientKeyFile); err != nil {
			return fmt.Errorf("%w: --%s/--%s: %v", ErrInvalid, t.flag(fClientCertFile), t.flag(fClientKeyFile), err)
		}
	}
	if t.CRLFile != "" {
		if _, err := readCRL(t.CRLFile); err != nil {
			return fmt.Errorf("%w: --%s: %v", ErrInvalid, t.crlFlag(), err)
		}
	}
	return nil
}

func (t TLSInfo) crlFlag() string {
	if t.peer {
		return "peer-" + fCRLFile
	}
	return "client-" + fCRLFile
}

// base is a TLS config with t's versions and suites.
func (t TLSInfo) base() *tls.Config {
	c := &tls.Config{MinVersion: t.MinVersion, MaxVersion: t.MaxVersion, CipherSuites: t.CipherSuites}
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12 // older versions are insecure, as etcd says
	}
	return c
}

// verifyClient is the check of a verified client (peer) certificate that
// t's CRL and allowed names ask for, nil if none does.
func (t TLSInfo) verifyClient() func(tls.ConnectionState) error {
	if t.CRLFile == "" && len(t.AllowedCNs) == 0 && len(t.AllowedHostnames) == 0 {
		return nil
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		if t.CRLFile != "" {
			if err := checkCRL(t.CRLFile, cs.PeerCertificates); err != nil {
				return err
			}
		}
		if len(t.AllowedCNs) == 0 && len(t.AllowedHostnames) == 0 {
			return nil
		}
		for _, chain := range cs.VerifiedChains {
			if len(chain) > 0 && t.allowed(chain[0]) {
				return nil
			}
		}
		return errors.New("client certificate authentication failed")
	}
}

func (t TLSInfo) allowed(cert *x509.Certificate) bool {
	if slices.Contains(t.AllowedCNs, cert.Subject.CommonName) {
		return true
	}
	for _, h := range t.AllowedHostnames {
		if cert.VerifyHostname(h) == nil {
			return true
		}
	}
	return false
}

func readCRL(file string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if p, _ := pem.Decode(b); p != nil {
		b = p.Bytes
	}
	return x509.ParseRevocationList(b)
}

// checkCRL refuses certs if the list at file revokes any of them.
func checkCRL(file string, certs []*x509.Certificate) error {
	crl, err := readCRL(file)
	if err != nil {
		return fmt.Errorf("certificate revocation list: %w", err)
	}
	for _, c := range certs {
		for _, r := range crl.RevokedCertificateEntries {
			if r.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return fmt.Errorf("certificate serial %x revoked", c.SerialNumber.Bytes())
			}
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
		cert, err := selfSigned(hosts, t.SelfSignedValidity)
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
	c := t.base()
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
		c.VerifyConnection = t.verifyClient()
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
		// connects from (transport.checkSAN), unless told not to.
		if !t.SkipClientSANVerify {
			base := server
			server = t.base()
			server.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				c := base.Clone()
				if c.ClientAuth == tls.RequireAndVerifyClientCert {
					san, other := sanChecker(hello.Context(), hello.Conn.RemoteAddr()), base.VerifyConnection
					c.VerifyConnection = func(cs tls.ConnectionState) error {
						if other != nil {
							if err := other(cs); err != nil {
								return err
							}
						}
						return san(cs)
					}
				}
				return c, nil
			}
		}
	}
	client = t.base()
	if t.ClientCertFile != "" {
		r := &certReloader{certFile: t.ClientCertFile, keyFile: t.ClientKeyFile, flags: "--" + t.flag(fClientCertFile) + "/--" + t.flag(fClientKeyFile)}
		if _, err := r.get(); err != nil {
			return nil, nil, err
		}
		kp = r.get
	}
	if t.CertFile == "" && t.AutoTLS {
		client.InsecureSkipVerify = true //nolint:gosec // etcd's --peer-auto-tls: self-signed peers
	}
	client.ServerName = t.ServerName
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
// for validity (a year if 0), as etcd's --auto-tls does; clients cannot
// verify it and must skip verification (etcdctl --insecure-skip-tls-verify).
func selfSigned(hosts []string, validity time.Duration) (tls.Certificate, error) {
	if validity <= 0 {
		validity = 365 * 24 * time.Hour
	}
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
		NotAfter:     time.Now().Add(validity),
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
