package supervisor

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tach-dev/tach/go/wire"
	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// fake speaks the Python side of the protocol on one connection.
type fake struct {
	t *testing.T
	c net.Conn
	r *wire.Reader
}

func dial(t *testing.T, path string, hello map[string]any) *fake {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{t: t, c: c, r: wire.NewReader(c, 0)}
	f.send(hello)
	return f
}

func (f *fake) send(m map[string]any) {
	f.t.Helper()
	b, err := encodeFrame(m)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.c.Write(b); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fake) recv() map[string]any {
	f.t.Helper()
	_ = f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	p, err := f.r.Next()
	if err != nil {
		f.t.Fatalf("reading a command: %v", err)
	}
	// Commands are decoded with the supervisor's own untrusted-input decoder.
	v, err := wire.DecodeValue(p)
	if err != nil {
		f.t.Fatal(err)
	}
	return v.(map[string]any)
}

// start runs a supervisor over n tests in one session zygote. The "root zygote" is a
// real child process (sleep) because the supervisor reaps it with wait4.
func start(t *testing.T, n int, workers int) (*Supervisor, string, *exec.Cmd) {
	t.Helper()
	return startWith(t, n, Config{Workers: workers})
}

// startWith is start with more of the Config (ListenFD, RootPID and Tests are filled in).
func startWith(t *testing.T, n int, cfg Config) (*Supervisor, string, *exec.Cmd) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	// Start takes ownership of the fd it is given. f's own fd must not be it: f's
	// finalizer closes f's fd whenever f is collected, which under -count=N closed the
	// supervisor's listener, or a later test's socket that reused the number.
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // the supervisor gets the listening socket, the path stays
	ln.Close()
	root := exec.Command("sleep", "60")
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	tests := make([]TestSpec, n)
	for i := range tests {
		tests[i] = TestSpec{NodeID: "t.py::t" + string(rune('a'+i)), Chain: []string{"session"}}
	}
	cfg.ListenFD, cfg.RootPID, cfg.Tests = fd, root.Process.Pid, tests
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Process.Kill() })
	return s, path, root
}

// collect polls until the run ends and returns its test events by index.
func collect(t *testing.T, s *Supervisor) map[int]Event {
	t.Helper()
	out := map[int]Event{}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		evs, ended := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			switch e["t"] {
			case "test":
				out[e["idx"].(int)] = e
			case "end":
				if !ended {
					t.Fatal("Poll returned the end event without saying the run ended")
				}
				return out
			}
		}
	}
	t.Fatal("the run did not end")
	return nil
}

func TestOneRunnerPerTestAndCleanEnd(t *testing.T) {
	s, path, root := start(t, 2, 1)
	rootConn := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": 0, "pid": root.Process.Pid})
	cmd := rootConn.recv()
	if cmd["t"] != "spawn" || cmd["key"] != "session" {
		t.Fatalf("root got %v", cmd)
	}
	zid := asInt(cmd["id"])
	zyg := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": zid, "pid": os.Getpid()})
	zyg.send(map[string]any{"t": "ready", "id": zid})
	for i := 0; i < 2; i++ {
		run := zyg.recv()
		if run["t"] != "run" {
			t.Fatalf("zygote got %v", run)
		}
		rid, test := asInt(run["runner"]), asInt(run["tests"].([]any)[0])
		if final := run["final"].(bool); final != (i == 1) {
			t.Fatalf("run %d final=%v", i, final)
		}
		r := dial(t, path, map[string]any{"t": "hello", "role": "runner", "id": rid, "pid": os.Getpid()})
		zyg.send(map[string]any{"t": "forked", "kind": "runner", "id": rid, "pid": 1_000_000 + rid})
		r.send(map[string]any{"t": "start", "test": test})
		r.send(map[string]any{"t": "report", "test": test, "data": map[string]any{"when": "call"}})
		r.send(map[string]any{"t": "done", "test": test, "maxrss": 1024, "cpu": 0.01})
		r.c.Close()
		zyg.send(map[string]any{"t": "exited", "pid": 1_000_000 + rid, "status": 0, "maxrss": 1024, "utime": 0.0, "stime": 0.0})
	}
	if cmd := zyg.recv(); cmd["t"] != "exit" {
		t.Fatalf("drained zygote got %v", cmd)
	}
	zyg.c.Close()
	rootConn.send(map[string]any{"t": "exited", "pid": os.Getpid(), "status": 0, "maxrss": 0, "utime": 0.0, "stime": 0.0})
	if cmd := rootConn.recv(); cmd["t"] != "exit" {
		t.Fatalf("root got %v at the end", cmd)
	}
	_ = root.Process.Kill() // the fake root "exits"
	evs := collect(t, s)
	for i := 0; i < 2; i++ {
		e := evs[i]
		if e == nil || e["outcome"] != "ok" || len(e["frames"].([]any)) != 1 {
			t.Fatalf("test %d: %v", i, e)
		}
	}
}

