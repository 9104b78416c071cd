package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/concord-kv/concord/web/webtest"
)

// consoleTimeout bounds the whole browser session: Chromium's start on two
// busy cores is most of it.
const consoleTimeout = 3 * time.Minute

// TestWebConsole drives the web console (/console/) in a real headless
// Chromium against a concord process: a paginated listing, a put through the
// console that etcdctl then reads, a put by etcdctl that the console's live
// watch (concord.v1.WatchService over Connect-Web) shows, and a delete
// through the console. The browser side is web/e2e/console.mjs
// (playwright-core); the two talk over its stdin and stdout.
//
// Skipped without Node.js, web/node_modules or Chromium, except under
// CI=true, where it fails instead (.ci/run installs them).
func TestWebConsole(t *testing.T) {
	node, webDir := webtest.Node(t)
	chromium := webtest.Chromium(t)
	s := startServer(t, concordImpl, serverOptions{})
	ep := s.Endpoint()
	const prefix = "/console-e2e/"
	for i := 1; i <= 3; i++ {
		mustCtl(t, ep, "put", fmt.Sprintf("%spage/%d", prefix, i), fmt.Sprintf("v%d", i))
	}

	script := runConsoleScript(t, node, filepath.Join(webDir, "e2e", "console.mjs"),
		"CONSOLE_URL="+s.clientURL()+"/console/",
		"CHROMIUM="+chromium,
		"PREFIX="+prefix,
	)
	expect, tell := script.expect, script.tell
	get := func(key string) string {
		t.Helper()
		return strings.TrimSpace(mustCtl(t, ep, "get", key, "--print-value-only"))
	}

	browserKey := prefix + "from-browser"
	if got := expect("step listed "); got != browserKey {
		t.Fatalf("the console put %q, want %q", got, browserKey)
	}
	if got := get(browserKey); got != "hello from chromium" {
		t.Fatalf("etcdctl get %s = %q after the console's put, want %q", browserKey, got, "hello from chromium")
	}

	ctlKey := prefix + "from-etcdctl"
	mustCtl(t, ep, "put", ctlKey, "hello from etcdctl")
	tell("put " + ctlKey + " hello from etcdctl")
	if got := expect("step watched "); got != ctlKey {
		t.Fatalf("the console's watch showed %q, want %q", got, ctlKey)
	}

	if got := expect("step deleted "); got != browserKey {
		t.Fatalf("the console deleted %q, want %q", got, browserKey)
	}
	if got := get(browserKey); got != "" {
		t.Fatalf("etcdctl get %s = %q after the console's delete, want nothing", browserKey, got)
	}
	expect("done")
	script.finish()
}

// consoleScript is a browser script (web/e2e/*.mjs) running under node,
// which the test talks with over its stdin and stdout.
type consoleScript struct {
	// expect returns the rest of the script's next line, which must start
	// with want.
	expect func(want string) string
	// tell sends the script a line.
	tell func(line string)
	// finish closes the script's stdin and waits for it to succeed.
	finish func()
}

// runConsoleScript starts the script with env (plus a fresh USER_DATA_DIR)
// and stops it when the test ends, logging its stderr on failure.
func runConsoleScript(t *testing.T, node, script string, env ...string) consoleScript {
	t.Helper()
	name := filepath.Base(script)
	ctx, cancel := context.WithTimeout(context.Background(), consoleTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = filepath.Dir(filepath.Dir(script))
	cmd.Env = append(append(cleanEnv(), "USER_DATA_DIR="+t.TempDir()), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	// The scanner goroutine ends when the script's stdout closes, which
	// Wait (in finish, or the cleanup's kill and Wait) guarantees.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	waited := false
	wait := func() error {
		waited = true
		for range lines { // drain, so the scanner can finish
		}
		return cmd.Wait()
	}
	t.Cleanup(func() {
		if !waited {
			cancel()
			_ = wait()
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	return consoleScript{
		expect: func(want string) string {
			t.Helper()
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("%s ended before %q", name, want)
				}
				if !strings.HasPrefix(line, want) {
					t.Fatalf("%s said %q, want %q", name, line, want)
				}
				return strings.TrimPrefix(line, want)
			case <-ctx.Done():
				t.Fatalf("no %q from %s within %v", want, name, consoleTimeout)
			}
			return ""
		},
		tell: func(line string) {
			t.Helper()
			if _, err := io.WriteString(stdin, line+"\n"); err != nil {
				t.Fatalf("tell %s: %v", name, err)
			}
		},
		finish: func() {
			t.Helper()
			stdin.Close()
			if err := wait(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		},
	}
}

// TestWebConsoleDisabled: --enable-console=false serves no console, while
// the API on the same port still answers.
func TestWebConsoleDisabled(t *testing.T) {
	for _, tc := range []struct {
		flag string
		want int
	}{
		{"--enable-console=true", http.StatusOK},
		{"--enable-console=false", http.StatusNotFound},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			s := startServer(t, concordImpl, serverOptions{extra: []string{tc.flag}})
			resp, err := http.Get(s.clientURL() + "/console/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET /console/ with %s: %d, want %d", tc.flag, resp.StatusCode, tc.want)
			}
			mustCtl(t, s.Endpoint(), "put", "k", "v")
		})
	}
}
