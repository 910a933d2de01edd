// Runners and their tests: frames of a test's life (start ... done), a runner's end
// (crashed, requeued, lost), and the test's event for the main process.

package supervisor

import (
	"fmt"
	"time"
)

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
		s.turns.End(t) // its scope's other tests may need the turn before it can go on
	case "await_call":
		// (A test whose turn is over and that calls again, rerun by a plugin after a
		// passed call and a failed teardown, goes next: sched.Turns.Await.)
		if s.cfg.CallLimit <= 0 || !s.turns.Await(t) {
			s.connEnded(r.conn, fmt.Errorf("runner %d asked for a call turn it cannot have", r.id))
			return
		}
		t.pausedAt = time.Now()
	case "call_over":
		// Its call passed (a runner sends this for passed calls only): the next
		// test's call need not wait for this one's teardown and reports.
		if s.turns.Holds(t) {
			s.turns.End(t)
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
			if t := s.tests[i]; t != nil {
				s.turns.Forget(t) // (it never called: it had not started)
			}
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

// mayCall reports whether t may still be given a call turn: it is its test's current
// dispatch (not requeued) and its runner lives.
func (s *Supervisor) mayCall(t *testRun) bool {
	return s.tests[t.idx] == t && t.runner != nil && !t.runner.ended
}

// running reports whether t is its test's current dispatch and has not finished (its
// event, when it comes, goes before those of the tests dispatched after it).
func (s *Supervisor) running(t *testRun) bool {
	return s.tests[t.idx] == t && !t.finished
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
			s.turns.Dispatched(s.tests[i])
			s.reports.Dispatched(s.tests[i])
		}
	}
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
	// Its turn goes back when it ends, so the next test's reports come after its own (-x
	// stops where a plain run stops); a test whose setup failed ends without a call.
	s.turns.Forget(t)
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
	if t.stopped {
		ev["stopped_s"] = time.Since(t.stoppedAt).Seconds()
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
	s.reports.Finished(t, ev)
	s.emitInOrder()
}

// emitInOrder emits finished tests' events in dispatch order (with a call limit). A
// test whose call passed gives its turn on before its teardown and its reports, so the
// next test can fail and report first; with -x the main process would then stop before
// replaying the earlier test, which a plain run reports. So a test's event waits for
// those of the tests dispatched before it (a test sent back to the queue is skipped: it
// comes again when it is dispatched again).
func (s *Supervisor) emitInOrder() {
	for _, ev := range s.reports.Out(s.running) {
		s.emit(ev)
	}
}
