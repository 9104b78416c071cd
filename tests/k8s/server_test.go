package k8s

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
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
