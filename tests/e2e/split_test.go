package e2e

// The split topology (issue 5): consensus, a watch fan-out, a lease service
// and two gateways as separate concord processes on loopback, driven with
// the real etcdctl and clientv3 through the gateways.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/internal/healthwait"
	"github.com/concord-kv/concord/internal/launcher"
	"github.com/concord-kv/concord/internal/tlstest"
)

// proc is one concord process of the split topology. Unlike Server it
// takes the subcommand's own flags.
type proc struct {
	t    *testing.T
	name string
	args []string
	port int // client port; ready when GET /health on it answers 200
	log  *syncBuffer
	// tls: the client URL is https:// and requires tls's client
	// certificate (startTLSProc).
	tls *tlstest.Files

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) url() string {
	if p.tls != nil {
		return fmt.Sprintf("https://127.0.0.1:%d", p.port)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", p.port)
}
func (p *proc) endpoint() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

// startProc starts `concord <args>` and waits until it is ready; it is killed
// when the test ends.
func startProc(t *testing.T, name string, port int, args ...string) *proc {
	t.Helper()
	return startTLSProc(t, name, port, nil, args...)
}

// startTLSProc is startProc for a process whose client URL is https://
// and requires a client certificate signed by certs's CA (args must say
// so); readiness is polled with certs's client certificate.
func startTLSProc(t *testing.T, name string, port int, certs *tlstest.Files, args ...string) *proc {
	t.Helper()
	requireBinary(t, concordImpl)
	if f := leanHTTP2Flag(); f != "" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		// After the subcommand, which every split role takes first.
		args = append([]string{args[0], f}, args[1:]...)
	}
	p := &proc{t: t, name: name, args: args, port: port, log: &syncBuffer{}, tls: certs}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s output (last %d bytes):\n%s", name, logTail, p.log.Tail(logTail))
		}
	})
	if err := p.start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func (p *proc) start() error {
	fmt.Fprintf(p.log, "=== %s: concord %s\n", p.name, strings.Join(p.args, " "))
	cmd := exec.Command(concordImpl.bin, p.args...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = launcher.SysProcAttr()
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(p.log, "=== %s exited: %v\n", p.name, err)
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var tlsCfg *tls.Config
	if p.tls != nil {
		var err error
		if tlsCfg, err = p.tls.ClientConfig(true); err != nil {
			return err
		}
	}
	return readyErr(healthwait.WaitTLS(ctx, p.url(), tlsCfg, done, pollInterval), p.name, p.url())
}

// kill SIGKILLs the process and waits for it. Idempotent.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		p.t.Errorf("%s did not exit within %v of SIGKILL", p.name, stopTimeout)
	}
}

// restart starts the killed process again with the same flags.
func (p *proc) restart() {
	p.t.Helper()
	p.kill()
	if err := p.start(); err != nil {
		p.t.Fatalf("restart %s: %v", p.name, err)
	}
}

// splitCluster is one consensus member, one watch fan-out, one lease
// service and two gateways.
type splitCluster struct {
	consensus, watchfanout, leasesvc *proc
	gateways                         [2]*proc
}

func freePort(t *testing.T) int {
	t.Helper()
	a, _, err := freePorts()
	if err != nil {
		t.Fatalf("pick ports: %v", err)
	}
	return a
}

// startSingleConsensus starts a one-member `concord consensus` with its
// NATS server and extra flags; it returns the process, its client URL and
// its NATS address.
func startSingleConsensus(t *testing.T, extra ...string) (p *proc, clientURL, natsAddr string) {
	t.Helper()
	cport, pport, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	natsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	clientURL = fmt.Sprintf("http://127.0.0.1:%d", cport)
	purl := fmt.Sprintf("http://127.0.0.1:%d", pport)
	p = startProc(t, "consensus", cport, append([]string{"consensus", "--name", "c1", "--data-dir", t.TempDir(),
		"--listen-client-urls", clientURL, "--listen-peer-urls", purl, "--initial-cluster", "c1=" + purl,
		"--nats-listen-addr", natsAddr}, extra...)...)
	return p, clientURL, natsAddr
}

func startSplit(t *testing.T) *splitCluster {
	t.Helper()
	return startSplitWith(t, nil)
}

