package sysinfo

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI for userfaultfd and PAGEMAP_SCAN (linux/userfaultfd.h, linux/fs.h).
// golang.org/x/sys does not define these; the values are the _IOWR encodings of the
// structs below, which mirror the kernel's layout exactly.
const (
	uffdAPI           = 0xAA
	uffdioAPI         = 0xC018AA3F // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegister    = 0xC020AA00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	uffdioWP          = 0xC018AA06 // _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
	userfaultfdIocNew = 0xAA00     // _IO(0xAA, 0x00) on /dev/userfaultfd
	uffdUserModeOnly  = 1

	featureWPUnpopulated = 1 << 13
	featureWPAsync       = 1 << 15
	registerModeWP       = 1 << 1
	ioctlWriteprotect    = 1 << 0x06 // bit _UFFDIO_WRITEPROTECT in uffdio_register.ioctls
	wpModeWP             = 1 << 0

	pagemapScan        = 0xC0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pmScanWPMatching   = 1 << 0
	pmScanCheckWPAsync = 1 << 1
	pageIsWritten      = 1 << 1
)

type uffdioAPIArg struct{ API, Features, Ioctls uint64 }
type uffdioRange struct{ Start, Len uint64 }
type uffdioRegisterArg struct {
	Range        uffdioRange
	Mode, Ioctls uint64
}
type uffdioWPArg struct {
	Range uffdioRange
	Mode  uint64
}
type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask       uint64
	ReturnMask                                              uint64
}
type pageRegion struct{ Start, End, Categories uint64 }

const snapshotPurpose = "later: memory snapshot/restore engine (dirty-page tracking)"

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

// ioctlValue is ioctl with an integer argument rather than a pointer.
func ioctlValue(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

func readSysctl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable"
	}
	return strings.TrimSpace(string(b))
}

// openUffd returns a userfaultfd through the syscall, retrying with UFFD_USER_MODE_ONLY
// (what an unprivileged process may use when vm.unprivileged_userfaultfd=0).
func openUffd() (fd int, userOnly bool, err error) {
	flags := uintptr(unix.O_CLOEXEC | unix.O_NONBLOCK)
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno == 0 {
		return int(r), false, nil
	}
	if errno == unix.EPERM {
		r, _, errno2 := unix.Syscall(unix.SYS_USERFAULTFD, flags|uffdUserModeOnly, 0, 0)
		if errno2 == 0 {
			return int(r), true, nil
		}
	}
	return -1, false, fmt.Errorf("userfaultfd(2): %w", errno)
}

func probeUserfaultfd() []Feature {
	unpriv := "vm.unprivileged_userfaultfd=" + readSysctl("/proc/sys/vm/unprivileged_userfaultfd")
	var out []Feature

	fd, userOnly, err := openUffd()
	detail := "syscall works (" + unpriv + ")"
	if userOnly {
		detail = "syscall works with UFFD_USER_MODE_ONLY only (" + unpriv + ")"
	}
	f := feature("userfaultfd", snapshotPurpose, false, err, detail)
	if err != nil {
		f.Detail += " (" + unpriv + ")"
	}
	out = append(out, f)
	if err == nil {
		unix.Close(fd)
	}

	devErr := func() error {
		dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/userfaultfd: %w", err)
		}
		defer unix.Close(dev)
		r, err := ioctlValue(dev, userfaultfdIocNew, unix.O_CLOEXEC|unix.O_NONBLOCK)
		if err != nil {
			return fmt.Errorf("USERFAULTFD_IOC_NEW: %w", err)
		}
		unix.Close(int(r))
		return nil
	}()
	out = append(out, feature("dev_userfaultfd", snapshotPurpose, false, devErr, "/dev/userfaultfd hands out userfaultfds"))

	wp, scan := probeWPAsync()
	return append(out, wp, scan)
}

