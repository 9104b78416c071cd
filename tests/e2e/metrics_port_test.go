package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestMetricsPort starts etcd and concord the way kubeadm starts etcd (a
// separate --listen-metrics-urls, --feature-gates=InitialCorruptCheck=true)
// and probes the metrics port as the kubelet and Prometheus do: health with
// kubeadm's query, metrics, and nothing of the API.
func TestMetricsPort(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			port, err := probePort()
			if err != nil {
				t.Fatal(err)
			}
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			s := startServer(t, im, serverOptions{extra: []string{"--listen-metrics-urls=" + base, "--feature-gates=InitialCorruptCheck=true"}})
			mustCtl(t, s.Endpoint(), "put", "k", "v")
			for _, c := range []struct {
				method, path string
				status       int
				body         string
			}{
				{"GET", "/health?exclude=NOSPACE&serializable=true", 200, `"health":"true"`},
				{"GET", "/health?serializable=false", 200, `"health":"true"`},
				{"GET", "/metrics", 200, "etcd_server_has_leader 1"},
				{"GET", "/livez", 200, "ok"},
				{"GET", "/readyz", 200, "ok"},
				{"POST", "/v3/kv/range", 404, ""},
				{"GET", "/version", 404, ""},
			} {
				req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(`{"key":"aw=="}`))
				if err != nil {
					t.Fatal(err)
				}
				resp, b := httpDo(t, req)
				if resp.StatusCode != c.status || !strings.Contains(b, c.body) {
					t.Errorf("%s %s on the metrics port: %d %q, want %d with %q", c.method, c.path, resp.StatusCode, b, c.status, c.body)
				}
			}
		})
	}
}