// startSplitWith is startSplit with consensusArgs added to the consensus
// member's flags and every extra to every process's.
func startSplitWith(t *testing.T, consensusArgs []string, extra ...string) *splitCluster {
	t.Helper()
	c := &splitCluster{}
	var curl, natsAddr string
	c.consensus, curl, natsAddr = startSingleConsensus(t, append(slices.Clone(consensusArgs), extra...)...)
	wport, lport := freePort(t), freePort(t)
	c.watchfanout = startProc(t, "watchfanout", wport, append([]string{"watchfanout", "--name", "wf1",
		"--consensus-endpoints", curl, "--nats-url", "nats://" + natsAddr,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport)}, extra...)...)
	c.leasesvc = startProc(t, "leasesvc", lport, append([]string{"leasesvc", "--name", "ls1",
		"--consensus-endpoints", curl, "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport)}, extra...)...)
	for i := range c.gateways {
		gport := freePort(t)
		c.gateways[i] = startProc(t, fmt.Sprintf("gateway-%d", i+1), gport, append([]string{"gateway",
			"--consensus-endpoints", curl, "--watchfanout-endpoints", c.watchfanout.url(),
			"--leasesvc-endpoints", c.leasesvc.url(), "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport)}, extra...)...)
	}
	return c
}

func splitClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New(%v): %v", endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestSplitTopology(t *testing.T) {
	c := startSplit(t)
	g1, g2 := c.gateways[0].endpoint(), c.gateways[1].endpoint()

	t.Run("etcdctl", func(t *testing.T) {
		mustCtl(t, g1, "put", "foo", "bar")
		if got := mustCtl(t, g2, "get", "foo"); got != "foo\nbar\n" {
			t.Fatalf("get through the other gateway = %q", got)
		}
		r := runCtl(t, g2, "value(\"foo\") = \"bar\"\n\nput foo baz\n\nput foo no\n\n", "txn")
		if r.exit != 0 || r.stdout != "SUCCESS\n\nOK\n" {
			t.Fatalf("txn: exit %d stdout %q stderr %q", r.exit, r.stdout, r.stderr)
		}
		if got := mustCtl(t, g1, "get", "foo", "--print-value-only"); got != "baz\n" {
			t.Fatalf("after txn foo = %q", got)
		}

		// A backup through a gateway is the consensus member's stream,
		// relayed: etcd's framing (512·n bytes plus a SHA-256 digest).
		backup := filepath.Join(t.TempDir(), "backup.db")
		if out := mustCtl(t, g2, "snapshot", "save", backup); !strings.Contains(out, "Snapshot saved at") {
			t.Fatalf("snapshot save through a gateway printed %q", out)
		}
		if fi, err := os.Stat(backup); err != nil || fi.Size()%512 != 32 {
			t.Fatalf("backup through a gateway: %v, %v", fi, err)
		}

		grant := mustCtl(t, g1, "lease", "grant", "60")
		var id string
		if _, err := fmt.Sscanf(grant, "lease %s granted", &id); err != nil {
			t.Fatalf("lease grant output %q: %v", grant, err)
		}
		mustCtl(t, g2, "put", "--lease="+id, "leased", "v")
		if got := mustCtl(t, g2, "lease", "timetolive", id, "--keys"); !strings.Contains(got, "attached keys([leased])") {
			t.Fatalf("timetolive = %q", got)
		}
		if got := mustCtl(t, g1, "lease", "keep-alive", "--once", id); !strings.Contains(got, "keepalived with TTL(60)") {
			t.Fatalf("keep-alive = %q", got)
		}
		mustCtl(t, g2, "lease", "revoke", id)
		if got := mustCtl(t, g1, "get", "leased"); got != "" {
			t.Fatalf("key of a revoked lease still there: %q", got)
		}

		w := startBgCtl(t, g2, false, "watch", "wkey")
		// etcdctl prints nothing on create; write until the watch shows it.
		deadline := time.Now().Add(waitTimeout)
		for !strings.Contains(w.stdout.String(), "v1\n") {
			if time.Now().After(deadline) {
				t.Fatalf("watch through gateway-2 saw nothing: %q %q", w.stdout.String(), w.stderr.String())
			}
			mustCtl(t, g1, "put", "wkey", "v1")
			// The watch may not be registered yet: look for a second,
			// then write again.
			for wait := time.Now().Add(time.Second); time.Now().Before(wait) && !strings.Contains(w.stdout.String(), "v1\n"); {
				time.Sleep(pollInterval)
			}
		}
		if got := w.stdout.String(); !strings.HasPrefix(got, "PUT\nwkey\nv1\n") {
			t.Fatalf("watch output %q", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		aio := startServer(t, concordImpl, serverOptions{})
		want := clientErrors(t, splitClient(t, aio.Endpoint()))
		got := clientErrors(t, splitClient(t, g1))
		for name, w := range want {
			if w == nil {
				t.Errorf("%s: all-in-one returned no error", name)
				continue
			}
			if g := got[name]; g == nil || g.Error() != w.Error() {
				t.Errorf("%s: split gateway error %v, all-in-one %v", name, g, w)
			}
		}
	})

	t.Run("gateway-killed", func(t *testing.T) {
		cli := splitClient(t, g1, g2)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, "gk/before", "1"); err != nil {
			t.Fatal(err)
		}
		c.gateways[0].kill()
		retried := 0
		for i := range 20 {
			key := fmt.Sprintf("gk/%02d", i)
			// The first calls after the kill may still pick the dead
			// connection; clientv3 then moves to the live endpoint.
			for {
				octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := cli.Put(octx, key, "v")
				ocancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("put %s never succeeded after the kill: %v", key, err)
				}
				retried++
			}
		}
		resp, err := cli.Get(ctx, "gk/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 21 {
			t.Fatalf("after the kill: count %v err %v", resp, err)
		}
		t.Logf("20 puts after SIGKILL of gateway-1; %d attempts retried", retried)
	})

	t.Run("watchfanout-restart", func(t *testing.T) {
		cli := splitClient(t, g2)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		start := must(cli.Get(ctx, "any"))(t).Header.Revision
		wch := cli.Watch(clientv3.WithRequireLeader(ctx), "wr/", clientv3.WithPrefix(), clientv3.WithRev(start+1))
		put := func(i int) {
			if _, err := cli.Put(ctx, fmt.Sprintf("wr/%02d", i), "v"); err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
		}
		var seen []string
		var revs []int64
		recv := func(n int) {
			for len(seen) < n {
				select {
				case wr, ok := <-wch:
					if !ok {
						t.Fatalf("watch channel closed after %d events", len(seen))
					}
					if err := wr.Err(); err != nil {
						t.Fatalf("watch error: %v", err)
					}
					for _, ev := range wr.Events {
						seen = append(seen, string(ev.Kv.Key))
						revs = append(revs, ev.Kv.ModRevision)
					}
				case <-ctx.Done():
					t.Fatalf("got %d of %d events: %v", len(seen), n, seen)
				}
			}
		}
		for i := range 5 {
			put(i)
		}
		recv(5)
		c.watchfanout.kill()
		for i := 5; i < 10; i++ {
			put(i)
		}
		c.watchfanout.restart()
		for i := 10; i < 15; i++ {
			put(i)
		}
		recv(15)
		if len(seen) != 15 {
			t.Fatalf("got %d events, want 15: %v", len(seen), seen)
		}
		for i, k := range seen {
			if want := fmt.Sprintf("wr/%02d", i); k != want || (i > 0 && revs[i] != revs[i-1]+1) {
				t.Fatalf("event %d = %s at rev %d, want %s (revs %v)", i, k, revs[i], want, revs)
			}
		}
	})

	// SIGTERM stops a gateway within its 5 s graceful shutdown plus the
	// closing of what is left, also while a client keeps a watch open that
	// never sends (the relayed fan-out stream used to keep the process
	// alive until the client went away).
	t.Run("gateway-stops-with-open-watch", func(t *testing.T) {
		cli := splitClient(t, g2)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		wch := cli.Watch(ctx, "open/")
		must(cli.Put(ctx, "open/", "v"))(t)
		select {
		case <-wch:
		case <-ctx.Done():
			t.Fatal("the watch saw nothing")
		}
		if took, ok := c.gateways[1].terminate(15 * time.Second); !ok {
			t.Fatalf("gateway-2 still running 15 s after SIGTERM with a watch open")
		} else {
			t.Logf("gateway-2 stopped %v after SIGTERM with a watch open", took.Round(time.Millisecond))
		}
	})
}

// terminate sends SIGTERM and waits up to timeout for the process to exit;
// it reports how long that took and whether it did.
func (p *proc) terminate(timeout time.Duration) (time.Duration, bool) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return 0, true
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		p.mu.Lock()
		p.cmd = nil
		p.mu.Unlock()
		return time.Since(start), true
	case <-time.After(timeout):
		return time.Since(start), false
	}
}

// clientErrors runs calls that fail and returns each error by name.
func clientErrors(t *testing.T, cli *clientv3.Client) map[string]error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]error{}
	rev := must(cli.Put(ctx, "e/k", "v"))(t).Header.Revision
	must(cli.Put(ctx, "e/k", "v2"))(t)
	must(cli.Compact(ctx, rev+1))(t)
	_, out["compacted"] = cli.Get(ctx, "e/k", clientv3.WithRev(rev))
	_, out["future-rev"] = cli.Get(ctx, "e/k", clientv3.WithRev(rev+1000))
	_, out["put-missing-lease"] = cli.Put(ctx, "e/l", "v", clientv3.WithLease(0x1234))
	_, out["revoke-missing-lease"] = cli.Revoke(ctx, 0x1234)
	_, out["keepalive-missing-lease"] = cli.KeepAliveOnce(ctx, 0x1234)
	_, out["empty-key"] = cli.Put(ctx, "", "v")
	ops := make([]clientv3.Op, 129)
	for i := range ops {
		ops[i] = clientv3.OpPut(fmt.Sprintf("e/t%d", i), "v")
	}
	_, out["too-many-ops"] = cli.Txn(ctx).Then(ops...).Commit()
	_, out["duplicate-key"] = cli.Txn(ctx).Then(clientv3.OpPut("e/d", "1"), clientv3.OpPut("e/d", "2")).Commit()
	id := must(cli.Grant(ctx, 60))(t).ID
	must(cli.Revoke(ctx, id))(t)
	_, out["revoke-twice"] = cli.Revoke(ctx, id)
	for _, e := range []struct {
		name string
		want error
	}{
		{"compacted", rpctypes.ErrCompacted}, {"future-rev", rpctypes.ErrFutureRev},
		{"put-missing-lease", rpctypes.ErrLeaseNotFound}, {"revoke-missing-lease", rpctypes.ErrLeaseNotFound},
		{"keepalive-missing-lease", rpctypes.ErrLeaseNotFound}, {"empty-key", rpctypes.ErrEmptyKey},
		{"too-many-ops", rpctypes.ErrTooManyOps}, {"duplicate-key", rpctypes.ErrDuplicateKey},
		{"revoke-twice", rpctypes.ErrLeaseNotFound},
	} {
		if !errors.Is(rpctypes.Error(out[e.name]), e.want) && !errors.Is(out[e.name], e.want) {
			t.Errorf("%s: got %v, want %v", e.name, out[e.name], e.want)
		}
	}
	return out
}

