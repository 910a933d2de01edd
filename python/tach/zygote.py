"""The forked side of the engine: zygotes and test processes. Pure Python, no Go.

Every process here is a fork of pytest's main process taken right after collection, so
the whole collected session (items, fixture definitions, plugins) is already in memory.

* The **root zygote** is forked by the main process. It never runs a test; it forks
  session-level zygotes when the supervisor asks.
* A **scope zygote** pushes its scope's collectors onto pytest's SetupState, sets up the
  fixtures of its scope that its tests need (once), and forks runners and child zygotes
  for narrower scopes. It never runs a test itself.
* A **runner** runs ``item.ihook.pytest_runtest_protocol`` for a batch of items in
  order: one item (``--tach-isolate test``), a module's items (``module``), or module
  after module (``none``). Between items pytest gets the real next item; after the last,
  a stand-in whose chain is what the runner must keep, so pytest tears down exactly the
  rest. The last batch of a zygote (its *final* unit, dispatched once all others are
  done) tears the zygote's own scope down too: once, right after its last test, with any
  error landing on that test, exactly as in a plain run.

Each process talks to the supervisor over its own connection to a unix socket in a
private (0700) directory; zygotes reap their children and report how they ended.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from _pytest.outcomes import TEST_OUTCOME, Exit

from tach import forksafe, frames, gil, handover, setuphooks, xdistcompat
from tach.forward import Forwarder
from tach.plan import Level, depends_on

PR_SET_PDEATHSIG = 1
SOCKET_DEADLINE = 30.0  # seconds a blocking send to the supervisor may take


def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


@dataclass
class Context:
    """What every forked process inherits from the main process."""

    session: pytest.Session
    items: list[pytest.Item]
    levels: list[list[Level]]
    sock_path: str
    fault_dir: str
    forwarder: Forwarder
    #: fixtures that make the zygote setting them up serial (ini tach_serial_fixtures)
    serial_fixtures: frozenset[str] = frozenset()
    #: fixtures set up in each test process, never in a zygote (tach_per_process_fixtures)
    per_process_fixtures: frozenset[str] = frozenset()
    #: the supervisor's listening socket, inherited by the root zygote: closed there
    listen_fd: int = -1
    #: --tach-reset snapshot: test processes are reused, restored after each test
    reset: bool = False
    #: how many test processes run at once (each is a worker gw0.. of this many)
    workers: int = 1
    #: the run's id, as pytest-xdist's testrun_uid
    run_id: str = ""
    #: by item index: its fixture definitions with the ones it reached at run time in an
    #: earlier run (plan.resolve), for the items that did
    reached_defs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def fixture_defs(self, index: int) -> dict[str, Any]:
        """What item `index`'s request resolves fixture names to."""
        got = self.reached_defs.get(index)
        item = cast(pytest.Function, self.items[index])  # a test with fixtures to set up
        return got if got is not None else dict(item._fixtureinfo.name2fixturedefs)


#: A zygote makes a new test process reusable only when it can expect to run at least
#: this many tests in it: a snapshot costs about as much as forking 2-3 test processes
#: (~11 ms for a 24 MB pytest process, copying and write-protecting its memory), so on
#: a module with a handful of tests forking each one is cheaper. Measured on cachetools'
#: suite (220 tests under 56 class and module zygotes): snapshotting every process made
#: the run 1.4x slower than forking each test.
REUSE_MIN_TESTS = 4


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


class _ScopeEnd:
    """Stands in for pytest's ``nextitem``: its chain is exactly the collectors a zygote
    holds, so ``SetupState.teardown_exact(nextitem)`` tears down only what lies below
    them (the test itself, and collectors no zygote owns)."""

    def __init__(self, chain: list[Any]) -> None:
        self._chain = chain
        self.nodeid = chain[-1].nodeid if chain else ""
        self.session = chain[0] if chain else None

    def listchain(self) -> list[Any]:
        return [*self._chain, self]


def _freeze() -> None:
    """Move every object alive now out of the garbage collector's reach.

    A collection walks (and writes to) the header of every object it examines; after a
    fork that write copies the page. Frozen objects are never examined again, so
    neither the zygote nor its children copy pages because the collector ran. (On the
    2000-trivial-test benchmark this made no measurable difference, docs/design.md;
    it bounds the damage of a full collection in a zygote holding large fixtures.)

    Called only when a zygote may hold new objects (it started, or set fixtures up):
    on free-threaded builds gc.freeze() visits and writes to every object of the heap
    (~1.5 ms, and every page it writes is one its children share), so freezing before
    each fork cost a 200-test stress run a third of its time.
    """
    import gc

    gc.freeze()


def _immortalize_once(config: pytest.Config) -> None:
    """In stress mode on free-threaded CPython, make the first-thread work happen once.

    A free-threaded 3.13 process that starts its first thread immortalizes the objects
    that use deferred reference counting (functions, classes, modules, code; gh-117783):
    a walk over the whole heap. Each test process starting its stress threads paid it
    again (~2 ms, and a 200-test stress run took 5.9 s instead of 5.0 s). Starting one
    thread in the root zygote does it before the first fork. Only in stress mode: there
    every test starts threads anyway (and under pytest-run-parallel the first test's
    threads do the same); a plain run keeps plain reference counts.
    """
    stress = config.pluginmanager.get_plugin("tach-stress")
    if not gil.free_threaded_build() or stress is None or not stress.requested:
        return
    t = threading.Thread(target=lambda: None, name="tach-immortalize")
    t.start()
    t.join()