// sessionZygote plays the root zygote and the session zygote it is told to spawn, up
// to ready, and returns the session zygote's connection.
func sessionZygote(t *testing.T, path string, root *exec.Cmd) *fake {
	t.Helper()
	rootConn := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": 0, "pid": root.Process.Pid})
	zid := asInt(rootConn.recv()["id"])
	zyg := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": zid, "pid": os.Getpid()})
	zyg.send(map[string]any{"t": "ready", "id": zid})
	return zyg
}

// runnerFor plays the runner a run command asked zyg for (as process pid): forked,
// hello, start. It returns the runner's connection and its test.
func runnerFor(t *testing.T, path string, zyg *fake, run map[string]any, pid int) (*fake, int) {
	t.Helper()
	rid, test := asInt(run["runner"]), asInt(run["tests"].([]any)[0])
	r := dial(t, path, map[string]any{"t": "hello", "role": "runner", "id": rid, "pid": os.Getpid()})
	zyg.send(map[string]any{"t": "forked", "kind": "runner", "id": rid, "pid": pid})
	r.send(map[string]any{"t": "start", "test": test})
	return r, test
}

// testEvents polls s until it has reported each of tests (for at most 5 s) and
// returns the test events seen, by test index.
func testEvents(s *Supervisor, tests ...int) map[int]Event {
	got := map[int]Event{}
	missing := func() bool {
		for _, i := range tests {
			if got[i] == nil {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(5 * time.Second); missing() && time.Now().Before(deadline); {
		evs, _ := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			if e["t"] == "test" {
				got[e["idx"].(int)] = e
			}
		}
	}
	return got
}

// bothDone has runners a and b report their tests done and checks both end ok.
func bothDone(t *testing.T, s *Supervisor, a *fake, ta int, b *fake, tb int) {
	t.Helper()
	a.send(map[string]any{"t": "done", "test": ta, "maxrss": 1, "cpu": 0.0})
	b.send(map[string]any{"t": "done", "test": tb, "maxrss": 1, "cpu": 0.0})
	got := testEvents(s, ta, tb)
	if got[ta]["outcome"] != "ok" || got[tb]["outcome"] != "ok" {
		t.Fatalf("events: %v", got)
	}
}

// expectGo reads the next command and fails unless it is go; who names the runner.
func (f *fake) expectGo(who string) {
	f.t.Helper()
	if cmd := f.recv(); cmd["t"] != "go" {
		f.t.Fatalf("%s got %v", who, cmd)
	}
}

// quiet fails if a command arrives within d.
func (f *fake) quiet(d time.Duration) {
	f.t.Helper()
	_ = f.c.SetReadDeadline(time.Now().Add(d))
	if p, err := f.r.Next(); err == nil {
		f.t.Fatalf("expected no command, got a %d-byte frame", len(p))
	}
}

func TestCallGateGivesTurnsInDispatchOrderAndTakesThemBackFromCrashes(t *testing.T) {
	// Two processes alive, one call at a time: stress mode's pre-forked next test.
	s, path, root := startWith(t, 3, Config{Workers: 2, CallLimit: 1})
	zyg := sessionZygote(t, path, root)
	runner := func(run map[string]any, pid int) (*fake, int) {
		r, test := runnerFor(t, path, zyg, run, pid)
		r.send(map[string]any{"t": "await_call", "test": test})
		return r, test
	}
	runA, runB := zyg.recv(), zyg.recv()
	b, tb := runner(runB, 4_000_002) // set up first, but dispatched second
	b.quiet(200 * time.Millisecond)
	a, ta := runner(runA, 4_000_001)
	a.expectGo("first runner")
	b.quiet(200 * time.Millisecond) // A holds the only turn until its test is done
	a.send(map[string]any{"t": "done", "test": ta, "maxrss": 1, "cpu": 0.0})
	b.expectGo("second runner")
	a.c.Close()
	zyg.send(map[string]any{"t": "exited", "pid": 4_000_001, "status": 0, "maxrss": 0, "utime": 0.0, "stime": 0.0})
	c, _ := runner(zyg.recv(), 4_000_003)
	c.quiet(200 * time.Millisecond) // B holds the turn...
	b.c.Close()                     // ...and dies holding it
	zyg.send(map[string]any{"t": "exited", "pid": 4_000_002, "status": int(unix.SIGSEGV), "maxrss": 0, "utime": 0.0, "stime": 0.0})
	c.expectGo("third runner, after the holder crashed,")
	got := testEvents(s, ta, tb)
	if got[ta]["outcome"] != "ok" || got[tb]["outcome"] != "crashed" {
		t.Fatalf("events: %v", got)
	}
	s.Stop(StopKill)
}

// turnHeldByA starts two runners under a call limit of one: A has been given the
// turn, B asks for it (pids from base).
func turnHeldByA(t *testing.T, base int) (s *Supervisor, a *fake, ta int, b *fake, tb int) {
	t.Helper()
	s, path, root := startWith(t, 2, Config{Workers: 2, CallLimit: 1})
	zyg := sessionZygote(t, path, root)
	runA, runB := zyg.recv(), zyg.recv()
	a, ta = runnerFor(t, path, zyg, runA, base+1)
	a.send(map[string]any{"t": "await_call", "test": ta})
	a.expectGo("first runner")
	b, tb = runnerFor(t, path, zyg, runB, base+2)
	b.send(map[string]any{"t": "await_call", "test": tb})
	return s, a, ta, b, tb
}

func TestCallOverPassesTheTurnOnBeforeTheTestIsDone(t *testing.T) {
	s, a, ta, b, tb := turnHeldByA(t, 4_100_000)
	b.quiet(200 * time.Millisecond)
	a.send(map[string]any{"t": "call_over", "test": ta}) // A tears down: B may call
	b.expectGo("second runner")
	a.send(map[string]any{"t": "call_over", "test": ta}) // a repeat is harmless
	bothDone(t, s, a, ta, b, tb)
	s.Stop(StopKill)
}

func TestATestAsksForTheTurnAgainAfterItsCallPassed(t *testing.T) {
	// pytest-rerunfailures reruns a test whose teardown failed after its call passed
	// (call_over): it asks for a turn again and gets it when the turn comes free.
	s, path, root := startWith(t, 2, Config{Workers: 2, CallLimit: 1})
	zyg := sessionZygote(t, path, root)
	runA, runB := zyg.recv(), zyg.recv()
	a, ta := runnerFor(t, path, zyg, runA, 4_200_001)
	b, tb := runnerFor(t, path, zyg, runB, 4_200_002)
	a.send(map[string]any{"t": "await_call", "test": ta})
	a.expectGo("first runner")
	b.send(map[string]any{"t": "await_call", "test": tb})
	a.send(map[string]any{"t": "call_over", "test": ta})
	b.expectGo("second runner")
	a.send(map[string]any{"t": "await_call", "test": ta}) // the rerun
	a.quiet(200 * time.Millisecond)
	b.send(map[string]any{"t": "call_over", "test": tb})
	a.expectGo("the rerun")
	bothDone(t, s, a, ta, b, tb)
	s.Stop(StopKill)
}

func TestAReusableProcessKeepsItsConnectionAcrossRunners(t *testing.T) {
	// A reusable test process (--tach-reset snapshot) connects once: after its batch it
	// rests (its runner ends once the zygote reports it exited: the slot frees) and
	// takes the next runner on the same connection.
	s, path, root := start(t, 3, 1)
	zyg := sessionZygote(t, path, root)
	const pid = 4_300_001
	exited := map[string]any{"t": "exited", "pid": pid, "status": 0, "maxrss": 1, "utime": 0.0, "stime": 0.0}
	p, first := runnerFor(t, path, zyg, zyg.recv(), pid)
	tests := []int{first}
	for k := 0; k < 2; k++ {
		p.send(map[string]any{"t": "done", "test": tests[k], "maxrss": 1, "cpu": 0.0})
		p.send(map[string]any{"t": "rest"})
		zyg.send(exited)
		run := zyg.recv() // dispatched only once the runner before it ended
		rid, test := asInt(run["runner"]), asInt(run["tests"].([]any)[0])
		p.send(map[string]any{"t": "take", "runner": rid})
		zyg.send(map[string]any{"t": "forked", "kind": "runner", "id": rid, "pid": pid})
		p.send(map[string]any{"t": "start", "test": test})
		tests = append(tests, test)
	}
	p.send(map[string]any{"t": "rest"}) // with its test running: refused, and killed
	got := testEvents(s, tests[:2]...)
	for _, i := range tests[:2] {
		if got[i]["outcome"] != "ok" {
			t.Fatalf("test %d: %v", i, got[i])
		}
	}
	zyg.send(exited)
	if got = testEvents(s, tests[2]); got[tests[2]]["outcome"] != "crashed" {
		t.Fatalf("a runner that rested with its test running: %v", got[tests[2]])
	}
	s.Stop(StopKill)
}

func TestARestingConnectionOnlyTakesARunner(t *testing.T) {
	s, path, root := start(t, 1, 1)
	zyg := sessionZygote(t, path, root)
	p, test := runnerFor(t, path, zyg, zyg.recv(), 4_400_001)
	p.send(map[string]any{"t": "done", "test": test, "maxrss": 1, "cpu": 0.0})
	p.send(map[string]any{"t": "rest"})
	p.send(map[string]any{"t": "start", "test": test})
	_ = p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.r.Next(); err == nil {
		t.Fatal("a resting connection that sent start was answered")
	}
	if got := testEvents(s, test); got[test]["outcome"] != "ok" {
		t.Fatalf("the test done before: %v", got[test])
	}
	s.Stop(StopKill)
}

// A runner that its zygote forks after the stop (for a run command sent before it)
// is interrupted as soon as the supervisor learns its pid: abort() could not signal it.
func TestAbortInterruptsARunnerForkedAfterIt(t *testing.T) {
	s, path, root := start(t, 1, 1)
	zyg := sessionZygote(t, path, root)
	run := zyg.recv()
	s.Stop(StopAbort)
	if cmd := zyg.recv(); cmd["t"] != "exit" || cmd["teardown"] != true {
		t.Fatalf("the zygote got %v, want exit with teardown", cmd)
	}
	proc := exec.Command("sleep", "60")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Process.Kill() })
	runnerFor(t, path, zyg, run, proc.Process.Pid)
	err := proc.Wait()
	if ws, ok := proc.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGUSR2 {
		t.Fatalf("the runner ended with %v, want killed by SIGUSR2 (the stop signal)", err)
	}
	s.Stop(StopKill)
}

