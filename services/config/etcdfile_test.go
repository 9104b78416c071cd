package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/services/config"
)

// TestEtcdConfigFile reads a configuration file written for etcd, in the
// shape of etcd's etcd.conf.yml.sample: the TLS settings nested under
// client-transport-security and peer-transport-security, lists as YAML
// lists, durations as integer nanoseconds.
func TestEtcdConfigFile(t *testing.T) {
	f := certs(t)
	yaml := `name: 'm1'
data-dir: ` + t.TempDir() + `
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: https://127.0.0.1:2380
listen-client-urls: https://127.0.0.1:2379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: https://127.0.0.1:2380
advertise-client-urls: https://127.0.0.1:2379
discovery-fallback: 'exit'
initial-cluster: m1=https://127.0.0.1:2380
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: true
enable-pprof: true
watch-progress-notify-interval: 600000000000
client-transport-security:
  cert-file: ` + f.ServerCert + `
  key-file: ` + f.ServerKey + `
  client-cert-auth: true
  trusted-ca-file: ` + f.CA + `
  auto-tls: false
  allowed-cn: [client-a, client-b]
peer-transport-security:
  cert-file: ` + f.ServerCert + `
  key-file: ` + f.ServerKey + `
  client-cert-auth: true
  trusted-ca-file: ` + f.CA + `
  auto-tls: false
  allowed-hostname: [peer.example.com]
  skip-client-san-verification: true
socket-options:
  reuse-port: false
  reuse-address: false
cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
tls-min-version: 'TLS1.2'
log-level: debug
log-outputs: [stderr]
logger: zap
`
	file := filepath.Join(t.TempDir(), "etcd.conf.yml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := load(t, "--config-file", file)
	if err != nil {
		t.Fatal(err)
	}
	ct, pt := c.ClientTLS, c.PeerTLS
	if ct.CertFile != f.ServerCert || ct.KeyFile != f.ServerKey || !ct.ClientCertAuth || ct.TrustedCAFile != f.CA ||
		!slices.Equal(ct.AllowedCNs, []string{"client-a", "client-b"}) || len(ct.CipherSuites) != 2 {
		t.Errorf("client TLS from client-transport-security = %+v", ct)
	}
	if pt.CertFile != f.ServerCert || pt.KeyFile != f.ServerKey || !pt.ClientCertAuth || pt.TrustedCAFile != f.CA ||
		!slices.Equal(pt.AllowedHostnames, []string{"peer.example.com"}) || !pt.SkipClientSANVerify {
		t.Errorf("peer TLS from peer-transport-security = %+v", pt)
	}
	if c.Name != "m1" || !c.EnablePprof || c.LogLevel.String() != "DEBUG" {
		t.Errorf("name %q, pprof %v, log level %v", c.Name, c.EnablePprof, c.LogLevel)
	}

	// A section that is not a mapping is refused, as etcd refuses it.
	if err := os.WriteFile(file, []byte("peer-transport-security: yes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, "--config-file", file); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "peer-transport-security") {
		t.Errorf("scalar peer-transport-security: %v", err)
	}
	// v3 discovery in etcd's layout: the client settings under "client";
	// a flat endpoints key is not etcd's, so the token stands alone.
	if err := os.WriteFile(file, []byte("discovery-config:\n  token: t\n  client:\n    endpoints: [http://10.0.0.9:2379]\n    dial-timeout: 3s\n    secure:\n      insecure-skip-tls-verify: true\n    auth:\n      username: u\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = load(t, "--config-file", file)
	if err != nil {
		t.Fatalf("discovery-config: %v", err)
	}
	if d := c.Discovery; !slices.Equal(d.Endpoints, []string{"http://10.0.0.9:2379"}) || d.Token != "t" || d.DialTimeout != 3*time.Second || !d.InsecureSkipVerify || !d.InsecureTransport || d.User != "u" {
		t.Errorf("discovery-config read as %+v", d)
	}
	if err := os.WriteFile(file, []byte("discovery-config:\n  endpoints: [http://10.0.0.9:2379]\n  token: t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, "--config-file", file); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "both --discovery-token and --discovery-endpoints must be set") {
		t.Errorf("flat discovery-config: %v", err)
	}
}

// TestEtcdConfigFileFromEnv: etcd reads ETCD_CONFIG_FILE too.
func TestEtcdConfigFileFromEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "etcd.conf.yml")
	if err := os.WriteFile(file, []byte("name: from-env-file\nsocket-options:\n  reuse-port: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ETCD_CONFIG_FILE", file)
	c, err := load(t)
	if err != nil || c.Name != "from-env-file" || !c.Socket.ReusePort {
		t.Errorf("ETCD_CONFIG_FILE: name %q, reuse-port %v, %v", c.Name, c.Socket.ReusePort, err)
	}
}
