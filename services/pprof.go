package services

import (
	"net/http"
	"net/http/pprof"

	"github.com/concord-kv/concord/gateway"
)

// pprofHandlers serves Go's runtime profiles under /debug/pprof/ on the
// client port, as etcd does with --enable-pprof. They are off by default:
// a CPU or trace profile costs the server while it runs.
func pprofHandlers() []gateway.Option {
	return []gateway.Option{
		// Index also serves the named profiles (heap, goroutine, allocs,
		// block, mutex, threadcreate) under /debug/pprof/<name>.
		gateway.WithHTTPHandler("/debug/pprof/", http.HandlerFunc(pprof.Index)),
		gateway.WithHTTPHandler("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline)),
		gateway.WithHTTPHandler("/debug/pprof/profile", http.HandlerFunc(pprof.Profile)),
		gateway.WithHTTPHandler("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol)),
		gateway.WithHTTPHandler("/debug/pprof/trace", http.HandlerFunc(pprof.Trace)),
	}
}
