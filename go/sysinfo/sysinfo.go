// Package sysinfo probes the kernel features tach uses and reports each one as OK,
// MISSING (the kernel does not have it) or DENIED (it exists but this process may not
// use it), with the reason. Probes act for real: a feature is OK only when the call
// worked on a live target, not because a header or a version number says it should.
// Snapshot/restore is not probed here: the restore extension probes it itself
// (pytest_tach._reset.probe, reported by pytest_tach.snapshot), so that `pytest-tach self-test` and
// `--tach-reset auto` ask the same question the same way.
package sysinfo

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Status of one feature.
type Status string

// Feature statuses.
const (
	OK      Status = "OK"
	Missing Status = "MISSING"
	Denied  Status = "DENIED"
)

// Feature is the result of one probe.
type Feature struct {
	Name     string `msgpack:"name"`
	Status   Status `msgpack:"status"`
	Detail   string `msgpack:"detail"`
	Required bool   `msgpack:"required"` // the engine cannot run without it
	Purpose  string `msgpack:"purpose"`
}

// Report is what Probe returns.
type Report struct {
	GoVersion string    `msgpack:"go_version"`
	Kernel    string    `msgpack:"kernel"`
	CPUs      int       `msgpack:"cpus"` // usable by this process (affinity mask)
	Features  []Feature `msgpack:"features"`
}

// Probe runs every probe. It never fails as a whole: a probe that cannot run reports why.
func Probe() Report {
	r := Report{GoVersion: runtime.Version(), Kernel: kernelRelease(), CPUs: UsableCPUs()}
	r.Features = append(r.Features, probeChild()...)
	return r
}

// UsableCPUs is the number of CPUs in this process's affinity mask (what `taskset`
// or a container's cpuset allows), falling back to runtime.NumCPU.
func UsableCPUs() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil && set.Count() > 0 {
		return set.Count()
	}
	return runtime.NumCPU()
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// classify maps a syscall error to a status: ENOSYS/ENOTTY/EINVAL/ENOENT mean the kernel
// lacks the feature, EPERM/EACCES mean policy forbids it.
func classify(err error) Status {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Denied
	}
	return Missing
}

func feature(name, purpose string, required bool, err error, okDetail string) Feature {
	f := Feature{Name: name, Purpose: purpose, Required: required, Status: classify(err), Detail: okDetail}
	if err != nil {
		f.Detail = err.Error()
	}
	return f
}

// probeChild starts a short-lived child and probes what needs a target process: fork,
// pidfd_open and process_vm_readv. The child is /bin/sh blocked reading a pipe, so it
// also exits on its own if we die before killing it.
func probeChild() []Feature {
	const (
		forkPurpose  = "zygotes fork every test process"
		pidfdPurpose = "race-free waiting on and killing test processes"
		vmPurpose    = "reading a crashed or hung test's memory"
	)
	r, w, err := os.Pipe()
	if err != nil {
		err = fmt.Errorf("pipe: %w", err)
		return []Feature{
			feature("fork", forkPurpose, true, err, ""),
			feature("pidfd_open", pidfdPurpose, true, err, ""),
			feature("process_vm_readv", vmPurpose, false, err, ""),
		}
	}
	defer r.Close()
	defer w.Close()
	proc, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "read _"},
		&os.ProcAttr{Files: []*os.File{r, nil, nil}})
	if err != nil {
		err = fmt.Errorf("starting a child: %w", err)
		return []Feature{
			feature("fork", forkPurpose, true, err, ""),
			feature("pidfd_open", pidfdPurpose, true, err, ""),
			feature("process_vm_readv", vmPurpose, false, err, ""),
		}
	}
	pid := proc.Pid
	defer func() {
		_ = proc.Kill()
		_, _ = proc.Wait()
	}()
	out := []Feature{feature("fork", forkPurpose, true, nil, fmt.Sprintf("started child pid %d", pid))}

	pidfdErr := func() error {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return fmt.Errorf("pidfd_open(%d): %w", pid, err)
		}
		defer unix.Close(fd)
		// A pidfd is useful only if it can signal: send the null signal through it.
		if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
			return fmt.Errorf("pidfd_send_signal: %w", err)
		}
		return nil
	}()
	out = append(out, feature("pidfd_open", pidfdPurpose, true, pidfdErr, "opened and signalled the child through a pidfd"))

	n, vmErr := readChildMemory(pid)
	out = append(out, feature("process_vm_readv", vmPurpose, false, vmErr, fmt.Sprintf("read %d bytes of the child's memory", n)))
	return out
}

// readChildMemory reads a few bytes from the first readable mapping of pid.
func readChildMemory(pid int) (int, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, fmt.Errorf("reading maps: %w", err)
	}
	var start uint64
	for _, line := range strings.Split(string(maps), "\n") {
		var lo, hi uint64
		var perms string
		if _, err := fmt.Sscanf(line, "%x-%x %s", &lo, &hi, &perms); err == nil && strings.HasPrefix(perms, "r") {
			start = lo
			break
		}
	}
	if start == 0 {
		return 0, errors.New("child has no readable mapping")
	}
	buf := make([]byte, 64)
	n, err := unix.ProcessVMReadv(pid,
		[]unix.Iovec{{Base: &buf[0], Len: uint64(len(buf))}},
		[]unix.RemoteIovec{{Base: uintptr(start), Len: len(buf)}}, 0)
	if err != nil {
		return 0, fmt.Errorf("process_vm_readv(%d, %#x): %w", pid, start, err)
	}
	return n, nil
}
