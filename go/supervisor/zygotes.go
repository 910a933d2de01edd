// Zygotes: what their frames mean to the run, and what their deaths do to it.

package supervisor

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

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
