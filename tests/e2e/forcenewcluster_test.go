package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestForceNewCluster is etcd's disaster recovery with real processes and
// the real etcdctl, on a 3-member etcd and a 3-member concord alike: keys, a
// lease and a user are written, two members are lost for good (SIGKILL, a
// write then fails for lack of quorum), the third is restarted with
// --force-new-cluster, and must list only itself (same ID, name and URLs),
// serve every key, the lease and the user, take writes and linearizable
// reads at once with raft's term and index going on, stay alone when
// restarted without the flag, and grow again with `member add` and a
// member started with --initial-cluster-state existing. Every client-visible
// output is compared between the two servers.
func TestForceNewCluster(t *testing.T) {
	outcomes := map[string][]string{}
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			outcomes[im.name] = testForceNewCluster(t, im)
		})
	}
	want, got := outcomes[etcdImpl.name], outcomes[concordImpl.name]
	if len(want) == 0 || len(got) == 0 {
		t.Fatalf("missing outcomes: etcd %d steps, concord %d", len(want), len(got))
	}
	compareOutcomes(t, got, want)
	t.Logf("both:\n%s", strings.Join(got, "\n"))
}

var (
	// Hex IDs as etcdctl prints them: member list lines, member add, lease grant and list.
	reHexLine   = regexp.MustCompile(`(?m)^([0-9a-f]+)(, |$)`)
	reHexWords  = regexp.MustCompile(`(Member|cluster|lease) +([0-9a-f]+)\b`)
	reJSONLease = regexp.MustCompile(`"(lease|ID)":(\d+)`)
)

// fncNormalizer extends normalizer with the hex IDs etcdctl prints, as the
// same placeholders as their decimal JSON form.
type fncNormalizer struct{ *normalizer }

func (n fncNormalizer) hex(h string) string {
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil {
		return h
	}
	return n.id(strconv.FormatUint(v, 10))
}

func (n fncNormalizer) out(s string) string {
	s = reHexLine.ReplaceAllStringFunc(s, func(m string) string {
		sub := reHexLine.FindStringSubmatch(m)
		return n.hex(sub[1]) + sub[2]
	})
	s = reHexWords.ReplaceAllStringFunc(s, func(m string) string {
		sub := reHexWords.FindStringSubmatch(m)
		return sub[1] + " " + n.hex(sub[2])
	})
	s = reJSONLease.ReplaceAllStringFunc(s, func(m string) string {
		sub := reJSONLease.FindStringSubmatch(m)
		return fmt.Sprintf("%q:%s", sub[1], n.id(sub[2]))
	})
	return n.stdout(s)
}

// memberList is `member list` with its lines in name order (each server
// lists members in its own ID order).
func (n fncNormalizer) memberList(t *testing.T, endpoint string) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(mustCtl(t, endpoint, "member", "list")), "\n")
	name := func(l string) string {
		if f := strings.Split(l, ", "); len(f) > 2 {
			return f[2]
		}
		return l
	}
	slices.SortFunc(lines, func(a, b string) int { return strings.Compare(name(a), name(b)) })
	return n.out(strings.Join(lines, "\n"))
}

func endpointStatus(t *testing.T, endpoint string) ctlStatus {
	t.Helper()
	var st []ctlStatus
	out := mustCtl(t, endpoint, "endpoint", "status", "-w", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		t.Fatalf("endpoint status output %q: %v", out, err)
	}
	return st[0]
}

