package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leases: etcdctl transcripts compared with etcd (lease IDs and remaining TTLs normalized), and
// timing scenarios (expiry, keep-alive, sessions) run against both servers with the same
// assertions.

// expirySlack is how late after its TTL a lease may be revoked: etcd checks deadlines every
// 500 ms, concord every 100 ms; the rest is raft and the watch path. The issue allows "TTL plus
// at most about a second"; the generous extra covers two busy CI cores.
const expirySlack = 1500 * time.Millisecond

// leaseIDs normalizes the lease IDs of one transcript: the n-th lease a `lease grant` step
// printed is <leaseN> wherever it shows (hex in etcdctl's text, decimal in JSON), and steps
// refer to it as {LN}. Remaining TTLs depend on timing: they become <r> after a check that
// they are plausible (0 <= remaining <= granted), so a wrong value still shows as a difference.
type leaseIDs struct {
	hex, dec []string // by lease number - 1
}

var (
	reGrantText = regexp.MustCompile(`lease ([0-9a-f]{16}) granted with TTL\(\d+s\)\n`)
	reGrantJSON = regexp.MustCompile(`"ID":(\d+),"TTL"`)
	reLeaseRef  = regexp.MustCompile(`\{L(\d+)\}`)
	reRemaining = regexp.MustCompile(`granted with TTL\((\d+)s\), remaining\((-?\d+)s\)`)
	reJSONTTL   = regexp.MustCompile(`"ttl":(-?\d+),"granted-ttl":(\d+)`)
	reKeysText  = regexp.MustCompile(`attached keys\(\[([^\]]*)\]\)`)
	reKeysJSON  = regexp.MustCompile(`"keys":\[([^\]]*)\]`)
)

// sortKeyLists puts the attached keys etcdctl prints for a lease in order:
// etcd lists them from a Go map, so their order differs from run to run.
func sortKeyLists(s string) string {
	sortList := func(re *regexp.Regexp, sep string) {
		s = re.ReplaceAllStringFunc(s, func(m string) string {
			sub := re.FindStringSubmatch(m)
			items := strings.Split(sub[1], sep)
			slices.Sort(items)
			return strings.Replace(m, sub[1], strings.Join(items, sep), 1)
		})
	}
	sortList(reKeysText, " ")
	sortList(reKeysJSON, ",")
	return s
}

// learn records the lease a grant step printed.
func (l *leaseIDs) learn(args []string, stdout string) {
	if len(args) < 2 || args[0] != "lease" || args[1] != "grant" {
		return
	}
	if m := reGrantText.FindStringSubmatch(stdout); m != nil {
		v, _ := strconv.ParseInt(m[1], 16, 64)
		l.hex, l.dec = append(l.hex, m[1]), append(l.dec, strconv.FormatInt(v, 10))
	} else if m := reGrantJSON.FindStringSubmatch(stdout); m != nil {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		l.hex, l.dec = append(l.hex, fmt.Sprintf("%016x", v)), append(l.dec, m[1])
	}
}

// subst replaces {LN} in args by lease N's hex ID.
func (l *leaseIDs) subst(t *testing.T, args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = reLeaseRef.ReplaceAllStringFunc(a, func(m string) string {
			n, _ := strconv.Atoi(reLeaseRef.FindStringSubmatch(m)[1])
			if n < 1 || n > len(l.hex) {
				t.Fatalf("step refers to lease %d; only %d granted so far", n, len(l.hex))
			}
			return l.hex[n-1]
		})
	}
	return out
}

// normalize rewrites lease IDs and remaining TTLs in a rendered transcript entry.
func (l *leaseIDs) normalize(s string) string {
	s = sortKeyLists(s)
	for i := range l.hex {
		p := fmt.Sprintf("<lease%d>", i+1)
		s = strings.ReplaceAll(s, l.hex[i], p)
		s = strings.ReplaceAll(s, l.dec[i], p)
	}
	plausible := func(remaining, granted string) bool {
		r, _ := strconv.ParseInt(remaining, 10, 64)
		g, _ := strconv.ParseInt(granted, 10, 64)
		return r >= 0 && r <= g
	}
	s = reRemaining.ReplaceAllStringFunc(s, func(m string) string {
		sub := reRemaining.FindStringSubmatch(m)
		if !plausible(sub[2], sub[1]) {
			return m
		}
		return "granted with TTL(" + sub[1] + "s), remaining(<r>s)"
	})
	return reJSONTTL.ReplaceAllStringFunc(s, func(m string) string {
		sub := reJSONTTL.FindStringSubmatch(m)
		if !plausible(sub[1], sub[2]) {
			return m
		}
		return `"ttl":<r>,"granted-ttl":` + sub[2]
	})
}

