package compare

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/concord-kv/concord/internal/healthwait"
	"github.com/concord-kv/concord/internal/launcher"
)

// Sentinel errors.
var (
	ErrNotReady = errors.New("server did not become ready")
	ErrExited   = errors.New("server process exited")
	ErrBuild    = errors.New("build failed")
)

const (
	startAttempts = 4
	pollInterval  = 20 * time.Millisecond
)

// ServerConfig starts one etcd or concord process with etcd's flags on
// loopback ports.
type ServerConfig struct {
	Impl    string   // label: "etcd" or "concord"
	Bin     string   // the binary
	DataDir string   // created if missing
	LogPath string   // the process's stdout and stderr; default DataDir+".log"
	Extra   []string // more flags, the same for both implementations
	// Args, when set, are the process's whole argument list and ClientURL
	// where it serves /health: the ports are the caller's (a generated
	// topology), not probed here, and Extra is ignored.
	Args      []string
	ClientURL string
	// ReadyTimeout bounds the wait for GET /health = 200; default 60s.
	ReadyTimeout time.Duration
	// StopTimeout bounds a graceful stop before SIGKILL; default 30s.
	StopTimeout time.Duration
}

// SetDefaults fills zero fields.
func (c *ServerConfig) SetDefaults() {
	if c.LogPath == "" {
		c.LogPath = strings.TrimRight(c.DataDir, "/") + ".log"
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = time.Minute
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 30 * time.Second
	}
}

// Validate checks the configuration.
func (c ServerConfig) Validate() error {
	if c.Impl == "" || c.Bin == "" || c.DataDir == "" {
		return errors.New("server config needs Impl, Bin and DataDir")
	}
	if c.Args != nil && !strings.HasPrefix(c.ClientURL, "http://") {
		return errors.New("server config with Args needs an http:// ClientURL")
	}
	return nil
}

// Server is one running server process. Its goroutine (the reaper) is
// owned by the Server and ends when the process exits; Stop waits for it.
type Server struct {
	cfg        ServerConfig
	clientPort int
	peerPort   int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been reaped
	log  *os.File
	werr error // what Wait returned
}

// StartServer starts the process and waits until it is ready.
func StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.DataDir), 0o755); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	var err error
	for range startAttempts {
		if s.clientPort, s.peerPort, err = freePorts(); err != nil {
			return nil, err
		}
		if err = s.start(ctx); err == nil {
			return s, nil
		}
		// Another process may have taken a port between the probe and the bind.
		if !strings.Contains(s.LogTail(8<<10), "address already in use") {
			break
		}
	}
	return nil, err
}

// LaunchServer starts a process of a generated topology (cfg.Args set)
// without waiting for it to be ready: members of a new raft cluster become
// ready only together. WaitReady waits.
func LaunchServer(cfg ServerConfig) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Args == nil {
		return nil, errors.New("LaunchServer needs ServerConfig.Args")
	}
	if err := os.MkdirAll(filepath.Dir(cfg.DataDir), 0o755); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	if err := s.launch(); err != nil {
		return nil, err
	}
	return s, nil
}

// WaitReady waits until the process answers GET /health with 200.
func (s *Server) WaitReady(ctx context.Context) error {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return fmt.Errorf("%w: %s", ErrExited, s.cfg.Impl)
	}
	return s.waitReady(ctx, done)
}

func freePorts() (int, int, error) {
	l1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer l1.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer l2.Close()
	return l1.Addr().(*net.TCPAddr).Port, l2.Addr().(*net.TCPAddr).Port, nil
}

// Endpoint is the client endpoint, host:port.
func (s *Server) Endpoint() string { return strings.TrimPrefix(s.clientURL(), "http://") }

// Impl is the implementation label.
func (s *Server) Impl() string { return s.cfg.Impl }

func (s *Server) clientURL() string {
	if s.cfg.ClientURL != "" {
		return s.cfg.ClientURL
	}
	return fmt.Sprintf("http://127.0.0.1:%d", s.clientPort)
}

func (s *Server) peerURL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.peerPort) }

// Args are the flags the process runs with: etcd's names, understood by
// both implementations.
func (s *Server) Args() []string {
	if s.cfg.Args != nil {
		return s.cfg.Args
	}
	args := []string{
		"--name", "bench",
		"--data-dir", s.cfg.DataDir,
		"--listen-client-urls", s.clientURL(),
		"--advertise-client-urls", s.clientURL(),
		"--listen-peer-urls", s.peerURL(),
		"--initial-advertise-peer-urls", s.peerURL(),
		"--initial-cluster", "bench=" + s.peerURL(),
	}
	return append(args, s.cfg.Extra...)
}

