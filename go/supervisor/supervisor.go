// Package supervisor runs the zygote tree from tach's main process: it accepts the
// connections of zygotes and runner processes on a unix socket in a private directory,
// validates their frames, tells zygotes what to fork (as package sched decides),
// enforces per-test deadlines, kills through pidfds, classifies how each runner ended,
// and queues one event per finished test for the Python side to replay into pytest's
// hooks.
//
// All state is owned by one goroutine (run, loop.go), which also does every read and
// write; the root's reaper and Stop hand it functions to call. The Python side polls
// for events.
package supervisor

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/tach-dev/tach/go/sched"
	"github.com/tach-dev/tach/go/wire"
	"golang.org/x/sys/unix"
)

// TestSpec describes one selected test.
type TestSpec struct {
	NodeID   string   `msgpack:"nodeid"`
	Chain    []string `msgpack:"chain"`
	Duration float64  `msgpack:"duration"`
	Timeout  float64  `msgpack:"timeout"` // seconds; 0: none
	Batch    string   `msgpack:"batch"`   // tests of a zygote with one batch key share a runner
	Alone    bool     `msgpack:"alone"`   // tach_serial: runs with nothing else running
	Phase    int      `msgpack:"phase"`   // starts once every test of an earlier phase is done
}

// Config starts a supervisor.
type Config struct {
	ListenFD   int     `msgpack:"listen_fd"` // a listening unix socket, handed over
	RootPID    int     `msgpack:"root_pid"`  // the root zygote: our child, leader of its process group
	Workers    int     `msgpack:"workers"`
	KillGrace  float64 `msgpack:"kill_grace"` // seconds between the stack-dump signal and SIGKILL
	Persistent bool    `msgpack:"persistent"` // long-lived runners (--tach-isolate none)
	// CallLimit > 0 bounds how many tests run their call phase at once; runners wait
	// for a turn at a call gate (await_call). With Workers = CallLimit + 1 the next
	// test's process is forked and set up while the current one runs (stress mode:
	// one test's threads should have the cores to themselves, but fork and setup
	// need not wait).
	CallLimit int `msgpack:"call_limit"`
	// StallReport > 0: after that many seconds in which no process has said anything
	// and none has ended, a "stall" event says what the run is waiting for (again after
	// twice as long, and so on), rather than the run waiting silently.
	StallReport float64    `msgpack:"stall_report"`
	Tests       []TestSpec `msgpack:"tests"`
}

// Event is what Poll returns, one map per event (encoded to msgpack by the caller).
type Event map[string]any

type input struct {
	c   *conn
	msg wire.Message
	raw []byte
	err error // io.EOF at the end of a connection, or a frame error
}

type exitInfo struct {
	status       int
	maxrssKB     int
	utime, stime float64
}

type testRun struct {
	idx      int
	runner   *runnerProc
	frames   [][]byte
	badFrame bool
	started  time.Time
	deadline time.Time
	timedOut bool
	pausedAt time.Time // waiting at a gate: its deadline does not run
	// the call gate (Config.CallLimit): waiting for a turn; done with the gate (had its
	// turn, or ended or reached teardown without one); holds a turn now
	awaitingCall, turnOver, callHeld bool
	done                             bool
	finished                         bool
	maxrssKB                         int
	cpu                              float64
	event                            Event // finished, waiting for earlier tests' (reportOrder)
}

type runnerProc struct {
	id, zygote, slot int
	pid, pidfd       int
	conn             *conn
	remaining        int // tests of the current batch not finished
	current          *testRun
	startedAny       bool
	exit             *exitInfo
	exitAt           time.Time
	eof              bool
	ended            bool
	killAt           time.Time
	slotHeld         bool
	awaiting         *testRun // its final test waits at the teardown gate
}

type zproc struct {
	id, pid, pidfd int
	conn           *conn
}

