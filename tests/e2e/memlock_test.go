package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
		if !mayLockMemory(t) {
			// This user cannot lock beyond its limit: concord must say so.
			memlockRefusal(t, false, "RLIMIT_MEMLOCK is")
			return
		}
		s := startServer(t, concordImpl, serverOptions{extra: []string{"--memory-mlock"}})
		mustCtl(t, s.Endpoint(), "put", "foo", "bar")
		if got := mustCtl(t, s.Endpoint(), "get", "foo", "--print-value-only"); strings.TrimSpace(got) != "bar" {
			t.Errorf("get foo = %q", got)
		}
		// VmLck counts reserved address space too (locked on fault); the
		// rollup's Locked counts the resident pages that are locked, as
		// proportional set size (pages shared with other processes, such
		// as another concord's text, count in part): compared with Pss.
		rollup := fmt.Sprintf("/proc/%d/smaps_rollup", s.pid())
		pss, locked := procKB(t, rollup, "Pss"), procKB(t, rollup, "Locked")
		if locked < pss*9/10 {
			t.Errorf("%d of %d kB (proportional set size) are locked with --memory-mlock, want (nearly) all", locked, pss)
		}
		if !strings.Contains(s.log.String(), "memory locked in RAM") {
			t.Error("concord did not log that its memory is locked")
		}
	})
	t.Run("refused", func(t *testing.T) {
		// 64 KiB of locked memory, and no CAP_IPC_LOCK to exceed it.
		memlockRefusal(t, true, "RLIMIT_MEMLOCK is 65536 bytes")
	})
}

// memlockRefusal starts concord --memory-mlock, through execWithoutMemlock
// when limited, and expects it to refuse to start, saying want and how to
// get the right to lock.
func memlockRefusal(t *testing.T, limited bool, want string) {
	t.Helper()
	client, peer, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	clientURL, peerURL := fmt.Sprintf("http://127.0.0.1:%d", client), fmt.Sprintf("http://127.0.0.1:%d", peer)
	args := []string{concordImpl.bin, "--memory-mlock", "--data-dir", t.TempDir(),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL}
	env := cleanEnv()
	if limited {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		args = append([]string{self}, args...)
		env = append(env, withoutMemlockEnv+"=1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("concord --memory-mlock without the right to lock: err %v (context %v), want a refusal; output:\n%s", err, ctx.Err(), out)
	}
	for _, w := range []string{"--memory-mlock", want, "CAP_IPC_LOCK"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("the refusal does not say %q:\n%s", w, out)
		}
	}
}

// mayLockMemory reports whether a process this test starts may lock all
// its memory: an unlimited RLIMIT_MEMLOCK, or CAP_IPC_LOCK.
func mayLockMemory(t *testing.T) bool {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return lim.Cur == unix.RLIM_INFINITY || caps&(1<<unix.CAP_IPC_LOCK) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// withoutMemlockEnv, set, makes this test binary run its arguments as
// execWithoutMemlock does instead of testing (TestMain).
const withoutMemlockEnv = "E2E_EXEC_WITHOUT_MEMLOCK"

// execWithoutMemlock replaces this process with os.Args[1:], run with 64
// KiB of lockable memory and without CAP_IPC_LOCK: the capability leaves
// the bounding set (root only; no one else has it), so the program
// executed does not get it back.
func execWithoutMemlock() error {
	runtime.LockOSThread() // the bounding set is the thread's: exec from it
	lim := unix.Rlimit{Cur: 64 << 10, Max: 64 << 10}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return fmt.Errorf("setrlimit: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_IPC_LOCK, 0, 0, 0); err != nil {
			return fmt.Errorf("dropping CAP_IPC_LOCK: %w", err)
		}
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, withoutMemlockEnv+"=") })
	return syscall.Exec(os.Args[1], os.Args[1:], env)
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
