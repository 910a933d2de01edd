"""How one test runs in stress mode: threads x iterations, or why it runs in one thread.

The precedence of the markers and the command line is pytest-run-parallel's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_tach.options import parse_int_or_auto
from pytest_tach.stress import unsafe


def _auto_or_int(value: Any, what: str) -> int:
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
