package launcher

import "syscall"

// sysProcAttr makes every child die with the launcher's thread (Pdeathsig),
// so a test binary that crashes or times out leaves no concord running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
