package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/concord-kv/concord/consensus/eventbus"
	"github.com/concord-kv/concord/internal/launcher"
	"github.com/concord-kv/concord/watchfanout/watchtest"
)

// Watch: etcdctl transcripts compared with etcd (a watch runs in the background while other steps
// write; its output is shown when it is stopped), and clientv3 / raw Watch stream tests run against
// both servers with the same assertions (watch_client_test.go).
//
// A background watch's output is deterministic only if every event is printed before the step
// that depends on it runs, so scenarios wait for an exact number of output lines after each write
// (a wait that times out is reported, and the transcript then shows what was printed). Watches
// from "now" are made deterministic without sleeping by registering them in interactive mode
// followed by `progress`: a progress response comes only after the watches created before it on
// the stream, so once it is printed the watch is registered.

// waitTimeout bounds one wait for background output.
const waitTimeout = 20 * time.Second

// bgCtl is an etcdctl process running in the background (a watch).
type bgCtl struct {
	cmd            *exec.Cmd
	stdin          io.WriteCloser // nil unless interactive
	stdout, stderr *syncBuffer
	done           chan struct{} // closed when the process has been reaped
	exit           int           // valid after done; -1 when killed
	killed         bool
}

// startBgCtl starts etcdctl with args against endpoint; with interactive its stdin is a pipe fed
// by input. The process is killed when the test ends.
func startBgCtl(t *testing.T, endpoint string, interactive bool, args ...string) *bgCtl {
	t.Helper()
	requireBinary(t, etcdctlBin)
	full := append([]string{"--endpoints=" + endpoint, "--dial-timeout=10s", "--command-timeout=30s"}, args...)
	b := &bgCtl{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(etcdctlBin.bin, full...)
	b.cmd.Env = cleanEnv()
	b.cmd.SysProcAttr = launcher.SysProcAttr()
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	if interactive {
		w, err := b.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		b.stdin = w
	}
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start etcdctl %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		err := b.cmd.Wait()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			b.exit = exitErr.ExitCode()
		}
		close(b.done)
	}()
	t.Cleanup(func() { b.kill() })
	return b
}

// input writes one line to the interactive process's stdin.
func (b *bgCtl) input(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(b.stdin, line+"\n"); err != nil {
		t.Fatalf("write %q to etcdctl: %v", line, err)
	}
}

