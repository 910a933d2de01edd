// Time: test deadlines (dump the stacks, then kill), fixture-setup waits, and the
// report of a run that stopped moving.

package supervisor

import (
	"fmt"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

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
	checkStops := !now.Before(s.stopCheckAt)
	if checkStops {
		s.stopCheckAt = now.Add(stopCheckEvery)
	}
	for _, r := range s.live {
		t := r.current
		due := t != nil && !t.deadline.IsZero() && t.pausedAt.IsZero() && now.After(t.deadline)
		if t != nil && !t.finished && !t.stopped && !t.timedOut && (checkStops || due) {
			s.checkStopped(r, t, now)
		}
		if due && !t.timedOut && !t.stopped {
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

// stopCheckEvery is how often running tests' processes are looked at for being stopped.
const stopCheckEvery = time.Second

// checkStopped kills a test process that has stayed stopped for StopGrace, or that is
// stopped when its deadline passes (a stopped process cannot dump its stacks).
func (s *Supervisor) checkStopped(r *runnerProc, t *testRun, now time.Time) {
	if procState(r.pid) != 'T' {
		t.stoppedAt = time.Time{}
		return
	}
	if t.stoppedAt.IsZero() {
		t.stoppedAt = now
	}
	if now.Sub(t.stoppedAt) >= StopGrace || (!t.deadline.IsZero() && now.After(t.deadline)) {
		t.stopped = true
		signalPidfd(r.pidfd, unix.SIGKILL)
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

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
