// Package launcher starts the services of compose.yaml as local concord
// processes on loopback, so that compose.yaml stays the single description of
// the split topology: `concord cluster` (task cluster) and the end-to-end
// chaos tests run exactly the services docker compose would.
//
// Each service's command is taken from compose.yaml (loaded with the
// compose-spec loader) and rewritten for one machine: every host:port that
// names a service (or 0.0.0.0 inside a service) becomes 127.0.0.1 and a local
// port, picked free or, when asked, the port compose publishes on the host;
// --data-dir moves under the launcher's directory, one per service.
//
// Invariants: a process the launcher started is always reaped by it; Stop
// leaves no process running (and, on Linux, children die with the process
// that launched them, so a crashed test leaves no orphan); Kill is SIGKILL, as
// a crash is.
package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/concord-kv/concord/internal/healthwait"
)

// Errors of the launcher.
var (
	ErrUnknownService = errors.New("no such service")
	ErrNotReady       = errors.New("service did not become ready")
	ErrInvalid        = errors.New("invalid launcher configuration")
)

// Config says which topology to start and where.
type Config struct {
	// ComposeFile is the path of compose.yaml.
	ComposeFile string
	// Binary is the concord binary every service runs.
	Binary string
	// Dir holds each service's data directory and log file (<service>.log).
	Dir string
	// PublishedPorts: use the host ports compose.yaml publishes (gateway-1 on
	// 127.0.0.1:2379 ...) instead of free ones, for a cluster people use.
	PublishedPorts bool
	// Env is the environment of every process; nil means the launcher's own
	// without ETCD_*, ETCDCTL_* and CONCORD_* variables (they set flags).
	Env []string
	// ReadyTimeout bounds how long a service may take to answer GET /health.
	ReadyTimeout time.Duration
	// Output, when set, also receives every line each process prints.
	Output func(service string) io.Writer
	Logger *slog.Logger
}

// SetDefaults fills in the zero fields that have defaults.
func (c *Config) SetDefaults() {
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Env == nil {
		c.Env = DefaultEnv()
	}
}

// DefaultEnv is the launcher's own environment without the ETCD_*,
// ETCDCTL_* and CONCORD_* variables, which would set every process's flags.
func DefaultEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "ETCD_") || strings.HasPrefix(kv, "ETCDCTL_") || strings.HasPrefix(kv, "CONCORD_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// Validate reports the first field that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.ComposeFile == "":
		return fmt.Errorf("%w: no compose file", ErrInvalid)
	case c.Binary == "":
		return fmt.Errorf("%w: no concord binary", ErrInvalid)
	case c.Dir == "":
		return fmt.Errorf("%w: no directory", ErrInvalid)
	}
	return nil
}

// Service is one compose service as it runs locally.
type Service struct {
	Name string
	// Role is the concord subcommand: consensus, watchfanout, leasesvc or gateway.
	Role string
	// Args are the subcommand and its flags, rewritten for loopback.
	Args []string
	// ClientURL is the first --listen-client-urls, rewritten: where GET /health answers.
	ClientURL string
	// DependsOn are the services that must be started first.
	DependsOn []string
	// Healthy are the DependsOn with condition service_healthy: they must
	// also answer GET /health first.
	Healthy []string
}

// Endpoint is the client address in etcdctl's --endpoints form (host:port).
func (s Service) Endpoint() string {
	u, err := url.Parse(s.ClientURL)
	if err != nil {
		return s.ClientURL
	}
	return u.Host
}

