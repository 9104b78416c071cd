package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMemoryMlock starts concord with etcd's --memory-mlock. Allowed to lock
// memory, it serves with its resident memory locked (etcd 3.7.3 here locks
// its 16 MiB bbolt file). With
// a small RLIMIT_MEMLOCK and no CAP_IPC_LOCK it refuses to start and says
// why, where etcd dies on its first commit ("mlock error: cannot allocate
// memory"): locking every future mapping past the limit would crash the Go
// runtime later instead.
func TestMemoryMlock(t *testing.T) {
	t.Parallel()
	requireBinary(t, concordImpl)
	t.Run("locked", func(t *testing.T) {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			t.Fatal(err)
		}
		if os.Geteuid() != 0 && lim.Cur != unix.RLIM_INFINITY {
			t.Skip("this user may not lock more than RLIMIT_MEMLOCK; the refusal is tested below")
		}
		s := startServer(t, concordImpl, serverOptions{extra: []string{"--memory-mlock"}})
		mustCtl(t, s.Endpoint(), "put", "foo", "bar")
		if got := mustCtl(t, s.Endpoint(), "get", "foo", "--print-value-only"); strings.TrimSpace(got) != "bar" {
			t.Errorf("get foo = %q", got)
		}
		// VmLck counts reserved address space too (locked on fault); the
		// rollup's Locked counts the resident pages that are locked.
		rollup := fmt.Sprintf("/proc/%d/smaps_rollup", s.pid())
		rss, locked := procKB(t, rollup, "Rss"), procKB(t, rollup, "Locked")
		if locked < rss*9/10 {
			t.Errorf("%d of %d kB resident are locked with --memory-mlock, want (nearly) all", locked, rss)
		}
		if !strings.Contains(s.log.String(), "memory locked in RAM") {
			t.Error("concord did not log that its memory is locked")
		}
	})
	t.Run("refused", func(t *testing.T) {
		// 64 KiB of locked memory, and no CAP_IPC_LOCK to exceed it.
		script := `ulimit -l 64 && exec "$@"`
		args := []string{"-c", script, "sh"}
		if os.Geteuid() == 0 {
			if _, err := exec.LookPath("setpriv"); err != nil {
				t.Skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK as root")
			}
			args = append(args, "setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock")
		}
		client, peer, err := freePorts()
		if err != nil {
			t.Fatal(err)
		}
		clientURL, peerURL := fmt.Sprintf("http://127.0.0.1:%d", client), fmt.Sprintf("http://127.0.0.1:%d", peer)
		args = append(args, concordImpl.bin, "--memory-mlock", "--data-dir", t.TempDir(),
			"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "default="+peerURL)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", args...)
		cmd.Env = cleanEnv()
		out, err := cmd.CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("concord --memory-mlock without the right to lock: err %v (context %v), want a refusal; output:\n%s", err, ctx.Err(), out)
		}
		for _, want := range []string{"--memory-mlock", "RLIMIT_MEMLOCK is 65536 bytes", "CAP_IPC_LOCK"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("the refusal does not say %q:\n%s", want, out)
			}
		}
	})
}

// procKB returns a "kB" field of a /proc file such as /proc/PID/status.
func procKB(t *testing.T, path, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", field, path)
	return 0
}
