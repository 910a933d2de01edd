"""What every forked process shares: the context it inherits from the main process,
forking itself, what a child does to itself right after a fork, and the last resort
when tach's own code fails in one."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from tach import gil
from tach.forward import Forwarder
from tach.plan import Level

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


def fork() -> int:
    # Python >= 3.12 warns when a process with threads forks (a fixture may have started
    # one). Forking is what tach is for; a user's -W error must not make it fail.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def die_with_parent(parent: int) -> None:
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(SOCKET_DEADLINE)
    s.connect(path)
    return s


def readable(fd: int) -> bool:
    """Whether reading fd now would not block (data, end of stream or an error)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def restart_capture(config: pytest.Config) -> None:
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


def freeze() -> None:
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


def immortalize_once(config: pytest.Config) -> None:
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


def silence_terminal(config: pytest.Config) -> None:
    """The main process alone talks to the terminal: replayed reports are written
    there; in a fork the terminal reporter would print every test a second time. Its
    hooks go (they cost every runner a tenth of its time formatting reports for
    nobody); a stub keeps its name for plugins that look it up, e.g. through
    config.get_terminal_writer(). Done once, in the root zygote: hook callers are
    rebuilt once."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        from _pytest._io import TerminalWriter

        tr._tw = TerminalWriter(open(os.devnull, "w"))  # open for the life of the process
        config.pluginmanager.unregister(tr)
        config.pluginmanager.register(_SilentTerminal(tr), "terminalreporter")


def live_threads() -> set[threading.Thread]:
    main = threading.main_thread()
    return {t for t in threading.enumerate() if t is not main and t.is_alive()}


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


def report_fatal(ctx: Context, what: str, runner: int | None = None) -> None:
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
