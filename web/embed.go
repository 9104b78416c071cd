// Package web embeds concord's web console, a small TypeScript page that
// calls etcd's KV, Cluster and Maintenance services and concord's browser
// watch (concord.v1.WatchService) with Connect-Web, and serves it over HTTP.
//
// The page's sources are in web/src; web/dist is their build (`task
// web:build`, i.e. `npm ci --prefix web && npm run build --prefix web`),
// committed so that `go build` needs no Node.js. TestDistUpToDate checks
// that dist is the build of the committed sources.
//
// Invariants: the console is static files only, served read-only from the
// binary; it calls the same RPCs on the same origin as every other client,
// so it can do nothing a client of the port cannot.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// Path is where the gateway mounts the console on the client port.
const Path = "/console/"

//go:embed dist
var dist embed.FS

// Dist is the built console: index.html and assets/.
func Dist() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		// fs.Sub fails only for an invalid path name, and "dist" is valid.
		return dist
	}
	return sub
}

// Handler serves the console under Path (requests outside it get 404). The
// assets' names carry a hash of their content, so they are cached for good;
// index.html is revalidated, so a new binary's console is seen at once.
func Handler() http.Handler {
	files := http.StripPrefix(strings.TrimSuffix(Path, "/"), http.FileServerFS(Dist()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, Path) {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		if strings.HasPrefix(r.URL.Path, Path+"assets/") {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			h.Set("Cache-Control", "no-cache")
		}
		// The page loads only its own script and style and calls only its
		// own origin; no other page may frame it (it can delete keys).
		h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}