// runLeaseScenario is runScenario for steps that refer to granted leases.
func runLeaseScenario(t *testing.T, sc scenario) {
	t.Parallel()
	golden := filepath.Join("testdata", sc.name+".golden")
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: sc.extra})
			n, ids := newNormalizer(), &leaseIDs{}
			var got []string
			for _, st := range sc.steps {
				st.args = ids.subst(t, st.args)
				r := runCtl(t, s.Endpoint(), st.stdin, st.args...)
				ids.learn(st.args, r.stdout)
				got = append(got, ids.normalize(st.render(n, r)))
			}
			if im == etcdImpl && *updateGolden {
				text := fmt.Sprintf(goldenHeader, t.Name()[:strings.LastIndex(t.Name(), "/")]) + strings.Join(got, "")
				if err := os.WriteFile(golden, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := readGolden(golden)
			if errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("%s is missing: generate it from etcd with -run '%s/etcd' -update", golden, t.Name()[:strings.LastIndex(t.Name(), "/")])
			}
			if err != nil {
				t.Fatal(err)
			}
			compareTranscripts(t, im.name, want, got)
		})
	}
}

func TestCtlLease(t *testing.T) {
	runLeaseScenario(t, scenario{name: "lease", steps: seq(
		ctl("lease", "grant", "100"),
		ctl("put", "foo", "bar", "--lease={L1}"),
		ctl("put", "foo2", "bar2", "--lease={L1}"),
		ctl("get", "foo", "-w", "json"),
		ctl("lease", "timetolive", "{L1}"),
		ctl("lease", "timetolive", "{L1}", "--keys"),
		ctl("lease", "timetolive", "{L1}", "--keys", "-w", "json"),
		ctl("lease", "keep-alive", "--once", "{L1}"),
		ctl("lease", "keep-alive", "--once", "{L1}", "-w", "json"),
		ctl("lease", "grant", "200", "-w", "json"),
		// Soonest deadline first, as etcd lists them.
		ctl("lease", "list"),
		ctl("lease", "list", "-w", "json"),
		// An overwrite without the lease detaches the key; so does a delete.
		ctl("put", "foo", "bar3"),
		ctl("lease", "timetolive", "{L1}", "--keys"),
		ctl("del", "foo2"),
		ctl("lease", "timetolive", "{L1}", "--keys"),
		ctl("get", "", "--prefix", "-w", "json"),
		// A revoke deletes every key of the lease in one revision.
		ctl("put", "a", "1", "--lease={L2}"),
		ctl("put", "b", "2", "--lease={L2}"),
		ctl("put", "c", "3", "--lease={L2}"),
		ctl("lease", "revoke", "{L2}"),
		ctl("get", "", "--prefix", "-w", "json"),
		ctl("get", "a", "--rev=8", "-w", "json"),
		// A lease that is gone: etcd's exact errors and outputs.
		ctl("lease", "revoke", "{L2}"),
		ctl("lease", "timetolive", "{L2}"),
		ctl("lease", "timetolive", "{L2}", "-w", "json"),
		ctl("lease", "keep-alive", "--once", "{L2}"),
		ctl("put", "d", "4", "--lease={L2}"),
		ctl("lease", "timetolive", "1234"),
		ctl("lease", "revoke", "1234"),
		ctl("lease", "keep-alive", "--once", "1234"),
		ctl("lease", "timetolive", "xyz"),
		// TTL bounds: too large is refused, below the minimum is raised.
		ctl("lease", "grant", "9000000001"),
		ctl("lease", "grant", "9000000000"),
		ctl("lease", "revoke", "{L3}"),
		ctl("lease", "list"),
		// Last, because such a lease lives only 2 s: a step after it
		// would depend on how fast etcdctl runs (a revoke more than 2 s
		// later, on a loaded machine, finds it expired).
		ctl("lease", "grant", "0"),
		ctl("lease", "grant", "1"),
	)})
}