// TestSplitFailover runs two watch fan-outs and two lease services behind
// one gateway: killing the fan-out a watch uses moves it to the other
// without gap or duplicate, and killing the active lease service lets the
// standby take the lease authority over, after which keep-alives through
// the same gateway succeed again and the lease and its key survive.
func TestSplitFailover(t *testing.T) {
	_, curl, natsAddr := startSingleConsensus(t)
	var wfs, lss []*proc
	for i := 1; i <= 2; i++ {
		wport := freePort(t)
		wfs = append(wfs, startProc(t, fmt.Sprintf("watchfanout-%d", i), wport, "watchfanout",
			"--name", fmt.Sprintf("wf%d", i), "--consensus-endpoints", curl, "--nats-url", "nats://"+natsAddr,
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport)))
		lport := freePort(t)
		lss = append(lss, startProc(t, fmt.Sprintf("leasesvc-%d", i), lport, "leasesvc",
			"--name", fmt.Sprintf("ls%d", i), "--consensus-endpoints", curl,
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport)))
	}
	gport := freePort(t)
	gw := startProc(t, "gateway", gport, "gateway", "--consensus-endpoints", curl,
		"--watchfanout-endpoints", wfs[0].url()+","+wfs[1].url(),
		"--leasesvc-endpoints", lss[0].url()+","+lss[1].url(),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport))

	cli := splitClient(t, gw.endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// ls1 started first and holds the authority.
	lease := must(cli.Grant(ctx, 60))(t)
	must(cli.Put(ctx, "fo/leased", "v", clientv3.WithLease(lease.ID)))(t)

	start := must(cli.Get(ctx, "any"))(t).Header.Revision
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), "fw/", clientv3.WithPrefix(), clientv3.WithRev(start+1))
	var seen []string
	var revs []int64
	recv := func(n int) {
		t.Helper()
		for len(seen) < n {
			select {
			case wr, ok := <-wch:
				if !ok {
					t.Fatalf("watch channel closed after %d events", len(seen))
				}
				if err := wr.Err(); err != nil {
					t.Fatalf("watch error: %v", err)
				}
				for _, ev := range wr.Events {
					seen = append(seen, string(ev.Kv.Key))
					revs = append(revs, ev.Kv.ModRevision)
				}
			case <-ctx.Done():
				t.Fatalf("got %d of %d events: %v", len(seen), n, seen)
			}
		}
	}
	put := func(i int) {
		t.Helper()
		must(cli.Put(ctx, fmt.Sprintf("fw/%02d", i), "v"))(t)
	}
	for i := range 3 {
		put(i)
	}
	recv(3)
	wfs[0].kill()
	for i := 3; i < 8; i++ {
		put(i)
	}
	recv(8)
	for i, k := range seen {
		if want := fmt.Sprintf("fw/%02d", i); k != want || (i > 0 && revs[i] != revs[i-1]+1) {
			t.Fatalf("event %d = %s at rev %d, want %s (revs %v)", i, k, revs[i], want, revs)
		}
	}
	if len(seen) != 8 {
		t.Fatalf("got %d events, want 8: %v", len(seen), seen)
	}

	active := activeLeaseProc(ctx, t, lss, lease.ID)
	active.kill()
	killed := time.Now()
	resumed := waitKeepAlive(ctx, t, cli, lease.ID, 60, killed)
	t.Logf("keep-alive through the gateway answered %v after the active lease service was killed (target %v)",
		resumed.Round(time.Millisecond), leaseResumeTarget)
	if got := must(cli.Get(ctx, "fo/leased"))(t); got.Count != 1 {
		t.Fatalf("leased key lost over the takeover: %v", got.Kvs)
	}
}

