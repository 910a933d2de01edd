"""The protocol between tach's processes, Python's side: every message each process
sends, with its fields, and one constructor for each message Python sends.

go/supervisor/proto.go is the Go side and draws the channels (main process <->
supervisor, supervisor <-> zygote, supervisor <-> runner); forked/sources.py draws the
zygote <-> reusable test process exchange. tests/unit/test_protocol.py fails when the
tables here and the supervisor's (read through ``pytest_tach._core.protocol``) differ, or
when a constructor builds what its table does not say.

Kinds are the supervisor's (go/wire): string, int, number (int or float), bool, map,
list, bytes, any.
"""

from __future__ import annotations

import os
from typing import Any

Frame = dict[str, Any]

#: What zygotes and runners send the supervisor: each frame's required fields.
TO_SUPERVISOR: dict[str, dict[str, str]] = {
    # from a zygote
    "hello": {"role": "string", "id": "int", "pid": "int"},  # (a runner's too)
    "ready": {"id": "int"},
    "serial": {"id": "int", "why": "string"},
    "per_process": {"id": "int", "why": "string"},
    "forked": {"kind": "string", "id": "int", "pid": "int"},
    "exited": {"pid": "int", "status": "int", "maxrss": "int", "utime": "number", "stime": "number"},
    "fail": {"runner": "int", "message": "string"},
    "error": {"message": "string"},
    "handover": {"test": "int", "data": "map"},  # (a runner's too)
    # from a runner
    "start": {"test": "int"},
    "report": {"test": "int", "data": "map"},
    "warning": {"test": "int", "data": "map"},
    "await": {"test": "int"},
    "await_call": {"test": "int"},
    "call_over": {"test": "int"},
    "done": {"test": "int", "maxrss": "int", "cpu": "number"},
    "abort": {"test": "int", "reason": "string", "code": "int", "interrupt": "bool"},
    "rest": {},
    "take": {"runner": "int"},
}

#: What the supervisor sends: each command's fields. A zygote handles spawn, run and
#: exit (forked/zygote.py); a runner batch and exit (forked/runner.py), and go while it
#: waits at a gate (forward.py).
FROM_SUPERVISOR: dict[str, list[str]] = {
    "spawn": ["t", "id", "key", "tests", "final"],
    "run": ["t", "runner", "tests", "final", "persistent", "slot"],
    "batch": ["t", "tests", "final"],
    "exit": ["t", "teardown"],
    "go": ["t"],
}

#: What the supervisor's poll returns to the main process: the fields each event may
#: carry (handled by controller.Controller, one method each).
EVENTS: dict[str, list[str]] = {
    "test": ["t", "idx", "outcome", "reason", "done", "slot", "runner", "frames", "frame_error", "pid",
             "status", "status_text", "signal", "exit_code", "maxrss_kb", "cpu_s", "wall_s", "timeout_s",
             "stopped_s"],
    "abort": ["t", "test", "reason", "code", "interrupt"],
    "handover": ["t", "frame"],
    "note": ["t", "msg"],
    "stall": ["t", "idle_s", "running", "gated", "setting_up", "left"],
    "end": ["t", "root_status"],
}

#: Between a zygote and its reusable test processes (forked/sources.py), on their own
#: socketpair: the zygote sends job; a process sends the others.
POOL: dict[str, list[str]] = {
    "job": ["t", "runner", "tests", "final", "persistent", "slot", "produced"],
    "took": ["t", "runner"],
    "finishing": ["t"],
    "done": ["t", "maxrss", "utime", "stime"],
    "ready": ["t"],
    "noreset": ["t", "why"],
}


# -- to the supervisor, from a zygote ---------------------------------------------------
def hello(role: str, ident: int) -> Frame:
    """The first frame of every connection (role: zygote or runner), with the sender's pid:
    a zygote's, for the runner connection it opens before the fork (the supervisor takes
    a runner's pid from ``forked``)."""
    return {"t": "hello", "role": role, "id": ident, "pid": os.getpid()}


def ready(zygote: int) -> Frame:
    return {"t": "ready", "id": zygote}


def serial(zygote: int, why: str) -> Frame:
    return {"t": "serial", "id": zygote, "why": why}


def per_process(zygote: int, why: str) -> Frame:
    return {"t": "per_process", "id": zygote, "why": why}


def forked(kind: str, ident: int, pid: int) -> Frame:
    return {"t": "forked", "kind": kind, "id": ident, "pid": pid}


def exited(pid: int, status: int, maxrss: int, utime: float, stime: float) -> Frame:
    return {"t": "exited", "pid": pid, "status": status, "maxrss": maxrss, "utime": utime, "stime": stime}


def fail(runner: int, message: str) -> Frame:
    return {"t": "fail", "runner": runner, "message": message}


def error(message: str) -> Frame:
    return {"t": "error", "message": message}


def handover(test: int, data: dict[str, Any], dropped: list[str] | None = None) -> Frame:
    """What plugins gathered (test -1: in a zygote); dropped: what did not fit."""
    frame: Frame = {"t": "handover", "test": test, "data": data}
    if dropped:
        frame["dropped"] = dropped
    return frame


# -- to the supervisor, from a runner ---------------------------------------------------
def start(test: int) -> Frame:
    return {"t": "start", "test": test}


def report(test: int, data: dict[str, Any]) -> Frame:
    return {"t": "report", "test": test, "data": data}


def warning(test: int, data: dict[str, Any]) -> Frame:
    return {"t": "warning", "test": test, "data": data}


def await_gate(test: int) -> Frame:
    """The last test of a final unit waits to tear its zygotes' scopes down."""
    return {"t": "await", "test": test}


def await_call(test: int) -> Frame:
    return {"t": "await_call", "test": test}


def call_over(test: int) -> Frame:
    return {"t": "call_over", "test": test}


def done(test: int, cpu: float, maxrss: int) -> Frame:
    return {"t": "done", "test": test, "cpu": cpu, "maxrss": maxrss}


def abort(test: int, reason: str, code: int, interrupt: bool) -> Frame:
    return {"t": "abort", "test": test, "reason": reason, "code": code, "interrupt": interrupt}


def rest() -> Frame:
    return {"t": "rest"}


def take(runner: int) -> Frame:
    return {"t": "take", "runner": runner}


# -- between a zygote and its reusable test processes -----------------------------------
def job(runner: int, tests: list[int], final: bool, persistent: bool, slot: int,
        produced: list[dict[str, Any]]) -> Frame:
    return {"t": "job", "runner": runner, "tests": tests, "final": final, "persistent": persistent,
            "slot": slot, "produced": produced}


def took(runner: int) -> Frame:
    return {"t": "took", "runner": runner}


def finishing() -> Frame:
    return {"t": "finishing"}


def rested(maxrss: int, utime: float, stime: float) -> Frame:
    """Its test is over (pool "done"): the zygote tells the supervisor it exited."""
    return {"t": "done", "maxrss": maxrss, "utime": utime, "stime": stime}


def restored() -> Frame:
    """Restored and idle (pool "ready")."""
    return {"t": "ready"}


def noreset(why: str) -> Frame:
    return {"t": "noreset", "why": why}
