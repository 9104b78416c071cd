package main

import (
	"os"
	"strings"
	"testing"
)

// TestCommandsTakeEveryEtcdFlag checks that `concord` and `concord
// consensus` declare every etcd 3.7.3 server flag of the fixture
// (services/config/testdata, checked against etcd by
// services/config/etcdspec), but the auth ones another branch adds.
func TestCommandsTakeEveryEtcdFlag(t *testing.T) {
	b, err := os.ReadFile("../config/testdata/etcd-3.7.3-server-flags.txt")
	if err != nil {
		t.Fatal(err)
	}
	root := newRootCommand()
	cons, _, err := root.Find([]string{"consensus"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		name, _, _ := strings.Cut(l, "\t")
		if name == "" || strings.HasPrefix(name, "#") || name == "auth-token" || name == "auth-token-ttl" || name == "bcrypt-cost" {
			continue
		}
		n++
		if root.Flags().Lookup(name) == nil {
			t.Errorf("concord lacks etcd's --%s", name)
		}
		if name != "version" && cons.Flags().Lookup(name) == nil {
			t.Errorf("concord consensus lacks etcd's --%s", name)
		}
	}
	if n < 100 {
		t.Errorf("only %d flags checked", n)
	}
}

// TestEtcdSingleDashArgs: `concord -name m1` and `concord consensus
// -name m1` parse as etcd would; other subcommands are untouched.
func TestEtcdSingleDashArgs(t *testing.T) {
	root := newRootCommand()
	for _, c := range []struct{ in, want []string }{
		{[]string{"-name", "m1", "-heartbeat-interval=50"}, []string{"--name", "m1", "--heartbeat-interval=50"}},
		{[]string{"consensus", "-name", "m1", "-nats-listen-addr", "x"}, []string{"consensus", "--name", "m1", "--nats-listen-addr", "x"}},
		{[]string{"bench", "put", "-name"}, []string{"bench", "put", "-name"}},
		{[]string{"-help"}, []string{"--help"}},
	} {
		if got := etcdArgs(root, c.in); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("etcdArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
