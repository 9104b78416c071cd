// Package etcdspec_test checks services/config's fixture of etcd's server
// flags against the etcd server module itself. It is a package of its own
// because compiling etcd's server takes minutes; services/config's tests
// read only the fixture.
package etcdspec_test

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
)

const fixture = "../testdata/etcd-3.7.3-server-flags.txt"

var update = flag.Bool("update", false, "rewrite the fixture from etcd's flag set")

// etcdmainFlags are the flags etcd's command (etcdmain.newConfig) declares
// besides embed.Config.AddFlags, with their defaults; newConfig is not
// exported.
var etcdmainFlags = [][2]string{
	{"config-file", ""}, {"discovery-fallback", "exit"}, {"initial-cluster-state", "new"},
	{"v2-deprecation", ""}, {"version", "false"},
	// etcdmain's ignored flags
	{"cluster-active-size", ""}, {"cluster-remove-delay", ""}, {"cluster-sync-interval", ""}, {"config", ""},
	{"force", ""}, {"max-result-buffer", ""}, {"max-retry-attempts", ""}, {"peer-heartbeat-interval", ""},
	{"peer-election-timeout", ""}, {"retry-interval", ""}, {"snapshot", ""}, {"v", ""}, {"vv", ""},
	{"test.coverprofile", ""}, {"test.outputdir", ""},
}

func etcdFlags() []string {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	embed.NewConfig().AddFlags(fs)
	var lines []string
	fs.VisitAll(func(f *flag.Flag) { lines = append(lines, f.Name+"\t"+f.DefValue) })
	for _, f := range etcdmainFlags {
		lines = append(lines, f[0]+"\t"+f[1])
	}
	slices.Sort(lines)
	return lines
}

func TestFixtureIsEtcdsFlagSet(t *testing.T) {
	want := etcdFlags()
	text := "# etcd 3.7.3's server flags and their defaults (name TAB default), from\n" +
		"# embed.Config.AddFlags and etcdmain's newConfig; regenerate with\n" +
		"# go test ./services/config/etcdspec -update\n" + strings.Join(want, "\n") + "\n"
	if *update {
		if err := os.WriteFile(fixture, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != text {
		var have []string
		for _, l := range strings.Split(string(got), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				have = append(have, l)
			}
		}
		for _, l := range want {
			if !slices.Contains(have, l) {
				t.Errorf("etcd has %q, the fixture does not", l)
			}
		}
		for _, l := range have {
			if !slices.Contains(want, l) {
				t.Errorf("the fixture has %q, etcd does not", l)
			}
		}
		t.Error(fmt.Sprintf("%s is not etcd's flag set; run go test ./services/config/etcdspec -update", fixture))
	}
}
