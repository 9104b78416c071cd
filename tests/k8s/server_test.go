package k8s

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/concord-kv/concord/internal/healthwait"
	"github.com/concord-kv/concord/internal/launcher"
)

const (
	// readyTimeout bounds how long a server may take to answer GET /health with 200; generous
	// because other packages may be compiling on the same two cores.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds a graceful stop before the process is killed.
	stopTimeout = 10 * time.Second
	// startAttempts is how often a start is retried when it lost a port race.
	startAttempts = 4
	// logTail is how much of a server's output a failing test prints.
	logTail = 16 << 10
)

// progressNotifyInterval is the period of progress notifications every target is started with:
// a second, as k8s's ProgressNotify and WatchDispatchBookmarkEvents tests configure etcd; watches
// that do not ask for progress notifications get none, so the other cases do not see them.
const progressNotifyInterval = "1s"

// startSingle is a target's start for a one-process server (etcd, concord all-in-one).
func startSingle(t *testing.T, im *impl) []string {
	t.Helper()
	return []string{startServer(t, im, "--watch-progress-notify-interval="+progressNotifyInterval).clientURL}
}

// startSplit is the split target's start: every service of compose.yaml (three consensus
// members, two watch fan-outs, two lease services, two gateways) as concord processes on
// loopback, started by internal/launcher as `concord cluster` and the chaos tests start them.
// Kubernetes talks to both gateways, as kube-apiserver is given every etcd member
// (--etcd-servers): clientv3 sends its calls to them in turn, so a write through one gateway
// is read or watched through the other. The progress notification interval reaches the watch
// fan-outs (the processes that send them) through the environment, which every process reads,
// so that compose.yaml's commands stay as they are.
func startSplit(t *testing.T, im *impl) []string {
	t.Helper()
	if im.err != nil {
		t.Fatalf("%s: %v", im.name, im.err)
	}
	env := append(launcher.DefaultEnv(), "CONCORD_WATCH_PROGRESS_NOTIFY_INTERVAL="+progressNotifyInterval)
	for attempt := 1; ; attempt++ {
		dir := t.TempDir()
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*readyTimeout)
		lc, err := launcher.Start(ctx, launcher.Config{
			ComposeFile:  filepath.Join(moduleRoot, "compose.yaml"),
			Binary:       im.bin,
			Dir:          dir,
			Env:          env,
			ReadyTimeout: readyTimeout,
		})
		cancel()
		if err == nil {
			t.Logf("split topology up in %v", time.Since(t0).Round(time.Millisecond))
			t.Cleanup(func() {
				lc.Stop()
				if t.Failed() {
					for _, s := range lc.Services() {
						t.Logf("%s output (last %d bytes):\n%s", s.Name, logTail, lastBytes(lc.LogTail(s.Name), logTail))
					}
				}
			})
			var urls []string
			for _, name := range lc.ByRole("gateway") {
				gw, err := lc.Service(name)
				if err != nil {
					t.Fatal(err)
				}
				urls = append(urls, gw.ClientURL)
			}
			return urls
		}
		// launcher.Start stopped what it started; the services' logs are in dir. Another
		// process may have taken a port between the launcher's probe and a service's bind.
		logs := splitLogs(dir)
		if attempt == startAttempts || !strings.Contains(logs, "address already in use") {
			t.Logf("split topology output:\n%s", lastBytes(logs, 4*logTail))
			t.Fatalf("start the split topology: %v", err)
		}
	}
}

// splitLogs returns every service's log file in dir, one after the other.
func splitLogs(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log")) // the pattern is valid
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(&b, "=== %s: %v\n", f, err)
			continue
		}
		b.Write(data)
	}
	return b.String()
}

// lastBytes returns the last n bytes of s.
func lastBytes(s string, n int) string { return s[max(0, len(s)-n):] }

// server is one etcd or concord process on loopback ports, stopped by the test's cleanup.
type server struct {
	im        *impl
	clientURL string
	log       *launcher.TailBuffer // the last logTail bytes of its output
	cmd       *exec.Cmd
	done      chan struct{} // closed once the process has been reaped
}

// startServer starts im with etcd's flags for a one-member cluster on free loopback ports and a
// temporary data directory, plus extra, and waits until GET /health answers 200.
func startServer(t *testing.T, im *impl, extra ...string) *server {
	t.Helper()
	if im.err != nil {
		t.Fatalf("%s: %v", im.name, im.err)
	}
	dataDir := t.TempDir()
	for attempt := 1; ; attempt++ {
		s, err := tryStart(im, dataDir, extra)
		if err == nil {
			t.Cleanup(func() {
				s.stop()
				if t.Failed() {
					t.Logf("%s output (last %d bytes):\n%s", im.name, logTail, s.log.String())
				}
			})
			return s
		}
		if s != nil {
			s.stop()
		}
		// Another process may have taken a port between our probe and the server's bind.
		if attempt == startAttempts || s == nil || !strings.Contains(s.log.String(), "address already in use") {
			if s != nil {
				t.Logf("%s output:\n%s", im.name, s.log.String())
			}
			t.Fatalf("start %s: %v", im.name, err)
		}
	}
}

func tryStart(im *impl, dataDir string, extra []string) (*server, error) {
	cport, err := freePort()
	if err != nil {
		return nil, err
	}
	pport, err := freePort()
	if err != nil {
		return nil, err
	}
	curl := fmt.Sprintf("http://127.0.0.1:%d", cport)
	purl := fmt.Sprintf("http://127.0.0.1:%d", pport)
	args := append([]string{
		"--name", "k8s",
		"--data-dir", dataDir,
		"--listen-client-urls", curl,
		"--advertise-client-urls", curl,
		"--listen-peer-urls", purl,
		"--initial-advertise-peer-urls", purl,
		"--initial-cluster", "k8s=" + purl,
	}, extra...)
	s := &server{im: im, clientURL: curl, log: launcher.NewTailBuffer(logTail), done: make(chan struct{})}
	s.cmd = exec.Command(im.bin, args...)
	s.cmd.Env = launcher.DefaultEnv()
	s.cmd.SysProcAttr = launcher.SysProcAttr()
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	// The reaper is owned by the server: stop waits for it through done.
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := healthwait.Wait(ctx, curl, s.done, 20*time.Millisecond); err != nil {
		return s, fmt.Errorf("%s not ready at %s: %w", im.name, curl, err)
	}
	return s, nil
}

// stop ends the process (SIGTERM, then SIGKILL after stopTimeout) and waits until it is reaped.
// It may be called more than once.
func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM) // fails only when the process is gone already
	select {
	case <-s.done:
		return
	case <-time.After(stopTimeout):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// handedOut holds every port freePort returned in this test binary: the kernel may give a
// just-closed probe's port to the next probe, and a client and a peer listener told to bind the
// same port make a start fail for no fault of the server.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort returns a free loopback port that no earlier call returned.
func freePort() (int, error) {
	for range 1000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
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
