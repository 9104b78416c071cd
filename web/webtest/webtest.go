// Package webtest finds what the console's tests need outside Go: Node.js
// with web/node_modules installed (`npm ci --prefix web`) and, for browser
// tests, Debian's Chromium. Without them a test is skipped on a developer's
// machine, but fails under CI=true: CI installs them (.ci/run), so a skip
// there would only hide a broken install.
package webtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// ChromiumPath is where Debian's chromium package installs the browser.
const ChromiumPath = "/usr/bin/chromium"

// Dir is the absolute path of the repository's web/ directory.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// missing skips t, or fails it under CI=true.
func missing(t testing.TB, what error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v (CI installs it: .ci/run)", what)
	}
	t.Skipf("%v; install it to run this test (see .ci/run)", what)
}

// Node returns the node binary and web/, once node and web/node_modules
// exist.
func Node(t testing.TB) (node, dir string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		missing(t, errors.New("node is not installed"))
	}
	dir = Dir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", ".package-lock.json")); err != nil {
		missing(t, fmt.Errorf("web/node_modules is not installed (npm ci --prefix web): %w", err))
	}
	return node, dir
}

// Chromium returns the path of Debian's Chromium.
func Chromium(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		missing(t, fmt.Errorf("chromium is not installed: %w", err))
	}
	return ChromiumPath
}
