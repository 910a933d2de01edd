// Package supervisor runs the zygote tree from tach's main process: it accepts the
// connections of zygotes and test processes on a unix socket in a private directory,
// validates their frames, tells zygotes what to fork (as package sched decides), enforces
// per-test deadlines, kills through pidfds, classifies how each test process ended, and
// queues one event per finished test for the Python side to replay into pytest's hooks.
//
// All state is owned by one goroutine (run); connection readers, the root reaper and
// the API only send it messages. The Python side polls for events.
package supervisor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
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
}

// Config starts a supervisor.
type Config struct {
	ListenFD  int        `msgpack:"listen_fd"` // a listening unix socket, handed over
	RootPID   int        `msgpack:"root_pid"`  // the root zygote: our child, leader of its process group
	Workers   int        `msgpack:"workers"`
	KillGrace float64    `msgpack:"kill_grace"` // seconds between the traceback-dump signal and SIGKILL
	Tests     []TestSpec `msgpack:"tests"`
}

// Event is what Poll returns, one map per event (encoded to msgpack by the caller).
type Event map[string]any

type conn struct {
	c      net.Conn
	role   string
	id     int // zygote id (current, after hand-overs) or test index
	pid    int
	out    chan []byte // frames to send; closed when the connection is dropped
	closed bool
}

type input struct {
	c   *conn
	msg wire.Message
	raw []byte
	err error // io.EOF at the end of a connection, or a frame error
	new bool  // c was just accepted (no frame yet)
}

type exitInfo struct {
	status       int
	maxrssKB     int
	utime, stime float64
}

type testRun struct {
	idx      int
	slot     int
	zygote   int
	inPlace  bool
	pid      int
	pidfd    int
	conn     *conn
	frames   [][]byte
	done     bool // the process sent "done"
	eof      bool
	exit     *exitInfo
	exitAt   time.Time
	started  time.Time
	deadline time.Time
	killAt   time.Time // SIGKILL after the dump signal
	timedOut bool
	finished bool
	// afterExit processes the exit of the zygote this test ran in place in, once the
	// test itself has finished (its connection may still hold frames when the exit
	// arrives).
	afterExit func()
}

type zproc struct {
	id    int
	pid   int
	pidfd int
	conn  *conn
}

// Supervisor is one run of the engine.
type Supervisor struct {
	cfg   Config
	sched *sched.Scheduler
	ln    *net.UnixListener

	in      chan input
	control chan func()
	rootEnd chan exitInfo

	mu     sync.Mutex
	events []Event
	wake   chan struct{}
	ended  bool

	// owned by run()
	tests     []*testRun
	zygotes   map[int]*zproc // by zygote id (a process that handed over is under each id it had)
	byPID     map[int]any    // *testRun or *zproc
	slots     []bool
	zygFail   map[int]string // why a zygote is being killed, for the tests it loses
	stopping  bool
	killing   bool
	rootGone  bool
	rootExit  *exitInfo
	exitSent  bool
	setupWait map[int]time.Time // zygote id -> deadline for an announced child to become ready
}

// Start takes over cfg.ListenFD and starts supervising.
func Start(cfg Config) (*Supervisor, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("workers must be >= 1, got %d", cfg.Workers)
	}
	f := os.NewFile(uintptr(cfg.ListenFD), "tach-listener")
	l, err := net.FileListener(f)
	f.Close() // FileListener dup'ed it
	if err != nil {
		return nil, fmt.Errorf("using listening socket fd %d: %w", cfg.ListenFD, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("fd %d is not a unix socket listener", cfg.ListenFD)
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = 1
	}
	specs := make([]sched.Test, len(cfg.Tests))
	for i, t := range cfg.Tests {
		specs[i] = sched.Test{Chain: t.Chain, Duration: t.Duration}
	}
	s := &Supervisor{
		cfg: cfg, sched: sched.New(specs, cfg.Workers), ln: ul,
		in: make(chan input, 256), control: make(chan func(), 8), rootEnd: make(chan exitInfo, 1),
		wake: make(chan struct{}, 1), tests: make([]*testRun, len(cfg.Tests)),
		zygotes: map[int]*zproc{}, byPID: map[int]any{}, slots: make([]bool, cfg.Workers),
		zygFail: map[int]string{}, setupWait: map[int]time.Time{},
	}
	root := &zproc{id: 0, pid: cfg.RootPID, pidfd: openPidfd(cfg.RootPID)}
	s.zygotes[0] = root
	s.byPID[cfg.RootPID] = root
	go s.accept()
	go s.reapRoot()
	go s.run()
	return s, nil
}

