package sysinfo

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestProbeReportsEveryFeature(t *testing.T) {
	r := Probe()
	if r.GoVersion == "" || r.Kernel == "" || r.CPUs < 1 {
		t.Fatalf("incomplete report header: %+v", r)
	}
	want := []string{"fork", "pidfd_open", "process_vm_readv"}
	got := map[string]Feature{}
	for _, f := range r.Features {
		got[f.Name] = f
		switch f.Status {
		case OK, Missing, Denied:
		default:
			t.Errorf("%s: status %q", f.Name, f.Status)
		}
		if f.Detail == "" || f.Purpose == "" {
			t.Errorf("%s: empty detail or purpose: %+v", f.Name, f)
		}
	}
	for _, name := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("feature %q not reported", name)
		}
	}
	// fork is the one feature every Linux machine running tests has.
	if got["fork"].Status != OK || !got["fork"].Required {
		t.Errorf("fork: %+v", got["fork"])
	}
}

// CI's machines have these (docs/design.md: kernel 6.18, root): a regression in a probe
// shows up here as a false MISSING. Elsewhere the test only logs.
func TestProbeOnCapableKernel(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: process_vm_readv on a child")
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	for _, f := range Probe().Features {
		t.Logf("%-17s %-7s %s", f.Name, f.Status, f.Detail)
		if f.Status != OK && os.Getenv("TACH_EXPECT_ALL_FEATURES") != "" {
			t.Errorf("%s: %s (%s) on kernel %s", f.Name, f.Status, f.Detail, unix.ByteSliceToString(u.Release[:]))
		}
	}
}

func TestClassify(t *testing.T) {
	cases := map[error]Status{nil: OK, unix.EPERM: Denied, unix.EACCES: Denied, unix.ENOSYS: Missing, unix.ENOTTY: Missing}
	for err, want := range cases {
		if got := classify(err); got != want {
			t.Errorf("classify(%v) = %s, want %s", err, got, want)
		}
	}
}
