package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/concord-kv/concord/consensus/compactor"
	"github.com/concord-kv/concord/services/config"
)

func load(t *testing.T, args ...string) (config.Server, error) {
	t.Helper()
	fs := pflag.NewFlagSet("concord", pflag.ContinueOnError)
	config.ServerFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return config.LoadServer(fs)
}

func TestDefaultsMatchAllInOne(t *testing.T) {
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "default" || c.DataDir != "default.concord" {
		t.Errorf("name/data-dir = %q/%q, want default/default.concord", c.Name, c.DataDir)
	}
	if got := c.ListenClientURLs[0].Host; got != "127.0.0.1:2379" {
		t.Errorf("listen client = %q", got)
	}
	if c.AdvertiseClientURLs[0] != c.ListenClientURLs[0] {
		t.Errorf("advertise client URLs default to listen URLs, got %v", c.AdvertiseClientURLs)
	}
	if c.InitialCluster != "default=http://127.0.0.1:2380" {
		t.Errorf("initial cluster = %q", c.InitialCluster)
	}
	if c.HeartbeatInterval != 100*time.Millisecond || c.ElectionTimeout != time.Second {
		t.Errorf("timers = %v/%v", c.HeartbeatInterval, c.ElectionTimeout)
	}
	if c.MaxRequestBytes != 1572864 || c.MaxTxnOps != 128 || c.SnapshotCount != 10000 {
		t.Errorf("limits = %d/%d/%d", c.MaxRequestBytes, c.MaxTxnOps, c.SnapshotCount)
	}
}

func TestFlagsEnvAndFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "concord.yaml")
	yaml := "name: from-file\nmax-txn-ops: 64\nsnapshot-count: 77\n"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ETCD_QUOTA_BACKEND_BYTES", "1000")
	t.Setenv("ETCD_MAX_TXN_OPS", "1")         // the file is stronger than ETCD_
	t.Setenv("CONCORD_SNAPSHOT_COUNT", "555") // CONCORD_ is stronger than the file
	c, err := load(t, "--config-file", file, "--listen-client-urls", "http://127.0.0.1:1,http://127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "from-file" || c.DataDir != "from-file.concord" {
		t.Errorf("name/data-dir = %q/%q", c.Name, c.DataDir)
	}
	if c.QuotaBackendBytes != 1000 {
		t.Errorf("quota from ETCD_ env = %d", c.QuotaBackendBytes)
	}
	if c.MaxTxnOps != 64 {
		t.Errorf("max-txn-ops = %d, want the file's 64", c.MaxTxnOps)
	}
	if c.SnapshotCount != 555 {
		t.Errorf("snapshot-count = %d, want CONCORD_'s 555", c.SnapshotCount)
	}
	if len(c.ListenClientURLs) != 2 {
		t.Errorf("listen client URLs = %v", c.ListenClientURLs)
	}
}

func TestInvalid(t *testing.T) {
	for _, args := range [][]string{
		{"--name", ""},
		{"--listen-client-urls", "not a url"},
		{"--listen-client-urls", ""},
		{"--initial-cluster-state", "maybe"},
		{"--heartbeat-interval", "100", "--election-timeout", "200"},
		{"--max-txn-ops", "0"},
		{"--quota-backend-bytes", "-1"},
		{"--log-level", "loud"},
		{"--config-file", "/does/not/exist.yaml"},
	} {
		if _, err := load(t, args...); !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%v: err = %v, want ErrInvalid", args, err)
		}
	}
}

// --watch-progress-notify-interval behaves as etcd's: 10m by default, not
// positive keeps the default, below 100ms is raised to 100ms.
func TestWatchProgressNotifyInterval(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 10 * time.Minute},
		{[]string{"--watch-progress-notify-interval=2s"}, 2 * time.Second},
		{[]string{"--watch-progress-notify-interval=0"}, 10 * time.Minute},
		{[]string{"--watch-progress-notify-interval=-1s"}, 10 * time.Minute},
		{[]string{"--watch-progress-notify-interval=10ms"}, 100 * time.Millisecond},
	} {
		c, err := load(t, tc.args...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.WatchProgressNotifyInterval != tc.want {
			t.Errorf("%v: interval = %v, want %v", tc.args, c.WatchProgressNotifyInterval, tc.want)
		}
	}
	t.Setenv("ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", "3s")
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.WatchProgressNotifyInterval != 3*time.Second {
		t.Errorf("from ETCD_ env: interval = %v, want 3s", c.WatchProgressNotifyInterval)
	}
}

