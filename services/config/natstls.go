package config

import (
	"fmt"

	"github.com/spf13/pflag"
)

// The event bus's TLS flags: one set, read by `concord consensus` (the
// embedded NATS server) and `concord watchfanout` (its client), meaning the
// same on both: this process's certificate, and the CA the other end's
// certificate must be signed by.
const (
	fNATSCertFile      = "nats-cert-file"
	fNATSKeyFile       = "nats-key-file"
	fNATSTrustedCAFile = "nats-trusted-ca-file"
)

// NATSTLS is the event bus's TLS. On a consensus member, with a
// certificate, the NATS client listener (--nats-listen-addr) and routes
// (--nats-cluster-listen-addr, --nats-routes) require TLS; with the trusted
// CA, fan-outs and routes must present a certificate it signed, and routes
// dialed are verified with it (routes are always mutual TLS, so clustering
// needs it). On a watch fan-out, any of the three turns TLS on for
// --nats-url whatever its scheme (a tls:// URL alone turns it on too,
// verified with the system's roots): the certificate is presented to the
// server, whose certificate is verified with the trusted CA.
type NATSTLS struct {
	CertFile, KeyFile string
	TrustedCAFile     string
}

// IsZero reports whether no NATS TLS flag is set.
func (t NATSTLS) IsZero() bool { return t == NATSTLS{} }

func natsTLSFlags(fs *pflag.FlagSet) {
	fs.String(fNATSCertFile, "", "path to this process's TLS certificate for the event bus (NATS): served by consensus on --nats-listen-addr and its routes, which then require TLS; presented by watchfanout to --nats-url, which it then reaches over TLS")
	fs.String(fNATSKeyFile, "", "path to the key of --nats-cert-file")
	fs.String(fNATSTrustedCAFile, "", "path to the event bus's TLS CA: the other end must present a certificate it signed (consensus: watch fan-outs and the members' routes; watchfanout: the NATS servers)")
}

func loadNATSTLS(v getter) NATSTLS {
	return NATSTLS{
		CertFile:      v.GetString(fNATSCertFile),
		KeyFile:       v.GetString(fNATSKeyFile),
		TrustedCAFile: v.GetString(fNATSTrustedCAFile),
	}
}

// validate rejects half-configured TLS: a certificate without its key or
// the reverse; on the server side also a CA without a certificate to serve,
// and TLS routes without the CA that makes them mutual.
func (t NATSTLS) validate(server, clustered bool) error {
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		return fmt.Errorf("%w: --%s and --%s must be given together", ErrInvalid, fNATSCertFile, fNATSKeyFile)
	case server && t.TrustedCAFile != "" && t.CertFile == "":
		return fmt.Errorf("%w: --%s needs --%s and --%s (the NATS server's certificate)", ErrInvalid, fNATSTrustedCAFile, fNATSCertFile, fNATSKeyFile)
	case server && clustered && t.CertFile != "" && t.TrustedCAFile == "":
		return fmt.Errorf("%w: NATS routes over TLS are mutual: --%s with --%s needs --%s", ErrInvalid, fNATSClusterAddr, fNATSCertFile, fNATSTrustedCAFile)
	}
	return nil
}
