"""The main process's side of a run: plan it from the collected session, fork the root
zygote, hand the run to the Go supervisor, and let the controller replay each finished
test into pytest's hooks (``pytest_tach.controller``).

Deliberately thin: scheduling, deadlines, kills and crash classification live in Go
(go/supervisor, go/sched); here we only translate the collected session for it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from typing import Any

import msgpack
import pytest

from pytest_tach import forked, handover, plan, reached, xdistcompat
from pytest_tach.controller import Controller, RunResult
from pytest_tach.forward import Forwarder
from pytest_tach.options import Settings

# (not tach/...: PyPI's tach, whose pytest plugin may run beside, keeps tach/durations)
DURATIONS_KEY = "pytest-tach/durations"


#: Memory-backed directories tried first for the private directory. Every test process
#: creates its faulthandler dump file there: on ext4 creating (and later deleting) one
#: file per test cost 0.1-0.4 ms of kernel time each (inode allocation scans past
#: recently deleted inodes), up to 5% of a trivial isolated test; ~5 us on tmpfs.
_MEMORY_DIRS = ("/dev/shm",)  # noqa: S108 - mkdtemp makes a 0700 directory in it


#: what a memory directory must have free to hold the run's files: each runner's fault
#: dump (a crash's or a timeout's stacks, KiBs; every thread of a big suite, more) and
#: the socket. A full /dev/shm still lets mkdtemp make a directory, then loses every
#: dump written there: the next candidate is used instead.
_MIN_FREE_BYTES = 16 << 20
_MIN_FREE_INODES = 1024


def _has_room(path: str) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    inodes_ok = st.f_files == 0 or st.f_favail >= _MIN_FREE_INODES  # 0: not counted here
    return st.f_bavail * st.f_frsize >= _MIN_FREE_BYTES and inodes_ok


def _private_dir() -> str:
    """A 0700 directory for the socket and the dump files, in memory when possible (and
    there is room); the socket's path must fit in sun_path (108 bytes)."""
    for parent in (*(d for d in _MEMORY_DIRS if _has_room(d)), None):
        try:
            d = tempfile.mkdtemp(prefix="tach-", dir=parent)
        except OSError:
            continue
        if len(os.path.join(d, "s")) <= 100:
            return d
        shutil.rmtree(d)
    return tempfile.mkdtemp(prefix="tach-", dir="/tmp")


def _timeout_for(item: pytest.Item, settings: Settings, honour_marker: bool) -> float:
    if honour_marker:
        m = item.get_closest_marker("timeout")
        if m is not None:
            value = m.args[0] if m.args else m.kwargs.get("timeout")
            try:
                return max(float(value), 0.0)  # type: ignore[arg-type] # None: TypeError
            except (TypeError, ValueError):
                pass
    return settings.timeout


