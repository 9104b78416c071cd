package e2e

// The chaos suite (issue 5): compose.yaml's whole topology started as local
// processes by internal/launcher, concurrent clientv3 clients doing puts,
// linearizable gets, txns and watches through both gateways, while the
// nemesis SIGKILLs and restarts, one at a time, a consensus follower, the
// raft leader, a gateway, a watch fan-out and the active lease service.
// Afterwards every process is killed at once and restarted, and:
//   - the KV history (plus reads of every key after the restart) must be
//     linearizable against kvmodel, checked with porcupine;
//   - every watch stream must satisfy etcd's watch guarantees against the
//     final history (watchtest), across the reconnects clientv3 makes;
//   - every acknowledged write must be in the final history at its revision;
//   - the lease kept alive through it all must still exist with its key.
//
// The short run is part of `go test ./...`; CONCORD_SOAK=10m (task soak)
// repeats the nemesis schedule for that long. CONCORD_CHAOS_SEED replays a
// seed.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/internal/gobuild"
	"github.com/concord-kv/concord/internal/kvmodel"
	"github.com/concord-kv/concord/internal/launcher"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

const (
	chaosSoakEnv = "CONCORD_SOAK"
	chaosSeedEnv = "CONCORD_CHAOS_SEED"

	chaosWorkers  = 6
	chaosWatchers = 4
	chaosKeys     = 6
	chaosPrefix   = "chaos/"
	// chaosOpTimeout bounds one client call; a write that times out is
	// recorded with an unknown outcome.
	chaosOpTimeout = 3 * time.Second
	// chaosDown is how long a killed process stays down while traffic runs.
	chaosDown = 1500 * time.Millisecond
	// chaosUp is how long traffic runs between a restart and the next kill.
	chaosUp = 1500 * time.Millisecond
	// chaosProgress is how many operations must succeed after a restart
	// before the next kill, within chaosProgressWait.
	chaosProgress     = 30
	chaosProgressWait = 30 * time.Second
	// chaosLeaseTTL is the TTL of the lease kept alive through the run.
	chaosLeaseTTL = 10
	// chaosCheckTimeout bounds porcupine.
	chaosCheckTimeout = 3 * time.Minute
	// chaosWindow is how many operations porcupine checks at once.
	chaosWindow = 2000
)

// chaosRecorder collects the KV history for porcupine.
type chaosRecorder struct {
	t0      time.Time
	clients atomic.Int64

	mu  sync.Mutex
	ops []porcupine.Operation
	// acked maps the revision of every acknowledged write to it.
	acked                 map[int64]kvmodel.Input
	okOps, unknown, nfail int
}

func (r *chaosRecorder) now() int64 { return int64(time.Since(r.t0)) }

func (r *chaosRecorder) newClientID() int { return int(r.clients.Add(1) - 1) }

func (r *chaosRecorder) add(client int, in kvmodel.Input, call int64, out kvmodel.Output, ret int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	if out.Unknown {
		r.unknown++
		return
	}
	r.okOps++
	if in.Kind == kvmodel.Put || in.Kind == kvmodel.Txn && out.Succeeded {
		r.acked[out.Rev] = in
	}
}

func (r *chaosRecorder) failedRead() {
	r.mu.Lock()
	r.nfail++
	r.mu.Unlock()
}

func (r *chaosRecorder) succeeded() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.okOps
}

func chaosKey(k int) string { return fmt.Sprintf("%sk%d", chaosPrefix, k) }