func TestCallGateRefusedWithoutACallLimit(t *testing.T) {
	s, path, root := start(t, 1, 1)
	zyg := sessionZygote(t, path, root)
	r, test := runnerFor(t, path, zyg, zyg.recv(), 5_000_001)
	r.send(map[string]any{"t": "await_call", "test": test})
	// The supervisor drops a runner that breaks the protocol, and kills it.
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.r.Next(); err == nil {
		t.Fatal("a runner asking for a call turn without a call limit was answered")
	}
	s.Stop(StopKill)
}

// The supervisor reads non-blocking sockets in whatever pieces they give: a report
// larger than a read and than one wake-up's read budget, written in pieces that also
// split its header, arrives whole and in order with the frame after it.
func TestFramesSplitAcrossReadsArriveWhole(t *testing.T) {
	s, path, root := start(t, 1, 1)
	zyg := sessionZygote(t, path, root)
	r, test := runnerFor(t, path, zyg, zyg.recv(), 6_000_001)
	report, err := encodeFrame(map[string]any{"t": "report", "test": test,
		"data": map[string]any{"longrepr": strings.Repeat("x", 3*readBudget)}})
	if err != nil {
		t.Fatal(err)
	}
	done, _ := encodeFrame(map[string]any{"t": "done", "test": test, "maxrss": 1, "cpu": 0.0})
	stream := append(append([]byte(nil), report...), done...)
	for k := 0; len(stream) > 0; k++ {
		n := min(len(stream), []int{1, 2, 5, 1000, readChunk + 1, 300_000}[k%6])
		if _, err := r.c.Write(stream[:n]); err != nil {
			t.Fatal(err)
		}
		stream = stream[n:]
		if k < 12 {
			time.Sleep(2 * time.Millisecond) // let the supervisor read the pieces apart
		}
	}
	ev := testEvents(s, test)[test]
	if ev == nil || ev["outcome"] != "ok" {
		t.Fatalf("test event: %v", ev)
	}
	if fr := ev["frames"].([]any); len(fr) != 1 || !bytes.Equal(fr[0].([]byte), report[wire.HeaderSize:]) {
		t.Fatalf("got %d frames, want the report byte for byte", len(fr))
	}
	s.Stop(StopKill)
}

