package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/services/config"
)

func TestNATSTLSFlags(t *testing.T) {
	tls := []string{"--nats-cert-file", "c.pem", "--nats-key-file", "k.pem", "--nats-trusted-ca-file", "ca.pem"}
	want := config.NATSTLS{CertFile: "c.pem", KeyFile: "k.pem", TrustedCAFile: "ca.pem"}
	c, err := loadConsensus(t, append([]string{"--nats-cluster-listen-addr", "127.0.0.1:6222",
		"--nats-routes", "nats://127.0.0.1:6222"}, tls...)...)
	if err != nil || c.NATSTLS != want {
		t.Fatalf("consensus: %+v, %v", c.NATSTLS, err)
	}
	s, err := loadSplit(t, config.RoleWatchfanout, append([]string{"--nats-url", "tls://127.0.0.1:4222"}, tls...)...)
	if err != nil || s.NATSTLS != want {
		t.Fatalf("watchfanout: %+v, %v", s.NATSTLS, err)
	}
	// A fan-out trusting a CA needs no certificate of its own (a server
	// without --nats-trusted-ca-file asks for none).
	if s, err = loadSplit(t, config.RoleWatchfanout, "--nats-trusted-ca-file", "ca.pem"); err != nil || s.NATSTLS.IsZero() {
		t.Fatalf("watchfanout with a CA only: %+v, %v", s.NATSTLS, err)
	}
	if c, err = loadConsensus(t); err != nil || !c.NATSTLS.IsZero() {
		t.Fatalf("no NATS TLS by default: %+v, %v", c.NATSTLS, err)
	}
	// From the configuration file too, under the flags' names.
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("nats-cert-file: c.pem\nnats-key-file: k.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = loadConsensus(t, "--config-file", file); err != nil || c.NATSTLS.CertFile != "c.pem" || c.NATSTLS.KeyFile != "k.pem" {
		t.Fatalf("from a file: %+v, %v", c.NATSTLS, err)
	}
	// Roles without the bus do not take them.
	for _, role := range []config.Role{config.RoleGateway, config.RoleLeasesvc} {
		fs := pflag.NewFlagSet(string(role), pflag.ContinueOnError)
		fs.SetOutput(nopWriter{})
		config.SplitFlags(fs, role)
		if err := fs.Parse([]string{"--nats-cert-file", "c.pem"}); err == nil {
			t.Errorf("%s accepts --nats-cert-file", role)
		}
	}
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

func TestNATSTLSHalfConfigured(t *testing.T) {
	for name, args := range map[string][]string{
		"cert without key":        {"--nats-cert-file", "c.pem"},
		"key without cert":        {"--nats-key-file", "k.pem"},
		"CA without cert":         {"--nats-trusted-ca-file", "ca.pem"},
		"TLS routes without a CA": {"--nats-cert-file", "c.pem", "--nats-key-file", "k.pem", "--nats-cluster-listen-addr", "127.0.0.1:6222"},
	} {
		if _, err := loadConsensus(t, args...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("consensus, %s: %v, want ErrInvalid", name, err)
		}
	}
	for name, args := range map[string][]string{
		"cert without key": {"--nats-cert-file", "c.pem"},
		"key without cert": {"--nats-key-file", "k.pem", "--nats-trusted-ca-file", "ca.pem"},
	} {
		if _, err := loadSplit(t, config.RoleWatchfanout, args...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("watchfanout, %s: %v, want ErrInvalid", name, err)
		}
	}
}