// Load reads compose.yaml and rewrites every service for loopback.
func Load(ctx context.Context, cfg Config) ([]Service, error) {
	path, err := filepath.Abs(cfg.ComposeFile)
	if err != nil {
		return nil, err
	}
	project, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  filepath.Dir(path),
		ConfigFiles: []types.ConfigFile{{Filename: path}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("concord", true) })
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", cfg.ComposeFile, err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range project.Services {
			if !yield(n) {
				return
			}
		}
	})

	// Every service:port any command mentions (0.0.0.0:port inside a service
	// is that service's own port) gets one local port.
	ports := map[string]int{}
	published := map[string]int{}
	for _, n := range names {
		svc := project.Services[n]
		for _, p := range svc.Ports {
			hp, err := strconv.Atoi(p.Published)
			if err == nil && hp > 0 {
				published[n+":"+strconv.Itoa(int(p.Target))] = hp
			}
		}
		for _, a := range svc.Command {
			for _, hp := range hostPorts(a, n, project.Services) {
				ports[hp] = 0
			}
		}
	}
	if err := allocate(ports, published, cfg.PublishedPorts); err != nil {
		return nil, err
	}

	var out []Service
	for _, n := range names {
		svc := project.Services[n]
		if len(svc.Command) == 0 {
			return nil, fmt.Errorf("%w: service %s has no command", ErrInvalid, n)
		}
		s := Service{Name: n, Role: svc.Command[0]}
		for dep, d := range svc.DependsOn {
			s.DependsOn = append(s.DependsOn, dep)
			if d.Condition == types.ServiceConditionHealthy {
				s.Healthy = append(s.Healthy, dep)
			}
		}
		sort.Strings(s.DependsOn)
		sort.Strings(s.Healthy)
		for i, a := range svc.Command {
			if i > 0 && (svc.Command[i-1] == "--data-dir") {
				a = filepath.Join(cfg.Dir, n)
			} else if v, ok := strings.CutPrefix(a, "--data-dir="); ok && v != "" {
				a = "--data-dir=" + filepath.Join(cfg.Dir, n)
			} else {
				a = rewrite(a, n, project.Services, ports)
			}
			s.Args = append(s.Args, a)
			if i > 0 && svc.Command[i-1] == "--listen-client-urls" {
				s.ClientURL, _, _ = strings.Cut(a, ",")
			}
		}
		if s.ClientURL == "" {
			return nil, fmt.Errorf("%w: service %s has no --listen-client-urls", ErrInvalid, n)
		}
		out = append(out, s)
	}
	return out, nil
}

// hostPortRE finds host:port in a flag value (URLs, lists, name=URL pairs).
var hostPortRE = regexp.MustCompile(`([A-Za-z0-9_.-]+):([0-9]+)`)

// hostPorts returns the service:port keys arg mentions, as seen from self.
func hostPorts(arg, self string, services types.Services) []string {
	var out []string
	for _, m := range hostPortRE.FindAllStringSubmatch(arg, -1) {
		if k := portKey(m[1], m[2], self, services); k != "" {
			out = append(out, k)
		}
	}
	return out
}

func portKey(host, port, self string, services types.Services) string {
	if host == "0.0.0.0" {
		return self + ":" + port
	}
	if _, ok := services[host]; ok {
		return host + ":" + port
	}
	return ""
}

func rewrite(arg, self string, services types.Services, ports map[string]int) string {
	return hostPortRE.ReplaceAllStringFunc(arg, func(m string) string {
		sub := hostPortRE.FindStringSubmatch(m)
		k := portKey(sub[1], sub[2], self, services)
		if k == "" {
			return m
		}
		return "127.0.0.1:" + strconv.Itoa(ports[k])
	})
}

// allocate picks a local port for every key: the published one when asked,
// else one the kernel says is free (all listeners are held until every port
// is picked, so no two keys get the same port).
func allocate(ports, published map[string]int, usePublished bool) error {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range ports {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		if p, ok := published[k]; ok && usePublished {
			ports[k] = p
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("picking a port for %s: %w", k, err)
		}
		held = append(held, l)
		ports[k] = l.Addr().(*net.TCPAddr).Port
	}
	return nil
}

// Cluster is a started topology.
type Cluster struct {
	cfg      Config
	services []Service
	byName   map[string]*process

	mu     sync.Mutex
	closed bool
}

// process is one service and its current incarnation.
type process struct {
	svc Service
	log *TailBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been reaped
	gen  int
}