// Supervisor is one run of the engine.
type Supervisor struct {
	cfg   Config
	sched *sched.Scheduler

	// the loop (loop.go)
	lnFD, epfd int
	ctlFD      int // eventfd: ctlq has functions for run() to call
	ctlMu      sync.Mutex
	ctlq       []func()
	ctlClosed  bool

	mu      sync.Mutex
	events  []Event
	evFD    int // eventfd: events has something (Poll waits on it); -1 once closed
	pollers int // Poll calls waiting on evFD
	ended   bool

	// owned by run()
	conns         map[int]*conn // by fd
	over          bool          // the run has ended: run() returns
	tests         []*testRun
	runners       map[int]*runnerProc
	live          map[int]*runnerProc // runners not ended: what the timers look at
	waiting       map[int]*runnerProc // runners whose final test waits at the teardown gate
	callOrder     []*testRun          // with a call limit: tests in dispatch order, for turns
	reportOrder   []*testRun          // with a call limit: tests in dispatch order, for events
	calling       int                 // tests holding a call turn
	zygotes       map[int]*zproc
	byPID         map[int]any // *runnerProc or *zproc
	slots         []bool
	zygFail       map[int]string // why a zygote is being killed, for the tests it loses
	setupWait     map[int]time.Time
	stopping      bool
	abortDeadline time.Time
	rootGone      bool
	rootExit      *exitInfo
	exitSent      bool
	drained       bool          // zygotes' sockets were read once more after the root was reaped
	progressAt    time.Time     // when a process last said something or ended
	stallWait     time.Duration // how long after progressAt the next stall event is due
}

// Start takes over cfg.ListenFD and starts supervising.
func Start(cfg Config) (*Supervisor, error) {
	// ListenFD is handed over: ours to close, even when the run cannot start.
	if cfg.Workers < 1 {
		unix.Close(cfg.ListenFD)
		return nil, fmt.Errorf("workers must be >= 1, got %d", cfg.Workers)
	}
	if err := checkListener(cfg.ListenFD); err != nil {
		unix.Close(cfg.ListenFD)
		return nil, err
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = 1
	}
	specs := make([]sched.Test, len(cfg.Tests))
	for i, t := range cfg.Tests {
		specs[i] = sched.Test{Chain: t.Chain, Duration: t.Duration, Batch: t.Batch, Alone: t.Alone, Phase: t.Phase}
	}
	s := &Supervisor{
		cfg: cfg, sched: sched.New(specs, cfg.Workers, cfg.Persistent), lnFD: cfg.ListenFD,
		conns: map[int]*conn{}, tests: make([]*testRun, len(cfg.Tests)),
		runners: map[int]*runnerProc{}, live: map[int]*runnerProc{}, waiting: map[int]*runnerProc{},
		zygotes: map[int]*zproc{}, byPID: map[int]any{},
		slots: make([]bool, cfg.Workers), zygFail: map[int]string{}, setupWait: map[int]time.Time{},
	}
	if err := s.newLoop(); err != nil {
		unix.Close(cfg.ListenFD)
		return nil, err
	}
	s.progress()
	root := &zproc{id: 0, pid: cfg.RootPID, pidfd: openPidfd(cfg.RootPID)}
	s.zygotes[0] = root
	go s.reapRoot()
	go s.run()
	return s, nil
}

// checkListener makes sure fd is a listening unix socket and makes it non-blocking.
func checkListener(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("fd %d is not a listening unix socket: %w", fd, err)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil || domain != unix.AF_UNIX || listening != 1 {
		return fmt.Errorf("fd %d is not a listening unix socket", fd)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("listening socket fd %d: %w", fd, err)
	}
	return nil
}

// Stop modes.
const (
	// StopAbort interrupts every runner (SIGUSR2: the test in progress gets a
	// KeyboardInterrupt, then the runner tears down what it holds beyond its zygote)
	// and asks every zygote to tear down its own scope and exit (innermost first: a
	// zygote waits for its children), as pytest tears the session down after -x or
	// Ctrl-C. After AbortGrace whatever is left is killed.
	StopAbort = "abort"
	// StopKill kills every process of the run at once.
	StopKill = "kill"
)

// AbortGrace bounds how long scope teardown may take after a stop.
const AbortGrace = 10 * time.Second

