package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// startProcs starts several processes at once (members of one raft cluster
// are ready only together) and waits until all are ready.
func startProcs(t *testing.T, ps ...*proc) {
	t.Helper()
	requireBinary(t, concordImpl)
	for _, p := range ps {
		p.t, p.log = t, &syncBuffer{}
		t.Cleanup(func() {
			p.kill()
			if t.Failed() {
				t.Logf("%s output (last %d bytes):\n%s", p.name, logTail, p.log.Tail(logTail))
			}
		})
	}
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() { errs[i] = p.start() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// TestSplitConsensusLeaderKilled runs three consensus members whose NATS
// servers form one cluster, a watch fan-out and a lease service that are
// given only the leader's addresses (they learn the other members and NATS
// servers from it), and a gateway given all three members. SIGKILL of the
// leader: writes through the gateway resume, and a watch through the
// gateway sees every acknowledged revision once, in order.
func TestSplitConsensusLeaderKilled(t *testing.T) {
	ms, curls := threeConsensusMembers(t)
	startProcs(t, ms[0].p, ms[1].p, ms[2].p)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	direct := splitClient(t, ms[0].p.endpoint())
	st := must(direct.Status(ctx, ms[0].p.endpoint()))(t)
	lead := -1
	ids := make([]uint64, len(ms))
	for i, m := range ms {
		if ids[i] = must(direct.Status(ctx, m.p.endpoint()))(t).Header.MemberId; ids[i] == st.Leader {
			lead = i
		}
	}
	if lead < 0 {
		t.Fatalf("no member is the leader %x", st.Leader)
	}
	leader := ms[lead]
	// What following the leader saves: sequential puts sent to the leader
	// against puts a follower forwards (logged, not asserted).
	for _, m := range []*splitMember{leader, ms[(lead+1)%3]} {
		one := splitClient(t, m.p.endpoint())
		must(one.Put(ctx, "lat", "warm"))(t)
		begin := time.Now()
		for range 50 {
			must(one.Put(ctx, "lat", "v"))(t)
		}
		t.Logf("put latency via the %s: %v", map[bool]string{true: "leader", false: "follower"}[m == leader], time.Since(begin)/50)
	}

	gw, wf := startSplitServices(t, leader, curls)

	cli := splitClient(t, gw.endpoint())
	start := must(cli.Get(ctx, "any"))(t).Header.Revision
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), "lk/", clientv3.WithPrefix(), clientv3.WithRev(start+1))
	acked := map[string]int64{} // key -> revision of its acknowledged put
	var order []string
	put := func(key string, timeout time.Duration) error {
		pctx, pcancel := context.WithTimeout(ctx, timeout)
		defer pcancel()
		r, err := cli.Put(pctx, key, "v")
		if err == nil {
			acked[key] = r.Header.Revision
			order = append(order, key)
		}
		return err
	}
	for i := range 5 {
		if err := put(fmt.Sprintf("lk/before/%d", i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	lease := must(cli.Grant(ctx, 30))(t)
	must(cli.Put(ctx, "leased", "v", clientv3.WithLease(lease.ID)))(t)

	leader.p.kill()
	killed := time.Now()
	var failed []string
	for i := 0; ; i++ {
		// Distinct keys: a put that failed may still have been applied.
		at := time.Now()
		err := put(fmt.Sprintf("lk/during/%03d", i), time.Second)
		if err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("no write through the gateway succeeded after the leader was killed: %v", err)
		}
		failed = append(failed, fmt.Sprintf("%v after %v", err, time.Since(at).Round(time.Millisecond)))
		time.Sleep(50 * time.Millisecond)
	}
	resumed := time.Since(killed)
	for i := range 10 {
		if err := put(fmt.Sprintf("lk/after/%d", i), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("writes through the gateway resumed %v after SIGKILL of the leader; failed attempts: %q", resumed, failed)

	// The watch: strictly increasing revisions (so no duplicates), and
	// every acknowledged put at its revision.
	last := acked[order[len(order)-1]]
	seen := map[string]int64{}
	var prev int64
	for prev < last {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("watch channel closed at revision %d", prev)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch error: %v", err)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= prev {
					t.Fatalf("watch event %s at revision %d after revision %d", ev.Kv.Key, ev.Kv.ModRevision, prev)
				}
				prev = ev.Kv.ModRevision
				seen[string(ev.Kv.Key)] = prev
			}
		case <-ctx.Done():
			t.Fatalf("watch stopped at revision %d, want %d", prev, last)
		}
	}
	for _, k := range order {
		if seen[k] != acked[k] {
			t.Fatalf("acknowledged put of %s at revision %d: watch saw revision %d", k, acked[k], seen[k])
		}
	}
	t.Logf("watch through the gateway saw %d events, all %d acknowledged puts, in order, once", len(seen), len(order))
	if got := must(cli.Get(ctx, "lk/", clientv3.WithPrefix(), clientv3.WithCountOnly()))(t); got.Count != int64(len(seen)) {
		t.Fatalf("%d keys under lk/, the watch saw %d", got.Count, len(seen))
	}
	// The lease service, given only the dead leader's address, still keeps
	// the lease alive (its authority renewals and revokes go elsewhere).
	keepAliveEventually(ctx, t, cli, lease.ID, 30, "after the leader's death")
	if got := must(cli.Get(ctx, "leased"))(t); got.Count != 1 {
		t.Fatalf("leased key lost with the leader: %v", got.Kvs)
	}

	// The fan-out, given only the dead leader's addresses, moved on to the
	// members and NATS servers it learned.
	for _, want := range []string{"learned a consensus member", "nats reconnected"} {
		if !strings.Contains(wf.log.String(), want) {
			t.Errorf("the fan-out's log lacks %q", want)
		}
	}

	// Membership through the gateway: remove the dead member, list the
	// survivors with usable client URLs, hand leadership from one survivor to
	// the other, and write.
	out := mustCtl(t, gw.endpoint(), "member", "remove", fmt.Sprintf("%x", ids[lead]))
	if m := removedRe.FindStringSubmatch(out); m == nil || m[1] != fmt.Sprintf("%x", ids[lead]) {
		t.Fatalf("member remove through the gateway printed %q", out)
	}
	// The gateway stops using the removed member's endpoint at once.
	if !slices.ContainsFunc(strings.Split(gw.log.String(), "\n"), func(l string) bool {
		return strings.Contains(l, "dropped a removed consensus member") && strings.Contains(l, leader.curl)
	}) {
		t.Errorf("the gateway did not drop the removed member %s; log tail:\n%s", leader.curl, gw.log.Tail(2048))
	}
	ml := must(cli.MemberList(ctx))(t)
	if len(ml.Members) != 2 {
		t.Fatalf("member list after the removal: %v", ml.Members)
	}
	for _, m := range ml.Members {
		if len(m.ClientURLs) == 0 {
			t.Fatalf("member %x has no client URL", m.ID)
		}
		must(direct.Status(ctx, strings.TrimPrefix(m.ClientURLs[0], "http://")))(t)
	}
	cur := must(cli.Status(ctx, gw.endpoint()))(t).Leader
	var target uint64
	for i, id := range ids {
		if i != lead && id != cur {
			target = id
		}
	}
	out = mustCtl(t, gw.endpoint(), "move-leader", fmt.Sprintf("%x", target))
	if m := transferredRe.FindStringSubmatch(out); m == nil || m[1] != fmt.Sprintf("%x", cur) || m[2] != fmt.Sprintf("%x", target) {
		t.Fatalf("move-leader through the gateway printed %q, want a transfer from %x to %x", out, cur, target)
	}
	if err := put("lk/moved", 10*time.Second); err != nil {
		t.Fatalf("put after move-leader: %v", err)
	}
}

// splitMember is one consensus process of threeConsensusMembers.
type splitMember struct {
	p                      *proc
	curl, purl, nats, rurl string
}

// threeConsensusMembers returns three consensus processes of one cluster,
// not started, whose embedded NATS servers form one NATS cluster, and their
// client URLs.
func threeConsensusMembers(t *testing.T) ([]*splitMember, []string) {
	t.Helper()
	ms := make([]*splitMember, 3)
	var spec, routes, curls []string
	for i := range ms {
		cport, pport, err := freePorts()
		if err != nil {
			t.Fatal(err)
		}
		m := &splitMember{curl: fmt.Sprintf("http://127.0.0.1:%d", cport), purl: fmt.Sprintf("http://127.0.0.1:%d", pport),
			nats: fmt.Sprintf("127.0.0.1:%d", freePort(t)), rurl: fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))}
		m.p = &proc{name: fmt.Sprintf("consensus-%d", i+1), port: cport}
		ms[i] = m
		spec = append(spec, fmt.Sprintf("c%d=%s", i+1, m.purl))
		routes = append(routes, m.rurl)
		curls = append(curls, m.curl)
	}
	for i, m := range ms {
		m.p.args = []string{"consensus", "--name", fmt.Sprintf("c%d", i+1), "--data-dir", t.TempDir(),
			"--listen-client-urls", m.curl, "--listen-peer-urls", m.purl, "--initial-cluster", strings.Join(spec, ","),
			"--nats-listen-addr", m.nats, "--nats-cluster-listen-addr", strings.TrimPrefix(m.rurl, "nats://"),
			"--nats-routes", strings.Join(routes, ",")}
	}
	return ms, curls
}

