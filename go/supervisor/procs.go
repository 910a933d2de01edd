// Processes: pidfds, signals, and what a wait status says.

package supervisor

import (
	"bytes"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// signalPidfd signals through a pidfd only: once a process is reaped its pid may
// belong to anyone, while a pidfd keeps naming the process it was opened for.
func signalPidfd(pidfd int, sig unix.Signal) {
	if pidfd > 0 {
		_ = unix.PidfdSendSignal(pidfd, sig, nil, 0)
	}
}

// killAll kills the whole run: the root zygote leads a process group that every
// zygote and runner belongs to. The root is our child and is not reaped before
// reapRoot reports it, so its pid (and its group's id) cannot have been reused.
func (s *Supervisor) killAll() {
	_ = unix.Kill(-s.cfg.RootPID, unix.SIGKILL)
	if !s.rootGone {
		_ = unix.Kill(s.cfg.RootPID, unix.SIGKILL)
	}
}

func openPidfd(pid int) int {
	if pid <= 0 {
		return -1
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	return fd
}

func closePidfd(fd *int) {
	if *fd > 0 {
		unix.Close(*fd)
	}
	*fd = -1
}

// splitStatus returns (signal, exit code) from a raw wait status; -1 where not applicable.
func splitStatus(status int) (int, int) {
	ws := unix.WaitStatus(status)
	switch {
	case status < 0:
		return -1, -1
	case ws.Signaled():
		return int(ws.Signal()), -1
	case ws.Exited():
		return -1, ws.ExitStatus()
	}
	return -1, -1
}

func describeStatus(status int) string {
	sig, code := splitStatus(status)
	switch {
	case sig > 0:
		name := unix.SignalName(unix.Signal(sig))
		if name == "" {
			name = fmt.Sprintf("signal %d", sig)
		}
		return fmt.Sprintf("was killed by %s (signal %d)", name, sig)
	case code >= 0:
		return fmt.Sprintf("exited with code %d", code)
	}
	return "ended in an unknown way"
}

// procState is a process's state letter from /proc/<pid>/stat ('R', 'S', 'T' stopped,
// 't' stopped by a tracer, 'Z'...), or 0 when it cannot be read.
func procState(pid int) byte {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// "pid (comm) S ...": comm may hold spaces and parentheses, the last ')' ends it.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return 0
	}
	return data[i+2]
}