def fork() -> int:
    # Python >= 3.12 warns when a process with threads forks (a fixture may have started
    # one). Forking is what tach is for; a user's -W error must not make it fail.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _die_with_parent(parent: int) -> None:
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(SOCKET_DEADLINE)
    s.connect(path)
    return s


def _restart_capture(config: pytest.Config) -> None:
    """Give this process capture files of its own.

    After fork, pytest's global capture still points at temp files shared with the
    parent (same file descriptions, same offsets): concurrent test processes would read
    and truncate each other's output. Drop them without reading and start fresh ones,
    left suspended as pytest keeps them between tests.
    """
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None or getattr(capman, "_global_capturing", None) is None:
        return
    capman._global_capturing.stop_capturing()
    capman._global_capturing = None
    capman.start_global_capturing()
    capman.suspend_global_capture()


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
        #: what fixture setup here produced for tests not run yet (output, warnings)
        self.pending: list[setuphooks.Produced] = []
        self.level_fixtures: set[tuple[int, str]] = set()  # (item index, name) set up here
        #: fixtures set up in each test process instead: listed so, or their setup here
        #: left a thread running
        self.per_process: set[str] = set(ctx.per_process_fixtures)
        self.serial = False  # told the supervisor its children must run one at a time
        self.runners: set[int] = set()  # pids of live runner children
        self.deferred: list[dict[str, Any]] = []  # run commands held back while serial
        #: tests this zygote has yet to run in processes of its own (not its children's)
        self.direct_left = 0
        self.reusable: dict[int, Reusable] = {}  # pid -> reusable test process
        self.ctl_fds: dict[int, Reusable] = {}  # their control sockets, by fd
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
        _freeze()
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)
        for fd in self.children:
            self.poller.register(fd, select.POLLIN)
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
                        os._exit(0)
                    self.command(msg)
                elif fd in self.children:
                    self.reap(fd)
                elif fd in self.ctl_fds:
                    self.on_ctl(self.ctl_fds[fd])
                if self.fds_changed:
                    break  # a later event may name an fd closed (or reused) since: poll again

    def _watch(self, fd: int) -> None:
        if self.poller is not None:
            self.poller.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.poller is not None:
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
        self.fds_changed = True

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self._unwatch(pidfd)
        os.close(pidfd)
        w = self.reusable.pop(pid, None)
        if w is not None:
            self.drain(w)  # what it said before dying ("took", "done") decides below
        self.runners.discard(pid)
        try:
            _, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            return
        if w is None or w.state in ("busy", "finishing"):
            self.send({"t": "exited", "pid": pid, "status": status, "maxrss": ru.ru_maxrss,
                       "utime": ru.ru_utime, "stime": ru.ru_stime})
        # (else the supervisor already heard this process exit, after its last test)
        if w is not None and w.job is not None and not self.exiting:  # offered to it, never taken
            self.offer(w.job, self.direct_left + len(w.job["tests"]))
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
            # Idle reusable processes exit when their control socket closes; a busy one
            # (its test is over, its "done" not yet read) exits instead of restoring.
            self.exiting = True
            for w in list(self.reusable.values()):
                self.release(w)
            for fd in list(self.children):
                self.reap(fd)
            if msg.get("teardown"):
                self.teardown()
                self.handover()
            os._exit(0)

    def teardown(self) -> None:
        """The run was stopped early (-x, pytest.exit(), Ctrl-C): its final unit never
        tore this zygote's scope down, so do it here, as pytest's session finish would.
        Children are gone (reaped above); the parent tears down its own part after."""
        if self.depth == 0:
            return
        try:
            self.ctx.session._setupstate.teardown_exact(
                _ScopeEnd(self.fork_base) if self.fork_base else None)  # type: ignore[arg-type] # stand-in
        except BaseException:  # noqa: BLE001 - nothing left to report to but stderr
            sys.stderr.write(f"tach: error tearing down {self.zid} after the run was stopped:\n")
            traceback.print_exc()

    # -- fixtures -----------------------------------------------------------------
    def setup_fixtures(self, tests: list[int]) -> bool:
        """Set up the fixtures of this zygote's own level that these tests need; say
        whether anything new was set up.

        They are set up inside the setup hooks of the first of these tests that needs
        one (see setuphooks), as a plain run sets them up inside that test's setup; what
        those hooks produce (captured output, log, warnings) goes to the process that
        runs the tests. A fixture that raises is cached by pytest with its exception;
        each test that needs it gets the same error at setup, as in a plain run.
        """
        if self.depth == 0:
            return False
        new = [i for i in tests if self._new_fixtures(i)]
        if not new:
            return False
        did_setup = [False]

        def inner() -> None:
            did_setup[0] = self._set_up(tests)

        runs = {id(d) for i in new for d in self._runs(i)}
        if not runs:
            # Only fixtures set up here already (or set up in each test process):
            # nothing runs that a hook would see.
            self._set_up_captured(tests[0], inner)
            return did_setup[0]
        fw = self.ctx.forwarder
        fw.hold = True
        try:
            for i in self._needing(runs, tests):
                produced = setuphooks.set_up_as(i, self.ctx.items[i], inner, fw.held)
                if produced is not None:
                    if produced.sections or produced.warnings:
                        self.pending.append(produced)
                    break
            # Else each of them ends its setup before its fixtures (a skip mark, say):
            # as in a plain run, none sets them up; a later test that needs them will.
        finally:
            fw.hold = False
        if did_setup[0]:
            self.handover()
            _freeze()
            self.check_sockets()
        return did_setup[0]

    def _level_names(self, i: int) -> list[str]:
        """The fixtures of this zygote's level that test `i` needs."""
        levels = self.ctx.levels[i]
        return levels[self.depth - 1].fixtures if self.depth <= len(levels) else []

    def _new_fixtures(self, i: int) -> list[str]:
        """The fixtures of this level test `i` needs that were not looked at for it."""
        return [name for name in self._level_names(i)
                if (i, name) not in self.level_fixtures and name not in self.per_process]

    def _runs(self, i: int) -> list[Any]:
        """The definitions of test `i`'s new fixtures whose functions would run here."""
        item_defs = self.ctx.fixture_defs(i)
        out = []
        for name in self._new_fixtures(i):
            defs = item_defs.get(name)
            if defs and defs[-1].cached_result is None and not depends_on(
                    name, self.per_process, item_defs, set()):
                out.append(defs[-1])
        return out

    def _needing(self, runs: set[int], tests: list[int]) -> Iterator[int]:
        """The tests that need a fixture definition of `runs` (by id), in collection
        order: the first whose setup hooks reach its fixtures is the one whose setup
        sets them up, as in a plain run. Only these tests: the process that runs them
        is the one that can report what the setup produced."""
        for i in sorted(tests):
            item_defs = self.ctx.fixture_defs(i)
            for name in self._level_names(i):
                defs = item_defs.get(name)
                if defs and id(defs[-1]) in runs:
                    yield i
                    break

    def _set_up_captured(self, test: int, inner: Callable[[], None]) -> None:
        """Run `inner` with its output captured as test `test`'s setup output."""
        capman = self.ctx.session.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.resume_global_capture()
        try:
            inner()
        finally:
            if capman is not None:
                capman.suspend_global_capture()
                out, err = capman.read_global_capture()
                sections = [["setup", key, text] for key, text in (("stdout", out), ("stderr", err)) if text]
                if sections:
                    self.pending.append(setuphooks.Produced(test, sections))

    def _set_up(self, tests: list[int]) -> bool:
        did_setup = False
        for i in tests:
            levels = self.ctx.levels[i]
            if self.depth > len(levels):
                continue
            item = self.ctx.items[i]
            for name in levels[self.depth - 1].fixtures:
                if (i, name) in self.level_fixtures or name in self.per_process:
                    continue
                self.level_fixtures.add((i, name))
                item_defs = self.ctx.fixture_defs(i)
                if depends_on(name, self.per_process, item_defs, set()):
                    self.per_process.add(name)  # it would set that one up here
                    continue
                defs = item_defs.get(name)
                if not defs or defs[-1].cached_result is None:
                    did_setup = True  # new objects: freeze them (cached ones are)
                if name in self.ctx.serial_fixtures:
                    self.make_serial(f"it set up fixture {name!r}, listed in tach_serial_fixtures")
                # pytest >= 9 asks that the requesting item be active (on the
                # SetupState stack); it is, for the length of this request. Only
                # higher-scoped fixtures are requested here, and they register
                # their finalizers on their own scope nodes, not on the item.
                stack = self.ctx.session._setupstate.stack
                threads, fins = _live_threads(), finalizer_counts(stack)
                stack[item] = ([], None)
                try:
                    cast(pytest.Function, item)._request.getfixturevalue(name)
                except TEST_OUTCOME:
                    pass  # pytest cached the error: the test's own setup re-raises it
                finally:
                    stack.pop(item, None)
                started = _live_threads() - threads
                if started:
                    self.set_up_per_process(item, name, started, fins)
        return did_setup

    def set_up_per_process(self, item: pytest.Item, name: str, started: set[threading.Thread],
                           fins: dict[Any, int]) -> None:
        """Fixture `name` (or one it needed, set up with it) left a thread running: a
        live server, a thread pool. A fork copies only the thread that forks, so every
        process forked from here would hold the fixture's objects without the thread
        behind them (a server that answers from this zygote's state, a pool whose tasks
        never run, a shutdown that waits forever). So tear it down here again, and let
        each test process set it up for itself when its first test needs it (and tear
        it down after its last), as each pytest-xdist worker would."""
        self.per_process.add(name)
        names = ", ".join(sorted(repr(t.name) for t in started))
        stack = self.ctx.session._setupstate.stack
        errors = run_added_finalizers(stack, fins)
        # The request remembers what it got (pytest asserts a remembered fixture is
        # still set up): forget what was torn down.
        known = getattr(cast(pytest.Function, item)._request, "_fixture_defs", {})
        for argname, fixturedef in list(known.items()):
            if fixturedef.cached_result is None:
                del known[argname]
        left = _live_threads() & started
        why = (f"fixture {name!r} started thread{'s' if len(started) > 1 else ''} {names}, which "
               "its test processes would not have: it is set up in each test process instead")
        if left:
            why += f" (its teardown here left {len(left)} of them running)"
        if errors:
            why += f" (its teardown here raised {errors[0]!r})"
        self.send({"t": "per_process", "id": self.zid, "why": why})

    def handover(self) -> None:
        """Send what plugins gathered in this zygote (its fixtures' coverage, say)."""
        data, _ = handover.encode(self.ctx.session.config, None, -1)
        for frame in data:
            self.conn.sendall(frame)

    def make_serial(self, why: str) -> None:
        if not self.serial:
            self.serial = True
            self.send({"t": "serial", "id": self.zid, "why": why})

    def check_sockets(self) -> None:
        """A connected socket set up here would be shared by every process forked from
        this zygote: two tests talking over one connection at once corrupt each other's
        conversation. Such a zygote runs its subtree one process at a time."""
        if self.serial:
            return
        # Its own sockets (to the supervisor, to its reusable processes) are not shared.
        mine = {self.conn.fileno(), *self.ctl_fds}
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
        setupstate = self.ctx.session._setupstate
        config = self.ctx.session.config
        for col in self.ctx.levels[tests[0]][self.depth - 1].push:
            if col in setupstate.stack:
                continue
            config.hook.pytest_tach_zygote_setup(config=config, node=col)
            setupstate.stack[col] = ([col.teardown], None)
            try:
                col.setup()
            except TEST_OUTCOME as exc:  # as SetupState.setup: re-raised for each test
                setupstate.stack[col] = (setupstate.stack[col][0], _stack_exc(exc))
        self.handover()
        self.check_sockets()  # setup_module and friends may have connected

    # -- commands -----------------------------------------------------------------
    def spawn(self, child: int, tests: list[int], final: bool) -> None:
        if self.setup_fixtures(tests):
            self.retire_reusable()
        stack = list(self.ctx.session._setupstate.stack)
        base = self.teardown_base if final else stack
        pid = self._fork_or_fail("zygote", child)
        if pid == 0:
            try:
                conn = self.enter_child("zygote")
                z = Zygote(self.ctx, conn, child, self.depth + 1, base)
                z.fork_base = stack
                z.serial = self.serial  # what made this zygote serial is inherited
                z.loops = self.loops
                z.pending = setuphooks.take_for(self.pending, tests)
                z.direct_left = sum(1 for i in tests if len(self.ctx.levels[i]) == z.depth)
                frames.send(conn, {"t": "hello", "role": "zygote", "id": child, "pid": os.getpid()})
                z.push_level(tests)
                z.send({"t": "ready", "id": child})
                z.serve()
            except BaseException:  # noqa: BLE001 - last resort: say why, then die
                _report_fatal(self.ctx, "zygote")
            os._exit(0)
        if pid > 0:
            setuphooks.take_for(self.pending, tests)

    def run(self, runner: int, tests: list[int], final: bool, persistent: bool, slot: int) -> None:
        self.poll_ctl()  # a process that freed the slot for this test may take it
        did_setup = self.setup_fixtures(tests)
        left = self.direct_left  # tests still to run here, these included
        self.direct_left -= len(tests)
        job = {"t": "job", "runner": runner, "tests": tests, "final": final, "persistent": persistent,
               "slot": slot, "produced": [p.to_frame() for p in self._produced_for(tests, persistent)]}
        if not self.ctx.reset or persistent:
            self.fork_runner(job)
            return
        if did_setup:
            self.retire_reusable()
        self.offer(job, left)
        if self.direct_left <= 0:
            self.release_idle()  # no test left for them

    def _produced_for(self, tests: list[int], persistent: bool) -> list[setuphooks.Produced]:
        """What fixture setup produced for these tests, to go with them. A long-lived
        runner takes everything: its later batches come from the supervisor, not
        through here (what it finds for tests it does not run, its first test gets)."""
        if persistent:
            taken, self.pending = self.pending, []
            return taken
        return setuphooks.take_for(self.pending, tests)

    def fork_runner(self, job: dict[str, Any]) -> None:
        """Fork a test process for one batch; it exits after it."""
        runner, tests = int(job["runner"]), job["tests"]
        try:
            rconn = self.connect_runner(runner)
        except OSError as e:
            self.send({"t": "fail", "runner": runner, "message": f"connecting to the supervisor: {e}"})
            self.keep_output(job)
            return
        stack = list(self.ctx.session._setupstate.stack)
        pid = self._fork_or_fail("runner", runner, rconn)
        if pid > 0:
            self.runners.add(pid)
        elif pid < 0:
            self.keep_output(job)
        if pid == 0:
            try:
                self.enter_child("runner", keep=rconn)
                r = Runner(self.ctx, rconn, runner, stack, self.teardown_base,
                           self.parametrized_fixtures(tests[0]), _produced(job))
                r.serve(tests, bool(job["final"]), bool(job["persistent"]), int(job["slot"]))
            except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
                _report_fatal(self.ctx, f"runner {runner}", runner)
            os._exit(0)
        rconn.close()

    def keep_output(self, job: dict[str, Any]) -> None:
        """No process started for job: its captured fixture setup output goes to the
        next one, as before run() handed it to this job."""
        self.pending += _produced(job)

    # -- reusable test processes (--tach-reset snapshot) ----------------------------
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
                        # another process below; had w kept it, reap() would have
                        # offered it again, and two processes would have run it (the
                        # second's hello refused: "internal error ... BrokenPipeError").
                        continue
                    w.job = job
                    return
        alive = sum(1 for w in self.reusable.values() if w.state != "released")
        if left >= REUSE_MIN_TESTS * (alive + 1):
            self.fork_reusable(job)
        else:
            self.fork_runner(job)

    def poll_ctl(self) -> None:
        """Handle what reusable processes have sent and this zygote has not read yet.

        A process says "finishing" before it tells the supervisor its test is done, so
        when the supervisor's next "run" arrives because of that, the message is already
        here: reading it first lets the process take the test instead of a new fork.
        """
        for w in list(self.ctl_fds.values()):
            while self.on_ctl(w):
                pass

    def retire_reusable(self) -> None:
        """New fixtures were set up here: the reusable processes forked before lack them
        (a restore takes a process back to its fork), and would set them up again for
        each test. Release the idle ones now, the others when their test is done."""
        for w in self.reusable.values():
            w.stale = True
        self.release_idle()

    def release_idle(self) -> None:
        """Release every reusable process not running a test and not holding one offered
        to it (those about to restore included): this zygote has no test for them."""
        for w in list(self.reusable.values()):
            if w.state != "busy" and w.job is None:
                self.release(w)

    def fork_reusable(self, job: dict[str, Any]) -> None:
        runner = int(job["runner"])
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = self._fork_or_fail("runner", runner)
        if pid == 0:
            try:
                mine.close()
                self.enter_child("runner", keep=theirs)
                self.serve_reusable(theirs, job)
            except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
                _report_fatal(self.ctx, f"runner {runner}", runner)
            os._exit(0)
        theirs.close()
        if pid < 0:
            mine.close()
            return
        self.runners.add(pid)
        w = Reusable(pid, mine)
        self.reusable[pid] = w
        self.ctl_fds[mine.fileno()] = w
        self._watch(mine.fileno())

    def release(self, w: Reusable) -> None:
        """Close the control socket of a reusable process (it then exits, when idle)."""
        fd = w.ctl.fileno()
        if fd >= 0:
            self.ctl_fds.pop(fd, None)
            self._unwatch(fd)
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
        if fd < 0 or not _readable(fd):
            return False
        try:
            msg = frames.recv(w.ctl)
        except (OSError, EOFError, ValueError):
            msg = None
        if msg is None:  # it exited: reap() settles it
            self.release(w)
            return False
        self.handle_ctl(w, msg)
        return True

    def handle_ctl(self, w: Reusable, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "took":  # from now on the supervisor's runner msg["runner"] is this pid
            w.job, w.state = None, "busy"
            self.runners.add(w.pid)
            self.send({"t": "forked", "kind": "runner", "id": int(msg["runner"]), "pid": w.pid})
        elif t == "finishing" and w.state == "busy":
            w.state = "finishing"
        elif t == "done":  # its test is over: to the supervisor, the process exited
            w.state = "restoring"
            self.runners.discard(w.pid)
            self.send({"t": "exited", "pid": w.pid, "status": 0, "maxrss": int(msg["maxrss"]),
                       "utime": float(msg["utime"]), "stime": float(msg["stime"])})
            if w.stale and w.job is None:
                self.release(w)
            self.after_runner()
        elif t == "ready" and w.state == "restoring":
            w.state = "idle"
        elif t == "noreset":  # this kernel or process cannot: fork per test from now on
            self.ctx.reset = False

    def serve_reusable(self, ctl: socket.socket, job: dict[str, Any]) -> None:
        """The loop of a reusable test process: run a test, tell the zygote, restore
        this process to the moment of the snapshot below, wait for the next test.

        Everything between the snapshot and a restore (the test, pytest's state, fds
        opened, mappings made) is undone by the restore, as if this process had just
        been forked. When it cannot be (the test left a thread or a child process
        running, closed an fd it did not open, ...), the process exits instead and the
        zygote forks a fresh one for the next test.
        """
        import resource

        from tach import _reset

        ctl.settimeout(None)
        # One supervisor connection for the life of the process, made before the
        # snapshot so that restores keep it: each runner this process becomes says
        # "take" on it instead of connecting anew (see the supervisor's rest/take).
        rconn = _connect(self.ctx.sock_path)  # failing: _report_fatal, like any error here
        rconn.settimeout(None)  # the kernel's blocking flag is not restored: keep it fixed
        try:
            restores = _reset.snapshot()
        except (_reset.ResetUnavailable, OSError) as e:
            frames.send(ctl, {"t": "noreset", "why": str(e)})
            restores = -1
        if restores > 0:
            try:
                frames.send(ctl, {"t": "ready"})
                taken = frames.recv(ctl)
                if taken is None:
                    os._exit(0)  # released by the zygote
                job = taken
                frames.send(ctl, {"t": "took", "runner": job["runner"]})
            except OSError:
                os._exit(0)  # the zygote is gone
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        runner, tests = int(job["runner"]), [int(i) for i in job["tests"]]
        frames.send(rconn, {"t": "take", "runner": runner} if restores > 0 else _runner_hello(runner))
        r = Runner(self.ctx, rconn, runner, list(self.ctx.session._setupstate.stack), self.teardown_base,
                   self.parametrized_fixtures(tests[0]), _produced(job))
        if restores >= 0 and not job["final"]:
            # Before the supervisor hears the test is done and gives its slot to the
            # next test: this process can take that test once it is restored.
            def finishing() -> None:
                try:
                    frames.send(ctl, {"t": "finishing"})
                except OSError:
                    pass  # the zygote let go of this process: "done" below finds out

            r.before_last_done = finishing
        r.serve(tests, bool(job["final"]), False, int(job["slot"]))
        if restores < 0 or job["final"] or r.stopping:
            os._exit(0)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            frames.send(rconn, {"t": "rest"})
            frames.send(ctl, {"t": "done", "maxrss": ru1.ru_maxrss, "utime": ru1.ru_utime - ru0.ru_utime,
                              "stime": ru1.ru_stime - ru0.ru_stime})
            _reset.restore()  # does not return: snapshot() above returns again
        except (OSError, _reset.ResetUnavailable):
            pass  # the zygote is done with this process, or it cannot be restored
        os._exit(0)

    def connect_runner(self, runner: int) -> socket.socket:
        """The supervisor connection of runner `runner`, introduced."""
        rconn = _connect(self.ctx.sock_path)
        frames.send(rconn, _runner_hello(runner))
        return rconn

    def parametrized_fixtures(self, index: int) -> set[int]:
        """ids of the fixture definitions this zygote set up for one parameter value.

        Their finalizers are registered on the scope node, which the base zygote of that
        scope owns, so a final batch that tears down only to the scope node leaves them
        pending: Runner.finish_fixtures runs them.
        """
        if self.depth == 0:
            return set()
        level = self.ctx.levels[index][self.depth - 1]
        if not level.parametrized:
            return set()
        defs = self.ctx.fixture_defs(index)
        return {id(defs[n][-1]) for n in level.fixtures if n in defs}

    def _fork_or_fail(self, kind: str, ident: int, conn: socket.socket | None = None) -> int:
        """Fork; in the parent, track the child and tell the supervisor. Returns -1
        (after reporting) when fork itself fails."""
        try:
            pid = fork()
        except OSError as e:
            if kind == "runner":
                self.send({"t": "fail", "runner": ident, "message": f"fork failed: {e}"})
            else:
                self.send({"t": "error", "message": f"fork failed: {e}"})
            return -1
        if pid:
            self.track(pid)
            self.send({"t": "forked", "kind": kind, "id": ident, "pid": pid})
        return pid

    def track(self, pid: int) -> None:
        fd = os.pidfd_open(pid)
        self.children[fd] = pid
        self._watch(fd)

    def enter_child(self, role: str, keep: socket.socket | None = None) -> socket.socket:
        """Common setup right after fork in a child of this zygote (role: what it is,
        zygote or runner)."""
        _die_with_parent(os.getppid())
        handover.forked(self.ctx.session.config, role)
        for fd in self.children:
            os.close(fd)
        self.children.clear()
        for w in self.reusable.values():
            w.ctl.close()
        self.reusable.clear()
        self.ctl_fds.clear()
        self.poller = None
        self.conn.close()
        if role == "runner":
            for loop in self.loops:
                forksafe.renew(loop)
        _restart_capture(self.ctx.session.config)
        if keep is not None:
            return keep
        return _connect(self.ctx.sock_path)


def _live_threads() -> set[threading.Thread]:
    main = threading.main_thread()
    return {t for t in threading.enumerate() if t is not main and t.is_alive()}


def finalizer_counts(stack: dict[Any, Any]) -> dict[Any, int]:
    """How many finalizers each node on pytest's SetupState stack has now."""
    return {node: len(fins) for node, (fins, _) in stack.items()}


def take_added_finalizers(stack: dict[Any, Any], counts: dict[Any, int]) -> list[Callable[[], object]]:
    """Remove and return the finalizers registered on `counts`' nodes since it was
    taken, in the order they must run: narrower scopes first, each newest first."""
    out: list[Callable[[], object]] = []
    for node in reversed(list(stack)):
        if node not in counts:
            continue
        fins = stack[node][0]
        added = fins[counts[node]:]
        del fins[counts[node]:]
        out += reversed(added)
    return out


def run_added_finalizers(stack: dict[Any, Any], counts: dict[Any, int]) -> list[BaseException]:
    """Run (and remove) the finalizers registered since `counts`; return their errors."""
    errors: list[BaseException] = []
    for fin in take_added_finalizers(stack, counts):
        try:
            fin()
        except TEST_OUTCOME as e:
            errors.append(e)
    return errors


def _runner_hello(runner: int) -> dict[str, Any]:
    """The first frame of a runner's own connection to the supervisor."""
    return {"t": "hello", "role": "runner", "id": runner, "pid": os.getpid()}


def _readable(fd: int) -> bool:
    """Whether reading fd now would not block (data, end of stream or an error)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def connected_sockets(exclude: set[int]) -> list[str]:
    """This process's connected sockets (fds not in exclude), described."""
    found: list[str] = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        fd = int(name)
        if fd in exclude:
            continue
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            peer = sock.getpeername()
            found.append(f"fd {fd}, {sock.family.name}, peer {peer!r}")
        except OSError:
            pass  # not connected: listening, or unconnected datagram
        finally:
            sock.close()
    return found


def _stack_exc(exc: BaseException) -> Any:
    """The form in which pytest's SetupState keeps a collector's setup error.

    It changed across pytest versions (the exception; later (exception, traceback)), so
    let pytest's own SetupState.setup store it and take what it stored.
    """
    from _pytest.runner import SetupState

    class Raiser:
        def listchain(self) -> list[Any]:
            return [self]

        def setup(self) -> None:
            raise exc

        def teardown(self) -> None:
            pass

    state, raiser = SetupState(), Raiser()
    try:
        state.setup(raiser)  # type: ignore[arg-type] # a stand-in node
    except BaseException:  # noqa: BLE001, S110 - Raiser raised exc itself: nothing to handle
        pass
    return state.stack[raiser][1]  # type: ignore[index] # a stand-in node, as above


class Runner:
    """A process that runs batches of tests forked from one zygote, in order, with
    pytest's own nextitem between them; the last test of a batch tears down to the
    batch's end (the zygote's stack, or for a final batch its teardown base)."""

    def __init__(self, ctx: Context, conn: socket.socket, rid: int, stack: list[Any],
                 teardown_base: list[Any], param_fixtures: set[int],
                 pending: list[setuphooks.Produced]) -> None:
        self.ctx = ctx
        self.conn = conn
        self.rid = rid
        self.stack = stack  # the zygote's SetupState stack: what a batch leaves standing
        self.teardown_base = teardown_base  # what a final batch leaves standing
        self.param_fixtures = param_fixtures
        self.pending = pending
        #: the finalizers its zygotes registered: those a test adds beyond them on the
        #: nodes a batch leaves standing are this process's own (see adopt_finalizers)
        self.base_fins = finalizer_counts(ctx.session._setupstate.stack)
        #: called right before the last test of a batch is reported done
        self.before_last_done: Callable[[], None] | None = None

    def serve(self, tests: list[int], final: bool, persistent: bool, slot: int) -> None:
        xdistcompat.become_worker(self.ctx.session.config, slot, self.ctx.workers, self.ctx.run_id)
        # Zygotes ignore SIGINT (see start_root); a test gets Python's usual handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.stopping = False
        signal.signal(signal.SIGUSR2, self._on_stop)
        try:
            self._serve(tests, final, persistent)
        except KeyboardInterrupt:
            if not self.stopping:
                raise
            self.stop_teardown()

    def _on_stop(self, signum: int, frame: Any) -> None:
        """The run is stopping (-x, pytest.exit(), Ctrl-C): interrupt the test in
        progress the way Ctrl-C interrupts a plain pytest run."""
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def stop_teardown(self) -> None:
        """Tear down what this runner holds beyond its zygote (the interrupted test,
        its class, its module under --tach-isolate module/none), as pytest's session
        finish would after an interruption; the zygotes tear down the rest."""
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        try:
            self.ctx.session._setupstate.teardown_exact(_ScopeEnd(self.stack) if self.stack else None)  # type: ignore[arg-type] # stand-in
        except BaseException:  # noqa: BLE001 - nothing left to report to but stderr
            sys.stderr.write("tach: error tearing down after the run was stopped:\n")
            traceback.print_exc()

    def _serve(self, tests: list[int], final: bool, persistent: bool) -> None:
        ctx = self.ctx
        self.fault = os.open(os.path.join(ctx.fault_dir, f"r{self.rid}.tb"),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        faulthandler.enable(file=self.fault, all_threads=True)
        faulthandler.register(signal.SIGUSR1, file=self.fault, all_threads=True, chain=False)
        ctx.forwarder.sock, ctx.forwarder.fault = self.conn, self.fault
        self.run_batch(tests, final)
        if not persistent:
            return
        self.conn.settimeout(None)
        while True:
            msg = frames.recv(self.conn)
            if msg is None or msg.get("t") == "exit":
                return
            if msg.get("t") == "batch":
                self.run_batch([int(i) for i in msg["tests"]], bool(msg["final"]))

    def abort(self, index: int, reason: str, code: int | None, interrupt: bool) -> None:
        """Tell the supervisor the run must stop, then go: what pytest does with Exit
        or KeyboardInterrupt out of a test is end the session."""
        self.ctx.forwarder.send(_abort_frame(index, reason, code, interrupt))
        os._exit(0)

    def finish_fixtures(self) -> None:
        """Run the pending finalizers of this parameter value's fixtures, newest first
        (pytest registers ``partial(fixturedef.finish, request=subrequest)`` on the scope
        node). Errors have no test left to land on: print them."""
        for finalizers, _ in self.ctx.session._setupstate.stack.values():
            for fin in reversed(list(finalizers)):
                func = getattr(fin, "func", None)  # partial(fixturedef.finish, ...)
                owner = getattr(func, "__self__", None)
                if id(owner) in self.param_fixtures and getattr(func, "__name__", "") == "finish":
                    finalizers.remove(fin)
                    try:
                        fin()
                    except Exception:  # noqa: BLE001 - no test left to report it on
                        traceback.print_exc()

    def run_batch(self, tests: list[int], final: bool) -> None:
        import resource

        ctx = self.ctx
        fw = ctx.forwarder
        items = ctx.items
        end = self.teardown_base if final else self.stack
        last = _ScopeEnd(end) if end else None
        fw.gate = tests[-1] if final else -1
        fw.last, fw.before_last_teardown = tests[-1], lambda item: self.adopt_finalizers(item, end)
        for produced in self.pending:
            if produced.test not in tests:
                # For a test this long-lived process was not given (yet): its first
                # test here gets it rather than nobody.
                produced.test = tests[0]
        for k, index in enumerate(tests):
            item = items[index]
            nextitem = items[tests[k + 1]] if k + 1 < len(tests) else last
            fw.send({"t": "start", "test": index})  # with the previous test's done
            fw.test = index
            for produced in setuphooks.take_for(self.pending, [index]) if self.pending else ():
                # What its zygote's fixture setup produced is this test's setup's.
                for data in produced.warnings:
                    fw.send({"t": "warning", "test": index, "data": data}, flush=False)
                setuphooks.add_to_setup_report(item, produced.sections)
                fw.merge_setup = index
            cpu = time.process_time()
            try:
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                if final and k + 1 == len(tests) and self.param_fixtures:
                    self.finish_fixtures()
            except Exit as e:  # pytest.exit() in a test ends the whole run, as in pytest
                self.abort(index, e.msg, e.returncode, interrupt=False)
            except KeyboardInterrupt:
                if self.stopping:
                    raise  # our own stop signal: serve() tears down
                self.abort(index, "KeyboardInterrupt", int(pytest.ExitCode.INTERRUPTED), interrupt=True)
            except BaseException:
                os.write(self.fault, traceback.format_exc().encode())
                raise
            # What plugins gathered during the test (its coverage, say) goes with its
            # reports: this process is about to end or be restored.
            fw.buffer += b"".join(handover.encode(ctx.session.config, item, index)[0])
            if k + 1 == len(tests) and self.before_last_done is not None:
                self.before_last_done()
            fw.send({"t": "done", "test": index, "cpu": time.process_time() - cpu,
                     "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
                    flush=k + 1 == len(tests))


    def adopt_finalizers(self, item: pytest.Item, end: list[Any]) -> None:
        """Before the batch's last test tears down: a fixture of a scope this process
        leaves standing that was set up here, not in a zygote (one a zygote sets up per
        test process, or one a test reached with request.getfixturevalue), registered
        its teardown on a node this process never tears down. Give it to the test
        instead, to run after the test's own: torn down once, in the process that set
        it up, with an error reported on that test's teardown, as a pytest-xdist
        worker would at its end."""
        stack = self.ctx.session._setupstate.stack
        keep = set(end)
        moved = take_added_finalizers(stack, {n: c for n, c in self.base_fins.items() if n in keep})
        if moved and item in stack:
            stack[item][0][:0] = reversed(moved)


def _produced(job: dict[str, Any]) -> list[setuphooks.Produced]:
    return [setuphooks.Produced.from_frame(p) for p in job["produced"]]


def _abort_frame(index: int, reason: str, code: int | None, interrupt: bool) -> dict[str, Any]:
    if code is None:
        code = int(pytest.ExitCode.INTERRUPTED)
    return {"t": "abort", "test": index, "reason": str(reason), "code": int(code), "interrupt": interrupt}


def _report_fatal(ctx: Context, what: str, runner: int | None = None) -> None:
    """An exception escaped a forked process's own code (not a test's: pytest reports
    those). Write it where the main process looks for it, then exit."""
    text = traceback.format_exc()
    try:
        if runner is not None:
            with open(os.path.join(ctx.fault_dir, f"r{runner}.tb"), "a") as f:
                f.write(text)
        sys.stderr.write(f"tach: internal error in {what}:\n{text}")
    finally:
        os._exit(1)


class _SilentTerminal:
    """Stands in for pytest's terminal reporter in forked processes: no hooks, a writer
    to /dev/null, anything else delegated to the real (silenced) reporter."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._tw = real._tw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("pytest_"):
            raise AttributeError(name)  # not a plugin of any hook
        return getattr(self._real, name)


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
        _die_with_parent(main_pid)
        config = ctx.session.config
        # The main process alone talks to the terminal: replayed reports are written
        # there; here the terminal reporter would print every test a second time. Its
        # hooks go (they cost every runner a tenth of its time formatting reports for
        # nobody); a stub keeps its name for plugins that look it up, e.g. through
        # config.get_terminal_writer(). Done once, here: hook callers are rebuilt once.
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            from _pytest._io import TerminalWriter

            tr._tw = TerminalWriter(open(os.devnull, "w"))
            config.pluginmanager.unregister(tr)
            config.pluginmanager.register(_SilentTerminal(tr), "terminalreporter")
        handover.drop_main_only(config)
        handover.forked(config, "zygote")
        _restart_capture(config)
        _immortalize_once(config)
        conn = _connect(ctx.sock_path)
        frames.send(conn, {"t": "hello", "role": "zygote", "id": 0, "pid": os.getpid()})
        Zygote(ctx, conn, 0, 0, []).serve()
    except BaseException:  # noqa: BLE001 - last resort in a child: say why, then die
        _report_fatal(ctx, "the root zygote")
    os._exit(0)
