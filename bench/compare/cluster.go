package compare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is the running processes of one generated topology: an etcd
// cluster or concord's split topology. It owns its processes; Stop ends
// them all.
type Cluster struct {
	Impl  string
	Specs []ProcSpec
	Procs []*Server // Procs[i] runs Specs[i]
}

const clusterStartAttempts = 3

// StartCluster generates a topology with gen (fresh ports each attempt),
// starts every process, and waits until all answer /health. A port taken
// between the probe and the bind makes it try again with new ports.
func StartCluster(ctx context.Context, impl, bin, dir string, gen func(PortFunc) ([]ProcSpec, error)) (*Cluster, error) {
	var err error
	for range clusterStartAttempts {
		var c *Cluster
		if c, err = startCluster(ctx, impl, bin, dir, gen); err == nil {
			return c, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

func startCluster(ctx context.Context, impl, bin, dir string, gen func(PortFunc) ([]ProcSpec, error)) (*Cluster, error) {
	port, release := ProbePorts()
	specs, err := gen(port)
	release()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Impl: impl, Specs: specs}
	for _, ps := range specs {
		dd := ps.DataDir
		if dd == "" {
			dd = filepath.Join(dir, ps.Name)
		}
		s, err := LaunchServer(ServerConfig{Impl: impl + "/" + ps.Name, Bin: bin, DataDir: dd,
			LogPath: filepath.Join(dir, ps.Name+".log"), Args: ps.Args, ClientURL: ps.ClientURL})
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Procs = append(c.Procs, s)
	}
	if err := c.WaitReady(ctx); err != nil {
		tails := c.logTails(600)
		c.Stop()
		return nil, fmt.Errorf("%w\n%s", err, tails)
	}
	return c, nil
}

// WaitReady waits until every running process answers /health.
func (c *Cluster) WaitReady(ctx context.Context) error {
	errs := make([]error, len(c.Procs))
	var wg sync.WaitGroup
	for i, s := range c.Procs {
		wg.Go(func() { errs[i] = s.WaitReady(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *Cluster) logTails(n int) string {
	var b strings.Builder
	for i, s := range c.Procs {
		if t := strings.TrimSpace(s.LogTail(n)); t != "" {
			fmt.Fprintf(&b, "--- %s:\n%s\n", c.Specs[i].Name, t)
		}
	}
	return b.String()
}

// LogTail returns the log tails of the processes that have exited.
func (c *Cluster) LogTail(n int) string {
	var b strings.Builder
	for i, s := range c.Procs {
		if !s.Alive() {
			fmt.Fprintf(&b, "--- %s: %s\n", c.Specs[i].Name, strings.TrimSpace(s.LogTail(n)))
		}
	}
	return b.String()
}

// Stop stops every process, services before consensus members. Idempotent.
func (c *Cluster) Stop() error {
	var errs []error
	for i := len(c.Procs) - 1; i >= 0; i-- {
		errs = append(errs, c.Procs[i].Stop())
	}
	return errors.Join(errs...)
}

// Alive reports whether every process runs.
func (c *Cluster) Alive() bool {
	for _, s := range c.Procs {
		if !s.Alive() {
			return false
		}
	}
	return true
}

// Usage sums the resources of every running process: the CPU a topology
// spends includes all of its services.
func (c *Cluster) Usage() (Usage, error) {
	var sum Usage
	for _, s := range c.Procs {
		u, err := s.Usage()
		if err != nil {
			return sum, err
		}
		sum.RSS += u.RSS
		sum.Peak += u.Peak
		sum.CPU += u.CPU
	}
	return sum, nil
}

// RoleCPU is the CPU time so far of the running processes by role, and of
// the benchmark client itself under "client".
func (c *Cluster) RoleCPU() map[string]time.Duration {
	out := map[string]time.Duration{}
	for i, s := range c.Procs {
		if u, err := s.Usage(); err == nil {
			out[c.Specs[i].Role] += u.CPU
		}
	}
	if u, err := ProcUsage(os.Getpid()); err == nil {
		out[RoleClient] = u.CPU
	}
	return out
}

// Endpoints returns the client endpoints of the processes with role, in
// topology order.
func (c *Cluster) Endpoints(role string) []string {
	var out []string
	for _, ps := range c.Specs {
		if ps.Role == role {
			out = append(out, ps.Endpoint())
		}
	}
	return out
}

// members returns the indexes of the raft members (etcd or consensus).
func (c *Cluster) members() []int {
	var out []int
	for i, ps := range c.Specs {
		if ps.Role == RoleEtcd || ps.Role == RoleConsensus {
			out = append(out, i)
		}
	}
	return out
}

// Leader returns the index in Procs of the raft leader, asking each live
// member for its status (etcd's Maintenance.Status, which concord's
// consensus members serve too).
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	var errs []error
	for _, i := range c.members() {
		if !c.Procs[i].Alive() {
			continue
		}
		st, err := memberStatus(ctx, c.Specs[i].Endpoint())
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Specs[i].Name, err))
			continue
		}
		if st.Leader != 0 && st.Header.GetMemberId() == st.Leader {
			return i, nil
		}
	}
	return -1, errors.Join(append(errs, errNoLeader)...)
}

func memberStatus(ctx context.Context, ep string) (*clientv3.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return cli.Status(ctx, ep)
}

// WaitLeader polls until a member reports itself leader.
func (c *Cluster) WaitLeader(ctx context.Context, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		i, err := c.Leader(ctx)
		if err == nil {
			return i, nil
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return -1, fmt.Errorf("no leader within %v: %w", timeout, errors.Join(err, ctx.Err()))
		}
	}
}

// System is one measured system: a label, the client endpoints the
// workloads use and the cluster whose processes serve them (and whose CPU
// is counted).
type System struct {
	Label     string
	Endpoints []string
	Cluster   *Cluster
}

// endpoints returns the first max endpoints (all when max is 0).
func (s System) endpoints(max int) []string {
	if max > 0 && max < len(s.Endpoints) {
		return s.Endpoints[:max]
	}
	return s.Endpoints
}