// Poll waits up to timeout for events and returns those queued. ended is true once the
// run is over: every test reported, every process gone.
func (s *Supervisor) Poll(timeout time.Duration) (evs []Event, ended bool) {
	s.mu.Lock()
	if len(s.events) == 0 && !s.ended {
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-time.After(timeout):
		}
		s.mu.Lock()
	}
	evs, s.events = s.events, nil
	ended = s.ended && len(evs) == 0
	s.mu.Unlock()
	return evs, ended
}

// Stop ends dispatching. With kill, running tests and zygotes are killed (their tests
// are not reported); without, running tests finish first.
func (s *Supervisor) Stop(kill bool) {
	s.send(func() {
		s.stopping = true
		s.sched.Stop()
		if kill {
			s.killAll()
		}
	})
}

func (s *Supervisor) send(f func()) {
	defer func() { recover() }() // run() has ended: nothing left to stop
	s.control <- f
}

func (s *Supervisor) emit(e Event) {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Supervisor) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // listener closed at the end of the run
		}
		cn := &conn{c: c, out: make(chan []byte, 64), id: -1}
		go s.read(cn)
		go s.write(cn)
	}
}

func (s *Supervisor) read(cn *conn) {
	// Buffered: a test sends several small frames in a row; one read syscall each
	// (header and body) showed up in the main process's CPU time.
	r := wire.NewReader(bufio.NewReaderSize(cn.c, 16<<10), 0)
	for {
		p, err := r.Next()
		if err != nil {
			s.in <- input{c: cn, err: err}
			return
		}
		m, err := schema.Decode(p)
		if err != nil {
			s.in <- input{c: cn, err: err}
			return
		}
		s.in <- input{c: cn, msg: m, raw: p}
	}
}

func (s *Supervisor) write(cn *conn) {
	for b := range cn.out {
		if _, err := cn.c.Write(b); err != nil {
			// The process is gone; its reader reports the end of the connection.
			for range cn.out {
			}
			return
		}
	}
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
		s.rootEnd <- info
		return
	}
}

func (s *Supervisor) run() {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case in := <-s.in:
			s.handle(in)
		case f := <-s.control:
			f()
		case info := <-s.rootEnd:
			s.rootGone = true
			s.rootExit = &info
			s.onZygoteExit(s.zygotes[0], info)
		case now := <-tick.C:
			s.checkTimers(now)
		}
		s.dispatch()
		if s.maybeEnd() {
			return
		}
	}
}

// maybeEnd finishes the run once nothing is left: all tests accounted for and the root
// reaped. It asks the root to exit when the work is done.
func (s *Supervisor) maybeEnd() bool {
	if s.sched.Left() > 0 && !(s.stopping && s.sched.Busy() == 0) && !s.rootGone {
		return false
	}
	if !s.rootGone {
		if !s.exitSent {
			s.exitSent = true
			if z := s.zygotes[0]; z.conn != nil {
				s.command(z.conn, map[string]any{"t": "exit"})
			} else {
				s.killAll()
			}
		}
		return false
	}
	// The root is gone; anything of the run still alive in its process group dies now.
	_ = unix.Kill(-s.cfg.RootPID, unix.SIGKILL)
	for _, t := range s.tests {
		if t != nil && !t.finished {
			s.finish(t, "lost", "the run ended before the test finished")
		}
	}
	s.ln.Close()
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.emit(Event{"t": "end", "root_status": s.rootExit.status})
	close(s.control)
	return true
}

func (s *Supervisor) handle(in input) {
	cn := in.c
	if in.err != nil {
		s.connEnded(cn, in.err)
		return
	}
	if cn.role == "" {
		if in.msg.Type != "hello" {
			s.protocolError(cn, fmt.Errorf("first frame is %q, want hello", in.msg.Type))
			return
		}
		s.hello(cn, in.msg.Fields)
		return
	}
	f := in.msg.Fields
	switch cn.role {
	case "test":
		t := s.tests[cn.id]
		switch in.msg.Type {
		case "report", "warning":
			t.frames = append(t.frames, in.raw)
		case "done":
			t.done = true
		default:
			s.protocolError(cn, fmt.Errorf("test process sent %q", in.msg.Type))
		}
		s.maybeFinish(t)
	case "zygote":
		s.zygoteFrame(cn, in.msg.Type, f)
	}
}