// wait waits until stdout holds at least out lines and stderr at least errs lines. It reports
// false after waitTimeout or when the process ended first.
func (b *bgCtl) wait(out, errs int) bool {
	deadline := time.Now().Add(waitTimeout)
	for {
		if strings.Count(b.stdout.String(), "\n") >= out && strings.Count(b.stderr.String(), "\n") >= errs {
			return true
		}
		select {
		case <-b.done:
			return strings.Count(b.stdout.String(), "\n") >= out && strings.Count(b.stderr.String(), "\n") >= errs
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// kill kills the process (if it still runs) and waits for it. Idempotent.
func (b *bgCtl) kill() {
	select {
	case <-b.done:
		return
	default:
	}
	b.killed = true
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
}

// eof closes stdin and waits for the process to exit on its own.
func (b *bgCtl) eof() bool {
	_ = b.stdin.Close()
	select {
	case <-b.done:
		return true
	case <-time.After(waitTimeout):
		b.kill()
		return false
	}
}

// result is the process's output and exit status (-1 when it was killed).
func (b *bgCtl) result() ctlResult {
	r := ctlResult{stdout: b.stdout.String(), stderr: b.stderr.String(), exit: b.exit}
	if b.killed {
		r.exit = -1
	}
	return r
}

// wkind says what a watch scenario step does.
type wkind int

const (
	wRun   wkind = iota // run etcdctl to completion (as in scenario_test.go)
	wStart              // start a background etcdctl
	wInput              // write one line to a background etcdctl's stdin
	wWait               // wait for a number of output lines of a background etcdctl
	wKill               // kill a background etcdctl and show its output
	wEOF                // close its stdin, let it exit and show its output and status
)

// wstep is one step of a watch scenario; name identifies the background process.
type wstep struct {
	kind     wkind
	name     string
	args     []string
	stdin    string // wRun: stdin; wInput: the line
	out, err int    // wWait: lines expected on stdout and stderr (totals since start)
	inter    bool   // wStart: interactive (stdin is a pipe)
}

func wctl(args ...string) wstep              { return wstep{kind: wRun, args: args} }
func wctlIn(in string, args ...string) wstep { return wstep{kind: wRun, args: args, stdin: in} }
func wbg(name string, args ...string) wstep  { return wstep{kind: wStart, name: name, args: args} }
func wbgInteractive(name string, args ...string) wstep {
	return wstep{kind: wStart, name: name, args: args, inter: true}
}
func winput(name, line string) wstep   { return wstep{kind: wInput, name: name, stdin: line} }
func wwait(name string, out int) wstep { return wstep{kind: wWait, name: name, out: out} }
func wwaitErr(name string, out, errs int) wstep {
	return wstep{kind: wWait, name: name, out: out, err: errs}
}
func wkill(name string) wstep { return wstep{kind: wKill, name: name} }
func weof(name string) wstep  { return wstep{kind: wEOF, name: name} }

// wseq flattens steps and slices of steps.
func wseq(parts ...any) []wstep {
	var out []wstep
	for _, p := range parts {
		switch v := p.(type) {
		case wstep:
			out = append(out, v)
		case []wstep:
			out = append(out, v...)
		default:
			panic(fmt.Sprintf("wseq: unexpected %T", p))
		}
	}
	return out
}

// render is the transcript entry of a step. Background processes are shown as "[name]"; their
// output appears when they are stopped.
func (ws wstep) render(n *normalizer, r ctlResult) string {
	tag := "$ [" + ws.name + "] "
	switch ws.kind {
	case wRun:
		return step{kind: stepCtl, args: ws.args, stdin: ws.stdin}.render(n, r)
	case wStart:
		var b strings.Builder
		b.WriteString(tag + "etcdctl")
		for _, a := range ws.args {
			b.WriteString(" " + shellQuote(a))
		}
		b.WriteString(" &\n")
		return b.String()
	case wInput:
		return tag + "<stdin> " + ws.stdin + "\n"
	case wWait:
		return fmt.Sprintf("%s<wait for %d stdout lines, %d stderr lines>\n", tag, ws.out, ws.err)
	}
	var b strings.Builder
	if ws.kind == wKill {
		b.WriteString(tag + "<kill>\n")
	} else {
		b.WriteString(tag + "<close stdin>\n")
	}
	if out := strings.TrimRight(n.stdout(r.stdout), "\n"); out != "" {
		b.WriteString(out + "\n")
	}
	if errOut := n.stderr(r.stderr); errOut != "" {
		for _, line := range strings.Split(errOut, "\n") {
			b.WriteString("stderr: " + line + "\n")
		}
	}
	if r.exit > 0 {
		fmt.Fprintf(&b, "exit: %d\n", r.exit)
	}
	return b.String()
}

// runWatchScenario is runScenario for scenarios with background etcdctl processes.
func runWatchScenario(t *testing.T, name string, extra []string, steps []wstep) {
	t.Parallel()
	golden := filepath.Join("testdata", name+".golden")
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			s := startServer(t, im, serverOptions{extra: extra})
			n := newNormalizer()
			bg := map[string]*bgCtl{}
			proc := func(ws wstep) *bgCtl {
				b := bg[ws.name]
				if b == nil {
					t.Fatalf("step refers to background etcdctl %q before it started", ws.name)
				}
				return b
			}
			var got []string
			for i, ws := range steps {
				var r ctlResult
				switch ws.kind {
				case wRun:
					r = runCtl(t, s.Endpoint(), ws.stdin, ws.args...)
				case wStart:
					bg[ws.name] = startBgCtl(t, s.Endpoint(), ws.inter, ws.args...)
				case wInput:
					proc(ws).input(t, ws.stdin)
				case wWait:
					if b := proc(ws); !b.wait(ws.out, ws.err) {
						// Reported, not fatal: the transcript then shows what was printed.
						t.Errorf("step %d: [%s] printed %d stdout and %d stderr lines within %v, want %d and %d\nstdout:\n%s\nstderr:\n%s",
							i+1, ws.name, strings.Count(b.stdout.String(), "\n"), strings.Count(b.stderr.String(), "\n"),
							waitTimeout, ws.out, ws.err, b.stdout.String(), b.stderr.String())
					}
				case wKill:
					b := proc(ws)
					b.kill()
					r = b.result()
				case wEOF:
					b := proc(ws)
					if !b.eof() {
						t.Errorf("step %d: [%s] did not exit within %v of its stdin closing", i+1, ws.name, waitTimeout)
					}
					r = b.result()
				}
				got = append(got, ws.render(n, r))
			}
			if im == etcdImpl && *updateGolden {
				if t.Failed() {
					t.Fatal("not rewriting the golden file from a failed run")
				}
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

// Non-interactive `etcdctl watch`: history from --rev then live events, on a key, a range, a
// prefix, with --prev-kv, as JSON, and the exec form with its ETCD_WATCH_* variables; then
// compaction (a watch below the compaction revision is canceled and etcdctl exits) and etcdctl's
// argument errors. Every background watch starts at an explicit revision, so when it registers
// does not matter; live writes wait until every watch printed the previous one.
func TestCtlWatch(t *testing.T) {
	const execCmd = `echo "rev=$ETCD_WATCH_REVISION type=$ETCD_WATCH_EVENT_TYPE key=$ETCD_WATCH_KEY value=$ETCD_WATCH_VALUE"`
	runWatchScenario(t, "watch", nil, wseq(
		wctl("put", "a", "1"),   // 2
		wctl("put", "b", "1"),   // 3
		wctl("put", "a", "2"),   // 4
		wctl("put", "c/1", "x"), // 5
		wctl("del", "b"),        // 6
		wctlIn(txnInput(nil, []string{"put a 3", "put c/2 y"}, nil), "txn"), // 7
		// History replay. Simple output: 3 lines per event, 5 for a put with a previous value.
		wbg("key", "watch", "a", "--rev", "2"),
		wbg("prev", "watch", "a", "--rev=2", "--prev-kv"),
		wbg("range", "watch", "a", "c", "--rev", "1"),
		wbg("prefix", "watch", "--prefix", "c/", "--rev", "1"),
		wbg("json", "watch", "--rev", "8", "-w", "json", "c/", "--prefix"),
		wbg("exec", "watch", "--rev", "8", "a", "--", "sh", "-c", execCmd),
		wwait("key", 9),    // a@2, a@4, a@7
		wwait("prev", 13),  // a@2 (3), a@4 (5), a@7 (5)
		wwait("range", 15), // a@2, b@3, a@4, b deleted @6, a@7
		wwait("prefix", 6), // c/1@5, c/2@7
		// Live events, one revision at a time.
		wctl("put", "a", "4"),                                                     // 8
		wwait("key", 12), wwait("prev", 18), wwait("range", 18), wwait("exec", 4), // the event, then the command's line
		wctl("put", "c/3", "z"), // 9
		wwait("prefix", 9), wwait("json", 1),
		wctl("del", "a"), // 10: DELETE prints the key and an empty value line
		wwait("key", 15), wwait("prev", 23), wwait("range", 21), wwait("exec", 8),
		wctlIn(txnInput(nil, []string{"put a 5", "del c/ --prefix"}, nil), "txn"), // 11: one revision, 4 events
		wwait("key", 18), wwait("prev", 26), wwait("range", 24), wwait("prefix", 18), wwait("json", 2), wwait("exec", 12),
		wctl("put", "b", "2", "--prev-kv"), // 12: only the range watch sees it
		wwait("range", 27),
		wkill("key"), wkill("prev"), wkill("range"), wkill("prefix"), wkill("json"), wkill("exec"),

		// Compaction: a watch below the compaction revision is created, then canceled; etcdctl
		// prints the error and exits. At the compaction revision it is served.
		wctl("compact", "7"),
		wctl("watch", "a", "--rev", "2"),
		wctl("watch", "--prefix", "c/", "--rev", "6", "--prev-kv"),
		wbg("atcompact", "watch", "a", "--rev", "7"),
		wwait("atcompact", 12), // a@7, a@8, a deleted @10, a@11
		wkill("atcompact"),

		// etcdctl's own argument checks.
		wctl("watch"),
		wctl("watch", "a", "b", "--prefix"),
		wctl("watch", "a", "--"),
	))
}

// `etcdctl watch -i`: watches from "now" (registered before the writes by a following
// `progress`), several watches on one stream, prev-kv, a range, exec, history from --rev, and
// the commands etcdctl rejects. Writes wait until their events are printed, and no two watches
// of the stream match the same write, so output lines never interleave.
func TestCtlWatchInteractive(t *testing.T) {
	const execCmd = `watch z -- sh -c 'echo "exec $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY=$ETCD_WATCH_VALUE"'`
	runWatchScenario(t, "watch-interactive", nil, wseq(
		wctl("put", "x", "0"), // 2
		wbgInteractive("i", "watch", "-i"),
		winput("i", "watch x"),
		winput("i", "progress"),
		wwait("i", 1),         // progress notify: 2
		wctl("put", "x", "1"), // 3
		wwait("i", 4),
		winput("i", "watch --prefix y/ --prev-kv"),
		winput("i", "progress"),
		wwait("i", 6),           // one progress line per watch of the stream
		wctl("put", "y/1", "a"), // 4
		wwait("i", 9),
		wctl("put", "y/1", "b"), // 5: with its previous value
		wwait("i", 14),
		winput("i", "watch m n"),
		winput("i", "progress"),
		wwait("i", 17),
		wctl("put", "m1", "r"), // 6: in [m, n)
		wwait("i", 20),
		wctl("put", "n", "r"), // 7: not in [m, n)
		winput("i", execCmd),
		winput("i", "progress"),
		wwait("i", 24),
		wctl("put", "z", "1"), // 8: printed, then the command's output
		wwait("i", 28),
		winput("i", "watch --rev 2 x"), // history of x, then live
		wwait("i", 34),
		winput("i", "cancel 0"),
		wwaitErr("i", 34, 1),
		winput("i", "watch a b --prefix"),
		wwaitErr("i", 34, 2),
		winput("i", ""),
		wwaitErr("i", 34, 3),
		winput("i", "watch"),
		wwaitErr("i", 34, 4),
		weof("i"),
	))
}

// ---- clientv3 and raw Watch streams, same assertions against etcd and concord ----

// watchFlags make progress notifications frequent enough to test (etcd's flag; its minimum is 100ms).
var watchFlags = []string{"--watch-progress-notify-interval=300ms"}

// collectEvents receives from wch until n events arrived, returning them and the responses that
// carried them (progress notifications are skipped). It fails the test on a closed channel, an
// error, or a timeout.
func collectEvents(t *testing.T, wch clientv3.WatchChan, n int) ([]*clientv3.Event, []clientv3.WatchResponse) {
	t.Helper()
	var evs []*clientv3.Event
	var resps []clientv3.WatchResponse
	deadline := time.After(waitTimeout)
	for len(evs) < n {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("watch channel closed after %d of %d events", len(evs), n)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch failed after %d of %d events: %v", len(evs), n, err)
			}
			if len(wr.Events) > 0 {
				resps = append(resps, wr)
				evs = append(evs, wr.Events...)
			}
		case <-deadline:
			t.Fatalf("%d of %d events within %v", len(evs), n, waitTimeout)
		}
	}
	return evs, resps
}

// requestedProgress waits for the answer to a RequestProgress made after revision rev was written:
// a progress notification at exactly rev (no write came later), and nothing before it.
func requestedProgress(t *testing.T, wch clientv3.WatchChan, rev int64) {
	t.Helper()
	select {
	case wr, ok := <-wch:
		if !ok || wr.Err() != nil {
			t.Fatalf("watch ended: %v", wr.Err())
		}
		if len(wr.Events) > 0 || !wr.IsProgressNotify() {
			t.Fatalf("unexpected response %+v", wr)
		}
		if wr.Header.Revision != rev {
			t.Fatalf("progress notification at revision %d, want %d (the store's revision when it was requested)", wr.Header.Revision, rev)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("no progress notification at revision %d within %v", rev, waitTimeout)
	}
}

// evString renders events as "PUT k=v@rev" / "DELETE k@rev", with "(prev v)" when present.
func evString(evs []*clientv3.Event) string {
	var parts []string
	for _, ev := range evs {
		s := fmt.Sprintf("%s %s", ev.Type, ev.Kv.Key)
		if ev.Type == mvccpb.PUT {
			s += "=" + string(ev.Kv.Value)
		}
		s += fmt.Sprintf("@%d", ev.Kv.ModRevision)
		if ev.PrevKv != nil {
			s += " (prev " + string(ev.PrevKv.Value) + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// watchFixture writes revisions 2..7:
//
//	2 put k1=v1, 3 put k2=v1, 4 put k1=v2, 5 del k2, 6 txn{put k3=v1, del k1}, 7 put other=x
func watchFixture(ctx context.Context, t *testing.T, c *clientv3.Client) {
	t.Helper()
	must(c.Put(ctx, "k1", "v1"))(t)
	must(c.Put(ctx, "k2", "v1"))(t)
	must(c.Put(ctx, "k1", "v2"))(t)
	must(c.Delete(ctx, "k2"))(t)
	must(c.Txn(ctx).Then(clientv3.OpPut("k3", "v1"), clientv3.OpDelete("k1")).Commit())(t)
	must(c.Put(ctx, "other", "x"))(t)
}

// clientv3.Watch options: WithRev (history, then live), WithPrefix, WithRange, WithFromKey,
// WithPrevKV, WithFilterPut/WithFilterDelete, WithCreatedNotify; all events of a revision in one
// response.
func TestWatchClientOptions(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		watchFixture(ctx, t, c)
		for _, tc := range []struct {
			name string
			key  string
			opts []clientv3.OpOption
			n    int
			want string
		}{
			{"prefix from rev 2", "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(2)}, 6,
				"PUT k1=v1@2, PUT k2=v1@3, PUT k1=v2@4, DELETE k2@5, PUT k3=v1@6, DELETE k1@6"},
			{"key with prev kv", "k1", []clientv3.OpOption{clientv3.WithRev(1), clientv3.WithPrevKV()}, 3,
				"PUT k1=v1@2, PUT k1=v2@4 (prev v1), DELETE k1@6 (prev v2)"},
			{"range [k1, k3)", "k1", []clientv3.OpOption{clientv3.WithRange("k3"), clientv3.WithRev(3)}, 4,
				"PUT k2=v1@3, PUT k1=v2@4, DELETE k2@5, DELETE k1@6"},
			{"from key k2", "k2", []clientv3.OpOption{clientv3.WithFromKey(), clientv3.WithRev(2)}, 4,
				"PUT k2=v1@3, DELETE k2@5, PUT k3=v1@6, PUT other=x@7"},
			{"no puts", "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(2), clientv3.WithFilterPut(), clientv3.WithPrevKV()}, 2,
				"DELETE k2@5 (prev v1), DELETE k1@6 (prev v2)"},
			{"no deletes", "k", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(4), clientv3.WithFilterDelete()}, 2,
				"PUT k1=v2@4, PUT k3=v1@6"},
		} {
			wctx, cancel := context.WithCancel(ctx)
			evs, resps := collectEvents(t, c.Watch(wctx, tc.key, tc.opts...), tc.n)
			cancel()
			if got := evString(evs); got != tc.want {
				t.Errorf("%s: got %s\nwant %s", tc.name, got, tc.want)
			}
			// Headers cover their events, and the events of revision 6 (a txn) arrive in one
			// response (etcd may put several revisions of history in one response; concord
			// sends one per revision).
			sixes := 0
			for _, wr := range resps {
				if last := wr.Events[len(wr.Events)-1].Kv.ModRevision; wr.Header.Revision < last {
					t.Errorf("%s: header revision %d below its last event's %d", tc.name, wr.Header.Revision, last)
				}
				for _, ev := range wr.Events {
					if ev.Kv.ModRevision == 6 {
						sixes++
						break
					}
				}
			}
			if sixes > 1 {
				t.Errorf("%s: the events of revision 6 were split over %d responses", tc.name, sixes)
			}
		}

		// A watch from now: the created notification carries the current revision; then live
		// events, and a txn's events together.
		wch := c.Watch(ctx, "live/", clientv3.WithPrefix(), clientv3.WithCreatedNotify(), clientv3.WithPrevKV())
		select {
		case wr := <-wch:
			if !wr.Created || wr.Header.Revision != 7 || wr.Header.ClusterId == 0 || wr.Header.MemberId == 0 || wr.Header.RaftTerm == 0 {
				t.Errorf("created notification = %+v, want revision 7 and a full header", wr)
			}
		case <-time.After(waitTimeout):
			t.Fatal("no created notification")
		}
		must(c.Put(ctx, "live/a", "1"))(t)
		must(c.Txn(ctx).Then(clientv3.OpPut("live/a", "2"), clientv3.OpPut("live/b", "1"), clientv3.OpPut("zzz", "not watched")).Commit())(t)
		must(c.Delete(ctx, "live/", clientv3.WithPrefix()))(t)
		evs, resps := collectEvents(t, wch, 5)
		if got, want := evString(evs), "PUT live/a=1@8, PUT live/a=2@9 (prev 1), PUT live/b=1@9, DELETE live/a@10 (prev 2), DELETE live/b@10 (prev 1)"; got != want {
			t.Errorf("live: got %s\nwant %s", got, want)
		}
		if len(resps) != 3 || resps[1].Header.Revision != 9 || resps[1].Header.RaftTerm == 0 || len(resps[1].Events) != 2 {
			t.Errorf("live responses = %+v, want one per revision with full headers", resps)
		}
	})
}

// Progress: notifications (WithProgressNotify at --watch-progress-notify-interval) on a quiet
// watch carry the current revision, and RequestProgress is answered once the stream's watches
// are synced.
func TestWatchProgress(t *testing.T) {
	forEachImpl(t, serverOptions{extra: watchFlags}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		must(c.Put(ctx, "busy", "1"))(t) // 2
		pctx, pcancel := context.WithCancel(ctx)
		defer pcancel()
		pch := c.Watch(pctx, "quiet", clientv3.WithProgressNotify())
		waitProgress := func(rev int64) {
			t.Helper()
			deadline := time.After(waitTimeout)
			for {
				select {
				case wr, ok := <-pch:
					if !ok || wr.Err() != nil || len(wr.Events) > 0 {
						t.Fatalf("progress watch: %+v ok=%v err=%v", wr, ok, wr.Err())
					}
					if wr.IsProgressNotify() && wr.Header.Revision == rev {
						return
					}
					if wr.Header.Revision > rev {
						t.Fatalf("progress notification at %d, want %d", wr.Header.Revision, rev)
					}
				case <-deadline:
					t.Fatalf("no progress notification at revision %d within %v", rev, waitTimeout)
				}
			}
		}
		waitProgress(2)
		must(c.Put(ctx, "busy", "2"))(t) // 3
		waitProgress(3)

		// RequestProgress: one response (watch ID -1, broadcast by clientv3) per request, at
		// the current revision, once the created response shows the watch is registered.
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		rch := c.Watch(rctx, "k", clientv3.WithCreatedNotify())
		if wr := <-rch; !wr.Created {
			t.Fatalf("first response %+v, want created", wr)
		}
		must(c.Put(ctx, "k", "v"))(t) // 4
		if evs, _ := collectEvents(t, rch, 1); evs[0].Kv.ModRevision != 4 {
			t.Fatalf("event %v", evs)
		}
		must(c.Put(ctx, "unwatched", "v"))(t) // 5
		if err := c.RequestProgress(rctx); err != nil {
			t.Fatal(err)
		}
		requestedProgress(t, rch, 5)
	})
}

// Many watches share one gRPC stream (clientv3 multiplexes watches of equal contexts); canceling
// some leaves the others working.
func TestWatchManyOnOneStream(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		const n = 60
		chans := make([]clientv3.WatchChan, n)
		cancels := make([]context.CancelFunc, n)
		for i := range n {
			wctx, cancel := context.WithCancel(ctx)
			cancels[i] = cancel
			chans[i] = c.Watch(wctx, fmt.Sprintf("m/%02d", i), clientv3.WithRev(2))
		}
		defer func() {
			for _, cancel := range cancels {
				cancel()
			}
		}()
		for i := range n {
			must(c.Put(ctx, fmt.Sprintf("m/%02d", i), "a"))(t) // revision i+2
		}
		for i := range n {
			evs, _ := collectEvents(t, chans[i], 1)
			if string(evs[0].Kv.Key) != fmt.Sprintf("m/%02d", i) || evs[0].Kv.ModRevision != int64(i+2) {
				t.Fatalf("watch %d got %s", i, evString(evs))
			}
		}
		for i := 0; i < n; i += 2 {
			cancels[i]()
		}
		for i := range n {
			must(c.Put(ctx, fmt.Sprintf("m/%02d", i), "b"))(t)
		}
		for i := range n {
			if i%2 == 0 {
				// A canceled watch's channel is closed (possibly after events already queued).
				deadline := time.After(waitTimeout)
			drain:
				for {
					select {
					case _, ok := <-chans[i]:
						if !ok {
							break drain
						}
					case <-deadline:
						t.Fatalf("watch %d not closed after cancel", i)
					}
				}
				continue
			}
			evs, _ := collectEvents(t, chans[i], 1)
			if string(evs[0].Kv.Value) != "b" {
				t.Fatalf("watch %d got %s", i, evString(evs))
			}
		}
	})
}

// rawStream is a raw etcdserverpb Watch stream whose responses are collected in the background.
type rawStream struct {
	t  *testing.T
	ws pb.Watch_WatchClient

	mu    sync.Mutex
	resps []*pb.WatchResponse
	err   error
	wake  chan struct{}
	done  chan struct{}
}

// openRaw opens a Watch stream of its own on c's connection, with the call options opts; it
// ends with the test.
func openRaw(ctx context.Context, t *testing.T, c *clientv3.Client, opts ...grpc.CallOption) *rawStream {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	ws, err := pb.NewWatchClient(c.ActiveConnection()).Watch(ctx, opts...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &rawStream{t: t, ws: ws, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			resp, err := ws.Recv()
			r.mu.Lock()
			if err != nil {
				r.err = err
				r.mu.Unlock()
				return
			}
			r.resps = append(r.resps, resp)
			r.mu.Unlock()
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done // Recv returns once the stream's context is canceled
	})
	return r
}

func (r *rawStream) send(req *pb.WatchRequest) {
	r.t.Helper()
	if err := r.ws.Send(req); err != nil {
		r.t.Fatalf("send %v: %v", req, err)
	}
}

func (r *rawStream) create(cr *pb.WatchCreateRequest) {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}})
}