// leaseResumeTarget is how soon after the active lease service dies
// keep-alives through a gateway should be answered again: about etcd's
// figure for a leader change. Tests fail only past a multiple of it (a
// loaded CI machine), and log the measured figure.
const leaseResumeTarget = 2500 * time.Millisecond

// activeLeaseProc returns the lease service that answers keep-alives of id
// directly (a standby answers "no leader").
func activeLeaseProc(ctx context.Context, t *testing.T, lss []*proc, id clientv3.LeaseID) *proc {
	t.Helper()
	deadline := time.Now().Add(4 * leaseResumeTarget)
	for time.Now().Before(deadline) {
		for _, p := range lss {
			cli := splitClient(t, p.endpoint())
			actx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := cli.KeepAliveOnce(actx, id)
			cancel()
			_ = cli.Close()
			if err == nil {
				return p
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no lease service answers keep-alives")
	return nil
}

// waitKeepAlive sends keep-alives of id through cli until one is answered
// and returns how long after since that was. It fails the test if the lease
// is reported gone or nothing is answered within 4x leaseResumeTarget.
func waitKeepAlive(ctx context.Context, t *testing.T, cli *clientv3.Client, id clientv3.LeaseID, ttl int64, since time.Time) time.Duration {
	t.Helper()
	deadline := since.Add(4 * leaseResumeTarget)
	for {
		actx, cancel := context.WithDeadline(ctx, deadline)
		r, err := cli.KeepAliveOnce(actx, id)
		cancel()
		switch {
		case err == nil:
			if r.TTL != ttl {
				t.Errorf("keep-alive after the takeover: TTL %d, want %d", r.TTL, ttl)
			}
			return time.Since(since)
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			t.Fatalf("lease %x gone %v after the active lease service was killed", id, time.Since(since))
		case !time.Now().Before(deadline) || ctx.Err() != nil:
			t.Fatalf("no keep-alive answered within %v of killing the active lease service: %v", 4*leaseResumeTarget, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSplitLeaseTakeoverTime kills the active lease service of two, three
// times, behind two gateways, and measures how long keep-alives through
// each gateway go unanswered; the killed one restarts as the standby. It
// also measures how soon a standby lease service is ready. Every lease
// survives every takeover.
func TestSplitLeaseTakeoverTime(t *testing.T) {
	_, curl, natsAddr := startSingleConsensus(t)
	wport := freePort(t)
	wf := startProc(t, "watchfanout", wport, "watchfanout", "--name", "wf1", "--consensus-endpoints", curl,
		"--nats-url", "nats://"+natsAddr, "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport))
	var lss []*proc
	for i := 1; i <= 2; i++ {
		lport := freePort(t)
		started := time.Now()
		lss = append(lss, startProc(t, fmt.Sprintf("leasesvc-%d", i), lport, "leasesvc",
			"--name", fmt.Sprintf("ls%d", i), "--consensus-endpoints", curl,
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport)))
		if i == 2 {
			ready := waitReadyz(t, lss[1], 4*leaseResumeTarget)
			t.Logf("standby lease service healthy %v and ready %v after its start",
				ready.health.Sub(started).Round(time.Millisecond), ready.ready.Sub(started).Round(time.Millisecond))
		}
	}
	var gws []*proc
	for i := 1; i <= 2; i++ {
		gport := freePort(t)
		gws = append(gws, startProc(t, fmt.Sprintf("gateway-%d", i), gport, "gateway", "--consensus-endpoints", curl,
			"--watchfanout-endpoints", wf.url(), "--leasesvc-endpoints", lss[0].url()+","+lss[1].url(),
			"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport)))
	}
	clis := []*clientv3.Client{splitClient(t, gws[0].endpoint()), splitClient(t, gws[1].endpoint())}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ttl = 10
	lease := must(clis[0].Grant(ctx, ttl))(t)
	must(clis[0].Put(ctx, "takeover/leased", "v", clientv3.WithLease(lease.ID)))(t)

	// A long-lived keep-alive stream (clientv3's KeepAlive) rides through
	// every takeover: the gateway holds its keep-alives until the new holder
	// answers, so the channel never closes.
	kactx, kacancel := context.WithCancel(ctx)
	kach, err := clis[1].KeepAlive(kactx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	var kaMu sync.Mutex
	var kaLast time.Time
	kaDone := make(chan struct{})
	go func() {
		defer close(kaDone)
		for range kach {
			kaMu.Lock()
			kaLast = time.Now()
			kaMu.Unlock()
		}
	}()
	defer func() { kacancel(); <-kaDone }()

	const reps = 3
	var worst time.Duration
	var lastKill time.Time
	for rep := range reps {
		for _, cli := range clis {
			must(cli.KeepAliveOnce(ctx, lease.ID))(t)
		}
		active := activeLeaseProc(ctx, t, lss, lease.ID)
		active.kill()
		killed := time.Now()
		lastKill = killed
		var wg sync.WaitGroup
		took := make([]time.Duration, len(clis))
		for i, cli := range clis {
			wg.Go(func() { took[i] = waitKeepAlive(ctx, t, cli, lease.ID, ttl, killed) })
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, d := range took {
			worst = max(worst, d)
			t.Logf("round %d: keep-alive through gateway-%d answered %v after killing %s", rep+1, i+1, d.Round(time.Millisecond), active.name)
		}
		if got := must(clis[1].Get(ctx, "takeover/leased"))(t); got.Count != 1 {
			t.Fatalf("round %d: leased key lost over the takeover", rep+1)
		}
		active.restart()
	}
	t.Logf("worst resume time over %d takeovers and 2 gateways: %v (target %v)", reps, worst.Round(time.Millisecond), leaseResumeTarget)
	// clientv3 renews every TTL/3; one renewal after the last takeover
	// shows the stream survived them all.
	deadline := lastKill.Add(ttl*time.Second/3 + 4*leaseResumeTarget)
	for {
		kaMu.Lock()
		last := kaLast
		kaMu.Unlock()
		select {
		case <-kaDone:
			t.Fatal("clientv3's keep-alive channel closed during the takeovers")
		default:
		}
		if last.After(lastKill) {
			t.Logf("clientv3 KeepAlive stream answered %v after the last kill, never closed", last.Sub(lastKill).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clientv3's keep-alive stream not answered within %v of the last kill", deadline.Sub(lastKill))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if worst > leaseResumeTarget {
		t.Logf("NOTE: above the target (a loaded machine?)")
	}
}

type readiness struct{ health, ready time.Time }

// waitReadyz polls p's /health and /readyz until both answer 200.
func waitReadyz(t *testing.T, p *proc, within time.Duration) readiness {
	t.Helper()
	var r readiness
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(within)
	for r.health.IsZero() || r.ready.IsZero() {
		for _, path := range []string{"/health", "/readyz"} {
			resp, err := client.Get(p.url() + path)
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				continue
			}
			if path == "/health" && r.health.IsZero() {
				r.health = time.Now()
			}
			if path == "/readyz" && r.ready.IsZero() {
				r.ready = time.Now()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy and ready within %v", p.name, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}
