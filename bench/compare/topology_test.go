package compare

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// seqPorts hands out 20000, 20001, ... so generated topologies are
// deterministic.
func seqPorts() PortFunc {
	n := 20000
	return func() (int, error) { n++; return n, nil }
}

// flag returns the value of --name in args, or "".
func flag(args []string, name string) string {
	for i, a := range args {
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func TestGenerateEtcdCluster(t *testing.T) {
	ps, err := GenerateEtcdCluster(EtcdClusterSpec{Members: 3, Dir: "/w", Flags: []string{"--election-timeout", "1000"}}, seqPorts())
	if err != nil {
		t.Fatal(err)
	}
	if got := Names(ps, RoleEtcd); !slices.Equal(got, []string{"etcd-1", "etcd-2", "etcd-3"}) {
		t.Fatalf("names %v", got)
	}
	initial := "etcd-1=http://127.0.0.1:20002,etcd-2=http://127.0.0.1:20004,etcd-3=http://127.0.0.1:20006"
	ports := map[string]bool{}
	for i, p := range ps {
		if got := flag(p.Args, "--initial-cluster"); got != initial {
			t.Errorf("%s: --initial-cluster %q, want %q", p.Name, got, initial)
		}
		if flag(p.Args, "--listen-client-urls") != p.ClientURL || flag(p.Args, "--advertise-client-urls") != p.ClientURL {
			t.Errorf("%s: client URLs differ from %s: %v", p.Name, p.ClientURL, p.Args)
		}
		if want := fmt.Sprintf("/w/etcd-%d.data", i+1); p.DataDir != want || flag(p.Args, "--data-dir") != want {
			t.Errorf("%s: data dir %q", p.Name, p.DataDir)
		}
		if flag(p.Args, "--election-timeout") != "1000" || flag(p.Args, "--initial-cluster-state") != "new" {
			t.Errorf("%s: flags missing: %v", p.Name, p.Args)
		}
		for _, u := range []string{p.ClientURL, flag(p.Args, "--listen-peer-urls")} {
			if ports[u] {
				t.Errorf("URL %s used twice", u)
			}
			ports[u] = true
		}
	}
	if _, err := GenerateEtcdCluster(EtcdClusterSpec{Members: 0}, seqPorts()); err == nil {
		t.Error("0 members accepted")
	}
	boom := errors.New("no ports")
	if _, err := GenerateEtcdCluster(EtcdClusterSpec{Members: 3}, func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Errorf("port error lost: %v", err)
	}
}

func TestGenerateSplit(t *testing.T) {
	spec := SplitSpec{Consensus: 3, Gateways: 2, Fanouts: 2, Leasesvcs: 2, OneFanoutGateways: 2, Dir: "/w",
		ConsensusFlags: []string{"--heartbeat-interval", "100"}, ServiceFlags: []string{"--log-level", "warn"}}
	ps, err := GenerateSplit(spec, seqPorts())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, p := range ps {
		order = append(order, p.Name)
	}
	want := []string{"consensus-1", "consensus-2", "consensus-3", "watchfanout-1", "watchfanout-2", "leasesvc-1", "leasesvc-2",
		"gateway-1", "gateway-2", "gateway-3", "gateway-4"}
	if !slices.Equal(order, want) {
		t.Fatalf("processes %v, want %v", order, want)
	}
	byName := map[string]ProcSpec{}
	urls := map[string]string{}
	for _, p := range ps {
		byName[p.Name] = p
		if prev, dup := urls[p.ClientURL]; dup {
			t.Errorf("%s and %s share %s", prev, p.Name, p.ClientURL)
		}
		urls[p.ClientURL] = p.Name
		if p.Args[0] != p.Role {
			t.Errorf("%s: subcommand %q, want %q", p.Name, p.Args[0], p.Role)
		}
		if flag(p.Args, "--listen-client-urls") != p.ClientURL {
			t.Errorf("%s: listens elsewhere than %s", p.Name, p.ClientURL)
		}
	}
	cons := []string{byName["consensus-1"].ClientURL, byName["consensus-2"].ClientURL, byName["consensus-3"].ClientURL}
	initial := flag(byName["consensus-1"].Args, "--initial-cluster")
	for i := 1; i <= 3; i++ {
		c := byName[fmt.Sprintf("consensus-%d", i)]
		if flag(c.Args, "--initial-cluster") != initial || strings.Count(initial, "=") != 3 {
			t.Errorf("consensus-%d: --initial-cluster %q", i, flag(c.Args, "--initial-cluster"))
		}
		if c.DataDir == "" || flag(c.Args, "--heartbeat-interval") != "100" || flag(c.Args, "--nats-listen-addr") == "" {
			t.Errorf("consensus-%d: %v", i, c.Args)
		}
		if flag(c.Args, "--nats-routes") != "" {
			t.Errorf("consensus-%d: NATS routes without NATSRoutes", i)
		}
	}
	// Every service lists all consensus members, starting with a different one.
	for name, first := range map[string]int{"watchfanout-1": 0, "watchfanout-2": 1, "leasesvc-2": 1, "gateway-3": 2, "gateway-4": 0} {
		got := strings.Split(flag(byName[name].Args, "--consensus-endpoints"), ",")
		if len(got) != 3 || got[0] != cons[first] {
			t.Errorf("%s: consensus endpoints %v, want all starting with %s", name, got, cons[first])
		}
		if flag(byName[name].Args, "--log-level") != "warn" {
			t.Errorf("%s: no service flags", name)
		}
	}
	// Fan-out i hears member i's NATS first.
	nats2 := "nats://" + flag(byName["consensus-2"].Args, "--nats-listen-addr")
	if got := flag(byName["watchfanout-2"].Args, "--nats-url"); !strings.HasPrefix(got, nats2+",") {
		t.Errorf("watchfanout-2 --nats-url %q, want %s first", got, nats2)
	}
	fo1, fo2 := byName["watchfanout-1"].ClientURL, byName["watchfanout-2"].ClientURL
	for name, want := range map[string]string{"gateway-1": fo1 + "," + fo2, "gateway-2": fo2 + "," + fo1, "gateway-3": fo1, "gateway-4": fo1} {
		if got := flag(byName[name].Args, "--watchfanout-endpoints"); got != want {
			t.Errorf("%s: fan-outs %q, want %q", name, got, want)
		}
		if got := strings.Count(flag(byName[name].Args, "--leasesvc-endpoints"), ",") + 1; got != 2 {
			t.Errorf("%s: %d lease services", name, got)
		}
	}

	spec.NATSRoutes = true
	ps, err = GenerateSplit(spec, seqPorts())
	if err != nil {
		t.Fatal(err)
	}
	routes := flag(ps[0].Args, "--nats-routes")
	if strings.Count(routes, "nats://") != 2 || strings.Contains(routes, flag(ps[0].Args, "--nats-cluster-listen-addr")) {
		t.Errorf("consensus-1 routes %q should name the two other members' cluster ports", routes)
	}

	if _, err := GenerateSplit(SplitSpec{Consensus: 3, Gateways: 0, Fanouts: 1, Leasesvcs: 1}, seqPorts()); err == nil {
		t.Error("no gateways accepted")
	}
}

func TestSystemsAndEndpoints(t *testing.T) {
	spec := ClusterSpec{}
	spec.SetDefaults()
	genEtcd, genConcord := spec.Generators("/w", []string{"--log-level", "warn"})
	es, err := genEtcd(seqPorts())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := genConcord(seqPorts())
	if err != nil {
		t.Fatal(err)
	}
	if flag(cs[0].Args, "--election-timeout") != "1000" || flag(es[0].Args, "--election-timeout") != "1000" {
		t.Error("raft flags differ between the clusters")
	}
	if flag(cs[len(cs)-1].Args, "--election-timeout") != "" {
		t.Error("a gateway got raft flags")
	}
	systems := spec.Systems(&Cluster{Specs: es}, &Cluster{Specs: cs})
	if len(systems[Etcd].Endpoints) != 3 || len(systems[Concord].Endpoints) != 2 || len(systems[Concord1FO].Endpoints) != 2 {
		t.Fatalf("systems %+v", systems)
	}
	if systems[Concord].Endpoints[0] == systems[Concord1FO].Endpoints[0] {
		t.Error("both variants use the same gateway")
	}
	if got := systems[Etcd].endpoints(2); len(got) != 2 || got[0] != es[0].Endpoint() {
		t.Errorf("endpoints(2) = %v", got)
	}
}

func TestServiceFlags(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{DefaultServerFlags, []string{"--log-level", "warn"}},
		{[]string{"--log-level=error", "--snapshot-count", "5"}, []string{"--log-level=error"}},
		{[]string{"--snapshot-count", "5"}, nil},
	} {
		if got := serviceFlags(c.in); !slices.Equal(got, c.want) {
			t.Errorf("serviceFlags(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestRotate(t *testing.T) {
	xs := []string{"a", "b", "c"}
	if got := rotate(xs, 4); !slices.Equal(got, []string{"b", "c", "a"}) {
		t.Errorf("rotate = %v", got)
	}
	if xs[0] != "a" || rotate(nil, 1) != nil {
		t.Error("rotate changed its input or invented elements")
	}
}

func TestProbePortsDistinct(t *testing.T) {
	port, release := ProbePorts()
	defer release()
	seen := map[int]bool{}
	for range 5 {
		p, err := port()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