def run(session: pytest.Session, settings: Settings, forwarder: Forwarder) -> RunResult:
    """Run session.items through the engine. Raises KeyboardInterrupt on Ctrl-C/SIGTERM."""
    config = session.config
    items = list(session.items)
    result = RunResult()
    if not items:
        return result
    learned = reached.learned(config)
    reached_defs = {i: defs for i, item in enumerate(items)
                    if (names := learned.get(item.nodeid)) and (defs := plan.resolve(item, names)) is not None}
    levels = plan.plan(items, settings.isolate, learned, reached_defs)
    groups: dict[int, str] = {}
    phases: dict[int, int] = {}
    if config.pluginmanager.has_plugin("dependency"):  # pytest-dependency: see plan.py
        groups = plan.dependency_groups(items, bool(config.getini("automark_dependency")))
    if config.pluginmanager.has_plugin("pytest_order"):  # pytest-order: see plan.py
        ordered, phases = plan.order_groups(items, bool(config.getoption("sparse_ordering", False)))
        groups.update(ordered)
    for i, group in groups.items():
        levels[i] = plan.cut_for_group(levels[i], group)
    # Children must never clean up each other's temp dirs: create the base now.
    tmp_factory = getattr(config, "_tmp_path_factory", None)
    if tmp_factory is not None:
        tmp_factory.getbasetemp()
    history: dict[str, float] = (cache.get(DURATIONS_KEY, {}) if (cache := getattr(config, "cache", None)) else {})
    honour_timeout_marker = not config.pluginmanager.hasplugin("timeout")

    # Stress mode: `workers` tests run their threads at once (they should have the cores
    # to themselves), and one more test process is forked and set up meanwhile, so the
    # cores do not idle while each process starts (bench/threads.py: 5-13% faster).
    call_limit, processes = 0, settings.workers
    if settings.isolate == "test" and settings.stress:
        call_limit, processes = settings.workers, settings.workers + 1
        forwarder.call_gate = True
    stress = config.pluginmanager.get_plugin("tach-stress")
    if stress is not None:
        stress.prepare(items)

    # One cleanup path, whatever fails where: what is registered here is undone in
    # reverse order on the way out.
    with contextlib.ExitStack() as cleanup:
        private = _private_dir()
        cleanup.callback(shutil.rmtree, private, ignore_errors=True)
        sock_path = os.path.join(private, "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
        listener.listen(128)
        ctx = forked.Context(session=session, items=items, levels=levels, sock_path=sock_path,
                             fault_dir=private, forwarder=forwarder,
                             serial_fixtures=frozenset(settings.serial_fixtures),
                             per_process_fixtures=xdistcompat.per_process_fixtures(
                                 config, settings.per_process_fixtures),
                             listen_fd=listener.fileno(), reset=settings.reset == "snapshot",
                             workers=processes, run_id=uuid.uuid4().hex, reached_defs=reached_defs)
        # Flush before forking: buffered output would otherwise be written twice.
        sys.stdout.flush()
        sys.stderr.flush()
        root = forked.start_root(ctx, own_group=not config.getoption("usepdb", False))
        with contextlib.ExitStack() as unsupervised:  # undone if the supervisor never starts
            unsupervised.callback(_kill_root, root)  # (the whole forked tree)
            listen_fd = os.dup(listener.fileno())
            listener.close()
            # (Made while the root zygote starts.)
            batches = plan.batch_keys(items, settings.isolate, settings.workers)
            for i, group in groups.items():
                batches[i] = group
            tests = [{
                "nodeid": item.nodeid,
                "chain": [lv.key for lv in levels[i]],
                "duration": float(history.get(item.nodeid, 0.0)),
                "timeout": _timeout_for(item, settings, honour_timeout_marker),
                "batch": batches[i],
                "alone": item.get_closest_marker("tach_serial") is not None,
                "phase": phases.get(i, plan.UNORDERED),
            } for i, item in enumerate(items)]
            core = _supervisor(listen_fd, {
                "listen_fd": listen_fd, "root_pid": root, "workers": processes, "call_limit": call_limit,
                "kill_grace": 1.0, "persistent": settings.isolate == "none",
                "stall_report": settings.stall_report, "tests": tests})
            unsupervised.pop_all()
        cleanup.callback(handover.run_finished, config)
        cleanup.callback(_save_durations, config, history, result)
        controller = Controller(session, items, core, private, result)
        controller.run()
    controller.finish()
    return result


def _supervisor(listen_fd: int, start: dict[str, Any]) -> Any:
    """Load the Go supervisor and hand it the run. Only now, with the root zygote forked,
    does the Go runtime enter this process (docs/design.md, rule 1). listen_fd is the
    supervisor's once start is called (it closes it, started or not); until then, ours."""
    try:
        from pytest_tach import _native

        core = _native.core()
    except BaseException:
        os.close(listen_fd)
        raise
    core.start(msgpack.packb(start))
    return core


def _kill_root(root: int) -> None:
    """Kill the root zygote's process group (the whole run) and reap the root."""
    for target in (-root, root):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(root, 0)
    except ChildProcessError:
        pass


def _save_durations(config: pytest.Config, history: dict[str, float], result: RunResult) -> None:
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None or not result.stats:
        return
    for st in result.stats:
        history[st.nodeid] = round(st.wall, 4)
    cache.set(DURATIONS_KEY, history)
