package gateway

import "os"

// CONCORD_TEST_LEAN_HTTP2=1 runs every test of the package with HTTP/2
// served by gateway/h2server instead of net/http (the CI runs both).
func init() {
	if os.Getenv("CONCORD_TEST_LEAN_HTTP2") == "1" {
		forceLeanHTTP2 = true
	}
}