func (r *rawStream) cancel(id int64) {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
}

func (r *rawStream) progress() {
	r.t.Helper()
	r.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

// all returns a copy of the responses so far.
func (r *rawStream) all() []*pb.WatchResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*pb.WatchResponse(nil), r.resps...)
}

// waitFor waits until cond holds for the responses received so far.
func (r *rawStream) waitFor(what string, cond func([]*pb.WatchResponse) bool) []*pb.WatchResponse {
	r.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		if rs := r.all(); cond(rs) {
			return rs
		}
		r.mu.Lock()
		err := r.err
		r.mu.Unlock()
		if err != nil {
			r.t.Fatalf("waiting for %s: stream ended: %v", what, err)
		}
		select {
		case <-r.wake:
		case <-deadline:
			r.t.Fatalf("waiting for %s: not within %v; responses: %v", what, waitTimeout, r.all())
		}
	}
}

// next waits for the response after the first n and returns it.
func (r *rawStream) next(n int) *pb.WatchResponse {
	r.t.Helper()
	return r.waitFor(fmt.Sprintf("response %d", n+1), func(rs []*pb.WatchResponse) bool { return len(rs) > n })[n]
}

// sameResp compares a response with what etcd sends, ignoring the header's IDs and term (checked
// to be set) and comparing its revision.
func sameResp(t *testing.T, what string, got, want *pb.WatchResponse) {
	t.Helper()
	h := got.GetHeader()
	if h == nil || h.ClusterId == 0 || h.MemberId == 0 || h.RaftTerm == 0 {
		t.Errorf("%s: incomplete header %v", what, h)
	}
	g := proto.CloneOf(got)
	g.Header = &pb.ResponseHeader{Revision: h.GetRevision()}
	if !proto.Equal(g, want) {
		t.Errorf("%s:\n got  %v\n want %v", what, g, want)
	}
}

