package supervisor

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestProcStateSeesAStoppedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := cmd.Process.Signal(unix.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP: %v", err)
	}
	// The stop takes effect when the kernel next schedules it: wait, bounded.
	deadline := time.Now().Add(30 * time.Second)
	for procState(cmd.Process.Pid) != 'T' {
		if time.Now().After(deadline) {
			t.Fatalf("state %q, want 'T'", procState(cmd.Process.Pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Signal(unix.SIGCONT)
	for procState(cmd.Process.Pid) == 'T' {
		if time.Now().After(deadline) {
			t.Fatal("still stopped after SIGCONT")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if procState(-1) != 0 {
		t.Fatal("a pid that cannot exist has a state")
	}
}
