package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/healthwait"
	"github.com/concord-kv/concord/internal/launcher"
	"github.com/concord-kv/concord/internal/tlstest"
)

const (
	// readyTimeout bounds how long a server may take to answer GET /health with 200. Generous
	// because CI may be compiling other packages on the same two cores.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds a graceful stop; etcd itself takes about 2 s.
	stopTimeout = 30 * time.Second
	// pollInterval is the readiness poll period.
	pollInterval = 20 * time.Millisecond
	// startAttempts is how often a first start is retried when it lost a port race.
	startAttempts = 4
	// logTail is how much of a server's output a failing test prints.
	logTail = 24 << 10
)

var errNotReady = errors.New("server did not become ready")

// leanHTTP2Env picks the HTTP/2 server of every concord process: unset, the
// binary's default (gateway/h2server); 1 or 0, --lean-http2=true
// or =false, so the same scenarios run over net/http's server too (the CI
// runs a subset so).
const leanHTTP2Env = "CONCORD_E2E_LEAN_HTTP2"

// leanHTTP2Flag is the flag for leanHTTP2Env, or "" to leave the default.
func leanHTTP2Flag() string {
	switch os.Getenv(leanHTTP2Env) {
	case "1":
		return "--lean-http2=true"
	case "0":
		return "--lean-http2=false"
	}
	return ""
}

// serverOptions configure one server.
type serverOptions struct {
	name  string   // --name; default "e2e"
	extra []string // extra flags, e.g. --quota-backend-bytes=N
	// initialCluster is --initial-cluster; default: this member alone.
	initialCluster string
	// discovered leaves --initial-cluster out: extra names a discovery.
	discovered bool
	// dataDir is --data-dir; default: a new temporary directory.
	dataDir string
	// tls serves the client URL as https:// with tls's server certificate
	// (--cert-file, --key-file); with clientCertAuth, clients must present
	// a certificate signed by tls's CA (--trusted-ca-file,
	// --client-cert-auth).
	tls            *tlstest.Files
	clientCertAuth bool
	// readyCert, if set, is the client certificate and key the readiness
	// probe presents instead of tls's client certificate.
	readyCert [2]string
	// autoTLS serves the client URL as https:// with --auto-tls (a
	// self-signed certificate) instead.
	autoTLS bool
	// peerTLS serves the peer URL as https:// with peerTLS's server
	// certificate (--peer-cert-file, --peer-key-file), also presented to
	// the peers dialed; with peerClientCertAuth, peers must present a
	// certificate signed by peerTLS's CA (--peer-trusted-ca-file,
	// --peer-client-cert-auth).
	peerTLS            *tlstest.Files
	peerClientCertAuth bool
	// peerAutoTLS serves the peer URL as https:// with --peer-auto-tls (a
	// self-signed certificate) instead.
	peerAutoTLS bool
}

// tlsArgs are etcd's TLS flags of one side (prefix "--" for the client
// URLs, "--peer-" for the peer URLs): t's server certificate, with
// certAuth its CA and client certificate authentication, or auto-TLS.
func tlsArgs(prefix string, t *tlstest.Files, certAuth, auto bool) []string {
	var args []string
	if t != nil {
		args = append(args, prefix+"cert-file", t.ServerCert, prefix+"key-file", t.ServerKey)
		if certAuth {
			args = append(args, prefix+"trusted-ca-file", t.CA, prefix+"client-cert-auth")
		}
	}
	if auto {
		args = append(args, prefix+"auto-tls")
	}
	return args
}

// Server is one etcd or concord process started with etcd's flags on loopback ports. Its data
// directory survives Stop/Kill so Restart can start it again on the same data.
type Server struct {
	t       testing.TB
	impl    *impl
	opts    serverOptions
	dataDir string

	clientPort, peerPort int

	log *syncBuffer // output of every incarnation, for failure reports

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has been reaped
	gen  int           // incarnation number, for the log
}

// startServer starts a server of the given implementation and waits until it is ready. The test
// fails (not skips) when the implementation's binary could not be built.
func startServer(t testing.TB, im *impl, opts serverOptions) *Server {
	t.Helper()
	requireBinary(t, im)
	if opts.name == "" {
		opts.name = "e2e"
	}
	s := &Server{t: t, impl: im, opts: opts, dataDir: opts.dataDir, log: &syncBuffer{}}
	if s.dataDir == "" {
		s.dataDir = t.TempDir()
	}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("%s output (last %d bytes):\n%s", s.impl.name, logTail, s.log.Tail(logTail))
		}
	})
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		s.clientPort, s.peerPort, err = freePorts()
		if err != nil {
			t.Fatalf("pick ports: %v", err)
		}
		err = s.start()
		if err == nil {
			return s
		}
		// Another process may have taken a port between our probe and the server's bind.
		if !strings.Contains(s.log.String(), "address already in use") {
			break
		}
		s.Kill()
	}
	t.Fatalf("start %s: %v", im.name, err)
	return nil
}

// freePorts asks the kernel for two distinct free loopback ports.
func freePorts() (int, int, error) {
	a, err := probePort()
	if err != nil {
		return 0, 0, err
	}
	b, err := probePort()
	return a, b, err
}

// handedOut holds every port probePort returned in this test binary: the
// kernel may give a just-closed probe's port to the next probe, and two
// processes (or a peer listener and a NATS route) told to bind the same
// port make a test fail for no fault of the code under test.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// probePort returns a free loopback port no earlier call returned.
func probePort() (int, error) {
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		handedOut.Lock()
		fresh := !handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if fresh {
			return port, nil
		}
	}
	return 0, errors.New("no loopback port left that was not handed out already")
}

