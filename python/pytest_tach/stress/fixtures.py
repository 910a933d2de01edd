"""Fixtures compatible with pytest-run-parallel's, registered by tach's plugin when
pytest-run-parallel itself is not active (they have the same names and meaning)."""

from __future__ import annotations

import pytest

from pytest_tach.stress.plugin import StressPlugin
from pytest_tach.stress.threads import ThreadComparator


@pytest.fixture
def num_parallel_threads(request: pytest.FixtureRequest) -> int:
    """How many threads run this test's body."""
    return _plugin(request).plan(request.node).threads


@pytest.fixture
def num_iterations(request: pytest.FixtureRequest) -> int:
    """How many times each thread calls this test's body."""
    return _plugin(request).plan(request.node).iterations


@pytest.fixture
def thread_index() -> int:
    """The index of the calling thread (each thread gets its own value)."""
    return 0


@pytest.fixture
def iteration_index() -> int:
    """The number of the current call within its thread."""
    return 0


@pytest.fixture
def thread_comp(num_parallel_threads: int) -> ThreadComparator:
    """thread_comp(**values) fails in every thread unless all threads passed equal values."""
    return ThreadComparator(num_parallel_threads)


def _plugin(request: pytest.FixtureRequest) -> StressPlugin:
    p = request.config.pluginmanager.get_plugin("tach-stress")
    if not isinstance(p, StressPlugin):  # registered together in plugin._configure_stress
        raise RuntimeError("tach: the stress fixtures are registered without the stress plugin")
    return p
