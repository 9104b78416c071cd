package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
)

// etcd's access control of its HTTP endpoints (embed/serve.go's
// accessController): CORS headers on the HTTP/JSON routes (--cors), and,
// on cleartext listeners, 421 Misdirected Request for a Host header not
// in --host-whitelist, which defeats DNS rebinding (CVE-2018-5702). gRPC
// clients are not affected: CORS applies to the HTTP routes only, and the
// Host check skips cleartext HTTP/2, which browsers cannot speak; it is
// only installed on the listeners' handlers when a whitelist is set.

// allowAll reports whether list, etcd's --cors or --host-whitelist, lets
// everything through (empty, or *).
func allowAll(list []string) bool { return len(list) == 0 || slices.Contains(list, "*") }

// withCORS is next with etcd's CORS headers, and etcd's 200 to OPTIONS.
func (g *Gateway) withCORS(next http.Handler) http.Handler {
	all := allowAll(g.cfg.CORS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if all {
			addCORSHeader(w.Header(), "*")
		} else if o := r.Header.Get("Origin"); slices.Contains(g.cfg.CORS, o) {
			addCORSHeader(w.Header(), o)
		}
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func addCORSHeader(h http.Header, origin string) {
	h.Add("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE")
	h.Add("Access-Control-Allow-Origin", origin)
	h.Add("Access-Control-Allow-Headers", "accept, content-type, authorization")
}

// cleartextHandler is next as a cleartext listener serves it: with etcd's
// Host check when Config.HostWhitelist restricts hosts, next itself
// otherwise.
func (g *Gateway) cleartextHandler(next http.Handler) http.Handler {
	if allowAll(g.cfg.HostWhitelist) {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Cleartext HTTP/2 is prior knowledge: gRPC clients, never a
		// browser, which is what a rebound DNS name would drive.
		if r.ProtoMajor != 2 {
			host := hostname(r.Host)
			if !slices.Contains(g.cfg.HostWhitelist, host) {
				g.log.Warn("rejecting HTTP request to prevent DNS rebinding attacks", "host", host)
				http.Error(w, errCVE20185702(host), http.StatusMisdirectedRequest)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// errCVE20185702 is etcd's explanation of the refusal, with concord's name.
func errCVE20185702(host string) string {
	return fmt.Sprintf(`
concord received your request, but the Host header was unrecognized.

To fix this, choose one of the following options:
- Enable TLS, then any HTTPS request will be allowed.
- Add the hostname you want to use to the whitelist in settings.
  - e.g. concord --host-whitelist %q

This requirement has been added to help prevent "DNS Rebinding" attacks (CVE-2018-5702).
`, host)
}

// ServeHTTPOnly serves the HTTP endpoints (etcd's JSON gateway, /health,
// /livez, /readyz, /version, /metrics and the extra handlers) and no RPC,
// with TLS when useTLS (Config.TLS), until ctx is done or Close; it
// returns nil then. It is etcd's --listen-client-http-urls: the listeners
// of Serve and ServeTLS then serve RPCs only (Config.SeparateHTTP).
func (g *Gateway) ServeHTTPOnly(ctx context.Context, ln net.Listener, useTLS bool) error {
	h := g.httpRoutes
	if !useTLS {
		h = g.cleartextHandler(h)
	}
	return g.serveHTTP1(ctx, ln, useTLS, h, "serving HTTP-only client requests")
}

// serveHTTP1 serves h on ln with net/http (HTTP/1.1, and HTTP/2 over TLS),
// with TLS when useTLS, until ctx is done or Close.
func (g *Gateway) serveHTTP1(ctx context.Context, ln net.Listener, useTLS bool, h http.Handler, what string) error {
	if useTLS {
		if g.cfg.TLS == nil {
			ln.Close()
			return fmt.Errorf("%w: TLS listener without Config.TLS", ErrInvalidConfig)
		}
		ln = tls.NewListener(ln, g.cfg.TLS)
	}
	srv := &http.Server{Handler: h}
	untrack, err := g.track(srv, nil, nil)
	if err != nil {
		ln.Close()
		return err
	}
	defer untrack()
	g.log.Info(what, "addr", ln.Addr().String(), "tls", useTLS)
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
