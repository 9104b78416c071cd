package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/concord-kv/concord/web/webtest"
)

// TestWebConsoleAuth drives the web console with etcd's auth enabled (by
// etcdctl: root, and alice with readwrite on one prefix): before logging in
// every call is refused; logged in as alice the console lists her prefix,
// shows etcd's permission denied outside it, watches and puts in it (read
// back by etcdctl as root); after an auth change makes her token's revision
// old, the console authenticates again and its next call succeeds; after
// logging out calls are refused again. The browser side is
// web/e2e/console-auth.mjs.
func TestWebConsoleAuth(t *testing.T) {
	node, webDir := webtest.Node(t)
	chromium := webtest.Chromium(t)
	s := startServer(t, concordImpl, serverOptions{extra: []string{"--bcrypt-cost=4"}})
	ep := s.Endpoint()
	const (
		prefix  = "/console-auth/alice/"
		outside = "/console-auth/"
		value   = "hello from alice"
	)
	root := "--user=root:rootpw"
	mustCtl(t, ep, "put", prefix+"a", "1")
	mustCtl(t, ep, "put", outside+"secret", "s")
	mustCtl(t, ep, "user", "add", "root", "--new-user-password=rootpw")
	mustCtl(t, ep, "user", "add", "alice", "--new-user-password=alicepw")
	mustCtl(t, ep, "role", "add", "alice-rw")
	mustCtl(t, ep, "role", "grant-permission", "alice-rw", "--prefix", "readwrite", prefix)
	mustCtl(t, ep, "user", "grant-role", "alice", "alice-rw")
	mustCtl(t, ep, "auth", "enable")

	script := runConsoleScript(t, node, filepath.Join(webDir, "e2e", "console-auth.mjs"),
		"CONSOLE_URL="+s.clientURL()+"/console/",
		"CHROMIUM="+chromium,
		"LOGIN_USER=alice",
		"LOGIN_PASSWORD=alicepw",
		"PREFIX="+prefix,
		"OUTSIDE="+outside,
		"VALUE="+value,
	)

	browserKey := prefix + "from-browser"
	if got := script.expect("step put "); got != browserKey {
		t.Fatalf("the console put %q, want %q", got, browserKey)
	}
	if got := strings.TrimSpace(mustCtl(t, ep, root, "get", browserKey, "--print-value-only")); got != value {
		t.Fatalf("etcdctl get %s = %q after the console's put, want %q", browserKey, got, value)
	}

	// A token taken now is refused after the auth change below, so the
	// console's next call can only succeed by authenticating again.
	token, _ := connectCall(t, s.clientURL(), "", "etcdserverpb.Auth/Authenticate", `{"name":"alice","password":"alicepw"}`)["token"].(string)
	if token == "" {
		t.Fatal("Authenticate over Connect returned no token")
	}
	// Setting alice's password (to the same one, which the console still
	// holds) invalidates her tokens, in etcd and concord.
	if r := runCtl(t, ep, "alicepw\n", root, "user", "passwd", "alice", "--interactive=false"); r.exit != 0 {
		t.Fatalf("etcdctl user passwd: %+v", r)
	}
	if got := connectCall(t, s.clientURL(), token, "etcdserverpb.KV/Range", `{"key":"`+b64(prefix+"a")+`"}`)["message"]; got != "etcdserver: invalid auth token" {
		t.Fatalf("Range with a token from before the password change: message %q, want etcd's invalid auth token", got)
	}
	script.tell("bumped")
	if got := script.expect("step got "); got != browserKey {
		t.Fatalf("the console read %q, want %q", got, browserKey)
	}
	script.expect("done")
	script.finish()
}

// connectCall makes a unary Connect call with a JSON body and returns the
// JSON answer (a response, or a Connect error with code and message).
func connectCall(t *testing.T, baseURL, token, procedure, body string) map[string]any {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, baseURL+"/"+procedure, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", procedure, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s: decoding the answer (HTTP %d): %v", procedure, resp.StatusCode, err)
	}
	return out
}
