// Package tlstest writes a throw-away certificate authority, a server
// certificate for loopback (127.0.0.1, ::1, localhost) and a client
// certificate, all signed by that CA, for tests of TLS serving and client
// certificate authentication. Keys are ECDSA P-256; nothing here is fit
// for production.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files are the PEM files Generate wrote, and the CA as a pool.
type Files struct {
	CA                    string // the CA certificate
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// OtherCA is a second CA that signed nothing here: trusting it alone
	// must reject both certificates.
	OtherCA string
	Pool    *x509.CertPool

	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

// Generate writes the files into dir.
func Generate(dir string) (*Files, error) {
	f := &Files{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
		OtherCA:    filepath.Join(dir, "other-ca.pem"),
	}
	caCert, caKey, err := newCA("concord test CA")
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.CA, "CERTIFICATE", caCert.Raw); err != nil {
		return nil, err
	}
	other, _, err := newCA("concord other test CA")
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.OtherCA, "CERTIFICATE", other.Raw); err != nil {
		return nil, err
	}
	f.Pool = x509.NewCertPool()
	f.Pool.AddCert(caCert)
	f.caCert, f.caKey = caCert, caKey

	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "concord test server"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
		// etcd also dials itself with its server certificate (its JSON
		// gateway), so the server certificate is good for both ends.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if err := issue(server, caCert, caKey, f.ServerCert, f.ServerKey); err != nil {
		return nil, err
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "concord test client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(client, caCert, caKey, f.ClientCert, f.ClientKey); err != nil {
		return nil, err
	}
	return f, nil
}

// IssueClient writes a client certificate signed by the CA naming ips as
// its subject alternative names (for tests of etcd's peer check that a
// certificate names the address it connects from).
func (f *Files) IssueClient(certPath, keyPath string, ips ...net.IP) error {
	return issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "concord test client with addresses"},
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, f.caCert, f.caKey, certPath, keyPath)
}

// Revoke writes to crlPath a DER certificate revocation list of the CA that
// revokes the certificates in certPaths (for --client-crl-file and
// --peer-crl-file).
func (f *Files) Revoke(crlPath string, certPaths ...string) error {
	var revoked []x509.RevocationListEntry
	for _, cp := range certPaths {
		b, err := os.ReadFile(cp)
		if err != nil {
			return err
		}
		p, _ := pem.Decode(b)
		if p == nil {
			return fmt.Errorf("tlstest: no PEM in %s", cp)
		}
		c, err := x509.ParseCertificate(p.Bytes)
		if err != nil {
			return err
		}
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour),
		RevokedCertificateEntries: revoked,
	}, f.caCert, f.caKey)
	if err != nil {
		return fmt.Errorf("tlstest: CRL: %w", err)
	}
	return os.WriteFile(crlPath, der, 0o600) // DER: etcd reads no PEM CRLs
}

// ServerConfig is a server TLS config with the server certificate; with
// clientAuth, clients must present a certificate signed by the CA.
func (f *Files) ServerConfig(clientAuth bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.ServerCert, f.ServerKey)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientAuth {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = f.Pool
	}
	return c, nil
}

// ClientConfig is a client TLS config trusting the CA, presenting the
// client certificate if withCert.
func (f *Files) ClientConfig(withCert bool) (*tls.Config, error) {
	c := &tls.Config{RootCAs: f.Pool, MinVersion: tls.VersionTLS12}
	if withCert {
		cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func template(t *x509.Certificate) *x509.Certificate {
	// Random serials: certificates from one CA must not share one.
	t.SerialNumber, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	t.NotBefore = time.Now().Add(-time.Hour)
	t.NotAfter = time.Now().Add(24 * time.Hour)
	return t
}

func newCA(name string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := template(&x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	})
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tlstest: CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func issue(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl = template(tmpl)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("tlstest: %s: %w", tmpl.Subject.CommonName, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(keyPath, "PRIVATE KEY", kder)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
