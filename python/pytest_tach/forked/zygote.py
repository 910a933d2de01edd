"""The zygote process: its loop, the supervisor's commands (spawn a child zygote, run a
batch, exit), forking, reaping, and starting the root zygote from the main process.

What a zygote does to pytest's state is in ``scopes``; where its test processes come
from (a fork per job, or a pool restored in place) in ``sources``.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

from pytest_tach import forksafe, frames, handover, protocol, setuphooks
from pytest_tach.forked import scopes
from pytest_tach.forked.process import (
    Context,
    connect,
    connected_sockets,
    die_with_parent,
    fork,
    freeze,
    immortalize_once,
    reap_exited,
    reap_strays,
    report_fatal,
    restart_capture,
    silence_terminal,
)
from pytest_tach.forked.runner import Runner, produced_of
from pytest_tach.forked.sources import ForkEach, Pool, Source


class Zygote:
    """The loop of one zygote process (the root, or a scope zygote).

    A zygote only forks: child zygotes for narrower scopes, and runners for batches of
    its tests. It never runs a test itself, so a crashing test cannot take it down.
    """

    def __init__(self, ctx: Context, conn: socket.socket, zid: int, depth: int,
                 teardown_base: list[Any]) -> None:
        self.ctx = ctx
        self.conn = conn
        self.zid = zid
        self.depth = depth  # how many levels of each item's chain this process holds
        #: what the last test of this zygote's final unit tears down to: the stack of
        #: the nearest ancestor this zygote is not the final unit of
        self.teardown_base = teardown_base
        #: the parent's stack when this zygote was forked: what it pushed lies above
        self.fork_base: list[Any] = []
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.fixtures = scopes.Fixtures(ctx, depth, self.make_serial, self.per_process)
        self.serial = False  # told the supervisor its children must run one at a time
        self.runners: set[int] = set()  # pids of live runner children
        self.deferred: list[dict[str, Any]] = []  # run commands held back while serial
        #: tests this zygote has yet to run in processes of its own (not its children's)
        self.direct_left = 0
        self.source: Source = Pool(self) if ctx.reset else ForkEach(self)
        self.poller: Any = None
        self.fds_changed = False
        self.exiting = False  # told to exit: a test offered and not taken stays so
        #: asyncio event loops set up here or above: each test process renews them
        self.loops: list[Any] = []

    # -- plumbing -----------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        frames.send(self.conn, msg)

    def serve(self) -> None:
        """Handle commands until told to exit (or the supervisor goes away)."""
        freeze()
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)
        for fd in self.children:
            self.poller.register(fd, select.POLLIN)
        strays = self.ctx.strays.fd if self.depth == 0 else -1
        if strays >= 0:
            self.poller.register(strays, select.POLLIN)
        self.conn.settimeout(None)
        while True:
            try:
                ready = self.poller.poll()
            except InterruptedError:
                continue
            self.fds_changed = False
            for fd, _ in ready:
                if fd == self.conn.fileno():
                    msg = frames.recv(self.conn)
                    if msg is None:  # the supervisor is gone
                        if self.depth == 0:
                            reap_strays()
                        os._exit(0)
                    self.command(msg)
                elif fd in self.children:
                    self.reap(fd)
                elif fd == strays:
                    self.ctx.strays.reap_exited(set(self.children.values()))
                else:
                    self.source.readable(fd)
                if self.fds_changed:
                    break  # a later event may name an fd closed (or reused) since: poll again

    def watch(self, fd: int) -> None:
        if self.poller is not None:
            self.poller.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        if self.poller is not None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
        self.fds_changed = True

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.unwatch(pidfd)
        os.close(pidfd)
        ending = self.source.ending(pid)
        self.runners.discard(pid)
        try:
            _, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            return
        if ending.announce:
            self.send(protocol.exited(pid, status, ru.ru_maxrss, ru.ru_utime, ru.ru_stime))
        if self.ctx.reset:  # the holders of reused processes that exited (pytest_tach._reset)
            reap_exited(set(self.children.values()))
        job = ending.orphan
        if job is not None and not self.exiting:  # offered to it, never taken
            self.source.start(job, self.direct_left + len(job["tests"]), did_setup=False)
        self.after_runner()

    def after_runner(self) -> None:
        if self.deferred and not self.runners:
            self.command(self.deferred.pop(0))

    def command(self, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "run" and self.serial and self.runners:
            # The supervisor may have sent this before it heard this zygote turned
            # serial; a second runner must not share the connection with the first.
            self.deferred.append(msg)
            return
        if t == "run":
            self.run(int(msg["runner"]), [int(i) for i in msg["tests"]], bool(msg["final"]),
                     bool(msg["persistent"]), int(msg.get("slot", 0)))
        elif t == "spawn":
            self.spawn(int(msg["id"]), [int(i) for i in msg["tests"]], bool(msg["final"]))
        elif t == "exit":
            self.exiting = True
            self.source.release_all()
            for fd in list(self.children):
                self.reap(fd)
            if msg.get("teardown"):
                self.teardown()
                self.handover()
            if self.depth == 0:
                reap_strays()
            os._exit(0)

    def teardown(self) -> None:
        """The run was stopped early (-x, pytest.exit(), Ctrl-C): its final unit never
        tore this zygote's scope down, so do it here, as pytest's session finish would.
        Children are gone (reaped above); the parent tears down its own part after."""
        if self.depth == 0:
            return
        try:
            scopes.teardown_to(self.ctx.session, self.fork_base)
        except BaseException:  # noqa: BLE001 - nothing left to report to but stderr
            sys.stderr.write(f"tach: error tearing down {self.zid} after the run was stopped:\n")
            traceback.print_exc()

    # -- what setting fixtures up here tells the supervisor -----------------------
    def set_up(self, tests: list[int]) -> bool:
        """Set up this level's fixtures these tests need (scopes.Fixtures); when that
        made new objects, hand plugins' state over, freeze and look for sockets."""
        did_setup = self.fixtures.set_up(tests)
        if did_setup:
            self.handover()
            freeze()
            self.check_sockets()
        return did_setup

    def handover(self) -> None:
        """Send what plugins gathered in this zygote (its fixtures' coverage, say)."""
        data, _ = handover.encode(self.ctx.session.config, None, -1)
        for frame in data:
            self.conn.sendall(frame)

    def make_serial(self, why: str) -> None:
        if not self.serial:
            self.serial = True
            self.send(protocol.serial(self.zid, why))

    def per_process(self, why: str) -> None:
        self.send(protocol.per_process(self.zid, why))

    def check_sockets(self) -> None:
        """A connected socket set up here would be shared by every process forked from
        this zygote: two tests talking over one connection at once corrupt each other's
        conversation. Such a zygote runs its subtree one process at a time."""
        if self.serial:
            return
        # Its own sockets (to the supervisor, to its reusable processes) are not shared.
        mine = {self.conn.fileno(), *self.source.fds()}
        found = connected_sockets(exclude=mine)
        if found:
            # An event loop's self-pipe is one, but each test process gets its own
            # (forksafe.renew): only other connections make this zygote serial.
            for loop in forksafe.event_loops():
                if loop not in self.loops:
                    self.loops.append(loop)
            pipes = {fd for loop in self.loops for fd in forksafe.self_pipe_fds(loop)}
            found = connected_sockets(exclude=mine | pipes)
        if found:
            self.make_serial(f"it holds a connected socket ({found[0]}) its children would share")

    def push_level(self, tests: list[int]) -> None:
        """Push the collectors of the level this zygote stands for."""
        scopes.push(self.ctx, self.ctx.levels[tests[0]][self.depth - 1].push)
        self.handover()
        self.check_sockets()  # setup_module and friends may have connected

    # -- commands -----------------------------------------------------------------
    def spawn(self, child: int, tests: list[int], final: bool) -> None:
        if self.set_up(tests):
            self.source.retire()
        stack = scopes.stack(self.ctx.session)
        base = self.teardown_base if final else stack
        pid = self.fork_or_fail("zygote", child)
        if pid == 0:
            try:
                conn = self.enter_child("zygote")
                z = Zygote(self.ctx, conn, child, self.depth + 1, base)
                z.fork_base = stack
                z.serial = self.serial  # what made this zygote serial is inherited
                z.loops = self.loops
                z.fixtures.pending = setuphooks.take_for(self.fixtures.pending, tests)
                z.direct_left = sum(1 for i in tests if len(self.ctx.levels[i]) == z.depth)
                frames.send(conn, protocol.hello("zygote", child))
                z.push_level(tests)
                z.send(protocol.ready(child))
                z.serve()
            except BaseException:  # noqa: BLE001 - last resort: say why, then die
                report_fatal(self.ctx, "zygote")
            os._exit(0)
        if pid > 0:
            setuphooks.take_for(self.fixtures.pending, tests)

    def run(self, runner: int, tests: list[int], final: bool, persistent: bool, slot: int) -> None:
        self.source.catch_up()  # a process that freed the slot for this test may take it
        did_setup = self.set_up(tests)
        left = self.direct_left  # tests still to run here, these included
        self.direct_left -= len(tests)
        job = protocol.job(runner, tests, final, persistent, slot,
                           [p.to_frame() for p in self._produced_for(tests, persistent)])
        self.source.start(job, left, did_setup)

    def _produced_for(self, tests: list[int], persistent: bool) -> list[setuphooks.Produced]:
        """What fixture setup produced for these tests, to go with them. A long-lived
        runner takes everything: its later batches come from the supervisor, not
        through here (what it finds for tests it does not run, its first test gets)."""
        if persistent:
            taken, self.fixtures.pending = self.fixtures.pending, []
            return taken
        return setuphooks.take_for(self.fixtures.pending, tests)

    def fork_runner(self, job: dict[str, Any]) -> None:
        """Fork a test process for one batch; it exits after it."""
        runner, tests = int(job["runner"]), job["tests"]
        try:
            rconn = self.connect_runner(runner)
        except OSError as e:
            self.send(protocol.fail(runner, f"connecting to the supervisor: {e}"))
            self.keep_output(job)
            return
        stack = scopes.stack(self.ctx.session)
        pid = self.fork_or_fail("runner", runner, rconn)
        if pid > 0:
            self.runners.add(pid)
        elif pid < 0:
            self.keep_output(job)
        if pid == 0:
            try:
                self.enter_child("runner", keep=rconn)
                r = Runner(self.ctx, rconn, runner, stack, self.teardown_base,
                           self.fixtures.parametrized(tests[0]), produced_of(job))
                r.serve(tests, bool(job["final"]), bool(job["persistent"]), int(job["slot"]))
            except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
                report_fatal(self.ctx, f"runner {runner}", runner)
            os._exit(0)
        rconn.close()

    def keep_output(self, job: dict[str, Any]) -> None:
        """No process started for job: its captured fixture setup output goes to the
        next one, as before run() handed it to this job."""
        self.fixtures.pending += produced_of(job)

    def connect_runner(self, runner: int) -> socket.socket:
        """The supervisor connection of runner `runner`, introduced."""
        rconn = connect(self.ctx.sock_path)
        frames.send(rconn, protocol.hello("runner", runner))
        return rconn

    def fork_or_fail(self, kind: str, ident: int, conn: socket.socket | None = None) -> int:
        """Fork; in the parent, track the child and tell the supervisor. Returns -1
        (after reporting) when fork itself fails."""
        try:
            pid = fork()
        except OSError as e:
            if kind == "runner":
                self.send(protocol.fail(ident, f"fork failed: {e}"))
            else:
                self.send(protocol.error(f"fork failed: {e}"))
            return -1
        if pid:
            self.track(pid)
            self.send(protocol.forked(kind, ident, pid))
        return pid

    def track(self, pid: int) -> None:
        fd = os.pidfd_open(pid)
        self.children[fd] = pid
        self.watch(fd)

    def enter_child(self, role: str, keep: socket.socket | None = None) -> socket.socket:
        """Common setup right after fork in a child of this zygote (role: what it is,
        zygote or runner)."""
        die_with_parent(os.getppid())
        self.ctx.strays.forget()
        handover.forked(self.ctx.session.config, role)
        for fd in self.children:
            os.close(fd)
        self.children.clear()
        self.source.forget()
        self.poller = None
        self.conn.close()
        if role == "runner":
            for loop in self.loops:
                forksafe.renew(loop)
        restart_capture(self.ctx.session.config)
        if keep is not None:
            return keep
        return connect(self.ctx.sock_path)


