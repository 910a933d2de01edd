// Command core is the CPython extension module pytest_tach._core, built with
// -buildmode=c-shared. shim.c defines the module (multi-phase init, and the
// Py_mod_gil slot so free-threaded CPython keeps the GIL disabled); every Python-level
// function funnels into tachCall below with the GIL released.
//
// The API is deliberately coarse: bytes in, msgpack bytes out. Nothing Go-typed crosses
// the boundary, so the shim stays small and the Python side needs only msgpack.
//
// This module must only ever be imported in tach's main process, after the root zygote
// has been forked: a process with the Go runtime has extra threads, and Go cannot run in
// a forked child (docs/design.md, rule 1).
package main

/*
#include <stdlib.h>
#include <string.h>
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"github.com/tach-dev/tach/go/supervisor"
	"github.com/tach-dev/tach/go/sysinfo"
	"github.com/tach-dev/tach/go/wire"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// version is set by the build backend with -ldflags "-X main.version=...".
var version = "dev"

// abi is bumped whenever a method's input or output changes incompatibly; the Python
// side refuses a mismatched extension instead of misreading it.
const abi = 2

// Method numbers; shim.c has the same list.
const (
	methodVersion  = 0
	methodProbe    = 1
	methodFrames   = 2
	methodStart    = 3
	methodPoll     = 4
	methodStop     = 5
	methodProtocol = 6
)

// Status codes returned to the shim.
const (
	statusOK         = 0
	statusError      = 1 // RuntimeError
	statusValueError = 2 // ValueError: the caller's input was bad
)

type valueError struct{ error }

func dispatch(method int, in []byte) (any, error) {
	switch method {
	case methodVersion:
		return map[string]any{"tach": version, "go": runtime.Version(), "abi": abi}, nil
	case methodProbe:
		return sysinfo.Probe(), nil
	case methodFrames:
		return splitFrames(in), nil
	case methodStart:
		return nil, startSupervisor(in)
	case methodPoll:
		return pollSupervisor(in)
	case methodStop:
		return nil, stopSupervisor(in)
	case methodProtocol:
		return supervisor.Protocol(), nil
	}
	return nil, valueError{fmt.Errorf("unknown method %d", method)}
}

// splitFrames decodes a stream of length-prefixed msgpack frames into a list of values;
// a bad frame becomes {"t": "error", "error": ...} and, since framing is then lost,
// ends the list.
func splitFrames(stream []byte) []any {
	r := wire.NewReader(bytesReader(stream), 0)
	var out []any
	for {
		p, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err == nil {
			var v any
			if v, err = wire.DecodeValue(p); err == nil {
				out = append(out, v)
				continue
			}
		}
		return append(out, map[string]any{"t": "error", "error": err.Error()})
	}
}

// One engine run at a time per process; pytester's in-process runs are sequential.
var (
	supMu sync.Mutex
	sup   *supervisor.Supervisor
)

// procs fixes the Go runtime's P count. Three threads of this process sit in blocking
// syscalls most of the time: the supervisor's loop (epoll_wait), the Python thread in
// Poll (poll), the root zygote's reaper (wait4). A P in a syscall is retaken by sysmon
// unless an idle P exists, and getting one back then costs futex wake-ups and thread
// switches on the cores the tests need; so there is one P for each of them and a
// spare. More is no use: nothing else runs (with a P per CPU, idle Ms also spun and
// woke each other). Measured on 2000 trivial tests, 2 CPUs: the Go threads' CPU time
// was ~0.8x the Python thread's with 1 or 2 Ps, ~0.6x with 4.
const procs = 4

var firstStart sync.Once

// openNetpoll makes the Go runtime open its network poller (an epoll and an eventfd,
// which it keeps for the life of the process) now rather than whenever a timer first
// goes on its heap: the background scavenger's does at a moment nobody chooses, so
// sometimes during the second or third engine run of a process. Opened at the first
// start, the main process's descriptors stay the same from one run to the next, and a
// leak check around repeated pytest.main() calls (pytester's in-process runs) holds.
func openNetpoll() {
	time.AfterFunc(time.Hour, func() {}).Stop()
}

func startSupervisor(in []byte) error {
	firstStart.Do(func() {
		runtime.GOMAXPROCS(procs)
		openNetpoll()
	})
	var cfg supervisor.Config
	if err := msgpack.Unmarshal(in, &cfg); err != nil {
		return valueError{fmt.Errorf("decoding start config: %w", err)}
	}
	supMu.Lock()
	defer supMu.Unlock()
	if sup != nil {
		if cfg.ListenFD > 0 {
			unix.Close(cfg.ListenFD) // handed over: ours to close, refused or not
		}
		return errors.New("an engine run is already in progress in this process")
	}
	s, err := supervisor.Start(cfg)
	if err != nil {
		return fmt.Errorf("starting the supervisor: %w", err)
	}
	sup = s
	return nil
}

func current() (*supervisor.Supervisor, error) {
	supMu.Lock()
	defer supMu.Unlock()
	if sup == nil {
		return nil, valueError{errors.New("no engine run in progress")}
	}
	return sup, nil
}

// pollSupervisor waits up to timeout_ms (capped at 100 ms, so that the caller's thread
// returns to Python often enough for Ctrl-C to be raised) for events.
func pollSupervisor(in []byte) (any, error) {
	var req struct {
		TimeoutMS int `msgpack:"timeout_ms"`
	}
	if err := msgpack.Unmarshal(in, &req); err != nil {
		return nil, valueError{fmt.Errorf("decoding poll request: %w", err)}
	}
	s, err := current()
	if err != nil {
		return nil, err
	}
	if req.TimeoutMS < 0 || req.TimeoutMS > 100 {
		req.TimeoutMS = 100
	}
	evs, ended := s.Poll(time.Duration(req.TimeoutMS) * time.Millisecond)
	if ended {
		supMu.Lock()
		if sup == s {
			sup = nil
		}
		supMu.Unlock()
	}
	return evs, nil
}

func stopSupervisor(in []byte) error {
	var req struct {
		Mode string `msgpack:"mode"`
	}
	if err := msgpack.Unmarshal(in, &req); err != nil {
		return valueError{fmt.Errorf("decoding stop request: %w", err)}
	}
	if req.Mode != supervisor.StopAbort && req.Mode != supervisor.StopKill {
		return valueError{fmt.Errorf("stop mode %q: want %q or %q", req.Mode, supervisor.StopAbort, supervisor.StopKill)}
	}
	s, err := current()
	if err != nil {
		return err
	}
	s.Stop(req.Mode)
	return nil
}

type sliceReader struct{ b []byte }

func bytesReader(b []byte) *sliceReader { return &sliceReader{b} }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// tachCall runs one method. On return *out holds malloc'd bytes the caller frees:
// msgpack on statusOK, a UTF-8 message otherwise. A Go panic is turned into an error:
// it must never unwind into CPython.
//
//export tachCall
func tachCall(method C.int, in *C.char, inLen C.size_t, out **C.char, outLen *C.size_t) (status C.int) {
	defer func() {
		if r := recover(); r != nil {
			status = setOut(out, outLen, []byte(fmt.Sprintf("pytest_tach._core: internal error: %v", r)), statusError)
		}
	}()
	var input []byte
	if inLen > 0 {
		input = C.GoBytes(unsafe.Pointer(in), C.int(inLen))
	}
	v, err := dispatch(int(method), input)
	if err != nil {
		code := statusError
		var ve valueError
		if errors.As(err, &ve) {
			code = statusValueError
		}
		return setOut(out, outLen, []byte(err.Error()), code)
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		return setOut(out, outLen, []byte("encoding result: "+err.Error()), statusError)
	}
	return setOut(out, outLen, b, statusOK)
}

func setOut(out **C.char, outLen *C.size_t, b []byte, status int) C.int {
	// malloc(0) may return NULL; always allocate at least one byte.
	p := C.malloc(C.size_t(len(b) + 1))
	if p == nil {
		*out, *outLen = nil, 0
		return statusError
	}
	if len(b) > 0 {
		C.memcpy(p, unsafe.Pointer(&b[0]), C.size_t(len(b)))
	}
	*out, *outLen = (*C.char)(p), C.size_t(len(b))
	return C.int(status)
}

func main() {}