// Stop ends the run early (see StopAbort and StopKill). Tests not yet reported are
// dropped: the caller stops replaying once it has asked to stop.
func (s *Supervisor) Stop(mode string) {
	s.send(func() {
		s.sched.Stop()
		if mode == StopKill {
			s.stopping = true
			s.killAll()
			return
		}
		s.abort()
	})
}

func (s *Supervisor) abort() {
	if s.stopping {
		return
	}
	s.stopping = true
	s.abortDeadline = time.Now().Add(AbortGrace)
	for _, r := range s.live {
		signalPidfd(r.pidfd, unix.SIGUSR2)
	}
	for _, z := range s.zygotes {
		s.command(z.conn, map[string]any{"t": "exit", "teardown": true})
	}
	s.exitSent = true
}

func (s *Supervisor) reapRoot() {
	var ws unix.WaitStatus
	var ru unix.Rusage
	for {
		_, err := unix.Wait4(s.cfg.RootPID, &ws, 0, &ru)
		if err == unix.EINTR {
			continue
		}
		info := exitInfo{status: int(ws), maxrssKB: int(ru.Maxrss)}
		if err != nil {
			info.status = -1
		}
		s.send(func() {
			s.rootGone = true
			s.rootExit = &info
			s.zygoteGone(s.zygotes[0], info)
		})
		return
	}
}

// maybeEnd finishes the run once every test is accounted for and the root is reaped;
// it asks the root to exit when the work is done.
func (s *Supervisor) maybeEnd() bool {
	if s.over {
		return true
	}
	if !s.rootGone {
		if s.sched.Left() == 0 && !s.exitSent {
			s.exitSent = true
			if z := s.zygotes[0]; z.conn != nil {
				s.command(z.conn, map[string]any{"t": "exit"})
			} else {
				s.killAll()
			}
		}
		return false
	}
	if !s.drained {
		// What zygotes wrote before the root was reaped (a last handover, say) may
		// still sit in their sockets, behind the reaper's word that the root is gone:
		// read it before the run ends. Reading steps, which comes back here.
		s.drained = true
		for _, z := range s.zygotes {
			if z.conn != nil {
				s.readFrom(z.conn)
			}
			if s.over {
				return true
			}
		}
	}
	// The root is gone; anything of the run still alive in its process group dies now.
	_ = unix.Kill(-s.cfg.RootPID, unix.SIGKILL)
	for _, t := range s.tests {
		if t != nil && !t.finished {
			s.finish(t, "lost", "the run ended before the test finished", nil)
		}
	}
	s.over = true
	s.closeLoop()
	s.end(Event{"t": "end", "root_status": s.rootExit.status})
	return true
}

func (s *Supervisor) handle(in input) {
	s.progress()
	cn := in.c
	if in.err != nil {
		s.connEnded(cn, in.err)
		return
	}
	if cn.role == "" {
		if in.msg.Type != "hello" {
			s.connEnded(cn, fmt.Errorf("first frame is %q, want hello", in.msg.Type))
			return
		}
		s.hello(cn, in.msg.Fields)
		return
	}
	switch cn.role {
	case "runner":
		switch {
		case in.msg.Type == "take" && cn.id < 0:
			s.take(cn, asInt(in.msg.Fields["runner"]))
		case cn.id < 0:
			s.connEnded(cn, fmt.Errorf("resting connection sent %q, want take", in.msg.Type))
		case in.msg.Type == "rest":
			s.rest(cn)
		default:
			s.runnerFrame(s.runners[cn.id], in)
		}
	case "zygote":
		s.zygoteFrame(cn, in)
	}
}

func (s *Supervisor) hello(cn *conn, f map[string]any) {
	role, id := f["role"].(string), asInt(f["id"])
	switch role {
	case "runner":
		r, ok := s.runners[id]
		if !ok || r.conn != nil {
			s.connEnded(cn, fmt.Errorf("hello from unexpected runner %d", id))
			return
		}
		cn.role, cn.id = role, id
		r.conn = cn
	case "zygote":
		z, ok := s.zygotes[id]
		if !ok || z.conn != nil {
			s.connEnded(cn, fmt.Errorf("hello from unexpected zygote %d", id))
			return
		}
		cn.role, cn.id = role, id
		z.conn = cn
		if z.pid == 0 {
			z.pid = asInt(f["pid"])
			z.pidfd = openPidfd(z.pid)
			s.byPID[z.pid] = z
		}
		if id == 0 {
			s.sched.RootReady()
		}
	default:
		s.connEnded(cn, fmt.Errorf("hello with role %q", role))
	}
}

