package services

import (
	"github.com/concord-kv/concord/gateway"
	"github.com/concord-kv/concord/web"
)

// consoleOptions serves the web console (package web) under /console/ on a
// client gateway when enabled. It goes through the gateway's plain HTTP
// handlers, which the gateway consults only after a path failed to name an
// RPC service, so RPCs never pay for it.
func consoleOptions(enabled bool) []gateway.Option {
	if !enabled {
		return nil
	}
	return []gateway.Option{gateway.WithHTTPHandler(web.Path, web.Handler())}
}