// chaosWorker issues random gets, puts and txns on the modelled keys.
func chaosWorker(ctx context.Context, rec *chaosRecorder, cli *clientv3.Client, id int, rng *rand.Rand) {
	client := rec.newClientID()
	type seen struct {
		mod int64
		val string
	}
	last := map[int]seen{}
	for seq := 0; ctx.Err() == nil; seq++ {
		key := rng.IntN(chaosKeys)
		in := kvmodel.Input{Key: key, Value: fmt.Sprintf("w%d-%d", id, seq)}
		switch p := rng.IntN(100); {
		case p < 35:
			in.Kind = kvmodel.Get
		case p < 70:
			in.Kind = kvmodel.Put
		default:
			in.Kind = kvmodel.Txn
			s := last[key]
			if s.mod != 0 && rng.IntN(2) == 0 {
				in.Compare, in.ExpectValue = kvmodel.ValueEquals, s.val
			} else {
				in.Compare, in.ExpectMod = kvmodel.ModRevisionEquals, s.mod
			}
		}
		octx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
		call := rec.now()
		var out kvmodel.Output
		var err error
		switch in.Kind {
		case kvmodel.Get:
			var resp *clientv3.GetResponse
			if resp, err = cli.Get(octx, chaosKey(key)); err == nil {
				out.Rev = resp.Header.Revision
				if len(resp.Kvs) == 1 {
					out.Found, out.Value, out.ModRev = true, string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
					last[key] = seen{out.ModRev, out.Value}
				} else {
					last[key] = seen{}
				}
			}
		case kvmodel.Put:
			var resp *clientv3.PutResponse
			if resp, err = cli.Put(octx, chaosKey(key), in.Value); err == nil {
				out.Rev = resp.Header.Revision
				last[key] = seen{out.Rev, in.Value}
			}
		case kvmodel.Txn:
			cmp := clientv3.Compare(clientv3.ModRevision(chaosKey(key)), "=", in.ExpectMod)
			if in.Compare == kvmodel.ValueEquals {
				cmp = clientv3.Compare(clientv3.Value(chaosKey(key)), "=", in.ExpectValue)
			}
			var resp *clientv3.TxnResponse
			if resp, err = cli.Txn(octx).If(cmp).Then(clientv3.OpPut(chaosKey(key), in.Value)).Commit(); err == nil {
				out.Rev, out.Succeeded = resp.Header.Revision, resp.Succeeded
				if resp.Succeeded {
					last[key] = seen{out.Rev, in.Value}
				}
			}
		}
		cancel()
		if err != nil {
			if in.Kind == kvmodel.Get {
				// A failed read constrains nothing.
				rec.failedRead()
				continue
			}
			out = kvmodel.Output{Unknown: true}
			rec.add(client, in, call, out, kvmodel.Infinity)
			delete(last, key)
			// The unknown operation stays open forever: this client
			// continues under a new identity.
			client = rec.newClientID()
			continue
		}
		rec.add(client, in, call, out, rec.now())
	}
}

// watchSegment is one clientv3 watch channel, from its creation to its
// close; a watcher opens a new one from where the last ended.
type watchSegment struct {
	start int64
	resps []*pb.WatchResponse
	end   string // why it ended
}

type chaosWatcher struct {
	name     string
	mu       sync.Mutex
	segments []*watchSegment
	lastRev  atomic.Int64 // highest event revision received
}