// rest unbinds a connection from its runner, whose tests are all done: the process
// restores itself (its runner ends, as if it had exited) and keeps the connection for
// the runner it becomes next (take). Connecting once per process instead of once per
// test saves an accept, two goroutines and a connection teardown per test.
func (s *Supervisor) rest(cn *conn) {
	r := s.runners[cn.id]
	if r.current != nil || r.remaining > 0 {
		s.connEnded(cn, fmt.Errorf("runner %d rested with tests left", r.id))
		return
	}
	r.conn, r.eof = nil, true
	cn.id = -1
	s.maybeRunnerEnded(r)
}

func (s *Supervisor) take(cn *conn, id int) {
	r, ok := s.runners[id]
	if !ok || r.conn != nil || r.eof {
		s.connEnded(cn, fmt.Errorf("take of unexpected runner %d", id))
		return
	}
	cn.id = id
	r.conn = cn
}

func (s *Supervisor) testOf(r *runnerProc, f map[string]any) *testRun {
	i := asInt(f["test"])
	if i < 0 || i >= len(s.tests) || s.tests[i] == nil || s.tests[i].runner != r || s.tests[i].finished {
		return nil
	}
	return s.tests[i]
}

func (s *Supervisor) runnerFrame(r *runnerProc, in input) {
	t := s.testOf(r, in.msg.Fields)
	if t == nil {
		s.connEnded(r.conn, fmt.Errorf("runner %d sent %q for a test it does not run", r.id, in.msg.Type))
		return
	}
	switch in.msg.Type {
	case "start":
		r.current, r.startedAny = t, true
		t.started = time.Now()
		if d := s.cfg.Tests[t.idx].Timeout; d > 0 {
			t.deadline = t.started.Add(seconds(d))
		}
	case "report", "warning", "handover":
		t.frames = append(t.frames, in.raw)
	case "await":
		r.awaiting, t.pausedAt = t, time.Now()
		s.waiting[r.id] = r
		s.sched.AtGate(r.id)
		s.endCall(t) // its scope's other tests may need the turn before it can go on
	case "await_call":
		if s.cfg.CallLimit <= 0 || t.callHeld || t.awaitingCall {
			s.connEnded(r.conn, fmt.Errorf("runner %d asked for a call turn it cannot have", r.id))
			return
		}
		t.awaitingCall, t.pausedAt = true, time.Now()
		if t.turnOver {
			// Its turn is over and it calls the test again (a plugin reran it after a
			// passed call and a failed teardown): it goes next, before tests
			// dispatched after it.
			t.turnOver = false
			s.callOrder = append([]*testRun{t}, s.callOrder...)
		}
	case "call_over":
		// Its call passed (a runner sends this for passed calls only): the next
		// test's call need not wait for this one's teardown and reports.
		if t.callHeld {
			s.endCall(t)
		}
	case "abort":
		f := in.msg.Fields
		s.emit(Event{"t": "abort", "test": t.idx, "reason": f["reason"], "code": asInt(f["code"]),
			"interrupt": f["interrupt"]})
		s.abort()
	case "done":
		t.done = true
		t.maxrssKB, t.cpu = asInt(in.msg.Fields["maxrss"]), asFloat(in.msg.Fields["cpu"])
		if r.current == t {
			r.current = nil
		}
		s.finish(t, "ok", "", nil)
	default:
		s.connEnded(r.conn, fmt.Errorf("runner %d sent %q", r.id, in.msg.Type))
	}
}

