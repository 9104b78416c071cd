package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMembership grows a three-member cluster by a learner started with
// --initial-cluster-state existing, promotes it, moves leadership to it and
// removes an original member, all with the real etcdctl, on etcd and on
// concord alike: the same commands, the same outputs and errors.
func TestMembership(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			testMembership(t, im)
		})
	}
}

var (
	// etcdctl prints IDs with %16x: shorter ones are padded with spaces.
	addedRe       = regexp.MustCompile(`Member +([0-9a-f]+) added as learner to cluster +([0-9a-f]+)`)
	promotedRe    = regexp.MustCompile(`Member +([0-9a-f]+) promoted in cluster +([0-9a-f]+)`)
	removedRe     = regexp.MustCompile(`Member +([0-9a-f]+) removed from cluster +([0-9a-f]+)`)
	initialRe     = regexp.MustCompile(`ETCD_INITIAL_CLUSTER="([^"]+)"`)
	transferredRe = regexp.MustCompile(`Leadership transferred from +([0-9a-f]+) to +([0-9a-f]+)`)
)

// ctlUntil runs etcdctl until it succeeds, retrying while its error
// contains one of retryOn, and fails the test on any other error.
func ctlUntil(t *testing.T, endpoint string, retryOn []string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		r := runCtl(t, endpoint, "", args...)
		if r.exit == 0 {
			return r.stdout
		}
		retry := false
		for _, s := range retryOn {
			retry = retry || strings.Contains(r.stderr, s)
		}
		if !retry || time.Now().After(deadline) {
			t.Fatalf("etcdctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.exit, r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ctlFails runs etcdctl and checks it fails with exactly etcd's message.
func ctlFails(t *testing.T, endpoint, wantErr string, args ...string) {
	t.Helper()
	r := runCtl(t, endpoint, "", args...)
	last := strings.TrimSpace(r.stderr)
	if i := strings.LastIndex(last, "\n"); i >= 0 {
		last = last[i+1:]
	}
	if r.exit != 1 || last != wantErr {
		t.Fatalf("etcdctl %s: exit %d, last stderr line %q; want exit 1 and %q", strings.Join(args, " "), r.exit, last, wantErr)
	}
}

// TestGrowFromOneMember adds a voting member to a one-member cluster with
// etcdctl member add, as people grow a single etcd to a cluster. etcd allows
// it at once (the new member cannot be active yet); the new member joins,
// catches up and takes part in the quorum.
func TestGrowFromOneMember(t *testing.T) {
	t.Parallel()
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, im, 1)
			c.waitMembers(c.members[0])
			for i := range 20 {
				mustCtl(t, c.endpoints(), "put", fmt.Sprintf("before/%02d", i), "v")
			}
			j := newJoiner(t, im, "m2")
			out := mustCtl(t, c.endpoints(), "member", "add", "m2", "--peer-urls="+j.peerURL())
			ic := initialRe.FindStringSubmatch(out)
			if !regexp.MustCompile(`Member +[0-9a-f]+ added to cluster +[0-9a-f]+`).MatchString(out) || ic == nil {
				t.Fatalf("member add output:\n%s", out)
			}
			j.opts.initialCluster = ic[1]
			j.opts.extra = []string{"--initial-cluster-state", "existing"}
			if err := j.start(); err != nil {
				t.Fatalf("start the joining member: %v", err)
			}
			c.members = append(c.members, j)
			// Linearizable reads and writes through the new member need
			// both members: the quorum of two.
			if got := ctlUntil(t, j.Endpoint(), nil, "get", "before/19"); got != "before/19\nv\n" {
				t.Fatalf("read through the new member: %q", got)
			}
			mustCtl(t, j.Endpoint(), "put", "after", "1")
			if got := mustCtl(t, c.members[0].Endpoint(), "get", "after"); got != "after\n1\n" {
				t.Fatalf("read of the new member's write through the first: %q", got)
			}
			if ms := c.waitMembers(c.members[0]); len(ms) != 2 {
				t.Fatalf("member list: %v", ms)
			}
			mustCtl(t, j.Endpoint(), "endpoint", "health", "--cluster")
		})
	}
}

// newJoiner picks the ports of a member name that is not started yet (it
// is killed when the test ends).
func newJoiner(t *testing.T, im *impl, name string) *Server {
	t.Helper()
	requireBinary(t, im)
	j := &Server{t: t, impl: im, opts: serverOptions{name: name}, dataDir: t.TempDir(), log: &syncBuffer{}}
	var err error
	if j.clientPort, j.peerPort, err = freePorts(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		j.Kill()
		if t.Failed() {
			t.Logf("%s %s output (last %d bytes):\n%s", im.name, name, logTail, j.log.Tail(logTail))
		}
	})
	return j
}

// addLearner picks the ports of a member m4 with opts, adds it to c as a
// learner with etcdctl member add and returns it (not started; it is killed
// when the test ends) and what member add printed.
func addLearner(t *testing.T, c *cluster, im *impl, opts serverOptions) (*Server, string) {
	t.Helper()
	opts.name = "m4"
	j := newJoiner(t, im, opts.name)
	j.opts = opts
	// etcd refuses changes until its peers have been connected for 5 s.
	out := ctlUntil(t, c.endpoints(), []string{"etcdserver: unhealthy cluster"},
		"member", "add", "m4", "--learner", "--peer-urls="+j.peerURL())
	return j, out
}

