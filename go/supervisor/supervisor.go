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
	// stoppedAt is when its process was first seen stopped (by SIGSTOP or SIGTSTP, not
	// by a tracer); stopped, that it stayed so past StopGrace and was killed for it.
	stoppedAt time.Time
	stopped   bool
	pausedAt  time.Time // waiting at a gate: its deadline does not run
	done      bool
	finished  bool
	maxrssKB  int
	cpu       float64
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
	live          map[int]*runnerProc             // runners not ended: what the timers look at
	waiting       map[int]*runnerProc             // runners whose final test waits at the teardown gate
	turns         *sched.Turns[*testRun]          // the call gate (Config.CallLimit)
	reports       *sched.InOrder[*testRun, Event] // with a call limit: events in dispatch order
	zygotes       map[int]*zproc
	byPID         map[int]any // *runnerProc or *zproc
	slots         []bool
	zygFail       map[int]string // why a zygote is being killed, for the tests it loses
	setupWait     map[int]time.Time
	stopping      bool
	abortDeadline time.Time
	stopCheckAt   time.Time // when running tests' processes are next looked at for being stopped
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
		turns: sched.NewTurns[*testRun](cfg.CallLimit), reports: sched.NewInOrder[*testRun, Event](),
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

// StopGrace is how long a test process may stay stopped (it sent itself SIGSTOP, or a
// terminal's SIGTSTP reached it) before tach kills it and fails its test: plain pytest
// would sit stopped with it until someone continued it; a run must end. A process
// continued within it (a test that stops itself and has a helper wake it) goes on.
var StopGrace = 5 * time.Second

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
		s.command(z.conn, exitCmd{T: "exit", Teardown: true})
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
				s.command(z.conn, exitCmd{T: "exit"})
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

func (s *Supervisor) command(cn *conn, m any) {
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
			s.command(z.conn, spawnCmd{T: "spawn", ID: a.Child, Key: a.Key, Tests: a.Tests, Final: a.Final})
		case sched.Run:
			r := &runnerProc{id: a.Runner, zygote: a.Zygote, pidfd: -1, slot: s.takeSlot(), slotHeld: true}
			s.runners[a.Runner] = r
			s.live[a.Runner] = r
			s.assign(r, a.Tests)
			s.command(z.conn, runCmd{T: "run", Runner: a.Runner, Tests: a.Tests, Final: a.Final,
				Persistent: s.cfg.Persistent, Slot: r.slot})
		case sched.Assign:
			r := s.runners[a.Runner]
			s.assign(r, a.Tests)
			s.command(r.conn, batchCmd{T: "batch", Tests: a.Tests, Final: a.Final})
		case sched.Retire:
			if r := s.runners[a.Runner]; r != nil {
				s.command(r.conn, exitCmd{T: "exit"})
			}
		}
	}
	for _, r := range s.waiting {
		if t := r.awaiting; t != nil && !r.ended && s.sched.GateOpen(r.id) {
			r.awaiting = nil
			delete(s.waiting, r.id)
			s.sched.Through(r.id)
			resume(t)
			s.command(r.conn, goCmd{T: "go"})
		}
	}
	// Turns go in dispatch order, as tests would run one after another: a test set up
	// sooner than the one before it still waits for it (-x must stop where plain pytest
	// would).
	for _, t := range s.turns.Grant(s.mayCall) {
		resume(t)
		s.command(t.runner.conn, goCmd{T: "go"})
	}
	for _, id := range s.sched.Drained() {
		if z := s.zygotes[id]; z != nil {
			s.command(z.conn, exitCmd{T: "exit"})
		}
	}
}
