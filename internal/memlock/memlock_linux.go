package memlock

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// capIPCLock is CAP_IPC_LOCK's bit in the capability sets of
// /proc/self/status; it exempts a process from RLIMIT_MEMLOCK.
const capIPCLock = 14

func lock() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return fmt.Errorf("memlock: reading RLIMIT_MEMLOCK: %w", err)
	}
	caps, err := effectiveCaps()
	if err != nil {
		return err
	}
	if err := check(lim.Cur, caps); err != nil {
		return err
	}
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		return fmt.Errorf("memlock: mlockall: %w", err)
	}
	return nil
}

// check decides whether locking every future mapping is safe with a locked
// memory limit of limit bytes and the effective capability set caps.
func check(limit uint64, caps uint64) error {
	if limit == unix.RLIM_INFINITY || caps&(1<<capIPCLock) != 0 {
		return nil
	}
	return fmt.Errorf("%w: RLIMIT_MEMLOCK is %d bytes and the process lacks CAP_IPC_LOCK; "+
		"raise the limit (ulimit -l unlimited, systemd LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK", ErrLimited, limit)
}

// effectiveCaps reads the process's effective capability set.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("memlock: reading capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("memlock: parsing CapEff %q: %w", v, err)
			}
			return caps, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("memlock: reading capabilities: %w", err)
	}
	return 0, fmt.Errorf("memlock: no CapEff line in /proc/self/status")
}
