package eventbus

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// DefaultTLSTimeout bounds a TLS handshake on the embedded server's client
// and route listeners. nats-server's own default (2s) is short for a busy
// machine handshaking with several fan-outs at once after a restart.
const DefaultTLSTimeout = 5 * time.Second

// TLSFiles are the PEM files of one end of the bus's TLS. The same three
// files mean the same on both ends: this end's certificate, and the CA that
// the other end's certificate must be signed by.
//
// On the embedded server (NATSConfig.TLS) the certificate is served on the
// client listener and on the route listener and presented when dialing
// routes, so with clustering it must be valid for client authentication
// too; with CAFile, clients and routes must present a certificate it signed
// and the routes dialed are verified with it. Routes are always mutual TLS,
// so clustering with TLS requires CAFile.
//
// On a client (WithTLS) the certificate is presented to the server (needed
// when the server has a CAFile), and the server's certificate is verified
// with CAFile (the system's roots without it).
//
// Rotated certificates are used without a restart: the client reads its
// files again at every (re)connection, the server its certificate and key
// when either file changes (a pair that fails to load, a rotation half
// done, keeps the previous one). The server reads CAFile once, at start.
type TLSFiles struct {
	CertFile, KeyFile string
	CAFile            string
}

// IsZero reports whether no file is set: no TLS.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// validate rejects a half-configured end: a certificate without its key (or
// the reverse) and, for a server, a CA without a certificate to serve.
func (f TLSFiles) validate(server bool) error {
	switch {
	case (f.CertFile == "") != (f.KeyFile == ""):
		return fmt.Errorf("%w: TLS certificate and key files must be given together", ErrInvalidConfig)
	case server && f.CAFile != "" && f.CertFile == "":
		return fmt.Errorf("%w: a trusted CA for TLS clients needs a server certificate", ErrInvalidConfig)
	}
	return nil
}

func (f TLSFiles) keyPair() (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: TLS certificate %s, key %s: %w", ErrInvalidConfig, f.CertFile, f.KeyFile, err)
	}
	return cert, nil
}

func (f TLSFiles) caPool() (*x509.CertPool, error) {
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: TLS CA: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: TLS CA: no PEM certificate in %s", ErrInvalidConfig, f.CAFile)
	}
	return pool, nil
}

// serverConfig is the TLS of the embedded server's listeners (client and
// route) and of the routes it dials: one config serves both roles, since a
// route handshake is the same certificate and CA seen from either side.
func (f TLSFiles) serverConfig() (*tls.Config, error) {
	kp := &keyPairReloader{files: f}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get() },
	}
	if f.CAFile != "" {
		pool, err := f.caPool()
		if err != nil {
			return nil, err
		}
		c.ClientCAs, c.RootCAs = pool, pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// clientOptions are nats.go's options for a TLS client of f. The files are
// read here once so that a bad one fails ConnectNATS with ErrInvalidConfig;
// nats.go reads them again at every connection.
func (f TLSFiles) clientOptions() ([]nats.Option, error) {
	if err := f.validate(false); err != nil {
		return nil, err
	}
	// Secure makes the client refuse a server that does not offer TLS, so
	// a configured client never falls back to cleartext.
	opts := []nats.Option{nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12})}
	if f.CAFile != "" {
		if _, err := f.caPool(); err != nil {
			return nil, err
		}
		opts = append(opts, nats.RootCAs(f.CAFile))
	}
	if f.CertFile != "" {
		if _, err := f.keyPair(); err != nil {
			return nil, err
		}
		opts = append(opts, nats.ClientCert(f.CertFile, f.KeyFile))
	}
	return opts, nil
}

// WithTLS makes ConnectNATS connect over TLS with f (see TLSFiles), whatever
// the URLs' scheme (nats://, tls:// or none). Without it a tls:// URL still
// gets TLS, verified with the system's roots and presenting no certificate.
func WithTLS(f TLSFiles) ClientOption {
	return func(o *clientOptions) {
		f := f
		o.tls = &f
	}
}

// keyPairReloader serves the key pair of files, loading it again when the
// modification time of either file changes.
type keyPairReloader struct {
	files TLSFiles

	mu     sync.Mutex
	cert   *tls.Certificate
	mtimes [2]time.Time
}

func (r *keyPairReloader) get() (*tls.Certificate, error) {
	var mt [2]time.Time
	for i, name := range []string{r.files.CertFile, r.files.KeyFile} {
		if st, err := os.Stat(name); err == nil {
			mt[i] = st.ModTime()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cert != nil && mt == r.mtimes {
		return r.cert, nil
	}
	cert, err := r.files.keyPair()
	if err != nil {
		if r.cert != nil {
			return r.cert, nil
		}
		return nil, err
	}
	r.cert, r.mtimes = &cert, mt
	return r.cert, nil
}
