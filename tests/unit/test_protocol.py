"""The protocol is written down once per side (python/pytest_tach/protocol.py, go/supervisor/
proto.go); these tests fail when the two sides' message lists or fields differ, or when
what Python builds or handles is not what its table says."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from pytest_tach import _native, protocol
from pytest_tach.controller import Controller, RunResult

KINDS: dict[str, Any] = {"string": str, "int": int, "bool": bool, "map": dict, "list": list, "bytes": bytes,
                         "number": (int, float)}


@pytest.fixture(scope="module")
def go_side() -> dict[str, Any]:
    return _native.protocol()


def test_the_frames_python_sends_are_the_ones_the_supervisor_accepts(go_side: dict[str, Any]) -> None:
    assert protocol.TO_SUPERVISOR == go_side["frames"]


def test_the_commands_are_the_ones_the_supervisor_sends(go_side: dict[str, Any]) -> None:
    assert protocol.FROM_SUPERVISOR == go_side["commands"]


def test_the_events_are_the_ones_the_supervisor_returns(go_side: dict[str, Any]) -> None:
    assert protocol.EVENTS == go_side["events"]


def test_the_controller_handles_every_event_and_nothing_else() -> None:
    session: Any = _FakeSession()
    controller = Controller(session, [], core=None, fault_dir="", result=RunResult())
    assert set(controller._handlers) == set(protocol.EVENTS)


CONSTRUCTORS = {
    "hello": lambda: protocol.hello("zygote", 1), "ready": lambda: protocol.ready(1),
    "serial": lambda: protocol.serial(1, "why"), "per_process": lambda: protocol.per_process(1, "why"),
    "forked": lambda: protocol.forked("runner", 1, 2), "exited": lambda: protocol.exited(2, 0, 10, 0.1, 0.2),
    "fail": lambda: protocol.fail(1, "m"), "error": lambda: protocol.error("m"),
    "handover": lambda: protocol.handover(-1, {"cov": 1}, ["big: too big"]),
    "start": lambda: protocol.start(0), "report": lambda: protocol.report(0, {"when": "call"}),
    "warning": lambda: protocol.warning(0, {"message": "w"}), "await": lambda: protocol.await_gate(0),
    "await_call": lambda: protocol.await_call(0), "call_over": lambda: protocol.call_over(0),
    "done": lambda: protocol.done(0, 0.01, 1024), "abort": lambda: protocol.abort(0, "exit", 2, False),
    "rest": protocol.rest, "take": lambda: protocol.take(4),
}


@pytest.mark.parametrize("name", sorted(protocol.TO_SUPERVISOR))
def test_each_constructor_builds_what_the_supervisor_requires(name: str) -> None:
    frame = CONSTRUCTORS[name]()
    assert frame["t"] == name
    for field, kind in protocol.TO_SUPERVISOR[name].items():
        assert isinstance(frame.get(field), KINDS[kind]), (name, field, frame)
    # bool is an int to Python; the supervisor's int is not a bool
    assert not any(isinstance(frame[f], bool) for f, k in protocol.TO_SUPERVISOR[name].items() if k == "int")


POOL_CONSTRUCTORS = {
    "job": lambda: protocol.job(1, [0, 1], False, False, 0, []), "took": lambda: protocol.took(1),
    "finishing": protocol.finishing, "done": lambda: protocol.rested(10, 0.1, 0.2),
    "ready": protocol.restored, "noreset": lambda: protocol.noreset("why"),
}


@pytest.mark.parametrize("name", sorted(protocol.POOL))
def test_each_pool_message_has_the_fields_of_its_table(name: str) -> None:
    frame = POOL_CONSTRUCTORS[name]()
    assert frame["t"] == name and list(frame) == protocol.POOL[name]


def test_every_constructor_is_tested() -> None:
    public = {n for n, f in vars(protocol).items() if inspect.isfunction(f) and f.__module__ == protocol.__name__}
    tested = {f().get("t") for f in [*CONSTRUCTORS.values(), *POOL_CONSTRUCTORS.values()]}
    assert len(public) == len(CONSTRUCTORS) + len(POOL_CONSTRUCTORS)
    assert tested == set(protocol.TO_SUPERVISOR) | set(protocol.POOL)


class _FakeSession:
    config = None
