package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ctlTimeout bounds one etcdctl invocation; etcdctl's own --command-timeout is 5 s.
const ctlTimeout = 60 * time.Second

// ctlResult is what one etcdctl invocation produced.
type ctlResult struct {
	stdout, stderr string
	exit           int
}

// runCtl runs the real etcdctl against endpoint with args, feeding stdin.
func runCtl(t testing.TB, endpoint, stdin string, args ...string) ctlResult {
	t.Helper()
	requireBinary(t, etcdctlBin)
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	// Generous timeouts: CI may be compiling or testing other packages on the same two cores.
	// They are global flags, so they do not show in transcripts.
	full := append([]string{"--endpoints=" + endpoint, "--dial-timeout=10s", "--command-timeout=30s"}, args...)
	cmd := exec.CommandContext(ctx, etcdctlBin.bin, full...)
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := ctlResult{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && ctx.Err() == nil:
		res.exit = exitErr.ExitCode()
	default:
		t.Fatalf("etcdctl %s: %v (stderr: %s)", strings.Join(args, " "), err, stderr.String())
	}
	return res
}

// mustCtl runs etcdctl and fails the test unless it exits 0; it returns stdout.
func mustCtl(t testing.TB, endpoint string, args ...string) string {
	t.Helper()
	r := runCtl(t, endpoint, "", args...)
	if r.exit != 0 {
		t.Fatalf("etcdctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.exit, r.stdout, r.stderr)
	}
	return r.stdout
}

// newClient returns a clientv3 client for s, closed when the test ends.
func newClient(t testing.TB, s *Server) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{s.Endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("clientv3.New(%s): %v", s.Endpoint(), err)
	}
	t.Cleanup(func() { closeClientBounded(t, c) })
	return c
}

// closeClientBounded closes c, giving up after 10 s. clientv3 v3.7.3's
// Close hung for good here once, on a heavily loaded machine: its watch
// stream's goroutine, tearing down, waited for one of its watch goroutines,
// which waited to report its end on a channel nobody read any more
// (watch.go's closingc). The test's outcomes are collected by then, so a
// hang is logged rather than left to stall the whole suite.
func closeClientBounded(t testing.TB, c *clientv3.Client) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Logf("clientv3 Close of %v did not return within 10s (clientv3 watch teardown race); left behind", c.Endpoints())
	}
}

// normalizer turns output that legitimately differs between two servers into placeholders.
// Placeholders are numbered in order of first appearance within one transcript, so equal values
// stay equal (member_id == leader, a hash unchanged by a restart) and different ones different.
type normalizer struct {
	ids    map[string]string
	hashes map[string]string
}

func newNormalizer() *normalizer {
	return &normalizer{ids: map[string]string{}, hashes: map[string]string{}}
}

func (n *normalizer) id(v string) string {
	p, ok := n.ids[v]
	if !ok {
		p = fmt.Sprintf("<id%d>", len(n.ids)+1)
		n.ids[v] = p
	}
	return p
}

func (n *normalizer) hash(v string) string {
	p, ok := n.hashes[v]
	if !ok {
		p = fmt.Sprintf("<hash%d>", len(n.hashes)+1)
		n.hashes[v] = p
	}
	return p
}

var (
	reEndpoint = regexp.MustCompile(`127\.0\.0\.1:\d+`)
	// IDs: JSON headers and status, `-w fields`, and alarm members (`memberID:N` from prototext).
	reJSONID   = regexp.MustCompile(`"(cluster_id|member_id|leader|memberID)":(\d+)`)
	reFieldsID = regexp.MustCompile(`"(ClusterID|MemberID)" : (\d+)`)
	reMemberID = regexp.MustCompile(`memberID:(\d+)\s+alarm:(\w+) ?`)
	// Raft terms and indexes and database sizes depend on each server's internals.
	reJSONNum   = regexp.MustCompile(`"(raft_term|raftTerm|raftIndex|raftAppliedIndex|dbSize|dbSizeInUse)":\d+`)
	reFieldsNum = regexp.MustCompile(`"(RaftTerm)" : \d+`)
	// Hashes are compared by equality only.
	reJSONHash   = regexp.MustCompile(`"hash":(\d+)`)
	reSimpleHash = regexp.MustCompile(`(?m)^(<endpoint>), (\d+), (\d+)$`)
	// Durations.
	reJSONTook   = regexp.MustCompile(`"took":"[^"]*"`)
	reTookEquals = regexp.MustCompile(`took = \S+`)
	reTookDefrag = regexp.MustCompile(`\. took \S+`)
	// The server's version: 3.7.<patch> is what a 3.7 client expects; the patch may differ.
	reVersion = regexp.MustCompile(`"version":"3\.7\.\d+"`)
	// etcd reports storage version 3.5.0 until its storage-version monitor
	// upgrades it, a moment after start; the settled value is what counts.
	reEtcdStartStorageVersion = regexp.MustCompile(`"storageVersion":"3\.5\.0"`)
)