// The raw Watch stream: client-chosen and automatic IDs, duplicate IDs, empty ranges, negative
// and future start revisions, cancel (of a known and an unknown ID), progress requests, and
// compaction cancels with etcd's exact responses.
func TestWatchRawStream(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		for i := range 3 {
			must(c.Put(ctx, "a", fmt.Sprint(i)))(t) // 2..4
		}
		r := openRaw(ctx, t, c)
		hdr := func(rev int64) *pb.ResponseHeader { return &pb.ResponseHeader{Revision: rev} }
		n := 0
		expect := func(what string, want *pb.WatchResponse) {
			t.Helper()
			sameResp(t, what, r.next(n), want)
			n++
		}
		r.create(&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7})
		expect("create with ID 7", &pb.WatchResponse{Header: hdr(4), WatchId: 7, Created: true})
		r.create(&pb.WatchCreateRequest{Key: []byte("b")})
		expect("automatic ID", &pb.WatchResponse{Header: hdr(4), WatchId: 0, Created: true})
		r.create(&pb.WatchCreateRequest{Key: []byte("c"), WatchId: 1})
		expect("create with ID 1", &pb.WatchResponse{Header: hdr(4), WatchId: 1, Created: true})
		r.create(&pb.WatchCreateRequest{Key: []byte("d")})
		expect("automatic ID skips 1", &pb.WatchResponse{Header: hdr(4), WatchId: 2, Created: true})
		r.create(&pb.WatchCreateRequest{Key: []byte("e"), WatchId: 7})
		expect("duplicate ID", &pb.WatchResponse{Header: hdr(4), WatchId: -1, Created: true, Canceled: true, CancelReason: "mvcc: duplicate watch ID provided on the WatchStream"})
		r.create(&pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")})
		expect("empty range", &pb.WatchResponse{Header: hdr(4), WatchId: -1, Created: true, Canceled: true, CancelReason: "mvcc: watcher range is empty"})
		r.create(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1})
		expect("negative start revision", &pb.WatchResponse{Header: hdr(4), WatchId: -1, Created: true, Canceled: true, CancelReason: "etcdserver: mvcc: required revision has been compacted"})
		r.cancel(99) // unknown: no response
		r.progress()
		expect("progress request", &pb.WatchResponse{Header: hdr(4), WatchId: -1})
		r.cancel(7)
		expect("cancel", &pb.WatchResponse{Header: hdr(4), WatchId: 7, Canceled: true})
		r.create(&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 7, StartRevision: 3, PrevKv: true})
		expect("ID 7 again, from revision 3", &pb.WatchResponse{Header: hdr(4), WatchId: 7, Created: true})
		// History: revisions 3 and 4 (etcd may send them in one response).
		var hist []*mvccpb.Event
		for len(hist) < 2 {
			resp := r.next(n)
			n++
			if resp.WatchId != 7 || len(resp.Events) == 0 {
				t.Fatalf("history response %v", resp)
			}
			hist = append(hist, resp.Events...)
		}
		if len(hist) != 2 || hist[0].Kv.ModRevision != 3 || string(hist[1].PrevKv.GetValue()) != "1" {
			t.Errorf("history = %v", hist)
		}

		// A watch on a future revision waits for it.
		r.create(&pb.WatchCreateRequest{Key: []byte("f"), WatchId: 20, StartRevision: 7})
		expect("future start", &pb.WatchResponse{Header: hdr(4), WatchId: 20, Created: true})
		for i := range 3 {
			must(c.Put(ctx, "f", fmt.Sprint(i)))(t) // 5, 6, 7
		}
		resp := r.next(n)
		n++
		if resp.WatchId != 20 || len(resp.Events) != 1 || resp.Events[0].Kv.ModRevision != 7 || resp.Header.Revision != 7 {
			t.Errorf("future watch got %v, want only revision 7", resp)
		}

		// Compaction: a watch below it is created, then canceled with the compaction revision
		// (header without revision, as etcd); its ID stays taken until the client cancels it.
		must(c.Compact(ctx, 6))(t)
		r.create(&pb.WatchCreateRequest{Key: []byte("a"), WatchId: 30, StartRevision: 5})
		expect("create below compaction", &pb.WatchResponse{Header: hdr(7), WatchId: 30, Created: true})
		expect("compaction cancel", &pb.WatchResponse{Header: hdr(0), WatchId: 30, Canceled: true, CompactRevision: 6})
		r.create(&pb.WatchCreateRequest{Key: []byte("x"), WatchId: 30})
		expect("ID of a compacted watch", &pb.WatchResponse{Header: hdr(7), WatchId: -1, Created: true, Canceled: true, CancelReason: "mvcc: duplicate watch ID provided on the WatchStream"})
		r.cancel(30)
		expect("cancel of a compacted watch", &pb.WatchResponse{Header: hdr(7), WatchId: 30, Canceled: true})
		// From the compaction revision: served. (Without prev_kv: etcd reads previous values at
		// revision-1 when it sends an event, so it has none for the compaction revision's events;
		// TestDifferentialWatch compares that case.)
		r.create(&pb.WatchCreateRequest{Key: []byte("f"), WatchId: 31, StartRevision: 6})
		expect("create at the compaction revision", &pb.WatchResponse{Header: hdr(7), WatchId: 31, Created: true})
		var got []int64
		for len(got) < 2 {
			resp := r.next(n)
			n++
			for _, ev := range resp.Events {
				got = append(got, ev.Kv.ModRevision)
			}
		}
		if fmt.Sprint(got) != "[6 7]" {
			t.Errorf("watch from the compaction revision got revisions %v, want [6 7]", got)
		}
		r.create(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: -1})
		expect("negative start after compaction", &pb.WatchResponse{Header: hdr(7), WatchId: -1, Created: true, Canceled: true, CancelReason: "etcdserver: mvcc: required revision has been compacted"})

		// clientv3: ErrCompacted with the compaction revision.
		wr := <-c.Watch(ctx, "a", clientv3.WithRev(2))
		if !wr.Canceled || wr.CompactRevision != 6 || !errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			t.Errorf("clientv3 watch below compaction = %+v (err %v)", wr, wr.Err())
		}
		if extra := r.all()[n:]; len(extra) != 0 {
			t.Errorf("unexpected responses: %v", extra)
		}
	})
}

