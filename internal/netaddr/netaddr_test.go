package netaddr_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/concord-kv/concord/internal/netaddr"
)

// hosts is an in-memory Resolver for the test.
type hosts map[string][]net.IPAddr

func (h hosts) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	if ips, ok := h[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func TestResolve(t *testing.T) {
	r := hosts{
		"dual":  {{IP: net.ParseIP("::1")}, {IP: net.ParseIP("127.0.0.2")}},
		"six":   {{IP: net.ParseIP("::2")}},
		"empty": {},
	}
	for _, c := range []struct{ in, want string }{
		{"10.0.0.1:2380", "10.0.0.1:2380"},
		{"[::1]:2380", "[::1]:2380"},
		{"dual:2380", "127.0.0.2:2380"}, // IPv4 first
		{"six:2380", "[::2]:2380"},
	} {
		if got, err := netaddr.Resolve(context.Background(), r, c.in); err != nil || got != c.want {
			t.Errorf("Resolve(%s) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"nowhere:2380", "empty:2380", "no-port"} {
		if got, err := netaddr.Resolve(context.Background(), r, in); err == nil {
			t.Errorf("Resolve(%s) = %q, want an error", in, got)
		}
	}
}