func (s *Supervisor) zygoteFrame(cn *conn, in input) {
	typ, f := in.msg.Type, in.msg.Fields
	switch typ {
	case "ready":
		id := asInt(f["id"])
		delete(s.setupWait, id)
		if p := s.sched.Zygote(id); p != nil && p.Parent != nil {
			delete(s.setupWait, p.Parent.ID)
		}
		s.sched.Ready(id)
	case "serial":
		s.sched.SetSerial(asInt(f["id"]))
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("zygote %s runs its tests one at a time: %s",
			s.keyOf(asInt(f["id"])), f["why"])})
	case "per_process":
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("zygote %s: %s", s.keyOf(asInt(f["id"])), f["why"])})
	case "forked":
		kind, id, pid := f["kind"].(string), asInt(f["id"]), asInt(f["pid"])
		switch kind {
		case "runner":
			if r, ok := s.runners[id]; ok && r.pid == 0 {
				r.pid, r.pidfd = pid, openPidfd(pid)
				s.byPID[pid] = r
				if s.stopping && !r.ended {
					// Forked for a run command sent before the stop: abort() could not
					// signal it then. Left alone it would run its whole test.
					signalPidfd(r.pidfd, unix.SIGUSR2)
				}
			}
		case "zygote":
			if z, ok := s.zygotes[id]; ok && z.pid == 0 {
				z.pid, z.pidfd = pid, openPidfd(pid)
				s.byPID[pid] = z
			}
		}
	case "exited":
		pid := asInt(f["pid"])
		info := exitInfo{status: asInt(f["status"]), maxrssKB: asInt(f["maxrss"]),
			utime: asFloat(f["utime"]), stime: asFloat(f["stime"])}
		switch p := s.byPID[pid].(type) {
		case *runnerProc:
			p.exit, p.exitAt = &info, time.Now()
			s.maybeRunnerEnded(p)
		case *zproc:
			s.zygoteGone(p, info)
		}
		delete(s.byPID, pid)
	case "fail":
		if r, ok := s.runners[asInt(f["runner"])]; ok {
			s.runnerEnded(r, "tach could not start a test process: "+f["message"].(string))
		}
	case "error":
		s.zygFail[cn.id] = "internal error in the zygote: " + f["message"].(string)
	case "handover":
		// Replayed in the main process in the order it arrives; it belongs to no test.
		s.emit(Event{"t": "handover", "frame": in.raw})
	default:
		s.connEnded(cn, fmt.Errorf("zygote sent %q", typ))
	}
}

func (s *Supervisor) keyOf(id int) string {
	if z := s.sched.Zygote(id); z != nil {
		if z.Key == "" {
			return "root"
		}
		return z.Key
	}
	return fmt.Sprint(id)
}

// zygoteGone fails every test that can no longer run because zygote z ended; a zygote
// that ended after its work was done loses nothing.
func (s *Supervisor) zygoteGone(z *zproc, info exitInfo) {
	closePidfd(&z.pidfd)
	reason, ok := s.zygFail[z.id]
	if !ok {
		reason = fmt.Sprintf("zygote for %s (pid %d) %s", s.keyOf(z.id), z.pid, describeStatus(info.status))
	}
	lost, runners := s.sched.ZygoteExited(z.id)
	for _, id := range runners {
		if r := s.runners[id]; r != nil && !r.ended {
			signalPidfd(r.pidfd, unix.SIGKILL) // it dies with its zygote anyway
			s.closeRunner(r)
		}
	}
	for _, i := range lost {
		t := s.tests[i]
		if t == nil {
			t = &testRun{idx: i}
			s.tests[i] = t
		}
		if !t.finished {
			s.finish(t, "lost", reason, nil)
		}
	}
}

func (s *Supervisor) connEnded(cn *conn, err error) {
	s.closeConn(cn)
	if err != nil && !errors.Is(err, io.EOF) {
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("dropped a connection (%s %d): %v", cn.role, cn.id, err)})
	}
	if cn.role == "runner" && cn.id >= 0 {
		r := s.runners[cn.id]
		r.eof = true
		if err != nil && !errors.Is(err, io.EOF) && !s.stopping {
			// A malformed frame: the runner's output can no longer be trusted or framed.
			// (While stopping, an interrupted send is expected: the runner is tearing
			// down and nothing it reports is used.)
			if r.current != nil {
				r.current.badFrame = true
			}
			signalPidfd(r.pidfd, unix.SIGKILL)
		}
		s.maybeRunnerEnded(r)
	}
}