// Fragments: a revision whose events (with previous values) exceed the 2 MiB response limit is
// split into fragments for a watch that asks (WithFragment; clientv3 reassembles them), and sent
// whole otherwise; live and from history.
func TestWatchFragments(t *testing.T) {
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		big := func(b byte) string { return strings.Repeat(string(b), 700<<10) }
		must(c.Put(ctx, "f/1", big('a')))(t) // 2
		must(c.Put(ctx, "f/2", big('b')))(t) // 3
		fragLive, wholeLive := openRaw(ctx, t, c), openRaw(ctx, t, c)
		req := func(frag bool, start int64) *pb.WatchCreateRequest {
			return &pb.WatchCreateRequest{Key: []byte("f/"), RangeEnd: []byte("f0"), PrevKv: true, Fragment: frag, StartRevision: start}
		}
		fragLive.create(req(true, 4))
		wholeLive.create(req(false, 4))
		cwch := c.Watch(ctx, "f/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithFragment(), clientv3.WithRev(4))
		for _, r := range []*rawStream{fragLive, wholeLive} {
			r.next(0) // created
		}
		txn := must(c.Txn(ctx).Then(clientv3.OpPut("f/1", big('c')), clientv3.OpPut("f/2", big('d'))).Commit())(t)
		if txn.Header.Revision != 4 {
			t.Fatalf("txn at revision %d", txn.Header.Revision)
		}
		fragHist, wholeHist := openRaw(ctx, t, c), openRaw(ctx, t, c)
		fragHist.create(req(true, 4))
		wholeHist.create(req(false, 4))

		// etcd's send loop holds back events that reach it before the watch's created response
		// and then sends them with a plain Send, unfragmented; it also reads a watch's
		// fragment and prev_kv flags when events reach it, and the receive loop records them
		// only after the watch is registered. A watch from history has its events at once, so
		// on a loaded machine etcd may answer it with one whole response, with or without
		// previous values: etcd's race, tolerated (and logged) for etcd on the history streams
		// only. concord must answer as asked.
		etcdRace := func(what string, rs []*pb.WatchResponse) bool {
			if s.impl != etcdImpl || len(rs) != 2 || rs[1].Fragment || len(rs[1].Events) != 2 || rs[1].Header.Revision != 4 {
				return false
			}
			t.Logf("%s: etcd sent one whole response of %d bytes (its send-loop race)", what, proto.Size(rs[1]))
			return true
		}
		checkFrags := func(what string, r *rawStream, history bool) {
			t.Helper()
			rs := r.waitFor(what, func(rs []*pb.WatchResponse) bool { return len(rs) > 1 && !rs[len(rs)-1].Fragment })
			if history && etcdRace(what, rs) {
				return
			}
			if len(rs) != 3 || !rs[1].Fragment || rs[2].Fragment || len(rs[1].Events) != 1 || len(rs[2].Events) != 1 ||
				rs[1].Header.Revision != 4 || rs[2].Header.Revision != 4 || rs[1].WatchId != 0 {
				t.Errorf("%s: %d responses, want created + 2 fragments of one event", what, len(rs))
			}
			if len(rs) == 3 && (string(rs[1].Events[0].Kv.Key) != "f/1" || rs[2].Events[0].PrevKv == nil) {
				t.Errorf("%s: fragments hold %s, %s", what, rs[1].Events[0].Kv.Key, rs[2].Events[0].Kv.Key)
			}
		}
		checkWhole := func(what string, r *rawStream, history bool) {
			t.Helper()
			rs := r.waitFor(what, func(rs []*pb.WatchResponse) bool { return len(rs) > 1 })
			if history && proto.Size(rs[len(rs)-1]) < 2<<20 && etcdRace(what, rs) {
				return
			}
			if len(rs) != 2 || rs[1].Fragment || len(rs[1].Events) != 2 || proto.Size(rs[1]) < 2<<20 {
				t.Errorf("%s: %d responses, want created + one response of 2 events over 2 MiB", what, len(rs))
			}
		}
		checkFrags("fragments, live", fragLive, false)
		checkWhole("whole, live", wholeLive, false)
		checkFrags("fragments, from history", fragHist, true)
		checkWhole("whole, from history", wholeHist, true)
		evs, resps := collectEvents(t, cwch, 2)
		if len(resps) != 1 || len(evs) != 2 || len(evs[1].Kv.Value) != 700<<10 || evs[1].Kv.Value[0] != 'd' {
			t.Errorf("clientv3 WithFragment: %d responses, %d events, want one reassembled response", len(resps), len(evs))
		}
	})
}

