package memlock

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheck(t *testing.T) {
	for _, c := range []struct {
		name  string
		limit uint64
		caps  uint64
		ok    bool
	}{
		{"unlimited, no capabilities", unix.RLIM_INFINITY, 0, true},
		{"8 MiB limit with CAP_IPC_LOCK", 8 << 20, 1 << capIPCLock, true},
		{"8 MiB limit, every capability but CAP_IPC_LOCK", 8 << 20, ^uint64(0) &^ (1 << capIPCLock), false},
		{"no locked memory at all", 0, 0, false},
	} {
		err := check(c.limit, c.caps)
		if c.ok && err != nil {
			t.Errorf("%s: %v, want nil", c.name, err)
		}
		if !c.ok && !errors.Is(err, ErrLimited) {
			t.Errorf("%s: %v, want ErrLimited", c.name, err)
		}
	}
}

func TestEffectiveCapsReadsThisProcess(t *testing.T) {
	caps, err := effectiveCaps()
	if err != nil {
		t.Fatal(err)
	}
	// The kernel checks CAP_IPC_LOCK too: locking 1 MiB more than the
	// limit works exactly when the process has the capability. The soft
	// limit is lowered to 64 KiB for the check (any process may lower it
	// and raise it back up to its hard limit), so an unlimited one does
	// not hide the answer.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	low := unix.Rlimit{Cur: min(lim.Cur, 64<<10), Max: lim.Max}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			t.Errorf("restoring RLIMIT_MEMLOCK: %v", err)
		}
	}()
	big := make([]byte, int(low.Cur)+1<<20)
	err = unix.Mlock(big)
	if err == nil {
		_ = unix.Munlock(big)
	}
	if has := caps&(1<<capIPCLock) != 0; has != (err == nil) {
		t.Fatalf("CapEff says CAP_IPC_LOCK=%v, but locking %d bytes over the %d-byte limit gave %v", has, len(big), low.Cur, err)
	}
}
