"""The main process's loop during a run: wait for the supervisor's events and handle
each with one method, as pytest-xdist's DSession dispatches ``worker_<event>``.

The supervisor (go/supervisor) sends, through ``poll``:

    test      {idx, outcome, ...}    a test finished (or crashed, timed out, was lost):
                                     its reports are replayed into pytest's hooks
    abort     {reason, code, interrupt}  a test called pytest.exit() or raised
                                     KeyboardInterrupt: the run stops
    handover  {frame}                what plugins gathered in a zygote (its fixtures'
                                     coverage, say)
    note      {msg}                  something worth saying with -v
    stall     {idle_s, running, gated, setting_up, left}  the run stopped moving
    end       {root_status}          the run is over: nothing follows

The main process asks it to stop (``stop``) with mode ``abort`` (let zygotes tear their
scopes down; -x, a failed session, the first Ctrl-C) or ``kill`` (a second Ctrl-C).
"""

from __future__ import annotations

import atexit
import gc
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from pytest_tach import handover, replay


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


class Controller:
    """Handles the events of one run; `core` is the started supervisor (pytest_tach._core)."""

    POLL_MS = 100

    def __init__(self, session: pytest.Session, items: list[pytest.Item], core: Any, fault_dir: str,
                 result: RunResult) -> None:
        self.session = session
        self.config = session.config
        self.items = items
        self.core = core
        self.fault_dir = fault_dir
        self.result = result
        self.ended = False
        self.stopping = False  # asked the supervisor to stop: later tests are not replayed
        self.interrupted = False  # Ctrl-C or SIGTERM in this process
        self.signals = 0  # SIGINT/SIGTERM received during the run
        self.abort: dict[str, Any] | None = None  # the first test that ended the run
        self._poll = msgpack.packb({"timeout_ms": self.POLL_MS})
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "test": self.on_test, "abort": self.on_abort, "handover": self.on_handover,
            "note": self.on_note, "stall": self.on_stall, "end": self.on_end,
        }

    # -- the loop -------------------------------------------------------------------
    def run(self) -> None:
        """Handle events until the supervisor says the run is over. Ctrl-C (or SIGTERM)
        once stops the run gracefully; a second one during the stop kills it."""
        # The collected session is alive for the whole run: without this, every full
        # collection during the replay walks it (2000 trivial tests: 90 ms of the main
        # process's GC time, against 35 ms).
        gc.freeze()
        # The signals only count here; the loop acts on them between batches of events.
        # Raising KeyboardInterrupt from the handler lost the batch a poll had just
        # returned (the exception comes as the call returns, before its value is
        # stored): reports, or the run's end, after which stopping the supervisor failed
        # with "no engine run in progress" (the gauntlet's Ctrl-C at moment 14).
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._loop()
        except KeyboardInterrupt:
            self.interrupted = True
            try:
                self.stop("kill")
            finally:
                self._drain(deadline=time.monotonic() + 5)
        finally:
            gc.unfreeze()  # pytest.main() may run again in this process: let it collect
            # ... but not at interpreter exit: the finalizing collections walked the
            # whole session again (~40 ms of each run's end on one trivial test, 6 ms
            # with it frozen). unregister first: one registration however many runs.
            atexit.unregister(gc.freeze)
            atexit.register(gc.freeze)
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1

    def _loop(self) -> None:
        seen = 0
        while not self.ended:
            events = msgpack.unpackb(self.core.poll(self._poll), raw=False)
            for ev in events or []:
                handler = self._handlers.get(ev.get("t"))
                if handler is not None:
                    handler(ev)
            if self.signals > seen:
                seen = self.signals
                self._signalled()

    def _signalled(self) -> None:
        """First signal: stop, letting zygotes tear their scopes down (bounded); another
        one while stopping kills everything (run() above)."""
        self.interrupted = True
        if self.ended:
            return  # nothing left to stop: finish() reports the interruption
        if self.stopping:
            raise KeyboardInterrupt
        self.stop("abort")

    def _drain(self, deadline: float) -> None:
        """After a kill: wait (bounded) for the supervisor to say the run is over."""
        while time.monotonic() < deadline:
            try:
                events = msgpack.unpackb(self.core.poll(self._poll), raw=False)
            except (ValueError, KeyboardInterrupt):
                return
            if any(ev.get("t") == "end" for ev in events or []):
                return

    def stop(self, mode: str) -> None:
        if not self.ended:  # after its end the supervisor has no run to stop
            self.core.stop(msgpack.packb({"mode": mode}))
        self.stopping = True

    def _interrupted(self) -> bool:
        """Ctrl-C or SIGTERM here, or a test raised KeyboardInterrupt."""
        return self.interrupted or bool(self.abort is not None and self.abort.get("interrupt"))

    def finish(self) -> None:
        """After the cleanup: end the session the way the run ended."""
        if self._interrupted():
            raise KeyboardInterrupt() from None
        if self.abort is not None:
            pytest.exit(self.abort["reason"], returncode=self.abort["code"])

    # -- one method per event ---------------------------------------------------------
    def on_test(self, ev: dict[str, Any]) -> None:
        if self.stopping:
            if self._interrupted() and ev.get("frames"):
                # A test in flight at Ctrl-C: what it reported before the interrupt
                # (its setup, its call) is shown, as plain pytest shows the test it was
                # running; the phase the interrupt cut has no report, there as here.
                replay.replay(self.config, self.items[ev["idx"]], ev, self.fault_dir, interrupted=True)
            return
        item = self.items[ev["idx"]]
        replay.replay(self.config, item, ev, self.fault_dir)
        self.result.stats.append(TestStats(item.nodeid, float(ev.get("wall_s", 0.0)), float(ev.get("cpu_s", 0.0)),
                                           int(ev.get("maxrss_kb", 0)), ev["outcome"]))
        if self.session.shouldfail or self.session.shouldstop:
            self.stop("abort")

    def on_abort(self, ev: dict[str, Any]) -> None:
        if self.abort is None:
            self.abort = ev
            self.stopping = True

    def on_handover(self, ev: dict[str, Any]) -> None:
        """From a zygote: its fixture setup, or its teardown after a stop."""
        handover.receive_frame(self.config, ev["frame"])

    def on_note(self, ev: dict[str, Any]) -> None:
        if self.config.option.verbose > 0:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"tach: {ev['msg']}")

    def on_stall(self, ev: dict[str, Any]) -> None:
        _say_stall(self.config, self.items, ev)

    def on_end(self, ev: dict[str, Any]) -> None:
        self.ended = True


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