// --enable-pprof is etcd's flag: off by default, on from the flag or ETCD_.
func TestEnablePprof(t *testing.T) {
	c, err := load(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.EnablePprof {
		t.Error("pprof enabled by default")
	}
	if c, err = load(t, "--enable-pprof"); err != nil || !c.EnablePprof {
		t.Errorf("--enable-pprof: enabled=%v err=%v", c.EnablePprof, err)
	}
	t.Setenv("ETCD_ENABLE_PPROF", "true")
	if c, err = load(t); err != nil || !c.EnablePprof {
		t.Errorf("ETCD_ENABLE_PPROF=true: enabled=%v err=%v", c.EnablePprof, err)
	}
}

// --enable-console is on by default, off with =false or CONCORD_ENABLE_CONSOLE,
// on the all-in-one server and the split gateway alike.
func TestEnableConsole(t *testing.T) {
	c, err := load(t)
	if err != nil || !c.EnableConsole {
		t.Errorf("default: enabled=%v err=%v", c.EnableConsole, err)
	}
	if c, err = load(t, "--enable-console=false"); err != nil || c.EnableConsole {
		t.Errorf("--enable-console=false: enabled=%v err=%v", c.EnableConsole, err)
	}
	gw := []string{"--watchfanout-endpoints=http://127.0.0.1:1", "--leasesvc-endpoints=http://127.0.0.1:2"}
	s, err := loadSplit(t, config.RoleGateway, gw...)
	if err != nil || !s.EnableConsole {
		t.Errorf("gateway default: enabled=%v err=%v", s.EnableConsole, err)
	}
	t.Setenv("CONCORD_ENABLE_CONSOLE", "false")
	if c, err = load(t); err != nil || c.EnableConsole {
		t.Errorf("CONCORD_ENABLE_CONSOLE=false: enabled=%v err=%v", c.EnableConsole, err)
	}
	if s, err = loadSplit(t, config.RoleGateway, gw...); err != nil || s.EnableConsole {
		t.Errorf("gateway, CONCORD_ENABLE_CONSOLE=false: enabled=%v err=%v", s.EnableConsole, err)
	}
}

// --lean-http2 is on by default and can be turned off.
func TestLeanHTTP2Flag(t *testing.T) {
	c, err := load(t)
	if err != nil || !c.LeanHTTP2 {
		t.Fatalf("default: lean=%v err=%v", c.LeanHTTP2, err)
	}
	if c, err = load(t, "--lean-http2=false"); err != nil || c.LeanHTTP2 {
		t.Errorf("=false: lean=%v err=%v", c.LeanHTTP2, err)
	}
}

// --auto-compaction-mode and --auto-compaction-retention read as etcd reads
// them: off by default, a plain number is hours (periodic) or revisions.
func TestAutoCompactionFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    compactor.Config
		wantErr string
	}{
		{nil, compactor.Config{Mode: compactor.ModePeriodic}, ""},
		{[]string{"--auto-compaction-retention=1"}, compactor.Config{Mode: compactor.ModePeriodic, Retention: time.Hour}, ""},
		{[]string{"--auto-compaction-retention=30m"}, compactor.Config{Mode: compactor.ModePeriodic, Retention: 30 * time.Minute}, ""},
		{[]string{"--auto-compaction-mode=revision", "--auto-compaction-retention=1000"}, compactor.Config{Mode: compactor.ModeRevision, Revisions: 1000}, ""},
		{[]string{"--auto-compaction-mode=revision", "--auto-compaction-retention=1h"}, compactor.Config{}, "error parsing CompactionRetention"},
		{[]string{"--auto-compaction-retention=soon"}, compactor.Config{}, "error parsing CompactionRetention"},
		{[]string{"--auto-compaction-mode=hourly"}, compactor.Config{}, `unknown auto-compaction-mode "hourly"`},
	} {
		c, err := load(t, tc.args...)
		if tc.wantErr != "" {
			if err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err %v, want %q", tc.args, err, tc.wantErr)
			}
			continue
		}
		if err != nil || c.AutoCompaction != tc.want {
			t.Errorf("%v: %+v, %v; want %+v", tc.args, c.AutoCompaction, err, tc.want)
		}
	}
}

// kubeadm's etcd flags: a metrics URL, feature gates checked against
// etcd's, an https metrics URL needing the client certificate.
func TestMonitoringFlags(t *testing.T) {
	c, err := load(t, "--listen-metrics-urls=http://127.0.0.1:2381", "--feature-gates=InitialCorruptCheck=true,LeaseCheckpoint=false", "--metrics=extensive")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ListenMetricsURLs) != 1 || c.ListenMetricsURLs[0].Host != "127.0.0.1:2381" {
		t.Errorf("metrics URLs %v", c.ListenMetricsURLs)
	}
	if !c.FeatureGates["InitialCorruptCheck"] || c.FeatureGates["LeaseCheckpoint"] || len(c.FeatureGates) != 2 {
		t.Errorf("feature gates %v", c.FeatureGates)
	}
	for _, tc := range []struct{ arg, want string }{
		{"--feature-gates=Bogus=true", "unrecognized feature gate: Bogus"},
		{"--feature-gates=InitialCorruptCheck=maybe", "invalid value of InitialCorruptCheck=maybe"},
		{"--listen-metrics-urls=https://127.0.0.1:2381", "--cert-file"},
		{"--listen-metrics-urls=127.0.0.1:2381", "is not a URL"},
	} {
		if _, err := load(t, tc.arg); err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.arg, err, tc.want)
		}
	}
}
