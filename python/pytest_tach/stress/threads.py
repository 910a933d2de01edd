"""Running one test body in threads: the barrier start, counting every failed call,
one exception for the whole test, and ``thread_comp``'s comparator."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import Any

import pytest

from pytest_tach.stress.plan import Plan

if sys.version_info < (3, 11):  # pragma: no cover - pytest depends on the backport there
    from exceptiongroup import ExceptionGroup


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
        return bool(b != b)  # noqa: PLR0124 - as above
    result: Any = a == b  # numpy: an array
    if not isinstance(result, bool):  # numpy arrays and the like
        try:
            return bool(result.all())
        except Exception:  # noqa: BLE001 - not comparable: not the same
            return False
    return result


class StressFailure(ExceptionGroup):
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
        kw: dict[str, Any] = dict(kwargs)
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
                e.__notes__ = [*getattr(e, "__notes__", []), note]
            firsts[type(e)] = e
    kinds = ", ".join(f"{name} x{count}" for name, count in counts.most_common())
    msg = (f"{len(failures)} of {n * iters} calls failed ({n} threads x {iters} iterations): "
           f"{kinds}")
    excs = [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in firsts.values()]
    return StressFailure(msg, excs)
