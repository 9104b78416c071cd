package config

import (
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

// ClientTLS is the TLS of the https:// (and unixs://) client URLs: etcd's
// --cert-file, --key-file, --trusted-ca-file, --client-cert-auth and
// --auto-tls. http:// URLs ignore it, as etcd's do.
type ClientTLS struct {
	CertFile, KeyFile string
	// TrustedCAFile verifies client certificates; as in etcd, setting it
	// requires them, ClientCertAuth or not.
	TrustedCAFile string
	// ClientCertAuth refuses clients without a certificate signed by
	// TrustedCAFile (or, without it, by the system's roots).
	ClientCertAuth bool
	// AutoTLS serves a generated self-signed certificate when no
	// CertFile is given.
	AutoTLS bool
}

func clientTLSFlags(fs *pflag.FlagSet) {
	fs.String(fCertFile, "", "path to the client server TLS cert file (for https:// client URLs)")
	fs.String(fKeyFile, "", "path to the client server TLS key file")
	fs.String(fTrustedCAFile, "", "path to the client server TLS trusted CA cert file; clients must then present a certificate it signed")
	fs.Bool(fClientCertAuth, false, "enable client cert authentication: clients must present a certificate signed by --trusted-ca-file")
	fs.Bool(fAutoTLS, false, "client TLS using a generated self-signed certificate (when no --cert-file is given)")
}

func loadClientTLS(v getter) ClientTLS {
	return ClientTLS{
		CertFile:       v.GetString(fCertFile),
		KeyFile:        v.GetString(fKeyFile),
		TrustedCAFile:  v.GetString(fTrustedCAFile),
		ClientCertAuth: v.GetBool(fClientCertAuth),
		AutoTLS:        v.GetBool(fAutoTLS),
	}
}

type getter interface {
	GetString(string) string
	GetBool(string) bool
}

// IsTLS reports whether a client URL is served over TLS.
func IsTLS(u url.URL) bool { return u.Scheme == "https" || u.Scheme == "unixs" }

// validate checks t for the listen URLs urls; like etcd, an https URL
// without a certificate is an error.
func (t ClientTLS) validate(urls []url.URL) error {
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		return fmt.Errorf("%w: --%s and --%s must be given together", ErrInvalid, fCertFile, fKeyFile)
	}
	for _, u := range urls {
		switch {
		case u.Scheme != "http" && u.Scheme != "unix" && !IsTLS(u):
			return fmt.Errorf("%w: client URL %q: the scheme must be http, https, unix or unixs", ErrInvalid, u.String())
		case IsTLS(u) && t.CertFile == "" && !t.AutoTLS:
			return fmt.Errorf("%w: TLS key/cert (--%s, --%s) must be provided for client url %s with HTTPS scheme", ErrInvalid, fCertFile, fKeyFile, u.String())
		}
	}
	return nil
}

// ServerConfig is the server TLS of the https:// URLs among urls, or nil if
// there is none. Certificate files are read again when they change (as etcd
// reads them per handshake), so a rotated certificate is served without a
// restart; the trusted CA is read once.
func (t ClientTLS) ServerConfig(urls []url.URL) (*tls.Config, error) {
	var hosts []string
	for _, u := range urls {
		if IsTLS(u) {
			hosts = append(hosts, u.Hostname())
		}
	}
	if len(hosts) == 0 {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CertFile != "" {
		r := &certReloader{certFile: t.CertFile, keyFile: t.KeyFile}
		if _, err := r.GetCertificate(nil); err != nil {
			return nil, err
		}
		c.GetCertificate = r.GetCertificate
	} else {
		cert, err := selfSigned(hosts)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", fAutoTLS, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	// As etcd (transport.TLSInfo.ServerConfig): either flag requires a
	// client certificate, verified against --trusted-ca-file, or without
	// it against the system's roots.
	switch {
	case t.TrustedCAFile != "":
		pool, err := certPool(fTrustedCAFile, t.TrustedCAFile)
		if err != nil {
			return nil, err
		}
		c.ClientCAs = pool
	case t.ClientCertAuth:
		pool, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("--%s without --%s: the system's roots: %w", fClientCertAuth, fTrustedCAFile, err)
		}
		c.ClientCAs = pool
	}
	if t.TrustedCAFile != "" || t.ClientCertAuth {
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
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

	mu     sync.Mutex
	cert   *tls.Certificate
	mtimes [2]time.Time
}

func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
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
		return nil, fmt.Errorf("%w: --%s/--%s: %v", ErrInvalid, fCertFile, fKeyFile, err)
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
