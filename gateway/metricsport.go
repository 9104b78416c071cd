package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
	if useTLS {
		if g.cfg.TLS == nil {
			ln.Close()
			return fmt.Errorf("%w: TLS metrics listener without Config.TLS", ErrInvalidConfig)
		}
		ln = tls.NewListener(ln, g.cfg.TLS)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isMetricsPath(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		g.misc.ServeHTTP(w, r)
	})}
	untrack, err := g.track(srv, nil, nil)
	if err != nil {
		ln.Close()
		return err
	}
	defer untrack()
	g.log.Info("serving metrics", "addr", ln.Addr().String(), "tls", useTLS)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}
