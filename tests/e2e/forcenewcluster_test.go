package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
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
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			t.Errorf("step %d differs:\netcd:    %q\nconcord: %q", i, w, g)
		}
	}
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

// memberStatus is what `endpoint status -w json` says of one endpoint.
type memberStatus struct {
	Status struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
			MemberID  uint64 `json:"member_id"`
		} `json:"header"`
		Leader    uint64 `json:"leader"`
		RaftIndex uint64 `json:"raftIndex"`
		RaftTerm  uint64 `json:"raftTerm"`
	} `json:"Status"`
}

func endpointStatus(t *testing.T, endpoint string) memberStatus {
	t.Helper()
	var st []memberStatus
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
	step("put k1", n.out(mustCtl(t, c.endpoints(), "put", "k1", "v1")))
	step("put k2", n.out(mustCtl(t, c.endpoints(), "put", "k2", "v2")))
	grant := mustCtl(t, c.endpoints(), "lease", "grant", "3600")
	step("lease grant", n.out(grant))
	lease := strings.Fields(grant)
	if len(lease) < 2 {
		t.Fatalf("lease grant output %q", grant)
	}
	step("put leased", n.out(mustCtl(t, c.endpoints(), "put", "k3", "v3", "--lease="+lease[1])))
	step("user add", n.out(mustCtl(t, c.endpoints(), "user", "add", "alice", "--new-user-password=pw")))
	before := endpointStatus(t, ep)

	// Quorum is lost for good: two members are gone, a write cannot commit.
	c.members[1].Kill()
	c.members[2].Kill()
	if r := runCtl(t, ep, "", "put", "lost", "x", "--command-timeout=3s"); r.exit == 0 {
		t.Fatalf("a put without quorum succeeded: %q", r.stdout)
	}
	m1.Kill()

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