// Start loads compose.yaml and starts every service, dependencies first,
// waiting until each answers GET /health. On error everything started is
// stopped.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	services, err := Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, services: services, byName: map[string]*process{}}
	for _, s := range services {
		c.byName[s.Name] = &process{svc: s, log: NewTailBuffer(64 << 10)}
	}
	if err := c.StartAll(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// Services returns every service, sorted by name.
func (c *Cluster) Services() []Service { return slices.Clone(c.services) }

// Service returns one service.
func (c *Cluster) Service(name string) (Service, error) {
	p, ok := c.byName[name]
	if !ok {
		return Service{}, fmt.Errorf("%w: %s", ErrUnknownService, name)
	}
	return p.svc, nil
}

// ByRole returns the names of the services running the subcommand role.
func (c *Cluster) ByRole(role string) []string {
	var out []string
	for _, s := range c.services {
		if s.Role == role {
			out = append(out, s.Name)
		}
	}
	return out
}

// Endpoints returns the client endpoints (host:port) of the services of role.
func (c *Cluster) Endpoints(role string) []string {
	var out []string
	for _, n := range c.ByRole(role) {
		out = append(out, c.byName[n].svc.Endpoint())
	}
	return out
}

// Running reports whether the service's process is alive.
func (c *Cluster) Running(name string) bool {
	p, ok := c.byName[name]
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// LogTail returns the last output of the service (every incarnation).
func (c *Cluster) LogTail(name string) string {
	p, ok := c.byName[name]
	if !ok {
		return ""
	}
	return p.log.String()
}

// levels orders the services for starting: each level depends only on
// earlier ones, and the services of one level start together (consensus
// members must: none is healthy before a quorum runs).
func (c *Cluster) levels() [][]string {
	level := map[string]int{}
	var depth func(string, int) int
	depth = func(n string, guard int) int {
		if l, ok := level[n]; ok {
			return l
		}
		d := 0
		if guard < len(c.services) {
			for _, dep := range c.byName[n].svc.DependsOn {
				if _, ok := c.byName[dep]; ok {
					d = max(d, depth(dep, guard+1)+1)
				}
			}
		}
		level[n] = d
		return d
	}
	var out [][]string
	for _, s := range c.services {
		d := depth(s.Name, 0)
		for len(out) <= d {
			out = append(out, nil)
		}
		out[d] = append(out[d], s.Name)
	}
	return out
}

// StartAll starts every service that is not running, in dependency order
// with compose's semantics (a dependency must have started; with condition
// service_healthy, it must also be ready), and waits until every one is
// ready. Starting without waiting for readiness lets services whose
// dependencies need only be started come up side by side (a standby lease
// service is ready at once, but consensus members are not until a quorum
// runs).
func (c *Cluster) StartAll(ctx context.Context) error {
	healthy := map[string]bool{}
	for _, s := range c.services {
		for _, d := range s.Healthy {
			healthy[d] = true
		}
	}
	waits := map[string]<-chan struct{}{}
	ready := func(names []string) error {
		var errs []error
		for _, n := range names {
			done, ok := waits[n]
			if !ok {
				continue
			}
			delete(waits, n)
			if err := c.waitReady(ctx, c.byName[n], done); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	for _, lvl := range c.levels() {
		for _, n := range lvl {
			p := c.byName[n]
			if err := ready(p.svc.Healthy); err != nil {
				return err
			}
			done, err := c.spawn(p)
			if err != nil {
				return err
			}
			if done != nil {
				waits[n] = done
			}
		}
		var needed []string
		for _, n := range lvl {
			if healthy[n] {
				needed = append(needed, n)
			}
		}
		if err := ready(needed); err != nil {
			return err
		}
	}
	return ready(slices.Sorted(func(yield func(string) bool) {
		for n := range waits {
			if !yield(n) {
				return
			}
		}
	}))
}

// Kill SIGKILLs the service's process and waits until it is gone. Killing a
// service that is not running does nothing.
func (c *Cluster) Kill(name string) error {
	p, ok := c.byName[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownService, name)
	}
	p.signal(syscall.SIGKILL, 0)
	return nil
}

// KillAll SIGKILLs every process at once.
func (c *Cluster) KillAll() {
	var wg sync.WaitGroup
	for _, p := range c.byName {
		wg.Go(func() { p.signal(syscall.SIGKILL, 0) })
	}
	wg.Wait()
}

// Restart kills the service if it runs, starts it again with the same
// flags and data, and waits until it is ready.
func (c *Cluster) Restart(ctx context.Context, name string) error {
	p, ok := c.byName[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownService, name)
	}
	p.signal(syscall.SIGKILL, 0)
	done, err := c.spawn(p)
	if err != nil || done == nil {
		return err
	}
	return c.waitReady(ctx, p, done)
}

// Stop stops every process: SIGTERM, then SIGKILL for any still running
// after a grace period. Idempotent; the Cluster cannot be started again.
func (c *Cluster) Stop() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range c.byName {
		wg.Go(func() { p.signal(syscall.SIGTERM, 10*time.Second) })
	}
	wg.Wait()
}

var errClosed = errors.New("launcher: cluster stopped")

// spawn starts the service's process unless it runs; done is closed when
// the process has been reaped (nil if it was already running).
func (c *Cluster) spawn(p *process) (done <-chan struct{}, err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClosed
	}
	p.mu.Lock()
	c.mu.Unlock()
	if p.cmd != nil {
		p.mu.Unlock()
		return nil, nil
	}
	p.gen++
	logFile, err := os.OpenFile(filepath.Join(c.cfg.Dir, p.svc.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	w := io.MultiWriter(logFile, p.log)
	if c.cfg.Output != nil {
		w = io.MultiWriter(w, c.cfg.Output(p.svc.Name))
	}
	fmt.Fprintf(w, "=== %s incarnation %d: concord %s\n", p.svc.Name, p.gen, strings.Join(p.svc.Args, " "))
	cmd := exec.Command(c.cfg.Binary, p.svc.Args...)
	cmd.Env = c.cfg.Env
	cmd.Dir = c.cfg.Dir
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = SysProcAttr()
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", p.svc.Name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.done = cmd, exited
	p.mu.Unlock()
	c.cfg.Logger.Info("started", "service", p.svc.Name, "pid", cmd.Process.Pid, "endpoint", p.svc.Endpoint())
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(w, "=== %s incarnation exited: %v\n", p.svc.Name, err)
		logFile.Close()
		p.mu.Lock()
		if p.cmd == cmd {
			p.cmd = nil
		}
		p.mu.Unlock()
		close(exited)
	}()
	return exited, nil
}

func (c *Cluster) waitReady(ctx context.Context, p *process, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ReadyTimeout)
	defer cancel()
	switch err := healthwait.Wait(ctx, p.svc.ClientURL, done, 20*time.Millisecond); {
	case errors.Is(err, healthwait.ErrExited):
		return fmt.Errorf("%w: %s exited before it was ready", ErrNotReady, p.svc.Name)
	case errors.Is(err, healthwait.ErrTimeout):
		return fmt.Errorf("%w: no 200 from %s/health (%s) within %v", ErrNotReady, p.svc.ClientURL, p.svc.Name, c.cfg.ReadyTimeout)
	default:
		return err
	}
}

// signal sends sig to the current incarnation and waits until it is
// reaped; after grace (if > 0) it sends SIGKILL.
func (p *process) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-done:
			return
		case <-time.After(grace):
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	<-done
}

// TailBuffer keeps the last max bytes written to it; writes and reads may
// come from different goroutines (a process's output and a test reading it).
type TailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

// NewTailBuffer returns a TailBuffer that keeps the last max bytes.
func NewTailBuffer(max int) *TailBuffer { return &TailBuffer{max: max} }

func (b *TailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

// String returns the bytes kept.
func (b *TailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
