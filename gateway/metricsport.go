package gateway

import (
	"context"
	"net"
	"net/http"
	"strings"
)

// metricsPaths are what etcd serves on --listen-metrics-urls: metrics and
// health, never the API, so the port can be left open to a scraper or a
// kubelet probe.
var metricsPaths = []string{"/metrics", "/health", "/livez", "/readyz"}

func isMetricsPath(p string) bool {
	for _, m := range metricsPaths {
		if p == m || strings.HasPrefix(p, m+"/") {
			return true
		}
	}
	return false
}

// ServeMetrics serves /metrics, /health, /livez and /readyz (and nothing
// else) on ln over HTTP/1.1, with TLS when useTLS (Config.TLS), until ctx is
// done or Close; it returns nil then. ln is closed on return.
func (g *Gateway) ServeMetrics(ctx context.Context, ln net.Listener, useTLS bool) error {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isMetricsPath(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		g.misc.ServeHTTP(w, r)
	})
	return g.serveHTTP1(ctx, ln, useTLS, h, "serving metrics")
}