func testForceNewCluster(t *testing.T, im *impl) []string {
	n := fncNormalizer{newNormalizer()}
	var steps []string
	step := func(what, out string) { steps = append(steps, what+": "+out) }

	c := startCluster(t, im, clusterSize)
	for _, s := range c.members {
		c.waitMembers(s)
	}
	m1 := c.members[0]
	ep := m1.Endpoint()
	step("member list", n.memberList(t, ep))
	// Every write through m1, which answers once it applied it: it keeps
	// only what it knows is committed (etcd's rule too).
	step("put k1", n.out(mustCtl(t, ep, "put", "k1", "v1")))
	step("put k2", n.out(mustCtl(t, ep, "put", "k2", "v2")))
	grant := mustCtl(t, ep, "lease", "grant", "3600")
	step("lease grant", n.out(grant))
	lease := strings.Fields(grant)
	if len(lease) < 2 {
		t.Fatalf("lease grant output %q", grant)
	}
	step("put leased", n.out(mustCtl(t, ep, "put", "k3", "v3", "--lease="+lease[1])))
	step("user add", n.out(mustCtl(t, ep, "user", "add", "alice", "--new-user-password=pw")))
	before := endpointStatus(t, ep)

	// Quorum is lost for good: two members are gone, a write cannot commit.
	c.members[1].Kill()
	c.members[2].Kill()
	if r := runCtl(t, ep, "", "put", "lost", "x", "--command-timeout=3s"); r.exit == 0 {
		t.Fatalf("a put without quorum succeeded: %q", r.stdout)
	}
	// Stopped as an operator stops it. A member killed right after it
	// acknowledged a write may not have made its commit index durable yet
	// (etcd's neither, within its backend's 100 ms batch), and forcing keeps
	// only what the member knows was committed.
	m1.Stop()

	// The operator restarts the survivor with --force-new-cluster.
	m1.opts.extra = append(m1.opts.extra, "--force-new-cluster")
	if err := m1.start(); err != nil {
		t.Fatalf("restart with --force-new-cluster: %v", err)
	}
	c.members = c.members[:1]
	step("forced: member list", n.memberList(t, ep))
	after := endpointStatus(t, ep)
	step("forced: same member and cluster", fmt.Sprint(after.Status.Header.MemberID == before.Status.Header.MemberID,
		after.Status.Header.ClusterID == before.Status.Header.ClusterID, after.Status.Leader == after.Status.Header.MemberID))
	step("forced: raft term and index go on", fmt.Sprint(after.Status.RaftTerm > before.Status.RaftTerm,
		after.Status.RaftIndex > before.Status.RaftIndex))
	step("forced: get k --prefix", n.out(mustCtl(t, ep, "get", "k", "--prefix", "-w", "json")))
	step("forced: get lost", n.out(mustCtl(t, ep, "get", "lost")))
	step("forced: lease list", n.out(mustCtl(t, ep, "lease", "list")))
	step("forced: user list", n.out(mustCtl(t, ep, "user", "list")))
	step("forced: put", n.out(mustCtl(t, ep, "put", "after", "1")))
	step("forced: get", n.out(mustCtl(t, ep, "get", "after", "-w", "json")))
	step("forced: serializable get", n.out(mustCtl(t, ep, "get", "k1", "--consistency=s")))

	// A restart without the flag keeps the one-member cluster.
	m1.Stop()
	m1.opts.extra = slices.DeleteFunc(m1.opts.extra, func(a string) bool { return a == "--force-new-cluster" })
	if err := m1.start(); err != nil {
		t.Fatalf("restart without --force-new-cluster: %v", err)
	}
	step("restarted: member list", n.memberList(t, ep))
	step("restarted: get after", n.out(mustCtl(t, ep, "get", "after")))

	// member add grows it again.
	j := newJoiner(t, im, "m4")
	out := ctlUntil(t, ep, []string{"etcdserver: unhealthy cluster"}, "member", "add", "m4", "--peer-urls="+j.peerURL())
	ic := initialRe.FindStringSubmatch(out)
	if ic == nil {
		t.Fatalf("member add output:\n%s", out)
	}
	// In member ID order, and the new ID is random: compare it sorted.
	spec := strings.Split(ic[1], ",")
	slices.Sort(spec)
	step("member add", n.out(strings.Replace(out, ic[1], strings.Join(spec, ","), 1)))
	j.opts.initialCluster = ic[1]
	j.opts.extra = []string{"--initial-cluster-state", "existing"}
	if err := j.start(); err != nil {
		t.Fatalf("start the joining member: %v", err)
	}
	c.members = append(c.members, j)
	c.waitMembers(m1)
	step("joined: get k1 through the new member", n.out(ctlUntil(t, j.Endpoint(), nil, "get", "k1")))
	step("joined: put through the new member", n.out(mustCtl(t, j.Endpoint(), "put", "k4", "v4")))
	step("joined: get k --prefix", n.out(mustCtl(t, ep, "get", "k", "--prefix", "-w", "json")))
	step("joined: member list", n.memberList(t, ep))
	return steps
}