// startSplitServices starts a watch fan-out and a lease service given only
// m's addresses (they learn the other members from it), then a gateway
// given every consensus member's client URL, and returns the gateway and
// the fan-out.
func startSplitServices(t *testing.T, m *splitMember, curls []string) (gw, wf *proc) {
	t.Helper()
	wport, lport, gport := freePort(t), freePort(t), freePort(t)
	wf = &proc{name: "watchfanout", port: wport, args: []string{"watchfanout", "--name", "wf1",
		"--consensus-endpoints", m.curl, "--nats-url", "nats://" + m.nats,
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", wport)}}
	ls := &proc{name: "leasesvc", port: lport, args: []string{"leasesvc", "--name", "ls1",
		"--consensus-endpoints", m.curl, "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", lport)}}
	startProcs(t, wf, ls)
	gw = &proc{name: "gateway", port: gport, args: []string{"gateway", "--consensus-endpoints", strings.Join(curls, ","),
		"--watchfanout-endpoints", wf.url(), "--leasesvc-endpoints", ls.url(),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", gport)}}
	startProcs(t, gw)
	return gw, wf
}

// keepAliveEventually keeps lease id alive through cli until a keep-alive
// succeeds, which must report ttl, or ctx ends (a failure, described by when).
func keepAliveEventually(ctx context.Context, t *testing.T, cli *clientv3.Client, id clientv3.LeaseID, ttl int64, when string) {
	t.Helper()
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := cli.KeepAliveOnce(actx, id)
		acancel()
		if err == nil {
			if r.TTL != ttl {
				t.Fatalf("keep-alive %s: TTL %d, want %d", when, r.TTL, ttl)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("keep-alive %s: %v", when, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
