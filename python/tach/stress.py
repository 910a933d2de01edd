"""Free-threading stress mode: each test body runs in N threads x M iterations.

Compatible with suites written for pytest-run-parallel: its markers
(``parallel_threads``, ``parallel_threads_limit``, ``force_parallel_threads``,
``iterations``, ``thread_unsafe``), fixtures (``num_parallel_threads``, ``num_iterations``,
``thread_index``, ``iteration_index``, ``thread_comp``) and ini keys
(``thread_unsafe_fixtures``, ``thread_unsafe_functions``) mean the same here, with the
same precedence. What tach adds: the threads run inside the engine's isolated process,
so a segfault or a deadlock fails that test only; every failing call is counted and
every distinct exception type is shown, not just the first one.

Fixtures are set up once per test and shared by its threads, as in pytest-run-parallel;
``tmp_path``/``tmpdir`` give each thread its own subdirectory.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from tach import gil, unsafe

if sys.version_info < (3, 11):  # pragma: no cover - pytest depends on the backport there
    from exceptiongroup import ExceptionGroup

MARKERS = {
    "parallel_threads(n)": "run this test in n threads (n=1: single-threaded; prefer "
    "parallel_threads_limit / force_parallel_threads for other values)",
    "parallel_threads_limit(n)": "run this test in at most n threads",
    "force_parallel_threads(n)": "run this test in n threads whatever the command line says",
    "iterations(n)": "call this test's body n times in each thread",
    "thread_unsafe(reason=None)": "run this test in a single thread (its reason is reported)",
}

#: Fixtures whose state is per-process and not safe to share between threads.
UNSAFE_FIXTURES = frozenset({"capsys", "capteesys", "capsysbinary", "capfd", "capfdbinary",
                             "monkeypatch"})


def warnings_are_thread_safe() -> bool:
    """Python 3.14 can make warnings context-aware (per thread): then catching them in
    one thread does not disturb the others."""
    return bool(getattr(sys.flags, "context_aware_warnings", 0)
                and getattr(sys.flags, "thread_inherit_context", 0))


def _auto_or_int(value: Any, what: str) -> int:
    from tach.options import parse_int_or_auto

    return parse_int_or_auto(value, what, minimum=1)


@dataclass(frozen=True)
class Plan:
    """How one test runs: threads x iterations, or why it runs single-threaded."""

    threads: int
    iterations: int
    unsafe: str | None = None  # why it runs in one thread despite threads > 1 requested

    @property
    def active(self) -> bool:
        return self.threads > 1 or self.iterations > 1


def plan_for(item: pytest.Item, threads: int, iterations: int, config_unsafe: unsafe.Config) -> Plan:
    """The same precedence as pytest-run-parallel: the command line, then
    parallel_threads, capped by parallel_threads_limit, overridden by
    force_parallel_threads; iterations by the iterations marker."""
    n, single_by_marker = threads, False
    m = item.get_closest_marker("parallel_threads")
    if m is not None and m.args:
        n = _auto_or_int(m.args[0], f"{item.nodeid}: parallel_threads")
        single_by_marker = n == 1
    m = item.get_closest_marker("parallel_threads_limit")
    if m is not None and m.args:
        limit = _auto_or_int(m.args[0], f"{item.nodeid}: parallel_threads_limit")
        single_by_marker = single_by_marker or limit == 1
        n = min(n, limit)
    m = item.get_closest_marker("force_parallel_threads")
    if m is not None and m.args:
        n = _auto_or_int(m.args[0], f"{item.nodeid}: force_parallel_threads")
        single_by_marker = n == 1
    it = iterations
    m = item.get_closest_marker("iterations")
    if m is not None and m.args:
        it = _auto_or_int(m.args[0], f"{item.nodeid}: iterations")
    if n > 1:
        why = "is marked as single-threaded" if single_by_marker else unsafe.reason(item, config_unsafe)
        if why is not None:
            return Plan(1, it, why)
    elif single_by_marker and threads > 1:
        return Plan(1, it, "is marked as single-threaded")
    return Plan(n, it)


class ThreadComparator:
    """``thread_comp(**values)``: every thread calls it at the same point; it fails in
    all of them unless every thread passed equal values."""

    def __init__(self, n_threads: int) -> None:
        self._n = n_threads
        self._lock = threading.Lock()
        self._values: list[dict[str, Any]] = []
        self._collected = threading.Barrier(n_threads)
        self._compared = threading.Barrier(n_threads)
        self._cleared = threading.Barrier(n_threads)

    def __call__(self, **values: Any) -> None:
        if self._n == 1:
            return
        with self._lock:
            self._values.append(values)
        self._collected.wait()  # everyone's values are in
        error = _difference(self._values)  # the same answer in every thread
        if self._compared.wait() == 0:  # everyone has read them: one thread clears
            self._values = []
        self._cleared.wait()  # nobody appends for the next call before the clear
        if error:
            raise AssertionError(error)


def _difference(all_values: list[dict[str, Any]]) -> str | None:
    first = all_values[0]
    for other in all_values[1:]:
        for key, value in first.items():
            if not _same(value, other.get(key)):
                return f"{key!r} differs between threads: {value!r} != {other.get(key)!r}"
    return None


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if callable(a) and not isinstance(a, type):
        return a is b
    if a != a:  # noqa: PLR0124 - NaN equals NaN here
        return b != b  # noqa: PLR0124
    result = a == b
    if not isinstance(result, bool):  # numpy arrays and the like
        try:
            return bool(result.all())
        except Exception:  # noqa: BLE001
            return False
    return result


class StressFailure(ExceptionGroup):  # type: ignore[misc]
    """Some calls of a multi-threaded test failed: the first exception of each type."""


def run(item: pytest.Function, plan: Plan) -> None:
    """Call item's test function plan.threads x plan.iterations times, each iteration
    starting together in all threads (a barrier), and raise what failed."""
    __tracebackhide__ = True
    testfunction = item.obj
    kwargs = {name: item.funcargs[name] for name in item._fixtureinfo.argnames}
    n, iters = plan.threads, plan.iterations
    barrier = threading.Barrier(n)
    lock = threading.Lock()
    failures: list[tuple[int, int, BaseException]] = []
    skipped: list[str] = []

    def worker(t: int) -> None:
        kw = dict(kwargs)
        if n > 1:
            if "thread_index" in kw:
                kw["thread_index"] = t
            if "tmp_path" in kw:
                kw["tmp_path"] = kw["tmp_path"] / f"thread_{t}"
                kw["tmp_path"].mkdir(exist_ok=True)
            if "tmpdir" in kw:
                kw["tmpdir"] = kw["tmpdir"].ensure(f"thread_{t}", dir=True)
        for i in range(iters):
            if "iteration_index" in kw:
                kw["iteration_index"] = i
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return
            try:
                testfunction(**kw)
            except pytest.skip.Exception as e:
                with lock:
                    skipped.append(str(e.msg))
            except BaseException as e:  # noqa: BLE001 - every failure is counted
                with lock:
                    failures.append((t, i, e))

    # On a GIL build, switch threads as often as possible: races show up sooner.
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(t,), name=f"tach-stress-{t}") for t in range(n)]
        started = 0
        try:
            for th in threads:
                th.start()
                started += 1
        finally:
            if started < n:
                barrier.abort()
        for th in threads[:started]:
            th.join()
    finally:
        sys.setswitchinterval(old_switch)
    if failures:
        raise summarize(failures, n, iters)
    if skipped:
        pytest.skip(skipped[0])


def summarize(failures: list[tuple[int, int, BaseException]], n: int, iters: int) -> BaseException:
    """One exception for the whole test: the single failure itself when there was one
    call, else a group of the first exception of each type, counted."""
    if n * iters == 1:
        return failures[0][2]
    counts = Counter(type(e).__name__ for _, _, e in failures)
    firsts: dict[type, BaseException] = {}
    for t, i, e in failures:
        if type(e) not in firsts:
            note = f"(first {type(e).__name__}: thread {t}, iteration {i})"
            if hasattr(e, "add_note"):  # Python >= 3.11
                e.add_note(note)
            else:  # 3.10: the exceptiongroup backport pytest uses prints __notes__ too
                e.__notes__ = [*getattr(e, "__notes__", []), note]  # type: ignore[attr-defined]
            firsts[type(e)] = e
    kinds = ", ".join(f"{name} x{count}" for name, count in counts.most_common())
    msg = (f"{len(failures)} of {n * iters} calls failed ({n} threads x {iters} iterations): "
           f"{kinds}")
    excs = [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in firsts.values()]
    return StressFailure(msg, excs)


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
            tr.write_sep("=", "the GIL was re-enabled", red=self.require_gil_disabled, yellow=not self.require_gil_disabled)
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
