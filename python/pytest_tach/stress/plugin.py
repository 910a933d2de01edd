"""The stress mode's pytest hooks: where tests run, their bodies go to threads; in the
main process, what the replayed reports say is summed up, with the GIL watch's findings."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_tach import gil
from pytest_tach.stress import unsafe
from pytest_tach.stress.plan import Plan, plan_for
from pytest_tach.stress.threads import run

MARKERS = {
    "parallel_threads(n)": "run this test in n threads (n=1: single-threaded; prefer "
    "parallel_threads_limit / force_parallel_threads for other values)",
    "parallel_threads_limit(n)": "run this test in at most n threads",
    "force_parallel_threads(n)": "run this test in n threads whatever the command line says",
    "iterations(n)": "call this test's body n times in each thread",
    "thread_unsafe(reason=None)": "run this test in a single thread (its reason is reported)",
}



class StressPlugin:
    """Hooks of the stress mode. Registered in the main process before the first fork,
    so runners have it too: there it runs test bodies in threads and attaches what
    happened to the reports; in the main process it reads that back from the replayed
    reports and reports it."""

    def __init__(self, config: pytest.Config, threads: int, iterations: int,
                 skip_unsafe: bool, require_gil_disabled: bool) -> None:
        self.config = config
        self.threads = threads
        self.iterations = iterations
        self.skip_unsafe = skip_unsafe
        self.require_gil_disabled = require_gil_disabled
        self.unsafe_config = unsafe.make_config(config)
        self.single: dict[str, str] = {}  # nodeid -> why it ran single-threaded
        self.stressed: dict[str, tuple[int, int]] = {}
        self.gil_events: list[Any] = []
        self.plans: dict[pytest.Item, Plan] = {}  # decided before the first fork
        self.watching = gil.free_threaded_build()
        if self.watching:
            gil.install()
            if gil.gil_enabled():
                self.gil_events.append(gil.Event(
                    "(unknown)", "startup, before tach could watch: a plugin or conftest.py "
                    "imported at startup, or PYTHON_GIL=1 / -X gil=1"))

    @property
    def requested(self) -> bool:
        return self.threads > 1 or self.iterations > 1

    def plan(self, item: pytest.Item) -> Plan:
        p = self.plans.get(item)
        if p is None:
            p = plan_for(item, self.threads, self.iterations, self.unsafe_config)
        return p

    def prepare(self, items: list[pytest.Item]) -> None:
        """Decide every test's plan in the main process, before the first fork.

        Thread-unsafe detection reads, tokenizes and parses test source; done lazily in
        each fresh test process it cost 3.5-9 ms per test (nothing is cached across
        forks, and every page it touches is copied). Done here, once per function in a
        warm process, the processes inherit the answers. A plan that cannot be made
        (a marker with a bad argument) is left to the test process, which fails that
        test saying why, as before.
        """
        if not self.requested:
            return
        for item in items:
            try:
                self.plans[item] = self.plan(item)
            except Exception:  # noqa: BLE001, S112 - reported by the test itself
                continue

    # -- where tests run (runners, or the main process with --tach-workers 0) ---------
    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        __tracebackhide__ = True
        try:
            p = self.plan(pyfuncitem)
        except pytest.UsageError as e:  # a marker's bad argument fails its test only
            raise pytest.fail.Exception(str(e), pytrace=False) from None
        if p.unsafe and self.skip_unsafe:
            pytest.skip(f"thread-unsafe: it {p.unsafe}")
        if not p.active:
            return None
        run(pyfuncitem, p)
        return True

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        gil.context = lambda: f"test {nodeid}"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        outcome = yield
        rep = outcome.get_result()
        if call.when == "call" and (self.requested or item.get_closest_marker("force_parallel_threads")):
            try:
                p = self.plan(item)
            except pytest.UsageError:
                return  # the call failed saying why
            rep.tach_threads = {"threads": p.threads, "iterations": p.iterations, "unsafe": p.unsafe}
        if self.watching:
            events = gil.take()
            if events:
                rep.tach_gil = [{"module": e.module, "context": e.context} for e in events]

    # -- the main process ------------------------------------------------------------
    def pytest_collectstart(self, collector: pytest.Collector) -> None:
        gil.context = lambda: f"collection of {collector.nodeid or 'the session'}"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        info = getattr(report, "tach_threads", None)
        if isinstance(info, dict):
            if info.get("unsafe"):
                self.single[report.nodeid] = str(info["unsafe"])
            elif info.get("threads", 1) > 1 or info.get("iterations", 1) > 1:
                self.stressed[report.nodeid] = (int(info["threads"]), int(info["iterations"]))

        for e in getattr(report, "tach_gil", None) or ():
            self.gil_events.append(gil.Event(str(e.get("module")), str(e.get("context"))))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_report_teststatus(self, report: Any, config: pytest.Config) -> Any:
        outcome = yield
        info = getattr(report, "tach_threads", None)
        if getattr(report, "when", None) != "call" or not isinstance(info, dict):
            return
        res = outcome.get_result()
        if not res or len(res) != 3:
            return
        category, letter, word = res
        if info.get("unsafe"):
            tag = "[single-threaded]"
        elif info.get("threads", 1) > 1 or info.get("iterations", 1) > 1:
            tag = f"[{info['threads']} threads \u00d7 {info['iterations']}]"
        else:
            return
        if isinstance(word, tuple):
            word = (f"{word[0]} {tag}", word[1])
        elif word:
            word = f"{word} {tag}"
        outcome.force_result((category, letter, word))

    def gil_problems(self) -> list[Any]:
        return self.gil_events + gil.take()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        self.gil_events = self.gil_problems()
        if self.requested:
            tr.write_sep("=", "tach threads")
            tr.write_line(f"{len(self.stressed)} tests ran in threads "
                          f"({self.threads} threads x {self.iterations} iterations unless marked)")
            if self.single:
                verb = "were skipped" if self.skip_unsafe else "ran single-threaded"
                tr.write_line(f"{len(self.single)} {verb} because they use thread-unsafe functionality:")
                for nodeid, why in list(self.single.items())[:50]:
                    tr.write_line(f"  {nodeid}: it {why}")
                if len(self.single) > 50:
                    tr.write_line(f"  ... and {len(self.single) - 50} more")
        if self.gil_events:
            fatal = self.require_gil_disabled
            tr.write_sep("=", "the GIL was re-enabled", red=fatal, yellow=not fatal)
            for e in self.gil_events:
                tr.write_line(e.describe())
            tr.write_line("Extension modules must declare Py_mod_gil (or call PyUnstable_Module_SetGIL) "
                          "to run without the GIL." + ("" if self.require_gil_disabled else
                          " Pass --tach-require-gil-disabled to make this fail the run."))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.require_gil_disabled and exitstatus == 0:
            self.gil_events = self.gil_problems()
            if self.gil_events:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