def start_root(ctx: Context, own_group: bool = True) -> int:
    """Fork the root zygote. Returns its pid in the main process; never returns in it.

    With own_group the run gets its own process group: one kill reaches all of it, and
    the terminal's Ctrl-C reaches only pytest's main process. Without (--pdb), the run
    stays in the terminal's foreground group so a debugger in a runner can read it.
    """
    main_pid = os.getpid()
    pid = fork()
    if pid:
        if own_group:
            try:
                os.setpgid(pid, pid)
            except OSError as e:  # the child got there first, or already exited
                if e.errno not in (errno.EACCES, errno.ESRCH):
                    raise
        return pid
    try:
        ctx.session.config._tach_session = ctx.session  # type: ignore[attr-defined] # tach's own
        if ctx.listen_fd >= 0:
            os.close(ctx.listen_fd)  # the supervisor's end: no test may accept on it
        if own_group:
            try:
                os.setpgid(0, 0)
            except OSError:
                pass
        # Zygotes never act on Ctrl-C themselves: the main process stops the run.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent(main_pid)
        ctx.strays.adopt()
        config = ctx.session.config
        silence_terminal(config)
        handover.drop_main_only(config)
        handover.forked(config, "zygote")
        restart_capture(config)
        immortalize_once(config)
        conn = connect(ctx.sock_path)
        frames.send(conn, protocol.hello("zygote", 0))
        Zygote(ctx, conn, 0, 0, []).serve()
    except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
        report_fatal(ctx, "the root zygote")
    os._exit(0)
