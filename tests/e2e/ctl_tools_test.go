package e2e

import (
	"strings"
	"testing"
)

// etcdctl's tools built on the client API work against both servers:
// make-mirror copies a prefix and follows its changes into a second
// server, and check datascale writes its keys, reads the server's memory
// from its metrics and cleans up.
func TestCtlTools(t *testing.T) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			src, dst := startServer(t, im, serverOptions{name: "src"}), startServer(t, im, serverOptions{name: "dst"})

			for _, kv := range [][2]string{{"/m/a", "1"}, {"/m/b", "2"}, {"/other", "x"}} {
				mustCtl(t, src.Endpoint(), "put", kv[0], kv[1])
			}
			mirror := startBgCtl(t, src.Endpoint(), false, "make-mirror", "--prefix", "/m/", dst.Endpoint())
			get := func() string { return mustCtl(t, dst.Endpoint(), "get", "", "--from-key") }
			waitUntil(t, "the existing keys mirrored", func() bool { return get() == "/m/a\n1\n/m/b\n2\n" })
			mustCtl(t, src.Endpoint(), "put", "/m/c", "3")
			mustCtl(t, src.Endpoint(), "del", "/m/a")
			mustCtl(t, src.Endpoint(), "put", "/other2", "y")
			waitUntil(t, "the changes mirrored", func() bool { return get() == "/m/b\n2\n/m/c\n3\n" })
			mirror.kill()

			r := runCtl(t, src.Endpoint(), "", "check", "datascale", "--load=s", "--auto-compact", "--auto-defrag")
			if r.exit != 0 || !strings.Contains(r.stdout, "PASS: Approximate system memory used") {
				t.Fatalf("check datascale: exit %d\nstdout: %s\nstderr: %s", r.exit, r.stdout, r.stderr)
			}
			if got := mustCtl(t, src.Endpoint(), "get", "", "--from-key", "--keys-only"); got != "/m/b\n\n/m/c\n\n/other\n\n/other2\n\n" {
				t.Fatalf("keys after check datascale: %q", got)
			}
		})
	}
}
