package gateway

import "os"

// CONCORD_TEST_NET_HTTP2=1 runs every test of the package with HTTP/2
// served by net/http's server instead of gateway/h2server (the CI runs both).
func init() {
	if os.Getenv("CONCORD_TEST_NET_HTTP2") == "1" {
		forceNetHTTP2 = true
	}
}
