"""What a test process does: run its batches of tests with pytest's own protocol,
report each through the forwarder, and leave standing exactly what its zygotes hold.

Frames of a stack dump from this module down are tach's and pytest's main loop, the
same for every test: the crash report and the timeout dump cut them (replay, timeouts).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from _pytest.outcomes import Exit

from pytest_tach import frames, handover, protocol, setuphooks, xdistcompat
from pytest_tach.forked import scopes
from pytest_tach.forked.process import Context


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
        #: nodes a batch leaves standing are this process's own (scopes.adopt_finalizers)
        self.base_fins = scopes.finalizer_counts(ctx.session)
        #: called right before the last test of a batch is reported done
        self.before_last_done: Callable[[], None] | None = None
        self.stopping = False

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
            scopes.teardown_to(self.ctx.session, self.stack)
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

    def run_batch(self, tests: list[int], final: bool) -> None:
        import resource

        ctx = self.ctx
        fw = ctx.forwarder
        items = ctx.items
        end = self.teardown_base if final else self.stack
        last = scopes.end_of(end)
        fw.gate = tests[-1] if final else -1
        fw.last = tests[-1]
        fw.before_last_teardown = lambda item: scopes.adopt_finalizers(ctx.session, self.base_fins, item, end)
        for produced in self.pending:
            if produced.test not in tests:
                # For a test this long-lived process was not given (yet): its first
                # test here gets it rather than nobody.
                produced.test = tests[0]
        for k, index in enumerate(tests):
            item = items[index]
            nextitem = items[tests[k + 1]] if k + 1 < len(tests) else last
            fw.send(protocol.start(index))  # with the previous test's done
            fw.test = index
            for produced in setuphooks.take_for(self.pending, [index]) if self.pending else ():
                # What its zygote's fixture setup produced is this test's setup's.
                for data in produced.warnings:
                    fw.send(protocol.warning(index, data), flush=False)
                setuphooks.add_to_setup_report(item, produced.sections)
                fw.merge_setup = index
            cpu = time.process_time()
            try:
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                if final and k + 1 == len(tests) and self.param_fixtures:
                    scopes.finish_param_fixtures(ctx.session, self.param_fixtures)
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
            fw.send(protocol.done(index, time.process_time() - cpu,
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
                    flush=k + 1 == len(tests))


def produced_of(job: dict[str, Any]) -> list[setuphooks.Produced]:
    """What a job frame carries of its zygote's fixture setup (output, warnings)."""
    return [setuphooks.Produced.from_frame(p) for p in job["produced"]]


def _abort_frame(index: int, reason: str, code: int | None, interrupt: bool) -> dict[str, Any]:
    if code is None:
        code = int(pytest.ExitCode.INTERRUPTED)
    return protocol.abort(index, str(reason), int(code), interrupt)
