"""The main process's side of a run: fork the root zygote, hand the run to the Go
supervisor, and replay each finished test into pytest's hooks.

This loop is deliberately thin: scheduling, deadlines, kills and crash classification
live in Go (go/supervisor, go/sched); here we only translate between the collected
session and the supervisor's events.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from tach import handover, plan, reached, replay, xdistcompat, zygote
from tach.forward import Forwarder
from tach.options import Settings

DURATIONS_KEY = "tach/durations"


@dataclass
class TestStats:
    nodeid: str
    wall: float
    cpu: float
    maxrss_kb: int
    outcome: str


@dataclass
class RunResult:
    stats: list[TestStats] = field(default_factory=list)


#: Memory-backed directories tried first for the private directory. Every test process
#: creates its faulthandler dump file there: on ext4 creating (and later deleting) one
#: file per test cost 0.1-0.4 ms of kernel time each (inode allocation scans past
#: recently deleted inodes), up to 5% of a trivial isolated test; ~5 us on tmpfs.
_MEMORY_DIRS = ("/dev/shm",)  # noqa: S108 - mkdtemp makes a 0700 directory in it


def _private_dir() -> str:
    """A 0700 directory for the socket and the dump files, in memory when possible;
    the socket's path must fit in sun_path (108 bytes)."""
    for parent in (*_MEMORY_DIRS, None):
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

    private = _private_dir()
    sock_path = os.path.join(private, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(128)
    ctx = zygote.Context(session=session, items=items, levels=levels, sock_path=sock_path,
                         fault_dir=private, forwarder=forwarder,
                         serial_fixtures=frozenset(settings.serial_fixtures),
                         per_process_fixtures=xdistcompat.per_process_fixtures(
                             config, settings.per_process_fixtures),
                         listen_fd=listener.fileno(), reset=settings.reset == "snapshot",
                         workers=processes, run_id=uuid.uuid4().hex, reached_defs=reached_defs)
    # Flush before forking: buffered output would otherwise be written twice.
    sys.stdout.flush()
    sys.stderr.flush()
    root = zygote.start_root(ctx, own_group=not config.getoption("usepdb", False))
    listen_fd = os.dup(listener.fileno())
    listener.close()

    # Only now, with the root zygote forked, does the Go runtime enter this process.
    from tach import _native

    try:
        core = _native.core()
    except BaseException:
        _kill_root(root)
        os.close(listen_fd)
        shutil.rmtree(private, ignore_errors=True)
        raise
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
    try:
        core.start(msgpack.packb({"listen_fd": listen_fd, "root_pid": root,
                                  "workers": processes, "call_limit": call_limit, "kill_grace": 1.0,
                                  "persistent": settings.isolate == "none",
                                  "stall_report": settings.stall_report, "tests": tests}))
    except BaseException:
        _kill_root(root)
        shutil.rmtree(private, ignore_errors=True)
        raise

    stopping = False
    abort: dict[str, Any] | None = None
    old_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    def stop(mode: str) -> None:
        core.stop(msgpack.packb({"mode": mode}))

    # The collected session is alive for the whole run: without this, every full
    # collection during the replay walks it (2000 trivial tests: 90 ms of the main
    # process's GC time, against 35 ms). Unfrozen below when the run ends.
    gc.freeze()
    signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    poll_req = msgpack.packb({"timeout_ms": 100})
    try:
        ended = False
        while not ended:
            try:
                events = msgpack.unpackb(core.poll(poll_req), raw=False)
            except KeyboardInterrupt:
                # First Ctrl-C: stop, letting zygotes tear their scopes down (bounded);
                # a second one (below, while draining) kills everything.
                interrupted = True
                if stopping:
                    raise
                stop("abort")
                stopping = True
                continue
            for ev in events or []:
                t = ev.get("t")
                if t == "end":
                    ended = True
                elif t == "note":
                    if config.option.verbose > 0:
                        tr = config.pluginmanager.get_plugin("terminalreporter")
                        if tr is not None:
                            tr.write_line(f"tach: {ev['msg']}")
                elif t == "stall":
                    _say_stall(config, items, ev)
                elif t == "handover":  # from a zygote: fixture setup, or teardown after a stop
                    handover.receive_frame(config, ev["frame"])
                elif t == "abort" and abort is None:
                    abort = ev
                    stopping = True
                elif t == "test" and not stopping:
                    i = ev["idx"]
                    replay.replay(config, items[i], ev, private)
                    result.stats.append(TestStats(items[i].nodeid, float(ev.get("wall_s", 0.0)),
                                                  float(ev.get("cpu_s", 0.0)),
                                                  int(ev.get("maxrss_kb", 0)), ev["outcome"]))
                    if session.shouldfail or session.shouldstop:
                        stop("abort")
                        stopping = True
    except KeyboardInterrupt:
        interrupted = True
        try:
            stop("kill")
        finally:
            _drain(core, poll_req, deadline=time.monotonic() + 5)
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(private, ignore_errors=True)
        _save_durations(config, history, result)
        handover.run_finished(config)
    if interrupted or (abort is not None and abort.get("interrupt")):
        raise KeyboardInterrupt() from None
    if abort is not None:
        pytest.exit(abort["reason"], returncode=abort["code"])
    return result


def _say_stall(config: pytest.Config, items: list[pytest.Item], ev: dict[str, Any]) -> None:
    """Say what a run that has stopped moving waits for (whatever the verbosity: a
    user watching a silent run needs it most)."""
    waits = [f"{items[i].nodeid} (running for {secs:.0f} s, pid {pid})" for i, secs, pid in ev.get("running") or []]
    waits += [f"{items[i].nodeid} (at the teardown gate, waiting for the other tests of its scopes)"
              for i in ev.get("gated") or []]
    waits += [f"the zygote for {key} (setting up its fixtures)" for key in ev.get("setting_up") or []]
    msg = (f"tach: nothing has moved for {ev['idle_s']:.0f} s; {ev['left']} tests not finished; "
           f"waiting for: {'; '.join(waits) or 'no process (a scheduling bug: please report it)'}")
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(msg)
    else:
        sys.stderr.write(msg + "\n")


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


def _drain(core: Any, req: bytes, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            events = msgpack.unpackb(core.poll(req), raw=False)
        except (ValueError, KeyboardInterrupt):
            return
        if any(ev.get("t") == "end" for ev in events or []):
            return


def _save_durations(config: pytest.Config, history: dict[str, float], result: RunResult) -> None:
    cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
    if cache is None or not result.stats:
        return
    for st in result.stats:
        history[st.nodeid] = round(st.wall, 4)
    cache.set(DURATIONS_KEY, history)