// maybeRunnerEnded ends r once both its exit status and the end of its connection
// have arrived (either alone may still leave frames or a cause to come).
func (s *Supervisor) maybeRunnerEnded(r *runnerProc) {
	if !r.ended && r.exit != nil && (r.eof || r.conn == nil && time.Since(r.exitAt) > 2*time.Second) {
		s.runnerEnded(r, "")
	}
}

// runnerEnded settles a runner whose process is gone: the test it was running failed
// with how it ended; the tests of its batch it never started go back to the queue
// (or, if it died before starting any test, fail: a runner that cannot start would
// otherwise be replaced forever).
func (s *Supervisor) runnerEnded(r *runnerProc, failure string) {
	if r.ended {
		return
	}
	if t := r.current; t != nil && !t.finished {
		outcome := "crashed"
		if t.timedOut {
			outcome = "timeout"
		}
		s.finish(t, outcome, failure, r)
	}
	requeue := r.startedAny && failure == ""
	rest := s.sched.RunnerExited(r.id, requeue)
	if !requeue {
		why := failure
		if why == "" && r.exit != nil {
			why = fmt.Sprintf("its test process %s before starting a test", describeStatus(r.exit.status))
		}
		for _, i := range rest {
			if t := s.tests[i]; t != nil && !t.finished {
				s.finish(t, "lost", why, r)
			}
		}
	} else {
		for _, i := range rest {
			s.tests[i] = nil // dispatched again later, to a new runner
		}
		if s.cfg.CallLimit > 0 {
			s.emitInOrder() // tests held back for those just requeued go now
		}
	}
	s.closeRunner(r)
}

func (s *Supervisor) closeRunner(r *runnerProc) {
	r.ended = true
	delete(s.live, r.id)
	delete(s.waiting, r.id)
	closePidfd(&r.pidfd)
	s.releaseSlot(r)
	s.closeConn(r.conn)
}

func (s *Supervisor) releaseSlot(r *runnerProc) {
	if r.slotHeld {
		r.slotHeld = false
		s.slots[r.slot] = false
	}
}

func (s *Supervisor) command(cn *conn, m map[string]any) {
	if cn == nil || cn.closed {
		return
	}
	b, err := encodeFrame(m)
	if err != nil {
		s.emit(Event{"t": "note", "msg": "encoding a command: " + err.Error()})
		return
	}
	s.write(cn, b)
}

func (s *Supervisor) dispatch() {
	for _, a := range s.sched.Next() {
		z := s.zygotes[a.Zygote]
		switch a.Kind {
		case sched.Spawn:
			s.zygotes[a.Child] = &zproc{id: a.Child, pidfd: -1}
			if d := s.maxTimeout(a.Tests); d > 0 {
				s.setupWait[a.Zygote] = time.Now().Add(seconds(d))
			}
			s.command(z.conn, map[string]any{"t": "spawn", "id": a.Child, "key": a.Key, "tests": a.Tests, "final": a.Final})
		case sched.Run:
			r := &runnerProc{id: a.Runner, zygote: a.Zygote, pidfd: -1, slot: s.takeSlot(), slotHeld: true}
			s.runners[a.Runner] = r
			s.live[a.Runner] = r
			s.assign(r, a.Tests)
			s.command(z.conn, map[string]any{"t": "run", "runner": a.Runner, "tests": a.Tests,
				"final": a.Final, "persistent": s.cfg.Persistent, "slot": r.slot})
		case sched.Assign:
			r := s.runners[a.Runner]
			s.assign(r, a.Tests)
			s.command(r.conn, map[string]any{"t": "batch", "tests": a.Tests, "final": a.Final})
		case sched.Retire:
			if r := s.runners[a.Runner]; r != nil {
				s.command(r.conn, map[string]any{"t": "exit"})
			}
		}
	}
	for _, r := range s.waiting {
		if t := r.awaiting; t != nil && !r.ended && s.sched.GateOpen(r.id) {
			r.awaiting = nil
			delete(s.waiting, r.id)
			s.sched.Through(r.id)
			resume(t)
			s.command(r.conn, map[string]any{"t": "go"})
		}
	}
	// Turns go in dispatch order, as tests would run one after another: a test set up
	// sooner than the one before it still waits for it (-x must stop where plain pytest
	// would).
	for s.calling < s.cfg.CallLimit && len(s.callOrder) > 0 {
		t := s.callOrder[0]
		if t.turnOver || s.tests[t.idx] != t || t.runner == nil || t.runner.ended {
			s.callOrder = s.callOrder[1:] // done without a call (setup failed), crashed, or requeued
			continue
		}
		if !t.awaitingCall {
			break // still setting up
		}
		s.callOrder = s.callOrder[1:]
		t.awaitingCall, t.turnOver, t.callHeld = false, true, true
		s.calling++
		resume(t)
		s.command(t.runner.conn, map[string]any{"t": "go"})
	}
	for _, id := range s.sched.Drained() {
		if z := s.zygotes[id]; z != nil {
			s.command(z.conn, map[string]any{"t": "exit"})
		}
	}
}