// gkey is the n-th key of the guarantee test's keyspace.
func gkey(n int) string { return fmt.Sprintf("g/%02d", n) }

// TestWatchGuarantees checks etcd's watch guarantees (ordered, unique, reliable, atomic,
// resumable, bookmarkable, prev_kv and filters; watchfanout/watchtest) on raw Watch streams while
// concurrent clients put, delete and run txns: watches created before the traffic, during it
// (from history while revisions keep coming) and after a compaction. The history they are checked
// against comes from a separate watch from revision 1, itself checked against the revisions the
// writers were given and against Get --rev reads.
func TestWatchGuarantees(t *testing.T) {
	const (
		nKeys   = 12
		workers = 4
		opsEach = 400
	)
	forEachImpl(t, serverOptions{}, func(t *testing.T, s *Server) {
		ctx := testCtx(t)
		c := newClient(t, s)
		prefix := func(w watchtest.Watch) watchtest.Watch {
			w.Key, w.RangeEnd = []byte("g/"), []byte("g0")
			return w
		}
		type stream struct {
			r       *rawStream
			creates []watchtest.Watch
		}
		create := func(st *stream, w watchtest.Watch) {
			st.creates = append(st.creates, w)
			st.r.create(w.Request())
		}
		a := &stream{r: openRaw(ctx, t, c)}
		create(a, prefix(watchtest.Watch{StartRevision: 1}))
		create(a, watchtest.Watch{Key: []byte(gkey(3))})
		create(a, watchtest.Watch{Key: []byte(gkey(2)), RangeEnd: []byte(gkey(6)), PrevKV: true})
		create(a, prefix(watchtest.Watch{NoPut: true, PrevKV: true}))
		create(a, prefix(watchtest.Watch{NoDelete: true}))
		create(a, watchtest.Watch{Key: []byte(gkey(8)), RangeEnd: []byte{0}})
		create(a, prefix(watchtest.Watch{Fragment: true, PrevKV: true}))
		created := func(n int) func([]*pb.WatchResponse) bool {
			return func(rs []*pb.WatchResponse) bool {
				k := 0
				for _, r := range rs {
					if r.Created {
						k++
					}
				}
				return k >= n
			}
		}
		a.r.waitFor("created responses", created(len(a.creates)))

		// Traffic: every write that made a revision is recorded with its revision.
		var mu sync.Mutex
		wrote := map[int64]bool{}
		record := func(rev int64) {
			mu.Lock()
			wrote[rev] = true
			mu.Unlock()
		}
		var wg sync.WaitGroup
		errc := make(chan error, workers)
		progress := make(chan int, workers*opsEach)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				for range opsEach {
					if err := randomWrite(ctx, c, rng, nKeys, record); err != nil {
						errc <- err
						return
					}
					progress <- 1
				}
			}()
		}
		// Meanwhile: watches from history that catch up while revisions keep coming, on the
		// same stream and on a second one, and progress requests (bookmarks).
		b := &stream{r: openRaw(ctx, t, c)}
		for done := 0; done < workers*opsEach; done++ {
			select {
			case <-progress:
			case err := <-errc:
				t.Fatal(err)
			}
			switch done {
			case 300:
				create(a, prefix(watchtest.Watch{StartRevision: 2, PrevKV: true}))
				create(b, watchtest.Watch{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 1, PrevKV: true})
			case 700:
				create(b, watchtest.Watch{Key: []byte(gkey(5)), StartRevision: 100})
				create(b, prefix(watchtest.Watch{NoDelete: true, StartRevision: 400}))
				create(a, watchtest.Watch{Key: []byte(gkey(1)), RangeEnd: []byte(gkey(9))})
			}
			if done%100 == 50 {
				a.r.progress()
				b.r.progress()
			}
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		final := currentRev(ctx, t, c)
		t.Logf("%s: %d ops, %d revisions", s.impl.name, workers*opsEach, final-1)

		// The history, from a watch on its own connection, checked against the writers' revisions
		// and against reads at past revisions.
		hist := readHistory(ctx, t, s, final)
		mu.Lock()
		for rev := int64(2); rev <= final; rev++ {
			if !wrote[rev] {
				t.Fatalf("revision %d was given to no writer", rev)
			}
		}
		if len(wrote) != int(final-1) || len(hist) != int(final-1) {
			t.Fatalf("writers got %d revisions, history has %d, want %d", len(wrote), len(hist), final-1)
		}
		mu.Unlock()
		checkHistoryAgainstReads(ctx, t, c, hist, final)

		// Compaction in the middle: a watch below it is canceled (and, as etcd keeps it until
		// the client cancels it, canceled by the client), one at it replays from there.
		mid := final / 2
		must(c.Compact(ctx, mid))(t)
		before := len(a.r.all())
		create(a, prefix(watchtest.Watch{StartRevision: mid - 1}))
		rs := a.r.waitFor("compaction cancel", func(rs []*pb.WatchResponse) bool {
			for _, r := range rs[before:] {
				if r.Canceled && r.CompactRevision == mid {
					return true
				}
			}
			return false
		})
		for _, r := range rs[before:] {
			if r.Canceled && r.CompactRevision == mid {
				a.r.cancel(r.WatchId)
			}
		}
		// (prev_kv only above it: for the compaction revision's own events etcd has no previous
		// values to send, which the guarantee checker does not model.)
		create(a, prefix(watchtest.Watch{StartRevision: mid}))
		create(a, prefix(watchtest.Watch{StartRevision: mid + 1, PrevKV: true}))

		// Every watch must reach the final revision: a progress response (ID -1) at it says so.
		for _, st := range []*stream{a, b} {
			waitBookmark(t, st.r, final)
			results, err := watchtest.CheckStream(hist, st.creates, st.r.all())
			if err != nil {
				t.Fatalf("%v", err)
			}
			if len(results) != len(st.creates) {
				t.Fatalf("%d created responses for %d creates", len(results), len(st.creates))
			}
			for i, res := range results {
				switch {
				case res.CompactRevision != 0:
					if st.creates[i].StartRevision >= mid {
						t.Errorf("watch %d (%+v) canceled by compaction", i, st.creates[i])
					}
				case res.Canceled:
					t.Errorf("watch %d (%+v) canceled: %s", i, st.creates[i], res.CancelReason)
				case res.Reached != final:
					t.Errorf("watch %d (%+v) reached %d, want %d", i, st.creates[i], res.Reached, final)
				}
			}
		}
	})
}

