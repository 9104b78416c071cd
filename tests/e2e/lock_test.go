package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/concord-kv/concord/internal/launcher"
)

// Locks: `etcdctl lock`, clientv3/concurrency's Mutex and STM, and the v3lock gRPC service, each
// run against etcd and concord with the same assertions. Keys carry lease IDs, so these tests
// assert on structure ("<name>/<lease hex>", create-revision order, revisions) rather than on
// golden transcripts.

// recipeWait bounds how long a test waits for something that should happen promptly.
const recipeWait = 20 * time.Second

// ctlProc is an etcdctl process running in the background (lock, elect), owned by the test:
// t.Cleanup kills it and waits for it.
type ctlProc struct {
	t    *testing.T
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer // stdout
	errb *syncBuffer // stderr
	done chan struct{}
	err  error // cmd.Wait's result, read after done
}

func startCtlProc(t *testing.T, endpoint string, args ...string) *ctlProc {
	t.Helper()
	requireBinary(t, etcdctlBin)
	full := append([]string{"--endpoints=" + endpoint, "--dial-timeout=10s", "--command-timeout=30s"}, args...)
	b := &ctlProc{t: t, args: args, out: &syncBuffer{}, errb: &syncBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(etcdctlBin.bin, full...)
	b.cmd.Env = cleanEnv()
	b.cmd.SysProcAttr = launcher.SysProcAttr()
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.errb
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start etcdctl %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
		if t.Failed() {
			t.Logf("etcdctl %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), b.out, b.errb.Tail(logTail))
		}
	})
	return b
}

// waitOutput waits until stdout matches re and returns the match's submatches.
func (b *ctlProc) waitOutput(re *regexp.Regexp) []string {
	b.t.Helper()
	deadline := time.Now().Add(recipeWait)
	for {
		if m := re.FindStringSubmatch(b.out.String()); m != nil {
			return m
		}
		select {
		case <-b.done:
			if m := re.FindStringSubmatch(b.out.String()); m != nil {
				return m
			}
			b.t.Fatalf("etcdctl %s exited (%v) without printing %v\nstdout: %s\nstderr: %s", strings.Join(b.args, " "), b.err, re, b.out, b.errb)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("etcdctl %s printed no %v within %v\nstdout: %s", strings.Join(b.args, " "), re, recipeWait, b.out)
		}
	}
}

// exited reports whether the process has exited.
func (b *ctlProc) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit status.
func (b *ctlProc) wait() int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(recipeWait):
		b.t.Fatalf("etcdctl %s did not exit within %v", strings.Join(b.args, " "), recipeWait)
	}
	var ee *exec.ExitError
	switch {
	case b.err == nil:
		return 0
	case errors.As(b.err, &ee):
		return ee.ExitCode()
	}
	b.t.Fatalf("etcdctl %s: %v", strings.Join(b.args, " "), b.err)
	return -1
}

// terminate sends SIGTERM (etcdctl unlocks or resigns on it) and returns the exit status.
func (b *ctlProc) terminate() int {
	b.t.Helper()
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	return b.wait()
}

// prefixKeys returns the keys under pfx in create-revision order (the lock/election queue).
func prefixKeys(ctx context.Context, t *testing.T, c *clientv3.Client, pfx string) []string {
	t.Helper()
	resp := must(c.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)))(t)
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	return keys
}