func (s *Supervisor) hello(cn *conn, f map[string]any) {
	role, id, pid := f["role"].(string), asInt(f["id"]), asInt(f["pid"])
	switch role {
	case "test":
		if id < 0 || id >= len(s.tests) || s.tests[id] == nil || s.tests[id].conn != nil {
			s.protocolError(cn, fmt.Errorf("hello from unexpected test %d", id))
			return
		}
		cn.role, cn.id = role, id
		s.tests[id].conn = cn
	case "zygote":
		z, ok := s.zygotes[id]
		if !ok || z.conn != nil {
			s.protocolError(cn, fmt.Errorf("hello from unexpected zygote %d", id))
			return
		}
		cn.role, cn.id, cn.pid = role, id, pid
		z.conn = cn
		if z.pid == 0 {
			z.pid = pid
			z.pidfd = openPidfd(pid)
			s.byPID[pid] = z
		}
		if id == 0 {
			s.sched.RootReady()
		}
	default:
		s.protocolError(cn, fmt.Errorf("hello with role %q", role))
	}
}

func (s *Supervisor) zygoteFrame(cn *conn, typ string, f map[string]any) {
	switch typ {
	case "ready":
		id := asInt(f["id"])
		if z, ok := s.zygotes[id]; ok && z.conn == nil {
			// An in-place hand-over: same process and connection, new identity. The
			// pidfd moves to the new identity (never copied: see signalTest).
			prev := s.zygotes[cn.id]
			z.conn, z.pid, z.pidfd = cn, prev.pid, prev.pidfd
			prev.pidfd = -1
			s.byPID[z.pid] = z
			cn.id = id
		}
		delete(s.setupWait, cn.id)
		if p := s.sched.Zygote(id); p != nil && p.Parent != nil {
			delete(s.setupWait, p.Parent.ID)
		}
		s.sched.Ready(id)
	case "serial":
		s.sched.SetSerial(asInt(f["id"]))
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("zygote %q runs its tests one at a time: %s",
			s.keyOf(asInt(f["id"])), f["why"])})
	case "forked":
		kind, id, pid := f["kind"].(string), asInt(f["id"]), asInt(f["pid"])
		switch kind {
		case "test":
			if id >= 0 && id < len(s.tests) && s.tests[id] != nil && s.tests[id].pid == 0 {
				t := s.tests[id]
				t.pid, t.pidfd = pid, openPidfd(pid)
				s.byPID[pid] = t
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
		case *testRun:
			p.exit, p.exitAt = &info, time.Now()
			s.maybeFinish(p)
		case *zproc:
			s.onZygoteExit(p, info)
		}
		delete(s.byPID, pid)
	case "fail":
		if i := asInt(f["test"]); i >= 0 && i < len(s.tests) && s.tests[i] != nil {
			s.finish(s.tests[i], "lost", "tach could not start the test: "+f["message"].(string))
		}
	case "error":
		s.zygFail[cn.id] = "internal error in the zygote: " + f["message"].(string)
	default:
		s.protocolError(cn, fmt.Errorf("zygote sent %q", typ))
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

// onZygoteExit handles the end of a zygote process (its current identity is z.id).
func (s *Supervisor) onZygoteExit(z *zproc, info exitInfo) {
	cur := z.id
	if z.conn != nil {
		cur = z.conn.id
	}
	closePidfd(&z.pidfd)
	// A test running in place in this process ended with it; its connection may still
	// hold unread frames (another goroutine reads it). Its EOF decides, bounded by the
	// grace in checkTimers, and the zygote's exit is processed after it.
	for _, t := range s.tests {
		if t != nil && !t.finished && t.inPlace && t.zygote == cur {
			t.exit, t.exitAt = &info, time.Now()
			t.afterExit = func() { s.zygoteGone(z, info, cur) }
			s.maybeFinish(t)
			return
		}
	}
	s.zygoteGone(z, info, cur)
}

// zygoteGone fails every test that can no longer run because zygote cur ended.
func (s *Supervisor) zygoteGone(z *zproc, info exitInfo, cur int) {
	reason, ok := s.zygFail[cur]
	if !ok {
		reason = fmt.Sprintf("zygote for %s (pid %d) %s", s.keyOf(cur), z.pid, describeStatus(info.status))
	}
	for _, i := range s.sched.Exited(cur) {
		t := s.tests[i]
		if t == nil {
			t = &testRun{idx: i, slot: -1, pidfd: -1}
			s.tests[i] = t
		}
		if !t.finished {
			s.signalTest(t, unix.SIGKILL)
			s.finish(t, "lost", reason)
		}
	}
}

func (s *Supervisor) connEnded(cn *conn, err error) {
	if !cn.closed {
		cn.closed = true
		close(cn.out)
		cn.c.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		s.emit(Event{"t": "note", "msg": fmt.Sprintf("dropped a connection (%s %d): %v", cn.role, cn.id, err)})
	}
	if cn.role == "test" {
		t := s.tests[cn.id]
		t.eof = true
		if err != nil && !errors.Is(err, io.EOF) {
			t.frames = append(t.frames, nil) // marks a frame error: see finish
			s.signalTest(t, unix.SIGKILL)
		}
		s.maybeFinish(t)
	}
}

func (s *Supervisor) protocolError(cn *conn, err error) {
	s.connEnded(cn, err)
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
	select {
	case cn.out <- b:
	default:
		// A zygote 64 commands behind is stuck; its deadline or its exit will tell.
		go func() {
			defer func() { recover() }()
			cn.out <- b
		}()
	}
}

func (s *Supervisor) dispatch() {
	for _, a := range s.sched.Next() {
		z := s.zygotes[a.Zygote]
		switch a.Kind {
		case sched.RunTest:
			spec := s.cfg.Tests[a.Test]
			t := &testRun{idx: a.Test, zygote: a.Zygote, inPlace: a.InPlace, slot: s.takeSlot(), started: time.Now()}
			if spec.Timeout > 0 {
				t.deadline = t.started.Add(seconds(spec.Timeout))
			}
			t.pidfd = -1
			if a.InPlace {
				t.pid = z.pid // signalled through the zygote's pidfd: see signalTest
			}
			s.tests[a.Test] = t
			s.command(z.conn, map[string]any{"t": "run", "test": a.Test, "inplace": a.InPlace, "slot": t.slot})
		case sched.Spawn:
			// In place, the child keeps this process and connection: its "ready" on
			// z's connection re-identifies them (see zygoteFrame).
			s.zygotes[a.Child] = &zproc{id: a.Child}
			if d := s.maxTimeout(a.Tests); d > 0 {
				s.setupWait[a.Zygote] = time.Now().Add(seconds(d))
			}
			s.command(z.conn, map[string]any{"t": "spawn", "id": a.Child, "key": a.Key, "tests": a.Tests, "inplace": a.InPlace})
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
	s.slots = append(s.slots, true) // cannot happen with the scheduler's limit
	return len(s.slots) - 1
}

func (s *Supervisor) maybeFinish(t *testRun) {
	if t.finished {
		return
	}
	if t.inPlace {
		switch {
		case t.done && t.eof:
			s.finish(t, "ok", "")
		case t.eof && t.exit != nil:
			s.finish(t, s.crashOutcome(t), "")
		}
		return
	}
	if t.exit != nil && t.eof {
		if t.done && t.exit.status == 0 && !t.timedOut {
			s.finish(t, "ok", "")
		} else {
			s.finish(t, s.crashOutcome(t), "")
		}
	}
}

func (s *Supervisor) crashOutcome(t *testRun) string {
	if t.timedOut {
		return "timeout"
	}
	return "crashed"
}

func (s *Supervisor) finish(t *testRun, outcome, reason string) {
	t.finished = true
	ev := Event{"t": "test", "idx": t.idx, "slot": t.slot, "outcome": outcome, "pid": t.pid,
		"in_place": t.inPlace, "reason": reason}
	frames := make([]any, 0, len(t.frames))
	for _, f := range t.frames {
		if f == nil {
			ev["frame_error"] = true
			continue
		}
		frames = append(frames, f)
	}
	ev["frames"] = frames
	ev["done"] = t.done
	if t.exit != nil {
		ev["status"] = t.exit.status
		ev["status_text"] = describeStatus(t.exit.status)
		ev["signal"], ev["exit_code"] = splitStatus(t.exit.status)
		ev["maxrss_kb"] = t.exit.maxrssKB
		ev["cpu_s"] = t.exit.utime + t.exit.stime
	}
	if !t.started.IsZero() {
		ev["wall_s"] = time.Since(t.started).Seconds()
	}
	if t.timedOut {
		ev["timeout_s"] = s.cfg.Tests[t.idx].Timeout
	}
	if !t.inPlace {
		closePidfd(&t.pidfd)
	}
	if t.slot >= 0 && t.slot < len(s.slots) {
		s.slots[t.slot] = false
	}
	if t.pid != 0 && !t.inPlace {
		delete(s.byPID, t.pid)
	}
	if t.conn != nil && !t.conn.closed {
		t.conn.closed = true
		close(t.conn.out)
		t.conn.c.Close()
	}
	s.sched.TestDone(t.idx)
	s.emit(ev)
	if f := t.afterExit; f != nil {
		t.afterExit = nil
		f()
	}
}

// checkTimers enforces test deadlines (dump tracebacks, then kill), fixture-setup
// deadlines, and a bound on waiting for a dead test's connection to drain.
func (s *Supervisor) checkTimers(now time.Time) {
	grace := seconds(s.cfg.KillGrace)
	for _, t := range s.tests {
		if t == nil || t.finished {
			continue
		}
		if !t.deadline.IsZero() && now.After(t.deadline) && !t.timedOut {
			t.timedOut = true
			if t.pid != 0 {
				// faulthandler is registered for SIGUSR1 in every test process.
				s.signalTest(t, unix.SIGUSR1)
				t.killAt = now.Add(grace)
			} else {
				// Still in its zygote's fixture setup: that zygote is what hangs.
				s.zygFail[t.zygote] = fmt.Sprintf("Timeout (>%gs) while zygote %s set up fixtures for %s",
					s.cfg.Tests[t.idx].Timeout, s.keyOf(t.zygote), s.cfg.Tests[t.idx].NodeID)
				if z := s.zygotes[t.zygote]; z != nil {
					signalPidfd(z.pidfd, unix.SIGKILL)
				}
			}
		}
		if !t.killAt.IsZero() && now.After(t.killAt) {
			t.killAt = time.Time{}
			s.signalTest(t, unix.SIGKILL)
		}
		if t.exit != nil && !t.eof && now.Sub(t.exitAt) > 2*time.Second {
			// Something the test forked still holds its connection open.
			t.eof = true
			s.maybeFinish(t)
		}
	}
	for id, dl := range s.setupWait {
		if now.After(dl) {
			delete(s.setupWait, id)
			s.zygFail[id] = fmt.Sprintf("Timeout while zygote %s set up fixtures for a group of tests", s.keyOf(id))
			if z := s.zygotes[id]; z != nil {
				signalPidfd(z.pidfd, unix.SIGKILL)
			}
		}
	}
}

// signalTest signals a test's process: its own, or for a test running in place, its
// zygote's. Only through pidfds: once a process is reaped its pid may belong to
// anyone, while a pidfd keeps naming the process it was opened for. (Copying a pidfd's
// number is as unsafe as a pid: a closed fd number is soon reused by another pidfd.)
func (s *Supervisor) signalTest(t *testRun, sig unix.Signal) {
	if t.inPlace {
		if z := s.zygotes[t.zygote]; z != nil {
			signalPidfd(z.pidfd, sig)
		}
		return
	}
	signalPidfd(t.pidfd, sig)
}

func signalPidfd(pidfd int, sig unix.Signal) {
	if pidfd > 0 {
		_ = unix.PidfdSendSignal(pidfd, sig, nil, 0)
	}
}

// killAll kills the whole run: the root zygote leads a process group that every
// zygote and test process belongs to.
func (s *Supervisor) killAll() {
	s.killing = true
	// The root is our child and is not reaped before reapRoot reports it, so its pid
	// (and its process group's id) cannot have been reused.
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
