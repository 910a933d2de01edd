"""What every forked process shares: the context it inherits from the main process,
forking itself, what a child does to itself right after a fork, and the last resort
when tach's own code fails in one."""

from __future__ import annotations

import ctypes
import errno
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

from pytest_tach import gil
from pytest_tach.forward import Forwarder
from pytest_tach.plan import Level

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: rounds of killing what tests left running: a stray that forks as it dies leaves new
#: orphans, each round takes the ones there are
_STRAY_ROUNDS = 50
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
    #: the root zygote's part as the run's subreaper
    strays: Strays = field(default_factory=lambda: Strays())

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


#: the parent this process must die with (set by die_with_parent)
_parent = -1


def die_with_parent(parent: int) -> None:
    global _parent
    _parent = parent
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(70)


class Strays:
    """The run's subreaper (the root zygote): a process a test leaves running (a daemon
    it double-forked or started in a session of its own) is re-parented here when its
    parent exits, instead of to init. Those that exit during the run are reaped as they
    do (SIGCHLD wakes the zygote's poll loop through ``fd``), or each would hold a pid
    until the run ends; ``reap_strays`` ends the rest with the run."""

    def __init__(self) -> None:
        self.fd = -1
        self._w = -1

    def adopt(self) -> int:
        """Become the subreaper; returns the fd to poll for SIGCHLD (-1 without prctl)."""
        if _LIBC is None or _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return -1
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)  # a handler, so that the wakeup fd is written
        return self.fd

    def reap_exited(self, known: set[int]) -> None:
        """Reap the children that exited and are not the zygote's own (``known``: it
        reaps those itself, through their pidfds)."""
        try:
            while os.read(self.fd, 512):
                pass
        except BlockingIOError:
            pass
        reap_exited(known)

    def forget(self) -> None:
        """In a child: the subreaper's handler and fds are its parent's."""
        if self.fd < 0:
            return
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self.fd)
        os.close(self._w)
        self.fd = self._w = -1


def _ignore(signum: int, frame: Any) -> None:
    """SIGCHLD's handler: the wakeup fd does the work."""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def reap_strays() -> None:
    """Kill and reap every child this process still has: called once its own children
    (zygotes, test processes) are reaped, what is left are strays Strays.adopt took in."""
    for _ in range(_STRAY_ROUNDS):
        pids = children()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue


def reap_exited(known: set[int]) -> None:
    """Reap this process's children that exited and are not in ``known`` (the ones its
    caller reaps itself, through their pidfds): strays, and the holders of reused test
    processes (pytest_tach._reset puts them beside the test process, under its zygote, so that
    the test sees no child of its own)."""
    for pid in children():
        if pid not in known and _state(pid) == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def children() -> list[int]:
    """This process's children (zombies included), from /proc: its tasks' children
    files where the kernel has them (CONFIG_PROC_CHILDREN), else every process's stat."""
    out: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        return out
    except OSError:
        pass
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            out.append(int(name))
    return out


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
    those). Say why in one line where it is read (a test process's crash report, whose
    test then fails naming it; else stderr, beside the supervisor's word that this
    process died), then exit. tach's traceback is for its developers: TACH_DEBUG=1."""
    exc = sys.exc_info()[1]
    text = f"tach: {what} stopped: {fatal_cause(exc)}\n"
    if os.environ.get("TACH_DEBUG"):
        text += traceback.format_exc()
    try:
        if runner is not None:
            with open(os.path.join(ctx.fault_dir, f"r{runner}.tb"), "a") as f:
                f.write(text)
        else:
            sys.stderr.write(text)
    finally:
        os._exit(1)


#: errors of tach's connection to the supervisor that a test causes by closing or
#: replacing file descriptors it did not open (tach's among them)
_BROKEN = (errno.EBADF, errno.ENOTSOCK, errno.EPIPE, errno.ECONNRESET, errno.EINVAL)


def fatal_cause(exc: BaseException | None) -> str:
    """What made a forked process give up, for a user: a broken connection to tach is
    what a test did to its fds, unless the parent zygote died (the supervisor reports
    that); anything else is a fault of tach's, named with where."""
    if _parent > 0 and os.getppid() != _parent:
        return "its zygote died (the supervisor says which and why)"
    if isinstance(exc, (OSError, EOFError)) and (
            isinstance(exc, EOFError) or exc.errno in _BROKEN):
        return (f"its connection to tach broke ({type(exc).__name__}: {exc}): did the test "
                "close, replace or write into file descriptors it did not open?")
    where = ""
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if "/pytest_tach/" in tb.tb_frame.f_code.co_filename:
            code = tb.tb_frame.f_code
            where = f" in {os.path.basename(code.co_filename)}:{tb.tb_lineno} ({code.co_name})"
        tb = tb.tb_next
    name = type(exc).__name__ if exc is not None else "unknown error"
    return f"a fault in tach{where}: {name}: {exc} (please report it; TACH_DEBUG=1 shows the traceback)"
