"""Unit tests: how many threads and iterations a test gets in stress mode, and why it
runs single-threaded (pytest_tach.stress.plan and .unsafe), on items collected in process."""

from __future__ import annotations

import pytest

from pytest_tach.stress import unsafe
from pytest_tach.stress.plan import Plan, plan_for

pytest_plugins = ["pytester"]

SAFE = unsafe.Config(fixtures=frozenset({"capsys", "monkeypatch"}), functions=frozenset(),
                     free_threaded=False, warnings_safe=False)

MARKERS = """
[pytest]
markers =
    parallel_threads(n): -
    parallel_threads_limit(n): -
    force_parallel_threads(n): -
    iterations(n): -
    thread_unsafe(reason=None): -
"""


def _plans(pytester: pytest.Pytester, source: str, threads: int = 4, iterations: int = 1) -> dict[str, Plan]:
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_s=source)
    items = pytester.inline_genitems()[0]
    return {item.name: plan_for(item, threads, iterations, SAFE) for item in items}


def test_markers_follow_pytest_run_parallels_precedence(pytester: pytest.Pytester) -> None:
    plans = _plans(pytester, """
        import pytest

        def test_default(): pass

        @pytest.mark.parallel_threads(8)
        def test_more(): pass

        @pytest.mark.parallel_threads(8)
        @pytest.mark.parallel_threads_limit(2)
        def test_limited(): pass

        @pytest.mark.parallel_threads_limit(2)
        @pytest.mark.force_parallel_threads(6)
        def test_forced(): pass

        @pytest.mark.iterations(3)
        def test_iterated(): pass
    """)
    assert plans["test_default"] == Plan(4, 1)
    assert plans["test_more"] == Plan(8, 1)
    assert plans["test_limited"] == Plan(2, 1)
    assert plans["test_forced"] == Plan(6, 1)
    assert plans["test_iterated"] == Plan(4, 3)


def test_single_threaded_says_why(pytester: pytest.Pytester) -> None:
    plans = _plans(pytester, """
        import gc
        import unittest.mock

        import pytest

        @pytest.mark.parallel_threads(1)
        def test_marked_one(): pass

        @pytest.mark.thread_unsafe(reason="global state")
        def test_marked_unsafe(): pass

        def test_capsys(capsys): pass

        def test_mock():
            with unittest.mock.patch("os.getcwd"):
                pass

        def _helper():
            gc.collect()

        def test_two_calls_deep():
            _helper()
    """)
    assert plans["test_marked_one"] == Plan(1, 1, "is marked as single-threaded")
    assert plans["test_marked_unsafe"].threads == 1 and "global state" in str(plans["test_marked_unsafe"].unsafe)
    for name, word in [("test_capsys", "capsys"), ("test_mock", "mock"), ("test_two_calls_deep", "gc.collect")]:
        p = plans[name]
        assert p.threads == 1 and word in str(p.unsafe), (name, p)


def test_one_thread_asked_for_is_not_a_reason(pytester: pytest.Pytester) -> None:
    plans = _plans(pytester, "def test_capsys(capsys): pass\n", threads=1, iterations=5)
    assert plans["test_capsys"] == Plan(1, 5)
    assert plans["test_capsys"].active


def test_a_bad_marker_argument_is_a_usage_error_naming_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_s="import pytest\n\n@pytest.mark.iterations(0)\ndef test_zero(): pass\n")
    item = pytester.inline_genitems()[0][0]
    with pytest.raises(pytest.UsageError, match=r"test_s.py::test_zero: iterations: expected a positive integer"):
        plan_for(item, 2, 1, SAFE)