// Endpoint is the client endpoint in etcdctl's --endpoints form.
func (s *Server) Endpoint() string { return fmt.Sprintf("127.0.0.1:%d", s.clientPort) }

func (s *Server) clientURL() string {
	if s.opts.tls != nil || s.opts.autoTLS {
		return "https://" + s.Endpoint()
	}
	return "http://" + s.Endpoint()
}

func (s *Server) peerURL() string {
	if s.opts.peerTLS != nil || s.opts.peerAutoTLS {
		return fmt.Sprintf("https://127.0.0.1:%d", s.peerPort)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", s.peerPort)
}

// Args are the flags both etcd and concord are started with.
func (s *Server) args() []string {
	args := []string{
		"--name", s.opts.name,
		"--data-dir", s.dataDir,
		"--listen-client-urls", s.clientURL(),
		"--advertise-client-urls", s.clientURL(),
		"--listen-peer-urls", s.peerURL(),
		"--initial-advertise-peer-urls", s.peerURL(),
		"--initial-cluster", s.opts.name + "=" + s.peerURL(),
	}
	switch {
	case s.opts.discovered:
		args = args[:len(args)-2]
	case s.opts.initialCluster != "":
		args[len(args)-1] = s.opts.initialCluster
	}
	args = append(args, tlsArgs("--", s.opts.tls, s.opts.clientCertAuth, s.opts.autoTLS)...)
	args = append(args, tlsArgs("--peer-", s.opts.peerTLS, s.opts.peerClientCertAuth, s.opts.peerAutoTLS)...)
	if f := leanHTTP2Flag(); s.impl == concordImpl && f != "" {
		args = append(args, f)
	}
	return append(args, s.opts.extra...)
}

// start runs one incarnation and waits for readiness.
func (s *Server) start() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return errors.New("server already running")
	}
	s.gen++
	fmt.Fprintf(s.log, "=== %s incarnation %d: %s %s\n", s.impl.name, s.gen, s.impl.bin, strings.Join(s.args(), " "))
	cmd := exec.Command(s.impl.bin, s.args()...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = launcher.SysProcAttr()
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	// The reaper is owned by the Server: Stop/Kill wait for it through done.
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(s.log, "=== %s incarnation exited: %v\n", s.impl.name, err)
		close(done)
	}()
	return s.waitReady(done)
}

// waitReady polls GET /health until it answers 200, the process exits, or readyTimeout passes.
func (s *Server) waitReady(done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var tlsCfg *tls.Config
	if s.opts.autoTLS {
		tlsCfg = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // a self-signed certificate
	}
	if s.opts.tls != nil {
		var err error
		// A certificate always: a server that does not ask for one
		// ignores it.
		if tlsCfg, err = s.opts.tls.ClientConfig(true); err != nil {
			return err
		}
		if c := s.opts.readyCert; c[0] != "" {
			cert, err := tls.LoadX509KeyPair(c[0], c[1])
			if err != nil {
				return err
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
		}
	}
	return readyErr(healthwait.WaitTLS(ctx, s.clientURL(), tlsCfg, done, pollInterval), s.impl.name, s.clientURL())
}

// readyErr words a healthwait.Wait error for a test's output.
func readyErr(err error, name, url string) error {
	switch {
	case errors.Is(err, healthwait.ErrExited):
		return fmt.Errorf("%w: %s exited before it was ready", errNotReady, name)
	case errors.Is(err, healthwait.ErrTimeout):
		return fmt.Errorf("%w: no 200 from %s/health within %v", errNotReady, url, readyTimeout)
	default:
		return err
	}
}

// signal sends sig to the running process and waits up to timeout for it to exit. It reports
// whether the process exited in time; with no process running it reports true.
func (s *Server) signal(sig syscall.Signal, timeout time.Duration) bool {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return true
	}
	_ = cmd.Process.Signal(sig) // fails only when the process is already gone
	select {
	case <-done:
	case <-time.After(timeout):
		return false
	}
	s.mu.Lock()
	if s.cmd == cmd {
		s.cmd, s.done = nil, nil
	}
	s.mu.Unlock()
	return true
}

// Stop stops the server gracefully (SIGTERM) and waits for it; a server that does not stop in
// time is killed and the test fails.
func (s *Server) Stop() {
	s.t.Helper()
	if !s.signal(syscall.SIGTERM, stopTimeout) {
		s.Kill()
		s.t.Fatalf("%s did not stop within %v of SIGTERM", s.impl.name, stopTimeout)
	}
}

// Kill kills the server (SIGKILL) and waits for it. Idempotent.
func (s *Server) Kill() {
	if !s.signal(syscall.SIGKILL, stopTimeout) {
		s.t.Errorf("%s did not exit within %v of SIGKILL", s.impl.name, stopTimeout)
	}
}

// Restart starts a stopped or killed server again on the same data directory and ports, and
// waits until it is ready. A running server is killed first.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("restart %s: %v", s.impl.name, err)
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a process's stdout and stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail returns at most n trailing bytes.
func (b *syncBuffer) Tail(n int) string {
	s := b.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// httpGet returns the status and body of a GET of url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := httpDo(t, req)
	return resp.StatusCode, body
}

// httpDo sends req with the default client and returns the response with
// its body, read and closed.
func httpDo(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

// pid is the process id of the running incarnation; the test fails if none runs.
func (s *Server) pid() int {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		s.t.Fatalf("%s is not running", s.impl.name)
	}
	return s.cmd.Process.Pid
}
