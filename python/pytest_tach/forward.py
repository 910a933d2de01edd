"""The Forwarder: the plugin that sends a runner's reports to the supervisor.

Kept apart from the forked package so that registering it (at configure time, in the main
process, before the first fork) imports nothing heavy.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from pytest_tach import fit, frames, protocol, setuphooks


class Forwarder:
    """Registered in the main process before the first fork (so no process re-registers
    plugins: that would rebuild hook callers and dirty memory in every test process).
    Inert where ``sock`` is None, i.e. everywhere but in a test process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.sock: socket.socket | None = None
        self.test = -1  # index of the test whose reports are being sent
        self.gate = -1  # index of the test whose teardown must wait for the supervisor
        #: each test's call phase waits for a turn from the supervisor (stress mode,
        #: where the next test process is set up while the current one runs)
        self.call_gate = False
        self.turn = -1  # index of the test holding a call turn
        self.waited = 0.0  # seconds the current call phase waited for its turn
        self.fault = -1  # the test process's crash-report file (faulthandler's), an fd
        self.last = -1  # index of the last test of the batch
        #: called before the last test of a batch tears down (after its gate)
        self.before_last_teardown: Callable[[pytest.Item], None] | None = None
        # Frames not sent yet. Each send wakes the supervisor: the teardown report
        # waits for the test's "done" (and the next test's "start") to share one write.
        # Setup and call reports go at once, so that a crash later still shows them.
        self.buffer = bytearray()
        #: in a zygote setting fixtures up: keep the warnings recorded (in ``held``)
        self.hold = False
        self.held: list[dict[str, Any]] = []
        #: index of the test whose setup sections include its zygote's (to merge)
        self.merge_setup = -1

    def send(self, msg: dict[str, Any], flush: bool = True) -> None:
        if self.sock is None:
            raise RuntimeError("tach: a report was sent outside a test process")
        try:
            frame = frames.encode(msg)
        except frames.TooBig:
            # A report bigger than a frame (a -vv diff of big structures, 100 MB of
            # captured output): cut, with a note where, rather than lost.
            frame = frames.encode(fit.shrink(msg))
        self.buffer += frame
        if flush:
            self.sock.sendall(self.buffer)
            self.buffer.clear()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.sock is None:
            return
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.send(protocol.report(self.test, data), flush=report.when != "teardown")
        _unstop(self.config)
        if report.when == "call" and report.passed and self.turn == self.test:
            # Its threads are done: the next test's may start while this one tears
            # down. (A failed call keeps the turn until this test is done, so its
            # reports come first and -x stops the next test before that one reports.)
            self.turn = -1
            self.send(protocol.call_over(self.test))

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        """In stress mode a test's threads should have the cores to themselves, but its
        process need not wait for the previous test to be forked and set up: set up, it
        waits here for its turn (the supervisor takes the turn back when the call has
        passed, or when the test is done). Here, and not when its setup report is
        logged: a plugin that reruns failed tests (pytest-rerunfailures) runs the whole
        protocol before it logs any report, and calls the test again while it still
        holds the turn."""
        if self.sock is not None and self.call_gate and self.turn != self.test:
            t0 = time.perf_counter()
            self.send(protocol.await_call(self.test))
            self._wait_for_go()
            self.turn = self.test
            self.waited = time.perf_counter() - t0
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        """The wait for the call turn is pytest's call phase, as timed, but not the test's:
        --durations, junit times and the durations tach schedules by must not count it
        (they showed 26 ms calls of 10 ms bodies). A test given what its zygote's
        fixture setup produced gets it merged with its own setup sections first."""
        if call.when == "setup" and self.merge_setup == self.test >= 0:
            self.merge_setup = -1
            setuphooks.merge_sections(item, "setup")
        if call.when == "call" and self.waited:
            call.start += self.waited
            call.duration = max(0.0, call.duration - self.waited)
            self.waited = 0.0
        yield

    def _wait_for_go(self) -> None:
        if self.sock is None:
            raise RuntimeError("tach: a teardown gate was asked for outside a test process")
        self.sock.settimeout(None)
        msg = frames.recv(self.sock)
        if msg is None or msg.get("t") != "go":
            os._exit(75)  # the supervisor is gone or confused: nothing to report to

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Any) -> Any:
        """The last test of a zygote's final unit tears that zygote's scope down; it may
        do so only once every other unit of the zygote is done. It ran its setup and
        call meanwhile; here it waits for the supervisor's go."""
        if self.sock is not None and self.test == self.gate >= 0:
            item.config.hook.pytest_tach_teardown_wait(config=item.config, item=item)
        if self.sock is not None and self.test == self.last and self.before_last_teardown is not None:
            self.before_last_teardown(item)
        yield

    @pytest.hookimpl(trylast=True)
    def pytest_tach_teardown_wait(self, config: pytest.Config, item: pytest.Item) -> None:
        self.send(protocol.await_gate(self.test))
        self._wait_for_go()

    def pytest_warning_recorded(self, warning_message: Any, when: str, nodeid: str,
                                location: Any) -> None:
        if self.sock is None and not self.hold:
            return
        from pytest_tach.replay import serialize_warning

        data = {"warning": serialize_warning(warning_message), "when": when, "nodeid": nodeid,
                "location": list(location) if location else None}
        if self.sock is None:
            self.held.append(data)  # a zygote's: sent by the test process it is for
        else:
            self.send(protocol.warning(self.test, data))


def _unstop(config: pytest.Config) -> None:
    """Keep session.shouldfail/shouldstop unset in a runner.

    Whether the run stops (-x, --maxfail, --stepwise) is decided in the main process,
    from the replayed reports, which see every test. A runner that set them itself would
    make pytest (>= 8) tear down everything after the current test, the scopes its
    zygotes own included, which they then tear down again. pytest >= 8.? refuses to
    unset them through the property; its backing attributes are the way.
    """
    session = getattr(config, "_tach_session", None)
    if session is None:
        return
    for name in ("shouldfail", "shouldstop"):
        if getattr(session, name, False):
            if f"_{name}" in vars(session):
                setattr(session, f"_{name}", False)
            else:
                setattr(session, name, False)