// waitQueue polls until the keys under pfx number n, and returns them.
func waitQueue(ctx context.Context, t *testing.T, c *clientv3.Client, pfx string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(recipeWait)
	for {
		keys := prefixKeys(ctx, t, c, pfx)
		if len(keys) == n {
			return keys
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys under %q = %q, want %d", pfx, keys, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// `etcdctl lock NAME` prints the lock key and holds it until SIGTERM; a second `etcdctl lock NAME
// -- command` queues behind it and runs the command, with ETCD_LOCK_KEY and ETCD_LOCK_REV, only
// once the first exits; the command's exit status is etcdctl's.
func TestCtlLock(t *testing.T) {
	reHeld := regexp.MustCompile(`^(mylock/[0-9a-f]+)\n\n$`)
	reRan := regexp.MustCompile(`got (mylock/[0-9a-f]+) (\d+)\n`)
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)

		first := startCtlProc(t, s.Endpoint(), "lock", "mylock")
		held := first.waitOutput(reHeld)[1]
		if keys := prefixKeys(ctx, t, c, "mylock/"); !slices.Equal(keys, []string{held}) {
			t.Fatalf("lock keys %q, want the printed key %q", keys, held)
		}

		second := startCtlProc(t, s.Endpoint(), "lock", "mylock", "--", "sh", "-c", `echo "got $ETCD_LOCK_KEY $ETCD_LOCK_REV"`)
		queue := waitQueue(ctx, t, c, "mylock/", 2)
		if queue[0] != held {
			t.Fatalf("queue %q: the holder %q must be first", queue, held)
		}
		if second.exited() || second.out.String() != "" {
			t.Fatalf("second lock ran while the first held it: %q", second.out)
		}
		// Revisions so far: 2 = first's key, 3 = second's key. The first's unlock is 4, and the
		// second reads its key at 4 once it owns the lock (ETCD_LOCK_REV).
		if code := first.terminate(); code != 0 {
			t.Fatalf("first lock exited %d", code)
		}
		if code := second.wait(); code != 0 {
			t.Fatalf("second lock exited %d: %s", code, second.errb)
		}
		m := reRan.FindStringSubmatch(second.out.String())
		if m == nil || m[1] != queue[1] || m[2] != "4" {
			t.Fatalf("second lock's command printed %q, want key %s and rev 4", second.out, queue[1])
		}
		if keys := prefixKeys(ctx, t, c, "mylock/"); len(keys) != 0 {
			t.Fatalf("lock keys after both exited: %q", keys)
		}
		if rev := currentRev(ctx, t, c); rev != 5 {
			t.Fatalf("revision %d after two locks and unlocks, want 5", rev)
		}

		// The command's exit status is etcdctl's, and the lock is released anyway.
		r := runCtl(t, s.Endpoint(), "", "lock", "mylock", "--", "sh", "-c", "exit 3")
		if r.exit != 3 {
			t.Fatalf("lock with a failing command exited %d, want 3 (stderr %s)", r.exit, r.stderr)
		}
		if keys := prefixKeys(ctx, t, c, "mylock/"); len(keys) != 0 {
			t.Fatalf("lock keys after a failed command: %q", keys)
		}
	})
}

// Ten goroutines in two sessions increment a counter under a concurrency.Mutex with a
// read-then-write that only a working lock keeps from losing updates; every write is also
// guarded by the mutex's IsOwner compare.
func TestMutexNoLostUpdates(t *testing.T) {
	const workers, rounds = 10, 4
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		type session struct {
			local sync.Mutex // concurrency.Mutex excludes sessions, not goroutines of one session
			s     *concurrency.Session
		}
		var sessions [2]*session
		for i := range sessions {
			sess, err := concurrency.NewSession(newClient(t, s), concurrency.WithTTL(10))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sess.Close() })
			sessions[i] = &session{s: sess}
		}
		var wg sync.WaitGroup
		errc := make(chan error, workers)
		for w := range workers {
			sess := sessions[w%2]
			wg.Go(func() {
				c := sess.s.Client()
				for range rounds {
					if err := func() error {
						sess.local.Lock()
						defer sess.local.Unlock()
						m := concurrency.NewMutex(sess.s, "/counter-lock")
						if err := m.Lock(ctx); err != nil {
							return fmt.Errorf("lock: %w", err)
						}
						defer m.Unlock(ctx)
						get, err := c.Get(ctx, "/counter")
						if err != nil {
							return err
						}
						n := 0
						if len(get.Kvs) == 1 {
							fmt.Sscan(string(get.Kvs[0].Value), &n)
						}
						txn, err := c.Txn(ctx).If(m.IsOwner()).Then(clientv3.OpPut("/counter", fmt.Sprint(n+1))).Commit()
						if err != nil {
							return err
						}
						if !txn.Succeeded {
							return errors.New("the mutex's IsOwner compare failed while holding it")
						}
						return nil
					}(); err != nil {
						errc <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Error(err)
		}
		c := sessions[0].s.Client()
		get := must(c.Get(ctx, "/counter"))(t)
		if len(get.Kvs) != 1 || string(get.Kvs[0].Value) != fmt.Sprint(workers*rounds) {
			t.Fatalf("counter = %v, want %d", get.Kvs, workers*rounds)
		}
		if keys := prefixKeys(ctx, t, c, "/counter-lock/"); len(keys) != 0 {
			t.Fatalf("lock keys left: %q", keys)
		}
		// TryLock fails while the other session holds the lock.
		m0 := concurrency.NewMutex(sessions[0].s, "/try")
		if err := m0.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		m1 := concurrency.NewMutex(sessions[1].s, "/try")
		if err := m1.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("TryLock while held: %v, want ErrLocked", err)
		}
		if err := m0.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m1.TryLock(ctx); err != nil {
			t.Fatalf("TryLock when free: %v", err)
		}
	})
}

