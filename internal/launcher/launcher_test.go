package launcher

import (
	"context"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLoadRewritesForLoopback: every service of the repository's compose.yaml
// is rewritten so that no container host name or 0.0.0.0 is left, every
// service gets its own client port, references to another service point at
// that service's port, and data directories move under Dir.
func TestLoadRewritesForLoopback(t *testing.T) {
	dir := t.TempDir()
	svcs, err := Load(context.Background(), Config{ComposeFile: "../../compose.yaml", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Service{}
	clientPorts := map[string]string{}
	for _, s := range svcs {
		byName[s.Name] = s
		u, err := url.Parse(s.ClientURL)
		if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "" {
			t.Fatalf("%s: client URL %q is not a loopback URL", s.Name, s.ClientURL)
		}
		if other, dup := clientPorts[u.Port()]; dup {
			t.Fatalf("%s and %s share client port %s", s.Name, other, u.Port())
		}
		clientPorts[u.Port()] = s.Name
	}
	if len(byName) != 9 {
		t.Fatalf("%d services, want 9: %v", len(byName), svcs)
	}
	names := slices.Collect(func(yield func(string) bool) {
		for n := range byName {
			if !yield(n) {
				return
			}
		}
	})
	for _, s := range svcs {
		joined := strings.Join(s.Args, " ")
		for _, n := range names {
			if strings.Contains(joined, "//"+n+":") || strings.Contains(joined, "0.0.0.0") {
				t.Errorf("%s: a container address is left in %q", s.Name, joined)
			}
		}
		if i := slices.Index(s.Args, "--data-dir"); i >= 0 && s.Args[i+1] != filepath.Join(dir, s.Name) {
			t.Errorf("%s: --data-dir %s, want under %s", s.Name, s.Args[i+1], dir)
		}
	}
	// consensus-1 advertises the port it listens on, and the gateways reach
	// it there.
	c1 := byName["consensus-1"]
	adv := c1.Args[slices.Index(c1.Args, "--advertise-client-urls")+1]
	if adv != c1.ClientURL {
		t.Errorf("consensus-1 advertises %s, listens on %s", adv, c1.ClientURL)
	}
	gw := byName["gateway-1"]
	eps := gw.Args[slices.Index(gw.Args, "--consensus-endpoints")+1]
	if !strings.Contains(eps, c1.ClientURL) {
		t.Errorf("gateway-1's consensus endpoints %s do not include consensus-1's %s", eps, c1.ClientURL)
	}
	wf := gw.Args[slices.Index(gw.Args, "--watchfanout-endpoints")+1]
	if !strings.HasPrefix(wf, byName["watchfanout-1"].ClientURL+",") {
		t.Errorf("gateway-1's fan-outs %s do not start with watchfanout-1's %s", wf, byName["watchfanout-1"].ClientURL)
	}

	// PublishedPorts keeps the host ports compose publishes for the gateways.
	pub, err := Load(context.Background(), Config{ComposeFile: "../../compose.yaml", Dir: dir, PublishedPorts: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range pub {
		switch s.Name {
		case "gateway-1":
			if s.Endpoint() != "127.0.0.1:2379" {
				t.Errorf("gateway-1 on %s with published ports, want 127.0.0.1:2379", s.Endpoint())
			}
		case "gateway-2":
			if s.Endpoint() != "127.0.0.1:2479" {
				t.Errorf("gateway-2 on %s with published ports, want 127.0.0.1:2479", s.Endpoint())
			}
		}
	}
}