// TestSplitForceNewCluster: the split topology's consensus subcommand takes
// --force-new-cluster, and the other processes need nothing new. Three
// consensus members (one NATS cluster), a watch fan-out and a lease service
// given the first member's addresses and a gateway given all three; the two
// others are lost for good and the first is restarted with the flag. The
// processes that kept running serve the one-member cluster through the
// gateway: the old keys, writes, a watch opened before the loss that sees
// the write after it at its revision, the lease kept alive, and a member
// list of one.
func TestSplitForceNewCluster(t *testing.T) {
	ms, curls := threeConsensusMembers(t)
	startProcs(t, ms[0].p, ms[1].p, ms[2].p)
	c1 := ms[0]
	gw, _ := startSplitServices(t, c1, curls)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cli := splitClient(t, gw.endpoint())
	for i := range 5 {
		must(cli.Put(ctx, fmt.Sprintf("k/%d", i), "v"))(t)
	}
	lease := must(cli.Grant(ctx, 30))(t)
	before := must(cli.Put(ctx, "k/leased", "v", clientv3.WithLease(lease.ID)))(t).Header.Revision
	wch := cli.Watch(ctx, "k/", clientv3.WithPrefix(), clientv3.WithRev(before+1))
	direct := splitClient(t, c1.p.endpoint())
	id := must(direct.Status(ctx, c1.p.endpoint()))(t).Header.MemberId
	// c1 keeps only what it knows is committed (etcd's rule too): wait
	// until it applied the last acknowledged write, which the leader may
	// have acknowledged first.
	for must(direct.Get(ctx, "k/leased", clientv3.WithSerializable()))(t).Count != 1 {
		if ctx.Err() != nil {
			t.Fatal("c1 never applied the last write")
		}
		time.Sleep(pollInterval)
	}

	ms[1].p.kill()
	ms[2].p.kill()
	if _, ok := c1.p.terminate(stopTimeout); !ok {
		t.Fatal("c1 did not stop on SIGTERM")
	}
	c1.p.args = append(c1.p.args, "--force-new-cluster")
	if err := c1.p.start(); err != nil {
		t.Fatalf("restart c1 with --force-new-cluster: %v", err)
	}

	// The gateway finds the one member left; the first write may meet a
	// connection to a dead member.
	var after int64
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := cli.Put(pctx, "k/after", "v")
		pcancel()
		if err == nil {
			after = r.Header.Revision
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no write through the gateway after force-new-cluster: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after != before+1 {
		t.Fatalf("first write after force-new-cluster at revision %d, want %d", after, before+1)
	}
	if got := must(cli.Get(ctx, "k/", clientv3.WithPrefix(), clientv3.WithCountOnly()))(t); got.Count != 7 {
		t.Fatalf("%d keys under k/ after force-new-cluster, want 7", got.Count)
	}
	ml := must(cli.MemberList(ctx))(t)
	if len(ml.Members) != 1 || ml.Members[0].ID != id || ml.Members[0].Name != "c1" {
		t.Fatalf("member list through the gateway: %v", ml.Members)
	}
	select {
	case wr := <-wch:
		if err := wr.Err(); err != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "k/after" || wr.Events[0].Kv.ModRevision != after {
			t.Fatalf("watch after force-new-cluster: %v, %v", wr.Events, err)
		}
	case <-ctx.Done():
		t.Fatal("the watch opened before the loss never saw the write after force-new-cluster")
	}
	keepAliveEventually(ctx, t, cli, lease.ID, 30, "after force-new-cluster")
}