// endCall ends t's part in the call gate: it gives its turn back when the test ends,
// so the next test's reports come after its own (-x stops where a plain run stops), or
// when the test waits at the teardown gate for other tests of its zygotes, which may
// need the turn (a test whose setup failed gets there without a call: it must not hold
// up the turn order either).
func (s *Supervisor) endCall(t *testRun) {
	t.turnOver = true
	if t.callHeld {
		t.callHeld = false
		s.calling--
	}
}

// resume restarts the deadline of a test that waited at a gate.
func resume(t *testRun) {
	if !t.deadline.IsZero() {
		t.deadline = t.deadline.Add(time.Since(t.pausedAt))
	}
	t.pausedAt = time.Time{}
}

func (s *Supervisor) assign(r *runnerProc, tests []int) {
	r.remaining = len(tests)
	for _, i := range tests {
		s.tests[i] = &testRun{idx: i, runner: r}
		if s.cfg.CallLimit > 0 {
			s.callOrder = append(s.callOrder, s.tests[i])
			s.reportOrder = append(s.reportOrder, s.tests[i])
		}
	}
}

func (s *Supervisor) maxTimeout(tests []int) float64 {
	m := 0.0
	for _, i := range tests {
		if t := s.cfg.Tests[i].Timeout; t > m {
			m = t
		}
	}
	return m
}

func (s *Supervisor) takeSlot() int {
	for i, used := range s.slots {
		if !used {
			s.slots[i] = true
			return i
		}
	}
	s.slots = append(s.slots, true) // a runner's exit not yet seen: labels only
	return len(s.slots) - 1
}

func (s *Supervisor) finish(t *testRun, outcome, reason string, ended *runnerProc) {
	t.finished = true
	s.endCall(t)
	ev := Event{"t": "test", "idx": t.idx, "outcome": outcome, "reason": reason, "done": t.done,
		"slot": -1, "runner": -1}
	frames := make([]any, 0, len(t.frames))
	for _, f := range t.frames {
		frames = append(frames, f)
	}
	ev["frames"] = frames
	if t.badFrame {
		ev["frame_error"] = true
	}
	if r := t.runner; r != nil {
		ev["slot"], ev["runner"], ev["pid"] = r.slot, r.id, r.pid
		if ended != nil && ended.exit != nil {
			ev["status"] = ended.exit.status
			ev["status_text"] = describeStatus(ended.exit.status)
			ev["signal"], ev["exit_code"] = splitStatus(ended.exit.status)
			ev["maxrss_kb"], ev["cpu_s"] = ended.exit.maxrssKB, ended.exit.utime+ended.exit.stime
		}
	}
	if t.done {
		ev["maxrss_kb"], ev["cpu_s"] = t.maxrssKB, t.cpu
	}
	if !t.started.IsZero() {
		ev["wall_s"] = time.Since(t.started).Seconds()
	}
	if t.timedOut {
		ev["timeout_s"] = s.cfg.Tests[t.idx].Timeout
	}
	s.sched.TestDone(t.idx)
	if r := t.runner; r != nil {
		r.remaining--
		if r.remaining <= 0 && !s.cfg.Persistent {
			s.releaseSlot(r) // its process is about to exit: the label is free
		}
	}
	if s.cfg.CallLimit <= 0 {
		s.emit(ev)
		return
	}
	t.event = ev
	s.emitInOrder()
}