// leaseDeletes collects the DELETE events of a watch until want keys were deleted.
func leaseDeletes(t *testing.T, wch clientv3.WatchChan, want int, timeout time.Duration) ([]*clientv3.Event, []clientv3.WatchResponse, time.Time) {
	t.Helper()
	var evs []*clientv3.Event
	var resps []clientv3.WatchResponse
	deadline := time.After(timeout)
	for len(evs) < want {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("watch ended: %v", wr.Err())
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.DELETE {
					t.Fatalf("unexpected %v event for %q", ev.Type, ev.Kv.Key)
				}
			}
			if len(wr.Events) > 0 {
				resps = append(resps, wr)
			}
			evs = append(evs, wr.Events...)
		case <-deadline:
			t.Fatalf("only %d of %d deletes within %v", len(evs), want, timeout)
		}
	}
	return evs, resps, time.Now()
}

// A lease expiring deletes all its keys in one revision, which watchers see as DELETE events of
// one response, within its TTL plus about a second and not before its TTL.
func TestLeaseExpiryDeletesKeys(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		must(c.Put(ctx, "x/plain", "v"))(t)
		rev := currentRev(ctx, t, c)
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := c.Watch(wctx, "x/", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithFilterPut())

		const ttl = 2
		sent := time.Now()
		lease := must(c.Grant(ctx, ttl))(t)
		granted := time.Now()
		for _, k := range []string{"x/1", "x/2", "x/3"} {
			must(c.Put(ctx, k, "v", clientv3.WithLease(lease.ID)))(t)
		}
		evs, resps, deleted := leaseDeletes(t, wch, 3, ttl*time.Second+10*time.Second)
		if early := sent.Add(ttl * time.Second).Sub(deleted); early > 0 {
			t.Errorf("keys deleted %v before the TTL ran out", early)
		}
		late := deleted.Sub(granted.Add(ttl * time.Second))
		t.Logf("%s: keys deleted %v after the TTL", s.impl.name, late.Round(time.Millisecond))
		if late > expirySlack {
			t.Errorf("keys deleted %v after the TTL, want within %v", late, expirySlack)
		}
		if len(resps) != 1 || len(evs) != 3 || evs[0].Kv.ModRevision != rev+4 || evs[2].Kv.ModRevision != rev+4 {
			t.Errorf("deletes = %v in %d responses, want 3 in one response at revision %d", evs, len(resps), rev+4)
		}
		if get := must(c.Get(ctx, "x/", clientv3.WithPrefix()))(t); len(get.Kvs) != 1 || string(get.Kvs[0].Key) != "x/plain" {
			t.Errorf("keys after expiry = %v", get.Kvs)
		}
		ttlResp := must(c.TimeToLive(ctx, lease.ID))(t)
		if ttlResp.TTL != -1 {
			t.Errorf("TimeToLive of an expired lease = %+v, want TTL -1", ttlResp)
		}
		if _, err := c.KeepAliveOnce(ctx, lease.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Errorf("KeepAliveOnce of an expired lease: %v", err)
		}
		if ls := must(c.Leases(ctx))(t); len(ls.Leases) != 0 {
			t.Errorf("leases after expiry = %v", ls.Leases)
		}
	})
}

