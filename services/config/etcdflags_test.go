package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/services/config"
)

// commandFlags are declared by the concord command itself, not by
// ServerFlags (services/concord checks them).
var commandFlags = map[string]bool{"version": true}

// etcdFlags reads the fixture: etcd 3.7.3's server flags with their
// defaults (regenerated and checked against etcd by ./etcdspec).
func etcdFlags(t *testing.T) [][2]string {
	t.Helper()
	b, err := os.ReadFile("testdata/etcd-3.7.3-server-flags.txt")
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, def, _ := strings.Cut(l, "\t")
		if commandFlags[name] {
			continue
		}
		out = append(out, [2]string{name, def})
	}
	if len(out) < 100 {
		t.Fatalf("only %d flags in the fixture", len(out))
	}
	return out
}

// arg is the command-line form of an etcd flag set to its default.
func arg(f [2]string) string {
	if f[1] == "" && strings.Contains(ignoredFlagNames, " "+f[0]+" ") {
		return "--" + f[0] // etcd's ignored flags take no value
	}
	return "--" + f[0] + "=" + f[1]
}

const ignoredFlagNames = " cluster-active-size cluster-remove-delay cluster-sync-interval config force max-result-buffer max-retry-attempts peer-heartbeat-interval peer-election-timeout retry-interval snapshot v vv test.coverprofile test.outputdir "

// TestEveryEtcdFlagIsAccepted gives each of etcd's server flags, with
// etcd's default, on the command line, then all of them at once, and
// expects concord to start with them.
func TestEveryEtcdFlagIsAccepted(t *testing.T) {
	var all []string
	for _, f := range etcdFlags(t) {
		if _, err := load(t, arg(f)); err != nil {
			t.Errorf("%s: %v", arg(f), err)
		}
		all = append(all, arg(f))
	}
	if _, err := load(t, all...); err != nil {
		t.Errorf("all of etcd's defaults at once: %v", err)
	}
}