// stdout normalizes etcdctl's standard output.
func (n *normalizer) stdout(s string) string {
	s = reEndpoint.ReplaceAllString(s, "<endpoint>")
	s = reJSONID.ReplaceAllStringFunc(s, func(m string) string {
		sub := reJSONID.FindStringSubmatch(m)
		return fmt.Sprintf("%q:%s", sub[1], n.id(sub[2]))
	})
	s = reFieldsID.ReplaceAllStringFunc(s, func(m string) string {
		sub := reFieldsID.FindStringSubmatch(m)
		return fmt.Sprintf("%q : %s", sub[1], n.id(sub[2]))
	})
	s = reMemberID.ReplaceAllStringFunc(s, func(m string) string {
		// Status errors carry AlarmMember.String(), protobuf-go's text format, which adds
		// spaces at random (stable per binary) so nobody depends on it: etcd's binary prints
		// "memberID:N  alarm:NOSPACE", another build "memberID:N alarm:NOSPACE ". Canonical
		// form: single spaces, none trailing.
		sub := reMemberID.FindStringSubmatch(m)
		return "memberID:" + n.id(sub[1]) + " alarm:" + sub[2]
	})
	s = reJSONNum.ReplaceAllString(s, `"$1":<n>`)
	s = reFieldsNum.ReplaceAllString(s, `"$1" : <n>`)
	s = reJSONHash.ReplaceAllStringFunc(s, func(m string) string {
		return `"hash":` + n.hash(reJSONHash.FindStringSubmatch(m)[1])
	})
	s = reSimpleHash.ReplaceAllStringFunc(s, func(m string) string {
		sub := reSimpleHash.FindStringSubmatch(m)
		return sub[1] + ", " + n.hash(sub[2]) + ", " + sub[3]
	})
	s = reJSONTook.ReplaceAllString(s, `"took":"<d>"`)
	s = reTookEquals.ReplaceAllString(s, "took = <d>")
	s = reTookDefrag.ReplaceAllString(s, ". took <d>")
	s = reVersion.ReplaceAllString(s, `"version":"3.7.x"`)
	s = reEtcdStartStorageVersion.ReplaceAllString(s, `"storageVersion":"3.7.0"`)
	return s
}

// clientLog is the part of clientv3's zap JSON log lines that says what the server answered.
type clientLog struct {
	Level  string `json:"level"`
	Msg    string `json:"msg"`
	Method string `json:"method"`
	Error  string `json:"error"`
}

// stderr normalizes etcdctl's standard error. clientv3 logs each failed unary attempt as a JSON
// line carrying the gRPC status code; only method and error of those lines are kept, so a wrong
// code (for example Unknown instead of InvalidArgument) is a difference. Other log lines are
// dropped.
func (n *normalizer) stderr(s string) string {
	var out []string
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.HasPrefix(line, `{"level":`) {
			var l clientLog
			if err := json.Unmarshal([]byte(line), &l); err == nil && l.Error != "" && l.Method != "" {
				out = append(out, "grpc "+l.Method+": "+strings.TrimPrefix(l.Error, "rpc error: "))
			}
			continue
		}
		if line != "" {
			out = append(out, line)
		}
	}
	return n.stdout(strings.Join(out, "\n"))
}