// Concurrent transfers between accounts through concurrency.NewSTM keep the total constant under
// serializable and repeatable-read isolation.
func TestSTMTransfers(t *testing.T) {
	const accounts, initial, workers, transfers = 5, 100, 6, 8
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		for _, iso := range []struct {
			name string
			iso  concurrency.Isolation
		}{
			{"serializable", concurrency.Serializable},
			{"serializable-snapshot", concurrency.SerializableSnapshot},
			{"repeatable-reads", concurrency.RepeatableReads},
		} {
			key := func(i int) string { return fmt.Sprintf("/bank/%s/%d", iso.name, i) }
			for i := range accounts {
				must(c.Put(ctx, key(i), fmt.Sprint(initial)))(t)
			}
			var wg sync.WaitGroup
			errc := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for n := range transfers {
						from, to := (w+n)%accounts, (w+2*n+1)%accounts
						if from == to {
							to = (to + 1) % accounts
						}
						_, err := concurrency.NewSTM(c, func(stm concurrency.STM) error {
							var a, b int
							fmt.Sscan(stm.Get(key(from)), &a)
							fmt.Sscan(stm.Get(key(to)), &b)
							amount := (a / 3) + 1
							stm.Put(key(from), fmt.Sprint(a-amount))
							stm.Put(key(to), fmt.Sprint(b+amount))
							return nil
						}, concurrency.WithIsolation(iso.iso), concurrency.WithAbortContext(ctx))
						if err != nil {
							errc <- fmt.Errorf("%s: %w", iso.name, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Error(err)
			}
			sum := 0
			get := must(c.Get(ctx, fmt.Sprintf("/bank/%s/", iso.name), clientv3.WithPrefix()))(t)
			for _, kv := range get.Kvs {
				var v int
				fmt.Sscan(string(kv.Value), &v)
				sum += v
			}
			if len(get.Kvs) != accounts || sum != accounts*initial {
				t.Errorf("%s: %d accounts summing to %d, want %d summing to %d", iso.name, len(get.Kvs), sum, accounts, accounts*initial)
			}
		}
	})
}

// dialGRPC opens a plain gRPC connection to s, closed when the test ends.
func dialGRPC(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// wantStatus fails unless err is a gRPC status with code and message.
func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || st.Message() != msg {
		t.Errorf("%s: error %v, want code %v %q", what, err, code, msg)
	}
}