func (w *chaosWatcher) run(ctx context.Context, cli *clientv3.Client, from int64) {
	next := from
	for ctx.Err() == nil {
		seg := &watchSegment{start: next}
		w.mu.Lock()
		w.segments = append(w.segments, seg)
		w.mu.Unlock()
		ch := cli.Watch(ctx, chaosPrefix, clientv3.WithPrefix(), clientv3.WithRev(next),
			clientv3.WithCreatedNotify(), clientv3.WithProgressNotify())
		for wr := range ch {
			resp := &pb.WatchResponse{
				Header: wr.Header, Created: wr.Created, Canceled: wr.Canceled,
				CompactRevision: wr.CompactRevision,
			}
			for _, ev := range wr.Events {
				resp.Events = append(resp.Events, (*mvccpb.Event)(ev))
			}
			w.mu.Lock()
			seg.resps = append(seg.resps, resp)
			w.mu.Unlock()
			if n := len(wr.Events); n > 0 {
				next = wr.Events[n-1].Kv.ModRevision + 1
				w.lastRev.Store(wr.Events[n-1].Kv.ModRevision)
			}
			if err := wr.Err(); err != nil {
				w.mu.Lock()
				seg.end = err.Error()
				w.mu.Unlock()
			}
		}
		if ctx.Err() == nil {
			// Do not spin if the watch cannot be created right now.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// chaosLeaseKeeper keeps one lease alive with KeepAliveOnce every second and
// records when each keep-alive was answered.
type chaosLeaseKeeper struct {
	id       clientv3.LeaseID
	mu       sync.Mutex
	lastOK   time.Time
	answered int
	failures int
	maxGap   time.Duration
	early    error // the lease was gone although it had been kept alive
	// errs counts the keep-alive errors by message, for the log.
	errs map[string]int
}

func (k *chaosLeaseKeeper) run(ctx context.Context, cli *clientv3.Client) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.KeepAliveOnce(actx, k.id)
		cancel()
		k.mu.Lock()
		now := time.Now()
		switch {
		case err == nil:
			k.maxGap = max(k.maxGap, now.Sub(k.lastOK))
			k.lastOK = now
			k.answered++
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			k.maxGap = max(k.maxGap, now.Sub(k.lastOK))
			if since := now.Sub(k.lastOK); since < chaosLeaseTTL*time.Second && k.early == nil {
				k.early = fmt.Errorf("lease %x not found %v after its last answered keep-alive (TTL %ds)", k.id, since, chaosLeaseTTL)
			}
			k.failures++
		default:
			k.maxGap = max(k.maxGap, now.Sub(k.lastOK))
			k.failures++
		}
		if err != nil {
			if k.errs == nil {
				k.errs = map[string]int{}
			}
			k.errs[err.Error()]++
		}
		k.mu.Unlock()
	}
}

// chaosConfig is the length of a run.
type chaosConfig struct {
	soak time.Duration // 0: one round of the nemesis schedule
	seed uint64
}

func chaosSettings(t *testing.T) chaosConfig {
	t.Helper()
	var c chaosConfig
	if v := os.Getenv(chaosSoakEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", chaosSoakEnv, v, err)
		}
		c.soak = d
	}
	c.seed = uint64(time.Now().UnixNano())
	if v := os.Getenv(chaosSeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", chaosSeedEnv, v, err)
		}
		c.seed = s
	}
	return c
}

// chaosCluster wraps the launcher with the queries the nemesis needs.
type chaosCluster struct {
	*launcher.Cluster
}