// TestEveryEtcdFlagFromEnvAndFile sets each flag as ETCD_* and as a key of
// the configuration file.
func TestEveryEtcdFlagFromEnvAndFile(t *testing.T) {
	flags := etcdFlags(t)
	var yaml strings.Builder
	for _, f := range flags {
		if f[0] == "config-file" {
			continue
		}
		fmt.Fprintf(&yaml, "%s: %q\n", f[0], f[1])
	}
	file := filepath.Join(t.TempDir(), "etcd.yaml")
	if err := os.WriteFile(file, []byte(yaml.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(t, "--config-file", file); err != nil {
		t.Errorf("every etcd key in the file: %v", err)
	}
	for _, f := range flags {
		if f[0] == "config-file" {
			continue
		}
		t.Setenv("ETCD_"+strings.ToUpper(strings.ReplaceAll(f[0], "-", "_")), f[1])
	}
	if _, err := load(t); err != nil {
		t.Errorf("every ETCD_ variable: %v", err)
	}
}

// TestServerFlagsCoverEtcd checks that ServerFlags declares every etcd
// flag but the command's own.
func TestServerFlagsCoverEtcd(t *testing.T) {
	fs := pflag.NewFlagSet("concord", pflag.ContinueOnError)
	config.ServerFlags(fs)
	for _, f := range etcdFlags(t) {
		if fs.Lookup(f[0]) == nil {
			t.Errorf("etcd's --%s is not declared", f[0])
		}
	}
}

func TestRefusedEtcdFlags(t *testing.T) {
	for _, c := range []struct{ arg, want string }{
		{"--enable-distributed-tracing --distributed-tracing-sampling-rate=-1", "tracing sampling rate must be positive"},
		{"--enable-distributed-tracing --distributed-tracing-sampling-rate=1000001", "tracing sampling rate must be less than 1000000"},
		{"--discovery-fallback=proxy", `--discovery-fallback can't be configured as "proxy"`},
		{"--discovery-fallback=maybe", "--discovery-fallback: invalid value"},
		{"--v2-deprecation=sometimes", "--v2-deprecation: invalid value"},
		{"--logger=capnslog", `unknown logger option "capnslog"`},
	} {
		_, err := load(t, strings.Fields(c.arg)...)
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalid with %q", c.arg, err, c.want)
		}
	}
}

func TestInertEtcdFlagsAreNoted(t *testing.T) {
	c, err := load(t, "--backend-batch-limit=100", "--max-wals=0", "--compaction-batch-limit=1", "--snapshot", "--v2-deprecation=gone")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(c.InertFlags, "\n")
	for _, want := range []string{"--backend-batch-limit has no effect in concord: tunes etcd's bbolt backend", "--max-wals has no effect", "--compaction-batch-limit has no effect", "--snapshot has no effect in concord: ignored by etcd 3.7 too"} {
		if !strings.Contains(joined, want) {
			t.Errorf("inert notes %q lack %q", joined, want)
		}
	}
	if len(c.InertFlags) != 5 {
		t.Errorf("inert notes = %q, want 5 (backend-batch-limit, max-wals, compaction-batch-limit, v2-deprecation, snapshot)", c.InertFlags)
	}
	if c, err = load(t); err != nil || len(c.InertFlags) != 0 {
		t.Errorf("defaults: inert notes %q, err %v", c.InertFlags, err)
	}
}

func TestConsensusEtcdFlags(t *testing.T) {
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxLearners != 1 || !c.PreVote || !c.StrictReconfigCheck || c.UnsafeNoFsync || c.ForceNewCluster || c.SnapshotCatchUpEntries != 5000 || c.MemoryMlock {
		t.Errorf("etcd's defaults: %+v", c)
	}
	c, err = load(t, "--max-learners=3", "--pre-vote=false", "--strict-reconfig-check=false", "--unsafe-no-fsync", "--snapshot-catchup-entries=77", "--force-new-cluster", "--memory-mlock")
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxLearners != 3 || c.PreVote || c.StrictReconfigCheck || !c.UnsafeNoFsync || c.SnapshotCatchUpEntries != 77 || !c.ForceNewCluster || !c.MemoryMlock {
		t.Errorf("set: max-learners %d, pre-vote %v, strict %v, no-fsync %v, catch-up %d, force-new-cluster %v, memory-mlock %v", c.MaxLearners, c.PreVote, c.StrictReconfigCheck, c.UnsafeNoFsync, c.SnapshotCatchUpEntries, c.ForceNewCluster, c.MemoryMlock)
	}
	if _, err := load(t, "--max-learners=0"); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("--max-learners=0: %v", err)
	}
}

func TestLoggingEtcdFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "etcd.log")
	c, err := load(t, "--log-outputs", "stderr,"+file, "--log-format=console", "--enable-log-rotation",
		`--log-rotation-config-json={"maxsize": 7, "maxbackups": 3}`, "--log-level=warn", "--logger=zap")
	if err != nil {
		t.Fatal(err)
	}
	l := c.Log
	if l.Format != "console" || len(l.Outputs) != 2 || l.Outputs[1] != file || !l.Rotate || l.Rotation.MaxSize != 7 ||
		l.Rotation.MaxBackups != 3 || l.Level.String() != "WARN" || c.LogLevel != l.Level {
		t.Errorf("logging = %+v", l)
	}
	if c, err = load(t, "--log-level=fatal"); err != nil || c.Log.Level <= 8 {
		t.Errorf("--log-level=fatal: %v, %v", c.Log.Level, err)
	}
	for _, bad := range [][]string{
		{"--log-format=xml"},
		{"--enable-log-rotation"}, // needs a file
		{"--log-outputs=default,stdout"},
		{"--enable-log-rotation", "--log-outputs=" + file, "--log-rotation-config-json={"},
		{"--log-level=loud"},
	} {
		if _, err := load(t, bad...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%v: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestHTTPEtcdFlags(t *testing.T) {
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.CORS != nil || c.HostWhitelist != nil || c.ListenClientHTTPURLs != nil || c.MaxConcurrentStreams != 1<<32-1 || c.Socket.ReusePort || c.Socket.ReuseAddress {
		t.Errorf("etcd's defaults: cors %q, hosts %q, http URLs %v, streams %d, socket %+v", c.CORS, c.HostWhitelist, c.ListenClientHTTPURLs, c.MaxConcurrentStreams, c.Socket)
	}
	c, err = load(t, "--cors=http://a.example.com:80,https://b.example.com:8443", "--host-whitelist=etcd.local,10.0.0.1",
		"--listen-client-http-urls=http://127.0.0.1:2382", "--max-concurrent-streams=100", "--socket-reuse-port", "--socket-reuse-address")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.CORS) != 2 || c.CORS[1] != "https://b.example.com:8443" || len(c.HostWhitelist) != 2 || c.HostWhitelist[0] != "etcd.local" ||
		len(c.ListenClientHTTPURLs) != 1 || c.MaxConcurrentStreams != 100 || !c.Socket.ReusePort || !c.Socket.ReuseAddress {
		t.Errorf("set: cors %q, hosts %q, http URLs %v, streams %d, socket %+v", c.CORS, c.HostWhitelist, c.ListenClientHTTPURLs, c.MaxConcurrentStreams, c.Socket)
	}
	if c, err = load(t, "--cors=http://a.example.com:80,*", "--host-whitelist=*,x"); err != nil || c.CORS != nil || c.HostWhitelist != nil {
		t.Errorf("* among others allows all: %q %q %v", c.CORS, c.HostWhitelist, err)
	}
	for _, bad := range [][]string{{"--cors=not a url"}, {"--cors=http://no-port.example.com"}, {"--cors=http://a.example.com:80/path"}, {"--max-concurrent-streams=0"}, {"--listen-client-http-urls=https://127.0.0.1:2382"}} {
		if _, err := load(t, bad...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%v: %v, want ErrInvalid", bad, err)
		}
	}
}

// The split gateway serves the HTTP side too, so it takes --cors and
// --host-whitelist with the same parsing.
func TestSplitGatewayHTTPAccess(t *testing.T) {
	gw := []string{"--watchfanout-endpoints=http://127.0.0.1:1", "--leasesvc-endpoints=http://127.0.0.1:2"}
	s, err := loadSplit(t, config.RoleGateway, append(gw, "--cors=http://a.example.com:80", "--host-whitelist=etcd.local")...)
	if err != nil || len(s.CORS) != 1 || s.CORS[0] != "http://a.example.com:80" || len(s.HostWhitelist) != 1 || s.HostWhitelist[0] != "etcd.local" {
		t.Errorf("gateway: cors %q, hosts %q, %v", s.CORS, s.HostWhitelist, err)
	}
	if s, err = loadSplit(t, config.RoleGateway, gw...); err != nil || s.CORS != nil || s.HostWhitelist != nil {
		t.Errorf("gateway defaults: cors %q, hosts %q, %v", s.CORS, s.HostWhitelist, err)
	}
	if _, err := loadSplit(t, config.RoleGateway, append(gw, "--cors=http://no-port.example.com")...); !errors.Is(err, config.ErrInvalid) {
		t.Errorf("bad origin: %v, want ErrInvalid", err)
	}
}

func TestWarningEtcdFlags(t *testing.T) {
	c, err := load(t)
	if err != nil || c.WarningUnaryRequestDuration != 300*time.Millisecond || c.WarningApplyDuration != 100*time.Millisecond {
		t.Errorf("etcd's defaults: %v %v %v", c.WarningUnaryRequestDuration, c.WarningApplyDuration, err)
	}
	c, err = load(t, "--warning-unary-request-duration=1s", "--warning-apply-duration=250ms")
	if err != nil || c.WarningUnaryRequestDuration != time.Second || c.WarningApplyDuration != 250*time.Millisecond {
		t.Errorf("set: %v %v %v", c.WarningUnaryRequestDuration, c.WarningApplyDuration, err)
	}
}

// TestEtcdArgs: etcd's -name value form (Go's flag package) reaches
// pflag as --name value.
func TestEtcdArgs(t *testing.T) {
	fs := pflag.NewFlagSet("concord", pflag.ContinueOnError)
	config.ServerFlags(fs)
	fs.BoolP("help", "h", false, "")
	got := config.EtcdArgs([]string{"-name", "m1", "-data-dir=/d", "--listen-client-urls", "http://127.0.0.1:1", "-v", "-h", "-nosuch", "--", "-name"}, fs)
	want := []string{"--name", "m1", "--data-dir=/d", "--listen-client-urls", "http://127.0.0.1:1", "--v", "-h", "-nosuch", "--", "-name"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("EtcdArgs = %q, want %q", got, want)
	}
	c, err := load(t, config.EtcdArgs([]string{"-name", "m1", "-snapshot-count=5"}, fs)...)
	if err != nil || c.Name != "m1" || c.SnapshotCount != 5 {
		t.Errorf("loaded %q %d, %v", c.Name, c.SnapshotCount, err)
	}
}

// --grpc-keepalive-* reach the config as etcd hands them to grpc-go: a
// value that is not positive leaves grpc-go's default (min time 5m; interval
// and timeout 2h and 20s, together), an interval below 1s is 1s, and they
// are not inert.
func TestGRPCKeepAliveFlags(t *testing.T) {
	ka := func(min, interval, timeout time.Duration) config.GRPCKeepAlive {
		return config.GRPCKeepAlive{MinTime: min, Interval: interval, Timeout: timeout}
	}
	for _, c := range []struct {
		args []string
		want config.GRPCKeepAlive
	}{
		{nil, ka(5*time.Second, 2*time.Hour, 20*time.Second)},
		{[]string{"--grpc-keepalive-min-time=1s", "--grpc-keepalive-interval=30s", "--grpc-keepalive-timeout=3s"}, ka(time.Second, 30*time.Second, 3*time.Second)},
		{[]string{"--grpc-keepalive-min-time=0"}, ka(5*time.Minute, 2*time.Hour, 20*time.Second)},
		{[]string{"--grpc-keepalive-interval=0", "--grpc-keepalive-timeout=3s"}, ka(5*time.Second, 2*time.Hour, 20*time.Second)},
		{[]string{"--grpc-keepalive-interval=30s", "--grpc-keepalive-timeout=0"}, ka(5*time.Second, 2*time.Hour, 20*time.Second)},
		{[]string{"--grpc-keepalive-interval=-1s"}, ka(5*time.Second, 2*time.Hour, 20*time.Second)},
		{[]string{"--grpc-keepalive-interval=100ms", "--grpc-keepalive-min-time=10ms"}, ka(10*time.Millisecond, time.Second, 20*time.Second)},
	} {
		s, err := load(t, c.args...)
		if err != nil || s.GRPCKeepAlive != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.args, s.GRPCKeepAlive, err, c.want)
		}
		if len(s.InertFlags) != 0 {
			t.Errorf("%q: noted as inert: %q", c.args, s.InertFlags)
		}
	}
	gw := []string{"--watchfanout-endpoints=http://127.0.0.1:1", "--leasesvc-endpoints=http://127.0.0.1:2"}
	s, err := loadSplit(t, config.RoleGateway, append(gw, "--grpc-keepalive-min-time=1s", "--grpc-keepalive-interval=30s", "--grpc-keepalive-timeout=3s")...)
	if err != nil || s.GRPCKeepAlive != ka(time.Second, 30*time.Second, 3*time.Second) {
		t.Errorf("split gateway: %+v, %v", s.GRPCKeepAlive, err)
	}
}