// randomWrite does one random put, delete, range delete or txn on the first nKeys g/ keys and
// records the revision it made, if any.
func randomWrite(ctx context.Context, c *clientv3.Client, rng *rand.Rand, nKeys int, record func(int64)) error {
	k := func() string { return gkey(rng.IntN(nKeys)) }
	val := func() string { return strings.Repeat(string(rune('a'+rng.IntN(26))), rng.IntN(40)) }
	switch p := rng.IntN(10); {
	case p < 4:
		resp, err := c.Put(ctx, k(), val())
		if err != nil {
			return err
		}
		record(resp.Header.Revision)
	case p < 6:
		resp, err := c.Delete(ctx, k())
		if err != nil {
			return err
		}
		if resp.Deleted > 0 {
			record(resp.Header.Revision)
		}
	case p < 7:
		lo := rng.IntN(nKeys)
		resp, err := c.Delete(ctx, gkey(lo), clientv3.WithRange(gkey(lo+1+rng.IntN(4))))
		if err != nil {
			return err
		}
		if resp.Deleted > 0 {
			record(resp.Header.Revision)
		}
	default:
		// Distinct keys: etcd refuses a txn that writes one key twice.
		perm := rng.Perm(nKeys)
		then := []clientv3.Op{clientv3.OpPut(gkey(perm[0]), val()), clientv3.OpPut(gkey(perm[1]), val())}
		if rng.IntN(2) == 0 {
			then = append(then, clientv3.OpDelete(gkey(perm[2])))
		}
		resp, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Version(k()), ">", 0)).
			Then(then...).Else(clientv3.OpDelete(gkey(perm[3]))).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded || resp.Responses[0].GetResponseDeleteRange().GetDeleted() > 0 {
			record(resp.Header.Revision)
		}
	}
	return nil
}