// leader returns the name of the consensus member that is the raft leader.
// A member whose Status times out (the leader is the busiest process) or
// that knows no leader for a moment after a restart is asked again, until
// chaosProgressWait.
func (c *chaosCluster) leader(ctx context.Context) (string, error) {
	deadline := time.Now().Add(chaosProgressWait)
	for {
		name, err := c.leaderOnce(ctx)
		if err == nil || !time.Now().Before(deadline) || ctx.Err() != nil {
			return name, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leaderOnce asks every running consensus member once.
func (c *chaosCluster) leaderOnce(ctx context.Context) (string, error) {
	ids := map[uint64]string{}
	var leader uint64
	for _, name := range c.ByRole("consensus") {
		if !c.Running(name) {
			continue
		}
		svc, _ := c.Service(name)
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{svc.Endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, svc.Endpoint())
		cancel()
		_ = cli.Close()
		if err != nil {
			continue
		}
		ids[st.Header.MemberId] = name
		if st.Leader != 0 && leader != 0 && st.Leader != leader {
			// One of them has not heard of the latest election yet.
			return "", fmt.Errorf("members disagree on the leader: %x and %x", leader, st.Leader)
		}
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if name, ok := ids[leader]; ok {
		return name, nil
	}
	return "", fmt.Errorf("no leader among %v (leader id %x)", ids, leader)
}

// activeLeasesvc returns the lease service that answers keep-alives of id
// (the standby answers Unavailable).
func (c *chaosCluster) activeLeasesvc(ctx context.Context, id clientv3.LeaseID) (string, error) {
	deadline := time.Now().Add(chaosProgressWait)
	for time.Now().Before(deadline) {
		for _, name := range c.ByRole("leasesvc") {
			svc, _ := c.Service(name)
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{svc.Endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				continue
			}
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = cli.KeepAliveOnce(actx, id)
			cancel()
			_ = cli.Close()
			if err == nil {
				return name, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "", errors.New("no lease service answers keep-alives")
}

func TestChaos(t *testing.T) {
	requireBinary(t, concordImpl)
	cfg := chaosSettings(t)
	t.Logf("seed %d (replay with %s=%d); soak %v", cfg.seed, chaosSeedEnv, cfg.seed, cfg.soak)
	ctx, cancelAll := context.WithTimeout(context.Background(), 10*time.Minute+2*cfg.soak)
	defer cancelAll()

	root, err := gobuild.ModuleRoot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	lc, err := launcher.Start(ctx, launcher.Config{
		ComposeFile:  filepath.Join(root, "compose.yaml"),
		Binary:       concordImpl.bin,
		Dir:          t.TempDir(),
		ReadyTimeout: 2 * readyTimeout,
	})
	if err != nil {
		t.Fatalf("launching compose.yaml: %v", err)
	}
	c := &chaosCluster{Cluster: lc}
	t.Cleanup(func() {
		lc.Stop()
		if t.Failed() {
			for _, s := range lc.Services() {
				tail := lc.LogTail(s.Name)
				t.Logf("%s output (last %d bytes):\n%s", s.Name, min(len(tail), 6<<10), tail[max(0, len(tail)-6<<10):])
			}
		}
	})
	gws := c.Endpoints("gateway")
	t.Logf("topology up in %v; gateways %v", time.Since(started).Round(time.Millisecond), gws)
	admin := splitClient(t, gws...)

	// The lease kept alive through the run, and its key (outside the
	// modelled keys: lease/).
	lease := must(admin.Grant(ctx, chaosLeaseTTL))(t)
	must(admin.Put(ctx, "lease/key", "kept", clientv3.WithLease(lease.ID)))(t)
	startRev := must(admin.Get(ctx, chaosPrefix, clientv3.WithPrefix()))(t).Header.Revision

	rec := &chaosRecorder{t0: time.Now(), acked: map[int64]kvmodel.Input{}}
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	var wg sync.WaitGroup
	for i := range chaosWorkers {
		cli := splitClient(t, gws[i%2], gws[(i+1)%2])
		rng := rand.New(rand.NewPCG(cfg.seed, uint64(i)))
		wg.Go(func() { chaosWorker(trafficCtx, rec, cli, i, rng) })
	}
	watchCtx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	var watchers []*chaosWatcher
	var wwg sync.WaitGroup
	for i := range chaosWatchers {
		w := &chaosWatcher{name: fmt.Sprintf("watcher-%d", i)}
		watchers = append(watchers, w)
		cli := splitClient(t, gws[i%2], gws[(i+1)%2])
		wwg.Go(func() { w.run(watchCtx, cli, startRev+1) })
	}
	// The keeper runs until the end, through the kill of every process.
	keeper := &chaosLeaseKeeper{id: lease.ID, lastOK: time.Now()}
	kcli := splitClient(t, gws...)
	keeperCtx, stopKeeper := context.WithCancel(ctx)
	defer stopKeeper()
	var kwg sync.WaitGroup
	kwg.Go(func() { keeper.run(keeperCtx, kcli) })
	// Every client goroutine stops before the test returns, also when it
	// fails half-way (the clients close in t.Cleanup, after this).
	defer func() {
		stopTraffic()
		stopWatches()
		stopKeeper()
		wg.Wait()
		wwg.Wait()
		kwg.Wait()
	}()

	// The nemesis: one process at a time, killed and restarted.
	rng := rand.New(rand.NewPCG(cfg.seed, 1<<32))
	waitProgress := func(after string) {
		t.Helper()
		base := rec.succeeded()
		deadline := time.Now().Add(chaosProgressWait)
		for rec.succeeded() < base+chaosProgress {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: only %d operations succeeded in %v", after, rec.succeeded()-base, chaosProgressWait)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	kills := map[string]int{}
	nemesis := func(round int) {
		targets := []string{"follower", "gateway", "watchfanout", "leasesvc", "leader"}
		if round > 0 {
			rng.Shuffle(len(targets), func(i, j int) { targets[i], targets[j] = targets[j], targets[i] })
		}
		for _, what := range targets {
			var name string
			switch what {
			case "follower", "leader":
				leader, err := c.leader(ctx)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				// The client-side services fail over between members,
				// so any member may be killed.
				if what == "leader" {
					name = leader
					break
				}
				var followers []string
				for _, m := range c.ByRole("consensus") {
					if m != leader {
						followers = append(followers, m)
					}
				}
				name = followers[rng.IntN(len(followers))]
			case "gateway", "watchfanout":
				names := c.ByRole(what)
				name = names[(round+rng.IntN(2))%len(names)]
			case "leasesvc":
				if name, err = c.activeLeasesvc(ctx, lease.ID); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
			t.Logf("round %d: SIGKILL %s (%s) at %v", round, name, what, time.Since(rec.t0).Round(time.Millisecond))
			if err := c.Kill(name); err != nil {
				t.Fatal(err)
			}
			kills[what]++
			time.Sleep(chaosDown)
			if err := c.Restart(ctx, name); err != nil {
				t.Fatalf("round %d: restart %s: %v", round, name, err)
			}
			waitProgress("restarting " + name)
			time.Sleep(chaosUp)
		}
	}
	waitProgress("start")
	for round := 0; round == 0 || time.Since(started) < cfg.soak; round++ {
		nemesis(round)
	}
	stopTraffic()
	wg.Wait()

	// Watches catch up with every acknowledged write before they stop.
	rec.mu.Lock()
	maxAcked := int64(0)
	for rev := range rec.acked {
		maxAcked = max(maxAcked, rev)
	}
	rec.mu.Unlock()
	deadline := time.Now().Add(chaosProgressWait)
	for _, w := range watchers {
		for w.lastRev.Load() < maxAcked {
			if time.Now().After(deadline) {
				t.Fatalf("%s reached revision %d, acknowledged writes up to %d", w.name, w.lastRev.Load(), maxAcked)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stopWatches()
	wwg.Wait()

	// Every process killed at once, then all restarted.
	beforeKill := must(admin.Get(ctx, "lease/key"))(t).Header.Revision
	c.KillAll()
	t.Logf("killed every process at %v; restarting", time.Since(rec.t0).Round(time.Millisecond))
	if err := c.StartAll(ctx); err != nil {
		t.Fatalf("restart after killing everything: %v", err)
	}
	final := splitClient(t, gws...)
	finalClient := rec.newClientID()
	for k := range chaosKeys {
		var resp *clientv3.GetResponse
		call := rec.now()
		for {
			actx, cancel := context.WithTimeout(ctx, chaosOpTimeout)
			resp, err = final.Get(actx, chaosKey(k))
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("read %s after the restart: %v", chaosKey(k), err)
		}
		out := kvmodel.Output{Rev: resp.Header.Revision}
		if len(resp.Kvs) == 1 {
			out.Found, out.Value, out.ModRev = true, string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
		}
		// The revision may have moved past the model's: the lease may have
		// expired while every process was down.
		rec.add(finalClient, kvmodel.Input{Kind: kvmodel.Get, Key: k, AnyRev: true}, call, out, rec.now())
	}
	finalRev := must(final.Get(ctx, "lease/key"))(t)
	stopKeeper()
	kwg.Wait()
	// After every process was killed the lease survives only if the
	// lease service came back and a keep-alive got through within its TTL:
	// it may expire then (etcd's would too). It may never expire while
	// keep-alives are answered (checkLease).
	keeper.mu.Lock()
	if ttl := must(final.TimeToLive(ctx, lease.ID))(t); ttl.TTL <= 0 || finalRev.Count != 1 {
		if keeper.maxGap < chaosLeaseTTL*time.Second {
			t.Errorf("the lease kept alive through the run is gone after the restart (TTL %d, key %v), keep-alives answered at most %v apart",
				ttl.TTL, finalRev.Kvs, keeper.maxGap)
		} else {
			t.Logf("the lease expired during the restart of every process: no keep-alive answered for %v (TTL %ds)", keeper.maxGap, chaosLeaseTTL)
		}
	}
	keeper.mu.Unlock()
	hist := chaosHistory(ctx, t, final, finalRev.Header.Revision)
	checkAcked(t, rec, hist)
	checkWatchers(t, watchers, hist)
	checkLease(t, keeper, hist, beforeKill)
	checkLinearizable(t, rec, hist, startRev, cfg.seed)
	t.Logf("kills %v; %d operations (%d acknowledged writes, %d unknown, %d failed reads); %d revisions; total %v",
		kills, len(rec.ops), len(rec.acked), rec.unknown, rec.nfail, finalRev.Header.Revision-startRev,
		time.Since(started).Round(time.Millisecond))
}

// chaosHistory reads every revision up to last with a watch from revision 1.
func chaosHistory(ctx context.Context, t *testing.T, cli *clientv3.Client, last int64) watchtest.History {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var hist watchtest.History
	ch := cli.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(1))
	for hist.Last() < last {
		wr, ok := <-ch
		if !ok || wr.Err() != nil {
			t.Fatalf("reading the history: channel closed at revision %d of %d: %v", hist.Last(), last, wr.Err())
		}
		for _, ev := range wr.Events {
			rev := ev.Kv.ModRevision
			if hist.Last() != rev {
				hist = append(hist, eventbus.Revision{Rev: rev})
			}
			hist[len(hist)-1].Events = append(hist[len(hist)-1].Events, (*mvccpb.Event)(ev))
		}
	}
	for i := 1; i < len(hist); i++ {
		if hist[i].Rev != hist[i-1].Rev+1 {
			t.Errorf("history: revision %d follows %d (revisions are not contiguous)", hist[i].Rev, hist[i-1].Rev)
		}
	}
	return hist
}

// checkAcked: every acknowledged write is in the history at its revision.
func checkAcked(t *testing.T, rec *chaosRecorder, hist watchtest.History) {
	t.Helper()
	byRev := map[int64]*mvccpb.Event{}
	for _, r := range hist {
		if len(r.Events) == 1 {
			byRev[r.Rev] = r.Events[0]
		}
	}
	lost := 0
	for rev, in := range rec.acked {
		ev := byRev[rev]
		if ev == nil || ev.Type != mvccpb.PUT || string(ev.Kv.Key) != chaosKey(in.Key) || string(ev.Kv.Value) != in.Value {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged %s at revision %d; the history there has %v", kvmodel.Describe(in, kvmodel.Output{Rev: rev}), rev, ev)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged writes lost or misplaced after killing and restarting everything", lost, len(rec.acked))
	}
}

// checkWatchers checks each watcher's segments against the history and
// that each segment resumed where the previous one ended.
func checkWatchers(t *testing.T, watchers []*chaosWatcher, hist watchtest.History) {
	t.Helper()
	for _, w := range watchers {
		w.mu.Lock()
		var reached int64 = -1
		events, segs := 0, 0
		for i, seg := range w.segments {
			if len(seg.resps) == 0 {
				continue
			}
			segs++
			watch := watchtest.Watch{Key: []byte(chaosPrefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(chaosPrefix)), StartRevision: seg.start}
			res, err := watchtest.Check(hist, watch, seg.resps)
			if err != nil {
				t.Errorf("%s segment %d (from revision %d, ended %q): %v", w.name, i, seg.start, seg.end, err)
				continue
			}
			if reached >= 0 && seg.start > reached+1 {
				t.Errorf("%s segment %d resumed at revision %d after reaching %d (gap)", w.name, i, seg.start, reached)
			}
			if res.Canceled && res.CompactRevision != 0 {
				t.Errorf("%s segment %d canceled for compaction at %d", w.name, i, res.CompactRevision)
			}
			reached = max(reached, res.Reached)
			events += res.Events
		}
		w.mu.Unlock()
		t.Logf("%s: %d events in %d watch channel(s), reached revision %d", w.name, events, segs, reached)
	}
}

// checkLease: the lease's key was never deleted, and no keep-alive found the
// lease gone while it should have been alive.
// checkLease: the lease's key was not deleted before every process was
// killed (beforeKill is the revision then), nor after unless keep-alives
// went unanswered for a TTL; no keep-alive found the lease gone while it
// should have been alive.
func checkLease(t *testing.T, k *chaosLeaseKeeper, hist watchtest.History, beforeKill int64) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, r := range hist {
		for _, ev := range r.Events {
			if string(ev.Kv.Key) == "lease/key" && ev.Type == mvccpb.DELETE &&
				(r.Rev <= beforeKill || k.maxGap < chaosLeaseTTL*time.Second) {
				t.Errorf("the kept-alive lease's key was deleted at revision %d (revision %d before killing everything; longest gap between answered keep-alives %v)",
					r.Rev, beforeKill, k.maxGap)
			}
		}
	}
	if k.early != nil {
		t.Error(k.early)
	}
	t.Logf("lease: %d keep-alives answered, %d failed %v, longest gap %v", k.answered, k.failures, k.errs, k.maxGap.Round(time.Millisecond))
}

// checkLinearizable resolves the unknown outcomes against the store's
// history (every written value is unique) and checks the KV history with
// porcupine, in windows of revisions so that a soak's history fits in
// memory.
func checkLinearizable(t *testing.T, rec *chaosRecorder, hist watchtest.History, startRev int64, seed uint64) {
	t.Helper()
	keyIndex := map[string]int{}
	for k := range chaosKeys {
		keyIndex[chaosKey(k)] = k
	}
	writes := map[string]kvmodel.Write{}
	for _, r := range hist {
		for _, ev := range r.Events {
			if k, ok := keyIndex[string(ev.Kv.Key)]; ok && ev.Type == mvccpb.PUT {
				writes[string(ev.Kv.Value)] = kvmodel.Write{Rev: r.Rev, Key: k, Value: string(ev.Kv.Value)}
			}
		}
	}
	stateAt := func(rev int64) kvmodel.State {
		s := kvmodel.State{Rev: rev}
		for _, r := range hist {
			if r.Rev > rev {
				break
			}
			for _, ev := range r.Events {
				if k, ok := keyIndex[string(ev.Kv.Key)]; ok && ev.Type == mvccpb.PUT {
					s.Vals[k], s.Mods[k] = string(ev.Kv.Value), r.Rev
				}
			}
		}
		return s
	}
	ops := kvmodel.Resolve(rec.ops, writes)
	began := time.Now()
	w, err := kvmodel.Check(ops, startRev, stateAt, chaosWindow, chaosCheckTimeout)
	if err != nil {
		t.Errorf("KV history (seed %d): %v", seed, err)
		return
	}
	res, model, info := w.Result, w.Model, w.Info
	t.Logf("porcupine: %s for %d operations (%d recorded; unknown outcomes resolved from the history) in %v",
		res, len(ops), len(rec.ops), time.Since(began).Round(time.Millisecond))
	if res == porcupine.Ok {
		return
	}
	t.Logf("failing window: revisions %d..%d, %d operations", w.From, w.To, len(w.Ops))
	path := filepath.Join(os.TempDir(), fmt.Sprintf("concord-chaos-%d.html", seed))
	if err := porcupine.VisualizePath(model, info, path); err == nil {
		t.Logf("visualization: %s", path)
	}
	// The longest partial linearization shows where the history breaks:
	// its last operations, then the earliest ones it could not place.
	var longest []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) > len(longest) {
				longest = lin
			}
		}
	}
	type opID struct {
		client int
		call   int64
	}
	placed := map[opID]bool{}
	for _, op := range longest {
		placed[opID{op.ClientId, op.Call}] = true
	}
	describe := func(b *strings.Builder, op porcupine.Operation) {
		ret := strconv.FormatInt(op.Return, 10)
		if op.Return == kvmodel.Infinity {
			ret = "inf"
		}
		fmt.Fprintf(b, "  client %d [%d, %s] %s\n", op.ClientId, op.Call, ret, kvmodel.Describe(op.Input.(kvmodel.Input), op.Output.(kvmodel.Output)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "last %d of the %d operations linearized:\n", min(10, len(longest)), len(longest))
	for _, op := range longest[max(0, len(longest)-10):] {
		describe(&b, op)
	}
	rest := slices.DeleteFunc(slices.Clone(w.Ops), func(op porcupine.Operation) bool { return placed[opID{op.ClientId, op.Call}] })
	slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	fmt.Fprintf(&b, "first %d of the %d not linearized:\n", min(15, len(rest)), len(rest))
	for _, op := range rest[:min(15, len(rest))] {
		describe(&b, op)
	}
	t.Errorf("KV history is %s under the kvmodel (seed %d):\n%s", res, seed, b.String())
}
