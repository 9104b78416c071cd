package config_test

import (
	"errors"
	"testing"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/internal/tracing"
	"github.com/concord-kv/concord/services/config"
)

func loadSplit(t *testing.T, role config.Role, args ...string) (config.Split, error) {
	t.Helper()
	fs := pflag.NewFlagSet(string(role), pflag.ContinueOnError)
	config.SplitFlags(fs, role)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return config.LoadSplit(fs, role)
}

func TestConsensusNATSListenAddr(t *testing.T) {
	fs := pflag.NewFlagSet("consensus", pflag.ContinueOnError)
	config.ConsensusFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	c, err := config.LoadConsensus(fs)
	if err != nil || c.NATSListenAddr != config.DefaultNATSListenAddr || c.Name != "default" {
		t.Fatalf("defaults = %+v, %v", c, err)
	}
	fs = pflag.NewFlagSet("consensus", pflag.ContinueOnError)
	config.ConsensusFlags(fs)
	if err := fs.Parse([]string{"--nats-listen-addr", "0.0.0.0:4333"}); err != nil {
		t.Fatal(err)
	}
	if c, err = config.LoadConsensus(fs); err != nil || c.NATSListenAddr != "0.0.0.0:4333" {
		t.Fatalf("--nats-listen-addr: %+v, %v", c, err)
	}
}

func loadConsensus(t *testing.T, args ...string) (config.Consensus, error) {
	t.Helper()
	fs := pflag.NewFlagSet("consensus", pflag.ContinueOnError)
	config.ConsensusFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return config.LoadConsensus(fs)
}

func TestConsensusNATSCluster(t *testing.T) {
	c, err := loadConsensus(t, "--nats-cluster-listen-addr", "127.0.0.1:6222",
		"--nats-routes", "nats://127.0.0.1:6222, nats://127.0.0.1:6223")
	if err != nil || c.NATSClusterListenAddr != "127.0.0.1:6222" || len(c.NATSRoutes) != 2 || c.NATSRoutes[1] != "nats://127.0.0.1:6223" {
		t.Fatalf("cluster flags = %+v, %v", c, err)
	}
	if c, err = loadConsensus(t); err != nil || c.NATSClusterListenAddr != "" || c.NATSRoutes != nil {
		t.Fatalf("no cluster by default: %+v, %v", c, err)
	}
	for name, args := range map[string][]string{
		"routes without a cluster address": {"--nats-routes", "nats://127.0.0.1:6222"},
		"bad route":                        {"--nats-cluster-listen-addr", ":6222", "--nats-routes", "127.0.0.1:6222"},
		"bad cluster address":              {"--nats-cluster-listen-addr", "6222"},
		"empty listen address":             {"--nats-listen-addr", ""},
	} {
		if _, err := loadConsensus(t, args...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestSplitFlags(t *testing.T) {
	c, err := loadSplit(t, config.RoleGateway, "--consensus-endpoints", "http://c:2379",
		"--watchfanout-endpoints", "http://w:2379", "--leasesvc-endpoints", "http://l:2379",
		"--listen-client-urls", "http://127.0.0.1:3000")
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != config.RoleGateway || c.ConsensusEndpoints != "http://c:2379" || c.WatchfanoutEndpoints != "http://w:2379" ||
		c.LeasesvcEndpoints != "http://l:2379" || c.ListenClientURLs[0].Host != "127.0.0.1:3000" || c.MaxTxnOps != 128 {
		t.Fatalf("gateway config = %+v", c)
	}
	if c, err = loadSplit(t, config.RoleWatchfanout); err != nil || c.NATSURL != "nats://127.0.0.1:4222" {
		t.Fatalf("watchfanout defaults = %+v, %v", c, err)
	}
	if c, err = loadSplit(t, config.RoleLeasesvc, "--name", "ls-7"); err != nil || c.Name != "ls-7" {
		t.Fatalf("leasesvc = %+v, %v", c, err)
	}
}

func TestSplitValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		role config.Role
		args []string
	}{
		"gateway without watchfanout": {config.RoleGateway, []string{"--leasesvc-endpoints", "http://l:1"}},
		"gateway without leasesvc":    {config.RoleGateway, []string{"--watchfanout-endpoints", "http://w:1"}},
		"empty consensus":             {config.RoleLeasesvc, []string{"--consensus-endpoints", ""}},
		"empty nats":                  {config.RoleWatchfanout, []string{"--nats-url", " "}},
		"bad listen url":              {config.RoleLeasesvc, []string{"--listen-client-urls", "127.0.0.1:1"}},
		"https listen url":            {config.RoleLeasesvc, []string{"--listen-client-urls", "https://127.0.0.1:1"}},
		"empty name":                  {config.RoleLeasesvc, []string{"--name", ""}},
	} {
		if _, err := loadSplit(t, tc.role, tc.args...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

// Every process takes etcd's tracing flags: the all-in-one and consensus
// (ServerFlags) and each split role.
func TestTracingFlags(t *testing.T) {
	args := []string{"--enable-distributed-tracing", "--distributed-tracing-address=collector:4317",
		"--distributed-tracing-service-name=kv", "--distributed-tracing-instance-id=m1", "--distributed-tracing-sampling-rate=100"}
	want := tracing.Config{Enabled: true, Address: "collector:4317", ServiceName: "kv", InstanceID: "m1", SamplingRatePerMillion: 100}
	s, err := load(t, args...)
	if err != nil || s.Tracing != want {
		t.Errorf("server: tracing %+v, err %v; want %+v", s.Tracing, err, want)
	}
	for _, role := range []config.Role{config.RoleGateway, config.RoleWatchfanout, config.RoleLeasesvc} {
		c, err := loadSplit(t, role, append([]string{"--consensus-endpoints=http://c:2379", "--watchfanout-endpoints=http://w:2379", "--leasesvc-endpoints=http://l:2379"}[:roleEndpoints(role)], args...)...)
		if err != nil || c.Tracing != want {
			t.Errorf("%s: tracing %+v, err %v; want %+v", role, c.Tracing, err, want)
		}
	}
	defaults := tracing.Config{Address: "localhost:4317", ServiceName: "etcd"}
	if s, err = load(t); err != nil || s.Tracing != defaults {
		t.Errorf("defaults: tracing %+v, err %v; want etcd's %+v", s.Tracing, err, defaults)
	}
	// A rate out of range is an error only when tracing is on, as in etcd.
	if _, err := load(t, "--distributed-tracing-sampling-rate=-5"); err != nil {
		t.Errorf("an out-of-range rate with tracing off: %v", err)
	}
}

// roleEndpoints is how many of the endpoint flags role declares.
func roleEndpoints(role config.Role) int {
	if role == config.RoleGateway {
		return 3
	}
	return 1
}
