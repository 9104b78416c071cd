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