// A connection that ends inside a frame sent a malformed frame: its test crashed.
func TestAFrameCutShortByTheEndOfTheConnectionIsMalformed(t *testing.T) {
	s, path, root := start(t, 1, 1)
	zyg := sessionZygote(t, path, root)
	r, test := runnerFor(t, path, zyg, zyg.recv(), 7_000_001)
	report, _ := encodeFrame(map[string]any{"t": "report", "test": test, "data": map[string]any{}})
	_, _ = r.c.Write(report[:len(report)-1])
	r.c.Close()
	zyg.send(map[string]any{"t": "exited", "pid": 7_000_001, "status": 0, "maxrss": 0, "utime": 0.0, "stime": 0.0})
	ev := testEvents(s, test)[test]
	if ev == nil || ev["outcome"] != "crashed" || ev["frame_error"] != true {
		t.Fatalf("test event: %v", ev)
	}
	s.Stop(StopKill)
}

func TestCrashAndMalformedFrameAreClassified(t *testing.T) {
	s, path, root := start(t, 2, 2)
	zyg := sessionZygote(t, path, root)
	runs := []map[string]any{zyg.recv(), zyg.recv()}
	// Runner A dies of SIGSEGV mid-test; runner B writes garbage.
	for i, run := range runs {
		rid, test := asInt(run["runner"]), asInt(run["tests"].([]any)[0])
		r := dial(t, path, map[string]any{"t": "hello", "role": "runner", "id": rid, "pid": os.Getpid()})
		r.send(map[string]any{"t": "start", "test": test})
		if i == 0 {
			r.c.Close()
			status := int(unix.SIGSEGV) // a raw wait status: killed by signal 11
			zyg.send(map[string]any{"t": "forked", "kind": "runner", "id": rid, "pid": 2_000_000 + rid})
			zyg.send(map[string]any{"t": "exited", "pid": 2_000_000 + rid, "status": status, "maxrss": 0, "utime": 0.0, "stime": 0.0})
		} else {
			zyg.send(map[string]any{"t": "forked", "kind": "runner", "id": rid, "pid": 3_000_000 + rid})
			_, _ = r.c.Write([]byte{0xff, 0xff, 0xff, 0xff})
			zyg.send(map[string]any{"t": "exited", "pid": 3_000_000 + rid, "status": int(unix.SIGKILL), "maxrss": 0, "utime": 0.0, "stime": 0.0})
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	got := map[int]Event{}
	for len(got) < 2 && time.Now().Before(deadline) {
		evs, _ := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			if e["t"] == "test" {
				got[e["idx"].(int)] = e
			}
		}
	}
	var segv, bad Event
	for _, e := range got {
		if e["frame_error"] == true {
			bad = e
		} else {
			segv = e
		}
	}
	if segv == nil || segv["outcome"] != "crashed" || segv["status_text"] != "was killed by SIGSEGV (signal 11)" {
		t.Fatalf("segfault event: %v", segv)
	}
	if bad == nil || bad["outcome"] != "crashed" {
		t.Fatalf("malformed-frame event: %v (all: %v)", bad, got)
	}
	s.Stop(StopKill)
}

// Start takes over the fd it is given: a pipe is refused, and closed all the same.
func TestStartRefusesWhatIsNotAListeningUnixSocket(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	_, err := Start(Config{ListenFD: p[0], Workers: 1})
	if err == nil || !strings.Contains(err.Error(), "not a listening unix socket") {
		t.Fatalf("got %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("the refused fd is still open (%v)", err)
	}
}

// If epoll_wait ever fails, the run is killed and still ends, every test accounted for.
func TestABrokenEpollStillEndsTheRun(t *testing.T) {
	s, _, _ := start(t, 1, 1)
	s.send(func() { unix.Close(s.epfd); s.epfd = -1 })
	evs := collect(t, s)
	if e := evs[0]; e == nil || e["outcome"] != "lost" {
		t.Fatalf("test event: %v", e)
	}
}

func TestDescribeStatus(t *testing.T) {
	cases := map[int]string{
		0:                 "exited with code 0",
		3 << 8:            "exited with code 3",
		int(unix.SIGABRT): "was killed by SIGABRT (signal 6)",
		int(unix.SIGKILL): "was killed by SIGKILL (signal 9)",
		int(unix.SIGSEGV): "was killed by SIGSEGV (signal 11)",
		-1:                "ended in an unknown way",
	}
	for status, want := range cases {
		if got := describeStatus(status); got != want {
			t.Errorf("describeStatus(%#x) = %q, want %q", status, got, want)
		}
	}
}

func TestSchemaRejectsWhatAPythonProcessMustNotSend(t *testing.T) {
	bad := []map[string]any{
		{"t": "hello", "role": "runner", "id": "seven", "pid": 1}, // wrong kind
		{"t": "done", "test": 1},                                  // missing fields
		{"t": "exec", "cmd": "rm -rf /"},                          // unknown type
	}
	for _, m := range bad {
		p, _ := msgpack.Marshal(m)
		if _, err := schema.Decode(p); err == nil {
			t.Errorf("accepted %v", m)
		}
	}
}

func TestHandoverFramesReachTheMainProcess(t *testing.T) {
	s, path, root := start(t, 1, 1)
	rootConn := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": 0, "pid": root.Process.Pid})
	zid := asInt(rootConn.recv()["id"])
	zyg := dial(t, path, map[string]any{"t": "hello", "role": "zygote", "id": zid, "pid": os.Getpid()})
	// A zygote hands over what its fixture setup accumulated, then is ready.
	zyg.send(map[string]any{"t": "handover", "test": -1, "data": map[string]any{"cov": "setup"}})
	zyg.send(map[string]any{"t": "ready", "id": zid})
	r, test := runnerFor(t, path, zyg, zyg.recv(), 1_000_001)
	r.send(map[string]any{"t": "report", "test": test, "data": map[string]any{"when": "call"}})
	r.send(map[string]any{"t": "handover", "test": test, "data": map[string]any{"cov": "test"}})
	r.send(map[string]any{"t": "done", "test": test, "maxrss": 1, "cpu": 0.0})
	r.c.Close()
	zyg.send(map[string]any{"t": "exited", "pid": 1_000_001, "status": 0, "maxrss": 1, "utime": 0.0, "stime": 0.0})
	if cmd := zyg.recv(); cmd["t"] != "exit" {
		t.Fatalf("zygote got %v", cmd)
	}
	// Its last words (a teardown after a stop, say) come right before the root ends.
	zyg.send(map[string]any{"t": "handover", "test": -1, "data": map[string]any{"cov": "teardown"}})
	zyg.c.Close()
	if cmd := rootConn.recv(); cmd["t"] != "exit" {
		t.Fatalf("root got %v", cmd)
	}
	_ = root.Process.Kill()
	var zygoteData []string
	var testFrames []any
	deadline := time.Now().Add(10 * time.Second)
	for ended := false; !ended; {
		if time.Now().After(deadline) {
			t.Fatal("the run did not end")
		}
		evs, _ := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			switch e["t"] {
			case "handover":
				v, err := wire.DecodeValue(e["frame"].([]byte))
				if err != nil {
					t.Fatal(err)
				}
				zygoteData = append(zygoteData, v.(map[string]any)["data"].(map[string]any)["cov"].(string))
			case "test":
				testFrames = e["frames"].([]any)
			case "end":
				ended = true
			}
		}
	}
	if strings.Join(zygoteData, ",") != "setup,teardown" {
		t.Fatalf("zygote handovers: %v", zygoteData)
	}
	if len(testFrames) != 2 || !bytes.Contains(testFrames[1].([]byte), []byte("handover")) {
		t.Fatalf("the test's frames: %d, want its report and its handover", len(testFrames))
	}
}

func TestWithACallLimitTestsAreReportedInDispatchOrder(t *testing.T) {
	// A passes its call and gives the turn on (call_over) while it tears down; B fails
	// and is done first. Its event must wait for A's: with -x the main process stops
	// at B, and a plain run would have reported A before it.
	s, a, ta, b, tb := turnHeldByA(t, 4_200_000)
	a.send(map[string]any{"t": "call_over", "test": ta})
	b.expectGo("second runner")
	b.send(map[string]any{"t": "report", "test": tb, "data": map[string]any{"when": "call"}})
	b.send(map[string]any{"t": "done", "test": tb, "maxrss": 1, "cpu": 0.0})
	// Wait until the supervisor has handled B's done (it reads connections in any order).
	deadline := time.Now().Add(5 * time.Second)
	for {
		done := make(chan bool)
		s.send(func() { done <- s.tests[tb] != nil && s.tests[tb].finished })
		if <-done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B's done was never handled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if evs, _ := s.Poll(0); len(evs) != 0 {
		t.Fatalf("B was reported before A: %v", evs)
	}
	a.send(map[string]any{"t": "done", "test": ta, "maxrss": 1, "cpu": 0.0})
	var order []int
	for deadline := time.Now().Add(5 * time.Second); len(order) < 2 && time.Now().Before(deadline); {
		evs, _ := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			if e["t"] == "test" {
				order = append(order, e["idx"].(int))
			}
		}
	}
	if len(order) != 2 || order[0] != ta || order[1] != tb {
		t.Fatalf("events in order %v, want [%d %d]", order, ta, tb)
	}
	s.Stop(StopKill)
}