func testMembership(t *testing.T, im *impl) {
	c := startCluster(t, im, clusterSize)
	for _, s := range c.members {
		c.waitMembers(s)
	}
	first := c.members[0]
	mustCtl(t, c.endpoints(), "put", "before", "1")

	j, out := addLearner(t, c, im, serverOptions{})
	m := addedRe.FindStringSubmatch(out)
	ic := initialRe.FindStringSubmatch(out)
	if m == nil || ic == nil || !strings.Contains(out, `ETCD_INITIAL_CLUSTER_STATE="existing"`) {
		t.Fatalf("member add output:\n%s", out)
	}
	newID := m[1]

	// etcd's refusals, word for word.
	ctlFails(t, c.endpoints(), "Error: etcdserver: too many learner members in cluster",
		"member", "add", "m5", "--learner", "--peer-urls=http://127.0.0.1:1")
	ctlFails(t, c.endpoints(), "Error: etcdserver: Peer URLs already exists",
		"member", "add", "m5", "--peer-urls="+first.peerURL())
	ctlFails(t, c.endpoints(), "Error: etcdserver: member not found", "member", "remove", "1234")

	// The new member joins with the flags member add printed and catches
	// up with data written before it joined.
	j.opts.initialCluster = ic[1]
	j.opts.extra = []string{"--initial-cluster-state", "existing"}
	if err := j.start(); err != nil {
		t.Fatalf("start the joining member: %v", err)
	}
	if got := ctlUntil(t, j.Endpoint(), nil, "get", "before", "--consistency=s"); got != "before\n1\n" {
		t.Fatalf("serializable read on the learner: %q", got)
	}
	ctlFails(t, j.Endpoint(), "Error: etcdserver: rpc not supported for learner", "put", "x", "y")
	checkLearnerRefusals(t, j.Endpoint())
	ctlFails(t, c.endpoints(), "Error: etcdserver: can only promote a learner member",
		"member", "promote", memberID(t, c, first))

	out = ctlUntil(t, c.endpoints(), []string{"which is in sync with leader"}, "member", "promote", newID)
	if pm := promotedRe.FindStringSubmatch(out); pm == nil || pm[1] != newID || pm[2] != m[2] {
		t.Fatalf("member promote output: %q", out)
	}

	// Every member's client URLs are listed and usable.
	c.members = append(c.members, j)
	for _, mb := range c.waitMembers(first) {
		if got := mustCtl(t, strings.TrimPrefix(mb.ClientURLs[0], "http://"), "get", "before"); got != "before\n1\n" {
			t.Fatalf("linearizable read through %s: %q", mb.ClientURLs[0], got)
		}
	}
	c.checkStatus(first)

	// move-leader: etcdctl finds the leader among the endpoints itself.
	out = mustCtl(t, c.endpoints(), "move-leader", newID)
	if tm := transferredRe.FindStringSubmatch(out); tm == nil || tm[2] != newID {
		t.Fatalf("move-leader output: %q", out)
	}
	if leader := c.checkStatus(first); fmt.Sprintf("%x", leader) != newID {
		t.Fatalf("leader %x after move-leader to %s", leader, newID)
	}

	// Remove an original member: it stops, the others go on.
	firstID := memberID(t, c, first)
	out = ctlUntil(t, j.Endpoint(), []string{"etcdserver: unhealthy cluster"}, "member", "remove", firstID)
	if rm := removedRe.FindStringSubmatch(out); rm == nil || rm[1] != firstID || rm[2] != m[2] {
		t.Fatalf("member remove output: %q", out)
	}
	first.mu.Lock()
	done, cmd := first.done, first.cmd
	first.mu.Unlock()
	select {
	case <-done:
	case <-time.After(readyTimeout):
		t.Fatal("removed member still running")
	}
	// etcd logs the removal and exits 0; so does concord.
	if code := cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(first.log.String(), "the member has been permanently removed from the cluster") {
		t.Fatalf("removed member exited with %d; log tail:\n%s", code, first.log.Tail(2048))
	}
	ctlFails(t, j.Endpoint(), "Error: etcdserver: member not found", "member", "remove", firstID)
	c.members = c.members[1:]
	mustCtl(t, j.Endpoint(), "put", "after", "1")
	var hashes []struct {
		HashKV struct {
			Hash uint32 `json:"hash"`
		} `json:"HashKV"`
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		out = mustCtl(t, j.Endpoint(), "endpoint", "hashkv", "--cluster", "-w", "json")
		if err := json.Unmarshal([]byte(out), &hashes); err != nil {
			t.Fatalf("hashkv output %q: %v", out, err)
		}
		if len(hashes) == 3 && hashes[0].HashKV.Hash == hashes[1].HashKV.Hash && hashes[1].HashKV.Hash == hashes[2].HashKV.Hash {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members never agreed on the KV hash: %s", out)
		}
		time.Sleep(pollInterval)
	}
	mustCtl(t, j.Endpoint(), "endpoint", "health", "--cluster")
}

// memberID is s's member ID as etcdctl prints it (hex).
func memberID(t *testing.T, c *cluster, s *Server) string {
	t.Helper()
	var resp struct {
		Members []ctlMember `json:"members"`
	}
	out := mustCtl(t, c.endpoints(), "member", "list", "-w", "json")
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("member list output %q: %v", out, err)
	}
	for _, mb := range resp.Members {
		if mb.Name == s.opts.name {
			return strconv.FormatUint(mb.ID, 16)
		}
	}
	t.Fatalf("%s not in the member list: %s", s.opts.name, out)
	return ""
}