func (s *Server) start(ctx context.Context) error {
	if err := s.launch(); err != nil {
		return err
	}
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if err := s.waitReady(ctx, done); err != nil {
		s.kill()
		return err
	}
	return nil
}

// launch starts the process and its reaper.
func (s *Server) launch() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return errors.New("server already running")
	}
	log, err := os.OpenFile(s.cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	fmt.Fprintf(log, "=== %s %s\n", s.cfg.Bin, strings.Join(s.Args(), " "))
	// Not CommandContext: the process outlives the start context; Stop ends it.
	cmd := exec.Command(s.cfg.Bin, s.Args()...)
	// No ETCD_/ETCDCTL_/CONCORD_ variables: both servers would read them as
	// flags. Pdeathsig: an interrupted comparison leaves no server running.
	cmd.Env = launcher.DefaultEnv()
	cmd.SysProcAttr = launcher.SysProcAttr()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		s.mu.Unlock()
		return fmt.Errorf("starting %s: %w", s.cfg.Impl, err)
	}
	done := make(chan struct{})
	s.cmd, s.done, s.log, s.werr = cmd, done, log, nil
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(log, "=== exited: %v\n", err)
		s.mu.Lock()
		s.werr = err
		s.mu.Unlock()
		log.Close()
		close(done)
	}()
	return nil
}

func (s *Server) waitReady(ctx context.Context, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	switch err := healthwait.Wait(ctx, s.clientURL(), done, pollInterval); {
	case errors.Is(err, healthwait.ErrExited):
		return fmt.Errorf("%w: %s exited before it was ready; log %s:\n%s", ErrNotReady, s.cfg.Impl, s.cfg.LogPath, s.LogTail(4<<10))
	case errors.Is(err, healthwait.ErrTimeout):
		return fmt.Errorf("%w: no 200 from %s/health within %v", ErrNotReady, s.clientURL(), s.cfg.ReadyTimeout)
	default:
		return err
	}
}

// PID is the process id, or 0 when no process runs.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	select {
	case <-s.done:
		return 0
	default:
		return s.cmd.Process.Pid
	}
}

// Alive reports whether the process is running.
func (s *Server) Alive() bool { return s.PID() != 0 }

// Restart starts the process again on the same data directory and ports.
func (s *Server) Restart(ctx context.Context) error {
	s.kill()
	return s.start(ctx)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill() { s.kill() }

// Relaunch starts the process again, on the same data directory and
// ports, after Kill, without waiting for it to be ready.
func (s *Server) Relaunch() error {
	s.kill()
	return s.launch()
}

// Stop stops the process with SIGTERM, then SIGKILL after StopTimeout, and
// waits for it. Idempotent.
func (s *Server) Stop() error {
	if !s.signal(syscall.SIGTERM, s.cfg.StopTimeout) {
		s.kill()
		return fmt.Errorf("%s did not stop within %v of SIGTERM", s.cfg.Impl, s.cfg.StopTimeout)
	}
	return nil
}

func (s *Server) kill() { s.signal(syscall.SIGKILL, time.Minute) }

// signal sends sig and waits up to timeout for the exit; it reports whether
// the process is gone.
func (s *Server) signal(sig syscall.Signal, timeout time.Duration) bool {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return true
	}
	_ = cmd.Process.Signal(sig) // fails only when it is already gone
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		return false
	}
	s.mu.Lock()
	if s.cmd == cmd {
		s.cmd, s.done = nil, nil
	}
	s.mu.Unlock()
	return true
}

// LogTail returns up to n trailing bytes of the process log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.cfg.LogPath)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Usage is a sample of the process's resources from /proc.
type Usage struct {
	RSS  int64         // resident set, bytes (VmRSS)
	Peak int64         // peak resident set, bytes (VmHWM)
	CPU  time.Duration // user + system time so far
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// Usage samples the process now.
func (s *Server) Usage() (Usage, error) {
	pid := s.PID()
	if pid == 0 {
		return Usage{}, fmt.Errorf("%w: %s", ErrExited, s.cfg.Impl)
	}
	return ProcUsage(pid)
}

// ProcUsage reads /proc/PID/status and /proc/PID/stat.
func ProcUsage(pid int) (Usage, error) {
	var u Usage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch name {
		case "VmRSS":
			u.RSS = parseKB(val)
		case "VmHWM":
			u.Peak = parseKB(val)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	cpu, err := parseStatCPU(string(stat))
	if err != nil {
		return u, err
	}
	u.CPU = cpu
	return u, nil
}

func parseKB(v string) int64 {
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n * 1024
}

// parseStatCPU returns utime+stime from a /proc/PID/stat line. The command
// name (field 2) may contain spaces and parentheses, so fields are counted
// after its last ')'.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// After the name: state(3) ppid(4) ... utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat line %q", stat)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat line: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}