// KeepAlive keeps a key alive past three times its TTL; once the keep-alives stop, the key goes
// within about one TTL.
func TestLeaseKeepAliveKeepsKeyAlive(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		const ttl = 2
		lease := must(c.Grant(ctx, ttl))(t)
		must(c.Put(ctx, "alive", "v", clientv3.WithLease(lease.ID)))(t)
		kctx, kcancel := context.WithCancel(ctx)
		defer kcancel()
		ch, err := c.KeepAlive(kctx, lease.ID)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var last time.Time
		responses := 0
		done := make(chan struct{})
		go func() {
			defer close(done)
			for resp := range ch {
				mu.Lock()
				if resp.TTL == ttl {
					responses++
					last = time.Now()
				}
				mu.Unlock()
			}
		}()
		start := time.Now()
		for time.Since(start) < 3*ttl*time.Second+500*time.Millisecond {
			if get := must(c.Get(ctx, "alive"))(t); len(get.Kvs) != 1 {
				t.Fatalf("key gone %v after the grant despite keep-alives", time.Since(start))
			}
			time.Sleep(100 * time.Millisecond)
		}
		if r := must(c.TimeToLive(ctx, lease.ID))(t); r.TTL < 0 || r.TTL > ttl || r.GrantedTTL != ttl {
			t.Errorf("TimeToLive while kept alive = %+v", r)
		}
		kcancel()
		<-done
		mu.Lock()
		n, stopped := responses, last
		mu.Unlock()
		if n < 3 {
			t.Errorf("%d keep-alive responses with TTL %d in %v", n, ttl, 3*ttl*time.Second)
		}
		for {
			get := must(c.Get(ctx, "alive"))(t)
			if len(get.Kvs) == 0 {
				break
			}
			if time.Since(stopped) > ttl*time.Second+expirySlack {
				t.Fatalf("key still there %v after the last keep-alive", time.Since(stopped))
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// The clientv3 lease API and concurrency sessions, with etcd's exact errors.
func TestLeaseClientAPIAndSession(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)

		// TTL bounds: below the minimum (1.5 election timeouts = 2s here) is raised.
		if g := must(c.Grant(ctx, 1))(t); g.TTL != 2 {
			t.Errorf("Grant(1) TTL = %d, want the minimum 2", g.TTL)
		} else if r := must(c.TimeToLive(ctx, g.ID))(t); r.GrantedTTL != 2 {
			t.Errorf("TimeToLive of a raised lease = %+v, want granted TTL 2", r)
		}
		_, err := c.Grant(ctx, 9000000001)
		wantErr(t, "grant over the maximum TTL", err, rpctypes.ErrLeaseTTLTooLarge)

		lease := must(c.Grant(ctx, 60))(t)
		must(c.Put(ctx, "k/b", "1", clientv3.WithLease(lease.ID)))(t)
		must(c.Put(ctx, "k/a", "2", clientv3.WithLease(lease.ID)))(t)
		ka := must(c.KeepAliveOnce(ctx, lease.ID))(t)
		if ka.TTL != 60 || ka.ID != lease.ID || ka.Revision == 0 {
			t.Errorf("KeepAliveOnce = %+v", ka)
		}
		ttl := must(c.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys()))(t)
		if ttl.GrantedTTL != 60 || ttl.TTL < 55 || ttl.TTL > 60 || len(ttl.Keys) != 2 {
			t.Errorf("TimeToLive = %+v", ttl)
		}
		must(c.Revoke(ctx, lease.ID))(t)
		if get := must(c.Get(ctx, "k/", clientv3.WithPrefix()))(t); len(get.Kvs) != 0 {
			t.Errorf("keys after revoke = %v", get.Kvs)
		}
		_, err = c.Revoke(ctx, lease.ID)
		wantErr(t, "second revoke", err, rpctypes.ErrLeaseNotFound)
		_, err = c.KeepAliveOnce(ctx, lease.ID)
		wantErr(t, "keep-alive of a revoked lease", err, rpctypes.ErrLeaseNotFound)
		if err != nil && err.Error() != "etcdserver: requested lease not found" {
			t.Errorf("keep-alive error text = %q", err.Error())
		}
		if r := must(c.TimeToLive(ctx, lease.ID))(t); r.TTL != -1 || r.GrantedTTL != 0 {
			t.Errorf("TimeToLive of a revoked lease = %+v", r)
		}
		_, err = c.Put(ctx, "k/c", "v", clientv3.WithLease(lease.ID))
		wantErr(t, "put with a revoked lease", err, rpctypes.ErrLeaseNotFound)

		// A session keeps its lease alive past 3x its TTL; Close revokes it.
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(2))
		if err != nil {
			t.Fatal(err)
		}
		must(c.Put(ctx, "session/key", "v", clientv3.WithLease(sess.Lease())))(t)
		start := time.Now()
		for time.Since(start) < 6500*time.Millisecond {
			if get := must(c.Get(ctx, "session/key"))(t); len(get.Kvs) != 1 {
				t.Fatalf("session key gone after %v", time.Since(start))
			}
			select {
			case <-sess.Done():
				t.Fatal("session ended while kept alive")
			case <-time.After(100 * time.Millisecond):
			}
		}
		if err := sess.Close(); err != nil {
			t.Fatal(err)
		}
		if get := must(c.Get(ctx, "session/key"))(t); len(get.Kvs) != 0 {
			t.Errorf("session key after Close = %v", get.Kvs)
		}
		// An orphaned session's lease expires on its own.
		sess2, err := concurrency.NewSession(c, concurrency.WithTTL(2))
		if err != nil {
			t.Fatal(err)
		}
		must(c.Put(ctx, "session/orphan", "v", clientv3.WithLease(sess2.Lease())))(t)
		sess2.Orphan()
		orphaned := time.Now()
		for len(must(c.Get(ctx, "session/orphan"))(t).Kvs) != 0 {
			if time.Since(orphaned) > 2*time.Second+expirySlack {
				t.Fatalf("orphaned session's key still there after %v", time.Since(orphaned))
			}
			time.Sleep(50 * time.Millisecond)
		}
		select {
		case <-sess2.Done():
		case <-time.After(5 * time.Second):
			t.Error("orphaned session not done")
		}
	})
}

