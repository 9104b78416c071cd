package gateway

import "net/http"

// extraHandler is one plain HTTP handler served on the client port.
type extraHandler struct {
	pattern string
	h       http.Handler
}

// WithHTTPHandler serves h for pattern (an http.ServeMux pattern such as
// "/debug/pprof/") on the client port, next to /health and /version. RPC
// paths ("/<package>.<Service>/<Method>") always go to the RPC services, so
// a pattern can never shadow an RPC. The wiring uses it for
// --enable-pprof, as etcd serves /debug/pprof on its client port.
func WithHTTPHandler(pattern string, h http.Handler) Option {
	return func(o *options) { o.extra = append(o.extra, extraHandler{pattern: pattern, h: h}) }
}
