package services

import (
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/services/config"
)

func mustURL(t *testing.T, s string) url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return *u
}

// TestSocketReusePort: with --socket-reuse-port a second listener binds
// the port a first one holds, as etcd allows; without, it cannot.
func TestSocketReusePort(t *testing.T) {
	first, err := listenAll([]url.URL{mustURL(t, "http://127.0.0.1:0")}, config.SocketOptions{ReusePort: true})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(first)
	same := []url.URL{mustURL(t, "http://"+first[0].Addr().String())}
	if lns, err := listenAll(same, config.SocketOptions{}); err == nil {
		closeAll(lns)
		t.Fatal("bound a taken port without SO_REUSEPORT")
	}
	second, err := listenAll(same, config.SocketOptions{ReusePort: true, ReuseAddress: true})
	if err != nil {
		t.Fatalf("second listener with SO_REUSEPORT: %v", err)
	}
	closeAll(second)
}

// TestListenClientsMarksHTTPOnly: --listen-client-http-urls listeners
// serve the HTTP endpoints only, the metrics ones metrics only.
func TestListenClientsMarksHTTPOnly(t *testing.T) {
	u := mustURL(t, "http://127.0.0.1:0")
	lns, _, err := listenClients(listenSpec{Client: []url.URL{u, u}, HTTP: []url.URL{u}, Metrics: []url.URL{u}})
	if err != nil {
		t.Fatal(err)
	}
	defer closeClients(lns)
	var kinds []string
	for _, ln := range lns {
		switch {
		case ln.httpOnly && !ln.metrics:
			kinds = append(kinds, "http")
		case ln.metrics && !ln.httpOnly:
			kinds = append(kinds, "metrics")
		case !ln.metrics && !ln.httpOnly:
			kinds = append(kinds, "client")
		default:
			kinds = append(kinds, "both?")
		}
	}
	if got := strings.Join(kinds, ","); got != "client,client,http,metrics" {
		t.Errorf("listeners = %s", got)
	}

	g := withServerHTTP(gatewayConfig(1, 1, true, true, slog.Default()), config.Server{CORS: []string{"http://a"}, HostWhitelist: []string{"h"},
		ListenClientHTTPURLs: []url.URL{u}, MaxConcurrentStreams: 7, WarningUnaryRequestDuration: time.Second,
		GRPCKeepAlive: config.GRPCKeepAlive{MinTime: time.Second, Interval: time.Minute, Timeout: 3 * time.Second}})
	if len(g.CORS) != 1 || len(g.HostWhitelist) != 1 || !g.SeparateHTTP || g.MaxConcurrentStreams != 7 || g.WarningUnaryRequestDuration != time.Second ||
		g.KeepAlive != (gateway.KeepAlive{MinTime: time.Second, Interval: time.Minute, Timeout: 3 * time.Second}) {
		t.Errorf("gateway config = %+v", g)
	}
	if ka := withInternalKeepAlive(g).KeepAlive; !ka.PermitWithoutStream {
		t.Errorf("internal services' keep-alive %+v: concord's clients ping idle connections", ka)
	}
}

// etcd's StopGRPCServiceOnDefrag is alpha: off by default, on with its own
// setting or with AllAlpha, and its own setting wins over AllAlpha.
func TestStopServingOnDefragGate(t *testing.T) {
	for _, tc := range []struct {
		gates map[string]bool
		want  bool
	}{
		{nil, false},
		{map[string]bool{"StopGRPCServiceOnDefrag": true}, true},
		{map[string]bool{"AllAlpha": true}, true},
		{map[string]bool{"AllAlpha": true, "StopGRPCServiceOnDefrag": false}, false},
		{map[string]bool{"AllBeta": true}, false},
	} {
		if got := withServerHTTP(gatewayConfig(1, 1, true, true, slog.Default()), config.Server{FeatureGates: tc.gates}).StopServingOnDefrag; got != tc.want {
			t.Errorf("gates %v: StopServingOnDefrag = %v, want %v", tc.gates, got, tc.want)
		}
	}
}