// readHistory reads every revision up to final with a clientv3 watch from revision 1 on its own
// connection, with previous values.
func readHistory(ctx context.Context, t *testing.T, s *Server, final int64) watchtest.History {
	t.Helper()
	hc := newClient(t, s)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := hc.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(1), clientv3.WithPrevKV())
	var hist watchtest.History
	deadline := time.After(waitTimeout)
	for hist.Last() < final {
		select {
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				t.Fatalf("history watch ended: %v", wr.Err())
			}
			for _, ev := range wr.Events {
				rev := ev.Kv.ModRevision
				if n := len(hist); n == 0 || hist[n-1].Rev != rev {
					hist = append(hist, eventbus.Revision{Rev: rev})
				}
				hist[len(hist)-1].Events = append(hist[len(hist)-1].Events, (*mvccpb.Event)(ev))
			}
		case <-deadline:
			t.Fatalf("history watch reached %d of %d within %v", hist.Last(), final, waitTimeout)
		}
	}
	return hist
}

// checkHistoryAgainstReads replays hist and compares the keyspace with Get at sampled revisions
// (every 97th and the last), so the history is not taken on the watch's word alone.
func checkHistoryAgainstReads(ctx context.Context, t *testing.T, c *clientv3.Client, hist watchtest.History, final int64) {
	t.Helper()
	state := map[string]*mvccpb.KeyValue{}
	for i, r := range hist {
		if want := int64(i + 2); r.Rev != want {
			t.Fatalf("history revision %d at position %d, want %d (not contiguous)", r.Rev, i, want)
		}
		for _, ev := range r.Events {
			if ev.Type == mvccpb.DELETE {
				delete(state, string(ev.Kv.Key))
			} else {
				state[string(ev.Kv.Key)] = ev.Kv
			}
		}
		if r.Rev%97 != 0 && r.Rev != final {
			continue
		}
		get := must(c.Get(ctx, "g/", clientv3.WithPrefix(), clientv3.WithRev(r.Rev)))(t)
		if len(get.Kvs) != len(state) {
			t.Fatalf("revision %d: Get has %d keys, the history %d", r.Rev, len(get.Kvs), len(state))
		}
		for _, kv := range get.Kvs {
			if want := state[string(kv.Key)]; !proto.Equal(kv, want) {
				t.Fatalf("revision %d: Get %v, history %v", r.Rev, kv, want)
			}
		}
	}
}

// waitBookmark sends progress requests until a progress response (watch ID -1) at rev arrives:
// then every watch of the stream has been given everything up to rev. etcd answers only while
// all watches of the stream are synced, so the request is repeated.
func waitBookmark(t *testing.T, r *rawStream, rev int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		from := len(r.all())
		r.progress()
		retry := time.After(200 * time.Millisecond)
		for {
			rs := r.all()
			found := false
			for _, resp := range rs[from:] {
				if resp.WatchId == -1 && !resp.Created && resp.Header.Revision >= rev {
					found = true
				}
			}
			if found {
				return
			}
			select {
			case <-r.wake:
				continue
			case <-retry:
			}
			break
		}
	}
	t.Fatalf("no progress response at revision %d within %v", rev, waitTimeout)
}