// emitInOrder emits finished tests' events in dispatch order (with a call limit). A
// test whose call passed gives its turn on before its teardown and its reports, so the
// next test can fail and report first; with -x the main process would then stop before
// replaying the earlier test, which a plain run reports. So a test's event waits for
// those of the tests dispatched before it (a test sent back to the queue is skipped: it
// comes again when it is dispatched again).
func (s *Supervisor) emitInOrder() {
	for len(s.reportOrder) > 0 {
		t := s.reportOrder[0]
		if t.event == nil {
			if s.tests[t.idx] == t && !t.finished {
				return // still running: the tests after it wait
			}
			s.reportOrder = s.reportOrder[1:] // requeued
			continue
		}
		s.emit(t.event)
		t.event = nil
		s.reportOrder = s.reportOrder[1:]
	}
}

// progress notes that the run moved: a process said something or ended.
func (s *Supervisor) progress() {
	s.progressAt, s.stallWait = time.Now(), seconds(s.cfg.StallReport)
}

// stalled emits what the run is waiting for, once nothing has moved for stallWait.
func (s *Supervisor) stalled(now time.Time) {
	idle := now.Sub(s.progressAt)
	if s.cfg.StallReport <= 0 || s.stopping || s.over || idle < s.stallWait {
		return
	}
	s.stallWait *= 2
	running, gated, settingUp := [][]any{}, []int{}, []string{} // lists, even when empty
	for _, r := range s.live {
		switch t := r.current; {
		case r.awaiting != nil:
			gated = append(gated, r.awaiting.idx)
		case t != nil && !t.finished:
			running = append(running, []any{t.idx, now.Sub(t.started).Seconds(), r.pid})
		}
	}
	for _, id := range s.sched.SettingUp() {
		settingUp = append(settingUp, s.keyOf(id))
	}
	sort.Slice(running, func(i, j int) bool { return running[i][0].(int) < running[j][0].(int) })
	sort.Ints(gated)
	sort.Strings(settingUp)
	s.emit(Event{"t": "stall", "idle_s": idle.Seconds(), "running": running, "gated": gated,
		"setting_up": settingUp, "left": s.sched.Left()})
}

// checkTimers enforces test deadlines (dump tracebacks, then kill), fixture-setup
// deadlines, and a bound on waiting for a dead runner's connection to drain; and
// reports a run that has stopped moving.
func (s *Supervisor) checkTimers(now time.Time) {
	s.stalled(now)
	grace := seconds(s.cfg.KillGrace)
	for _, r := range s.live {
		if t := r.current; t != nil && !t.deadline.IsZero() && t.pausedAt.IsZero() && now.After(t.deadline) && !t.timedOut {
			t.timedOut = true
			signalPidfd(r.pidfd, unix.SIGUSR1) // faulthandler dumps every thread's stack
			r.killAt = now.Add(grace)
		}
		if !r.killAt.IsZero() && now.After(r.killAt) {
			r.killAt = time.Time{}
			signalPidfd(r.pidfd, unix.SIGKILL)
		}
		if r.exit != nil && !r.eof && now.Sub(r.exitAt) > 2*time.Second {
			// Something the test forked still holds the runner's connection open.
			r.eof = true
			s.maybeRunnerEnded(r)
		}
	}
	if !s.abortDeadline.IsZero() && now.After(s.abortDeadline) {
		s.abortDeadline = time.Time{}
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("scope teardown after the stop took over %s: killed", AbortGrace)})
		s.killAll()
	}
	for id, dl := range s.setupWait {
		if now.After(dl) {
			delete(s.setupWait, id)
			s.zygFail[id] = fmt.Sprintf("Timeout while zygote %s set up fixtures", s.keyOf(id))
			if z := s.zygotes[id]; z != nil {
				signalPidfd(z.pidfd, unix.SIGKILL)
			}
		}
	}
}

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

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

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
