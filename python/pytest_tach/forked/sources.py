"""Where a zygote's test processes come from, behind one small interface (chosen once,
from --tach-reset, when the zygote starts):

* :class:`ForkEach`: a new process forked for every job, which exits after it.
* :class:`Pool`: reusable processes (--tach-reset snapshot). A process snapshots itself
  once, runs a test, tells its zygote, restores itself in place to the snapshot (as if
  just forked) and takes the next test. The zygote keeps a control socket to each, and
  a small state machine per process (:class:`Reusable`). Where it cannot help (a
  long-lived runner, a zygote with few tests left, a process that could not snapshot),
  it forks as ForkEach does.

The zygote↔pooled process exchange, on the control socket (docs/engine.md has the
supervisor's side of it):

    zygote                         pooled process
      |   (fork, with the first job)     |
      |                                  |  snapshot(); runs the job's test
      | <--------------- finishing ----- |  before its last "done" to the supervisor
      | <--------------- done ---------- |  rusage; then restore(): back to the snapshot
      | <--------------- ready --------- |  restored, idle
      | ---- job ----------------------> |  (or close: released, it exits)
      | <--------------- took ---------- |  it is the job's runner now
      | <--------------- noreset ------- |  snapshot failed: the zygote forks per test
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_tach import frames, protocol
from pytest_tach.forked import scopes
from pytest_tach.forked.carry import Carry
from pytest_tach.forked.process import Context, connect, readable, report_fatal
from pytest_tach.forked.runner import Runner, produced_of

#: A zygote makes a new test process reusable only when it can expect to run at least
#: this many tests in it. When a snapshot copied the process's memory (~11 ms for a
#: 24 MB pytest process) it cost as much as forking 2-3 test processes, and on
#: cachetools' suite (220 tests under 56 class and module zygotes) snapshotting every
#: process made the run 1.4x slower than forking each test. Since the holder (a clone,
#: ~2 ms) a lower bar buys nothing measurable either: 80 modules of 3 tests, 2 against
#: 4, 1.08x (0.87-1.22x) of the wall time.
REUSE_MIN_TESTS = 4


@dataclass
class Ending:
    """What a source knows of one of its processes that died."""

    #: the supervisor has not heard it exit yet (it was running a test)
    announce: bool = True
    #: a job offered to it and never taken: another process must run it
    orphan: dict[str, Any] | None = None


class Owner(Protocol):
    """What a source needs of the zygote it serves (forked/zygote.py's Zygote)."""

    ctx: Context
    runners: set[int]  # pids of its live test processes
    direct_left: int  # tests it has yet to run in processes of its own
    teardown_base: list[Any]
    fixtures: scopes.Fixtures

    def send(self, msg: dict[str, Any]) -> None: ...
    def fork_runner(self, job: dict[str, Any]) -> None: ...
    def fork_or_fail(self, kind: str, ident: int, conn: socket.socket | None = None) -> int: ...
    def enter_child(self, role: str, keep: socket.socket | None = None) -> socket.socket: ...
    def watch(self, fd: int) -> None: ...
    def unwatch(self, fd: int) -> None: ...
    def after_runner(self) -> None: ...


class Source(Protocol):
    """Where a zygote's test processes come from."""

    def start(self, job: dict[str, Any], left: int, did_setup: bool) -> None:
        """Run job in a process. `left`: tests this zygote still has to run in
        processes of its own, these included; `did_setup`: fixtures were set up just now."""

    def catch_up(self) -> None:
        """Handle what its processes said that was not read yet (before a job)."""

    def retire(self) -> None:
        """New fixtures were set up in the zygote: processes forked before lack them."""

    def fds(self) -> set[int]:
        """Its own sockets: the zygote polls them, and they are not shared state."""

    def readable(self, fd: int) -> None:
        """One of fds() is readable."""

    def ending(self, pid: int) -> Ending:
        """Process pid died (not reaped yet)."""

    def release_all(self) -> None:
        """The zygote exits: let idle processes go."""

    def forget(self) -> None:
        """In a child just forked from the zygote: close what belongs to the zygote."""


class ForkEach:
    """--tach-reset fork: a process per job."""

    def __init__(self, zygote: Owner) -> None:
        self.z = zygote

    def start(self, job: dict[str, Any], left: int, did_setup: bool) -> None:
        self.z.fork_runner(job)

    def catch_up(self) -> None:
        pass

    def retire(self) -> None:
        pass

    def fds(self) -> set[int]:
        return set()

    def readable(self, fd: int) -> None:
        pass

    def ending(self, pid: int) -> Ending:
        return Ending()

    def release_all(self) -> None:
        pass

    def forget(self) -> None:
        pass


@dataclass
class Reusable:
    """A zygote's view of one of its reusable test processes (--tach-reset snapshot).

    busy: running a test the supervisor gave it (the supervisor knows its pid);
    finishing: its test is over, it is about to tell the supervisor so and then
    restore itself; restoring: the supervisor was told it exited, it is restoring
    itself; idle: restored, waiting for a test; released: its control socket is closed,
    it is exiting. ``job`` is a test offered to it and not yet taken (it reads it once
    restored).
    """

    pid: int
    ctl: socket.socket
    state: str = "busy"
    job: dict[str, Any] | None = None
    #: forked before fixtures it lacks were set up here: takes no more tests
    stale: bool = False


class Pool:
    """--tach-reset snapshot: reusable test processes, restored in place after each test."""

    def __init__(self, zygote: Owner) -> None:
        self.z = zygote
        self.reusable: dict[int, Reusable] = {}  # pid -> reusable test process
        self.ctl_fds: dict[int, Reusable] = {}  # their control sockets, by fd

    # -- the Source interface ----------------------------------------------------
    def start(self, job: dict[str, Any], left: int, did_setup: bool) -> None:
        if not self.z.ctx.reset or job["persistent"]:  # (reset: off after a "noreset")
            self.z.fork_runner(job)
            return
        if did_setup:
            self.retire()
        self.offer(job, left)
        if self.z.direct_left <= 0:
            self.release_idle()  # no test left for them

    def catch_up(self) -> None:
        """A process says "finishing" before it tells the supervisor its test is done, so
        when the supervisor's next "run" arrives because of that, the message is already
        here: reading it first lets the process take the test instead of a new fork."""
        for w in list(self.ctl_fds.values()):
            while self.on_ctl(w):
                pass

    def retire(self) -> None:
        """The reusable processes forked before lack the new fixtures (a restore takes a
        process back to its fork), and would set them up again for each test. Release
        the idle ones now, the others when their test is done."""
        for w in self.reusable.values():
            w.stale = True
        self.release_idle()

    def fds(self) -> set[int]:
        return set(self.ctl_fds)

    def readable(self, fd: int) -> None:
        w = self.ctl_fds.get(fd)
        if w is not None:
            self.on_ctl(w)

    def ending(self, pid: int) -> Ending:
        w = self.reusable.pop(pid, None)
        if w is None:
            return Ending()
        self.drain(w)  # what it said before dying ("took", "done") decides
        # (else the supervisor already heard this process exit, after its last test)
        return Ending(announce=w.state in ("busy", "finishing"), orphan=w.job)

    def release_all(self) -> None:
        """Idle reusable processes exit when their control socket closes; a busy one
        (its test is over, its "done" not yet read) exits instead of restoring."""
        for w in list(self.reusable.values()):
            self.release(w)

    def forget(self) -> None:
        for w in self.reusable.values():
            w.ctl.close()
        self.reusable.clear()
        self.ctl_fds.clear()

    # -- the pool ----------------------------------------------------------------
    def offer(self, job: dict[str, Any], left: int) -> None:
        """Give a test to an idle reusable process (or one restoring itself, or about
        to: it takes the test once restored); else fork a new reusable process when the
        `left` tests this zygote still has, shared with the ones it has, pay for its
        snapshot; else fork a process for this test alone."""
        for wanted in ("idle", "restoring", "finishing"):
            for w in self.reusable.values():
                if w.state == wanted and w.job is None and not w.stale:
                    try:
                        frames.send(w.ctl, job)
                    except OSError:
                        # It is exiting (it could not restore itself). The test goes to
                        # another process below; had w kept it, its death would have
                        # offered it again, and two processes would have run it (the
                        # second's hello refused: "internal error ... BrokenPipeError").
                        continue
                    w.job = job
                    return
        alive = sum(1 for w in self.reusable.values() if w.state != "released")
        if left >= REUSE_MIN_TESTS * (alive + 1):
            self.fork_reusable(job)
        else:
            self.z.fork_runner(job)

    def release_idle(self) -> None:
        """Release every reusable process not running a test and not holding one offered
        to it (those about to restore included): this zygote has no test for them."""
        for w in list(self.reusable.values()):
            if w.state != "busy" and w.job is None:
                self.release(w)

    def fork_reusable(self, job: dict[str, Any]) -> None:
        z = self.z
        runner = int(job["runner"])
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = z.fork_or_fail("runner", runner)
        if pid == 0:
            try:
                mine.close()
                z.enter_child("runner", keep=theirs)
                serve_reusable(z, theirs, job)
            except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
                report_fatal(z.ctx, f"runner {runner}", runner)
            os._exit(0)
        theirs.close()
        if pid < 0:
            mine.close()
            return
        z.runners.add(pid)
        w = Reusable(pid, mine)
        self.reusable[pid] = w
        self.ctl_fds[mine.fileno()] = w
        z.watch(mine.fileno())

    def release(self, w: Reusable) -> None:
        """Close the control socket of a reusable process (it then exits, when idle)."""
        fd = w.ctl.fileno()
        if fd >= 0:
            self.ctl_fds.pop(fd, None)
            self.z.unwatch(fd)
            w.ctl.close()
        if w.state not in ("busy", "finishing"):
            w.state = "released"

    def drain(self, w: Reusable) -> None:
        """Handle what a dead reusable process sent before it died."""
        while self.on_ctl(w):
            pass
        self.release(w)  # (a child its test forked may hold the other end open)

    def on_ctl(self, w: Reusable) -> bool:
        """Handle one message from a reusable process, if one is there: never block.
        Handling a message can run a command that reads other control sockets, so one
        that poll() reported readable a moment ago may have nothing left. Messages are
        small single writes: when a byte is there, the whole message is."""
        fd = w.ctl.fileno()
        if fd < 0 or not readable(fd):
            return False
        try:
            msg = frames.recv(w.ctl)
        except (OSError, EOFError, ValueError):
            msg = None
        if msg is None:  # it exited: the zygote's reap settles it
            self.release(w)
            return False
        self.handle_ctl(w, msg)
        return True

    def handle_ctl(self, w: Reusable, msg: dict[str, Any]) -> None:
        z = self.z
        t = msg.get("t")
        if t == "took":  # from now on the supervisor's runner msg["runner"] is this pid
            w.job, w.state = None, "busy"
            z.runners.add(w.pid)
            z.send(protocol.forked("runner", int(msg["runner"]), w.pid))
        elif t == "finishing" and w.state == "busy":
            w.state = "finishing"
        elif t == "done":  # its test is over: to the supervisor, the process exited
            w.state = "restoring"
            z.runners.discard(w.pid)
            z.send(protocol.exited(w.pid, 0, int(msg["maxrss"]), float(msg["utime"]), float(msg["stime"])))
            if w.stale and w.job is None:
                self.release(w)
            z.after_runner()
        elif t == "ready" and w.state == "restoring":
            w.state = "idle"
        elif t == "noreset":  # this kernel or process cannot: fork per test from now on
            z.ctx.reset = False


def serve_reusable(z: Owner, ctl: socket.socket, job: dict[str, Any]) -> None:
    """The loop of a reusable test process (forked from zygote z): run a test, tell the
    zygote, restore this process to the moment of the snapshot below, wait for the next.

    Everything between the snapshot and a restore (the test, pytest's state, fds
    opened, mappings made) is undone by the restore, as if this process had just
    been forked. When it cannot be (the test left a thread or a child process
    running, closed an fd it did not open, ...), the process exits instead and the
    zygote forks a fresh one for the next test.
    """
    import resource

    from pytest_tach import _reset

    ctx = z.ctx
    ctl.settimeout(None)
    # One supervisor connection for the life of the process, made before the
    # snapshot so that restores keep it: each runner this process becomes says
    # "take" on it instead of connecting anew (see the supervisor's rest/take).
    rconn = connect(ctx.sock_path)  # failing: report_fatal, like any error here
    rconn.settimeout(None)  # the kernel's blocking flag is not restored: keep it fixed
    carry = Carry()
    try:
        restores = _reset.snapshot()
    except (_reset.ResetUnavailable, OSError) as e:
        frames.send(ctl, protocol.noreset(str(e)))
        restores = -1
    if restores > 0:
        carry.settle(_reset)  # what the last test imported: into the snapshot
        try:
            frames.send(ctl, protocol.restored())
            taken = frames.recv(ctl)
            if taken is None:
                os._exit(0)  # released by the zygote
            job = taken
            frames.send(ctl, protocol.took(int(job["runner"])))
        except OSError:
            os._exit(0)  # the zygote is gone
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    runner, tests = int(job["runner"]), [int(i) for i in job["tests"]]
    frames.send(rconn, protocol.take(runner) if restores > 0 else protocol.hello("runner", runner))
    r = Runner(ctx, rconn, runner, scopes.stack(ctx.session), z.teardown_base,
               z.fixtures.parametrized(tests[0]), produced_of(job))
    if restores >= 0 and not job["final"]:
        # Before the supervisor hears the test is done and gives its slot to the
        # next test: this process can take that test once it is restored.
        def finishing() -> None:
            try:
                frames.send(ctl, protocol.finishing())
            except OSError:
                pass  # the zygote let go of this process: "done" below finds out

        r.before_last_done = finishing
    r.serve(tests, bool(job["final"]), False, int(job["slot"]))
    if restores < 0 or job["final"] or r.stopping:
        os._exit(0)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        frames.send(rconn, protocol.rest())
        frames.send(ctl, protocol.rested(ru1.ru_maxrss, ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime))
        carry.note()
        _reset.restore()  # does not return: snapshot() above returns again
    except (OSError, _reset.ResetUnavailable):
        pass  # the zygote is done with this process, or it cannot be restored
    os._exit(0)
