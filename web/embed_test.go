package web_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/web"
	"github.com/concord-kv/concord/web/webtest"
)

func get(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Result()
}

// assetRefs are the ./assets/... files index.html loads.
var assetRefs = regexp.MustCompile(`(?:src|href)="\./(assets/[^"]+)"`)

// TestHandlerServesConsole loads the page as a browser does: index.html at
// /console/, then every asset it names, with the cache and security headers
// the console relies on.
func TestHandlerServesConsole(t *testing.T) {
	h := web.Handler()
	resp := get(t, h, "/console/")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /console/: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !bytes.Contains(body, []byte("<title>concord console</title>")) {
		t.Fatalf("GET /console/ is not the console's index.html:\n%s", body)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-cache" {
		t.Errorf("index.html Cache-Control = %q, want no-cache", got)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	refs := assetRefs.FindAllStringSubmatch(string(body), -1)
	if len(refs) < 2 {
		t.Fatalf("index.html names %d assets, want its script and style sheet:\n%s", len(refs), body)
	}
	for _, ref := range refs {
		resp := get(t, h, web.Path+ref[1])
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s%s: %d", web.Path, ref[1], resp.StatusCode)
		}
		if got := resp.Header.Get("Cache-Control"); !strings.Contains(got, "immutable") {
			t.Errorf("%s Cache-Control = %q, want immutable", ref[1], got)
		}
	}
}

func TestHandlerNotFound(t *testing.T) {
	h := web.Handler()
	for _, p := range []string{"/console/nope.js", "/console/assets/nope.js", "/consolex", "/v3/kv/range"} {
		if resp := get(t, h, p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}

// TestDistUpToDate rebuilds the console from web/src with the pinned
// toolchain (web/package-lock.json) and checks that the committed web/dist
// is exactly that build: a change to the sources without `task web:build`
// fails here, not in a user's browser.
func TestDistUpToDate(t *testing.T) {
	_, dir := webtest.Node(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// npm run build type-checks (tsc) and then runs vite build, which takes
	// the extra flags.
	cmd := exec.CommandContext(ctx, "npm", "run", "build", "--silent", "--", "--outDir", out, "--emptyOutDir", "--logLevel", "warn")
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm run build: %v\n%s", err, b)
	}
	want := readTree(t, os.DirFS(out))
	got := readTree(t, web.Dist())
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("web/dist lacks %s: run `task web:build` and commit web/dist", name)
		case !bytes.Equal(g, w):
			t.Errorf("web/dist/%s differs from a build of web/src: run `task web:build` and commit web/dist", name)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("web/dist/%s is not part of a build of web/src: run `task web:build` and commit web/dist", name)
		}
	}
}

func readTree(t *testing.T, fsys fs.FS) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		files[filepath.ToSlash(p)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