// The v3lock gRPC service: Lock writes "<name>/<lease hex>" with the caller's lease and excludes a
// clientv3 Mutex on the same name, in both directions; Unlock releases; etcd's errors.
func TestLockService(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		lc := v3lockpb.NewLockClient(dialGRPC(t, s))
		lease := must(c.Grant(ctx, 30))(t)

		lr := must(lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("svc"), Lease: int64(lease.ID)}))(t)
		if want := fmt.Sprintf("svc/%x", lease.ID); string(lr.Key) != want {
			t.Fatalf("lock key %q, want %q", lr.Key, want)
		}
		get := must(c.Get(ctx, string(lr.Key)))(t)
		if len(get.Kvs) != 1 || get.Kvs[0].Lease != int64(lease.ID) || get.Kvs[0].CreateRevision != lr.Header.Revision {
			t.Fatalf("lock key %v, header %v", get.Kvs, lr.Header)
		}
		if lr.Header.ClusterId == 0 || lr.Header.MemberId == 0 || lr.Header.RaftTerm == 0 {
			t.Errorf("lock header %v is incomplete", lr.Header)
		}

		// A clientv3 Mutex on the same name waits for the service's lock.
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(10))
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		m := concurrency.NewMutex(sess, "svc")
		if err := m.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("Mutex.TryLock while the service holds the lock: %v", err)
		}
		locked := make(chan error, 1)
		go func() { locked <- m.Lock(ctx) }()
		waitQueue(ctx, t, c, "svc/", 2)
		select {
		case err := <-locked:
			t.Fatalf("Mutex.Lock returned while the service holds the lock: %v", err)
		default:
		}
		must(lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: lr.Key}))(t)
		select {
		case err := <-locked:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(recipeWait):
			t.Fatal("Mutex.Lock did not acquire after Unlock")
		}

		// The other way round: the service's Lock waits for the Mutex.
		lease2 := must(c.Grant(ctx, 30))(t)
		type lockResult struct {
			r   *v3lockpb.LockResponse
			err error
		}
		svcLocked := make(chan lockResult, 1)
		go func() {
			r, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("svc"), Lease: int64(lease2.ID)})
			svcLocked <- lockResult{r, err}
		}()
		queue := waitQueue(ctx, t, c, "svc/", 2)
		select {
		case r := <-svcLocked:
			t.Fatalf("service Lock returned while a Mutex holds the lock: %v %v", r.r, r.err)
		default:
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-svcLocked:
			if r.err != nil || string(r.r.Key) != queue[1] {
				t.Fatalf("service Lock after the Mutex's unlock: %v %v, want key %s", r.r, r.err, queue[1])
			}
			// Acquired after waiting: the header is the read of the key after the unlock.
			if r.r.Header.Revision != currentRev(ctx, t, c) {
				t.Errorf("service Lock header %v, current revision %d", r.r.Header, currentRev(ctx, t, c))
			}
		case <-time.After(recipeWait):
			t.Fatal("service Lock did not acquire after the Mutex's unlock")
		}

		// A caller that gives up waiting leaves no key behind.
		lease3 := must(c.Grant(ctx, 30))(t)
		cctx, cancel := context.WithCancel(ctx)
		gaveUp := make(chan error, 1)
		go func() {
			_, err := lc.Lock(cctx, &v3lockpb.LockRequest{Name: []byte("svc"), Lease: int64(lease3.ID)})
			gaveUp <- err
		}()
		waitQueue(ctx, t, c, "svc/", 2)
		cancel()
		if err := <-gaveUp; status.Code(err) != codes.Canceled {
			t.Errorf("canceled Lock: %v", err)
		}
		waitQueue(ctx, t, c, "svc/", 1)

		_, err = lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("svc"), Lease: 0x1234567})
		wantStatus(t, "Lock with an unknown lease", err, codes.Unknown, "etcdserver: requested lease not found")
		_, err = lc.Unlock(ctx, &v3lockpb.UnlockRequest{})
		wantStatus(t, "Unlock without a key", err, codes.Unknown, "etcdserver: key is not provided")

		// Without a lease the server grants one of 60 s (concurrency's default session TTL).
		nl := must(lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("nolease")}))(t)
		get = must(c.Get(ctx, string(nl.Key)))(t)
		if len(get.Kvs) != 1 || get.Kvs[0].Lease == 0 || string(nl.Key) != fmt.Sprintf("nolease/%x", get.Kvs[0].Lease) {
			t.Fatalf("lock without a lease: key %q, kvs %v", nl.Key, get.Kvs)
		}
		if ttl := must(c.TimeToLive(ctx, clientv3.LeaseID(get.Kvs[0].Lease)))(t); ttl.GrantedTTL != 60 {
			t.Errorf("granted TTL of the implicit lease %d, want 60", ttl.GrantedTTL)
		}
	})
}