func TestARunThatStopsMovingSaysWhatItWaitsFor(t *testing.T) {
	s, path, root := startWith(t, 2, Config{Workers: 1, StallReport: 0.05})
	zyg := sessionZygote(t, path, root)
	proc := exec.Command("sleep", "60")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proc.Process.Kill() })
	runnerFor(t, path, zyg, zyg.recv(), proc.Process.Pid) // then the test says nothing
	var stalls []Event
	for deadline := time.Now().Add(5 * time.Second); len(stalls) < 2 && time.Now().Before(deadline); {
		evs, _ := s.Poll(50 * time.Millisecond)
		for _, e := range evs {
			if e["t"] == "stall" {
				stalls = append(stalls, e)
			}
		}
	}
	if len(stalls) < 2 {
		t.Fatalf("stall events: %v, want two", stalls)
	}
	first := stalls[0]
	running, _ := first["running"].([][]any)
	if len(running) != 1 || running[0][0] != 0 || running[0][2] != proc.Process.Pid || first["left"] != 2 {
		t.Fatalf("stall event %v: want test 0 running in pid %d, 2 tests left", first, proc.Process.Pid)
	}
	// The next report waits twice as long: a hung run is not a flood.
	if a, b := first["idle_s"].(float64), stalls[1]["idle_s"].(float64); b < 2*0.05 || b <= a {
		t.Fatalf("idle_s %v then %v", a, b)
	}
	s.Stop(StopKill)
}
