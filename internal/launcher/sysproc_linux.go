package launcher

import "syscall"

// SysProcAttr makes a child die with the thread that started it (Pdeathsig),
// so a test binary that crashes or times out leaves no concord running.
func SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