// `etcdctl lease keep-alive` (streaming) keeps a key alive past 3x its TTL and ends with "expired
// or revoked." when the lease is revoked.
func TestCtlLeaseKeepAliveStream(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		out := mustCtl(t, s.Endpoint(), "lease", "grant", "2")
		m := reGrantText.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("grant output %q", out)
		}
		id := m[1]
		mustCtl(t, s.Endpoint(), "put", "ka", "v", "--lease="+id)

		requireBinary(t, etcdctlBin)
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, etcdctlBin.bin, "--endpoints="+s.Endpoint(), "lease", "keep-alive", id)
		cmd.Env = cleanEnv()
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var waitOnce sync.Once
		var waitErr error
		wait := func() error {
			waitOnce.Do(func() { waitErr = cmd.Wait() })
			return waitErr
		}
		lines := make(chan string, 100)
		t.Cleanup(func() {
			cancel() // kills etcdctl if the test ended early
			for range lines {
			}
			_ = wait()
		})
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			_, _ = io.Copy(io.Discard, stdout)
		}()
		c := newClient(t, s)
		start := time.Now()
		for time.Since(start) < 6500*time.Millisecond {
			if get := must(c.Get(ctx, "ka"))(t); len(get.Kvs) != 1 {
				t.Fatalf("key gone %v after etcdctl lease keep-alive started", time.Since(start))
			}
			time.Sleep(100 * time.Millisecond)
		}
		mustCtl(t, s.Endpoint(), "lease", "revoke", id)
		var got []string
		for l := range lines {
			got = append(got, l)
		}
		if err := wait(); err != nil {
			t.Errorf("etcdctl lease keep-alive: %v", err)
		}
		want := "lease " + id + " keepalived with TTL(2)"
		kept := 0
		for _, l := range got[:max(0, len(got)-1)] {
			if l != want {
				t.Errorf("unexpected keep-alive line %q", l)
			}
			kept++
		}
		if kept < 3 || len(got) == 0 || got[len(got)-1] != "lease "+id+" expired or revoked." {
			t.Errorf("etcdctl lease keep-alive printed %q", got)
		}
	})
}

// Leases are replicated: they survive a restart, with their keys, and get a full TTL again
// (etcd refreshes every lease when its lessor is promoted).
func TestLeaseSurvivesRestart(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		lease := must(c.Grant(ctx, 30))(t)
		must(c.Put(ctx, "r", "v", clientv3.WithLease(lease.ID)))(t)
		short := must(c.Grant(ctx, 2))(t)
		must(c.Put(ctx, "short", "v", clientv3.WithLease(short.ID)))(t)
		s.Stop()
		s.Restart()
		c = newClient(t, s)
		ttl := must(c.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys()))(t)
		if ttl.GrantedTTL != 30 || ttl.TTL < 25 || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "r" {
			t.Errorf("TimeToLive after restart = %+v", ttl)
		}
		restarted := time.Now()
		for len(must(c.Get(ctx, "short"))(t).Kvs) != 0 {
			// etcd's promoted lessor adds an election timeout (1s) to every lease.
			if time.Since(restarted) > 3*time.Second+expirySlack {
				t.Fatalf("short lease not expired %v after the restart", time.Since(restarted))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if get := must(c.Get(ctx, "r"))(t); len(get.Kvs) != 1 || get.Kvs[0].Lease != int64(lease.ID) {
			t.Errorf("long-lease key after restart = %v", get.Kvs)
		}
	})
}