// probeWPAsync checks asynchronous userfaultfd write-protection and, on top of it,
// PAGEMAP_SCAN: it write-protects four private pages, writes one, and expects one
// scan to report exactly that page as written (and re-protect it) and a second scan
// to report nothing.
func probeWPAsync() (wp, scan Feature) {
	wpName, scanName := "uffd_wp_async", "pagemap_scan"
	fail := func(err error) (Feature, Feature) {
		return feature(wpName, snapshotPurpose, false, err, ""),
			feature(scanName, snapshotPurpose, false, fmt.Errorf("needs %s: %w", wpName, err), "")
	}

	fd, _, err := openUffd()
	if err != nil {
		return fail(err)
	}
	// The first UFFDIO_API on a fresh fd with no features requested reports what the
	// kernel supports; an fd takes only one handshake, so the real one needs a new fd.
	api := uffdioAPIArg{API: uffdAPI}
	_, err = ioctl(fd, uffdioAPI, unsafe.Pointer(&api))
	unix.Close(fd)
	if err != nil {
		return fail(fmt.Errorf("UFFDIO_API: %w", err))
	}
	if api.Features&featureWPAsync == 0 {
		// Registering WP without the async mode would block our own writes: stop here.
		return fail(fmt.Errorf("kernel lacks UFFD_FEATURE_WP_ASYNC (features %#x): %w", api.Features, unix.ENOSYS))
	}
	want := uint64(featureWPAsync)
	if api.Features&featureWPUnpopulated != 0 {
		want |= featureWPUnpopulated
	}
	if fd, _, err = openUffd(); err != nil {
		return fail(err)
	}
	defer unix.Close(fd)
	api = uffdioAPIArg{API: uffdAPI, Features: want}
	if _, err := ioctl(fd, uffdioAPI, unsafe.Pointer(&api)); err != nil {
		return fail(fmt.Errorf("UFFDIO_API(WP_ASYNC): %w", err))
	}

	pg := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 4*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	defer unix.Munmap(mem)
	for i := 0; i < len(mem); i += pg {
		mem[i] = 1 // populate every page before protecting it
	}
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	rng := uffdioRange{Start: start, Len: uint64(len(mem))}
	reg := uffdioRegisterArg{Range: rng, Mode: registerModeWP}
	if _, err := ioctl(fd, uffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return fail(fmt.Errorf("UFFDIO_REGISTER(MODE_WP): %w", err))
	}
	if reg.Ioctls&ioctlWriteprotect == 0 {
		return fail(fmt.Errorf("registered range does not offer UFFDIO_WRITEPROTECT: %w", unix.ENOSYS))
	}
	wpArg := uffdioWPArg{Range: rng, Mode: wpModeWP}
	if _, err := ioctl(fd, uffdioWP, unsafe.Pointer(&wpArg)); err != nil {
		return fail(fmt.Errorf("UFFDIO_WRITEPROTECT: %w", err))
	}
	mem[2*pg] = 2 // resolved by the kernel without a fault message: that is WP_ASYNC
	wp = feature(wpName, snapshotPurpose, false, nil, "async write-protect registered over a private mapping")

	n, regions, err := pagemapScanWritten(start, start+uint64(len(mem)))
	if err != nil {
		return wp, feature(scanName, snapshotPurpose, false, err, "")
	}
	wantStart := start + uint64(2*pg)
	if n != 1 || regions[0].Start != wantStart || regions[0].End != wantStart+uint64(pg) {
		return wp, feature(scanName, snapshotPurpose, false,
			fmt.Errorf("scan reported %d regions %v, want the one written page at %#x: %w", n, regions[:n], wantStart, unix.EINVAL), "")
	}
	if n, _, err = pagemapScanWritten(start, start+uint64(len(mem))); err != nil || n != 0 {
		return wp, feature(scanName, snapshotPurpose, false,
			fmt.Errorf("second scan found %d written regions (err %v): pages were not re-protected: %w", n, err, unix.EINVAL), "")
	}
	return wp, feature(scanName, snapshotPurpose, false, nil, "found the 1 written page of 4 and re-protected it in one ioctl")
}

// pagemapScanWritten runs PAGEMAP_SCAN on /proc/self/pagemap for written pages in
// [start, end), re-protecting them. The result vector lives in its own mapping so the
// kernel never writes into Go-managed memory.
func pagemapScanWritten(start, end uint64) (int, []pageRegion, error) {
	pm, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("open pagemap: %w", err)
	}
	defer unix.Close(pm)
	const vecLen = 8
	vecMem, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, nil, fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(vecMem)
	arg := pmScanArg{
		Size: uint64(unsafe.Sizeof(pmScanArg{})), Flags: pmScanWPMatching | pmScanCheckWPAsync,
		Start: start, End: end, Vec: uint64(uintptr(unsafe.Pointer(&vecMem[0]))), VecLen: vecLen,
		CategoryMask: pageIsWritten, ReturnMask: pageIsWritten,
	}
	r, err := ioctl(pm, pagemapScan, unsafe.Pointer(&arg))
	if err != nil {
		if errors.Is(err, unix.ENOTTY) {
			return 0, nil, fmt.Errorf("PAGEMAP_SCAN not supported by this kernel (needs 6.7+): %w", err)
		}
		return 0, nil, fmt.Errorf("PAGEMAP_SCAN: %w", err)
	}
	regions := make([]pageRegion, vecLen)
	copy(regions, unsafe.Slice((*pageRegion)(unsafe.Pointer(&vecMem[0])), vecLen))
	return int(r), regions, nil
}
