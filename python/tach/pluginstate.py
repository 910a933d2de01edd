"""State that other plugins (and pytest's own) keep in the process that ran a test,
carried to the main process through tach's handover hooks (hooks.py), one adapter per
plugin, each registered only when its plugin is active. coverage.py has a module of its
own (covbridge.py)."""

from __future__ import annotations

from typing import Any

import pytest

SUBTESTS = "pytest-subtests"


class Subtests:
    """pytest >= 9's subtests: a test that passed but whose subtests failed is reported
    failed. pytest counts the failed subtests in ``config.stash`` of the process that
    ran them and reads the count when the test's call report is logged: in the main
    process under tach, which would count none and report the test passed."""

    def __init__(self, key: Any) -> None:
        self.key = key  # _pytest.subtests.failed_subtests_key

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        counts = config.stash.get(self.key, None)
        if item is None or not counts:
            return
        # Keyed by the test's structured node id (Node.id); it arrives as a count for
        # the test it comes with.
        n = counts.pop(_node_id(item), 0)
        counts.clear()  # handed over: a reused or long-lived process goes on from zero
        if n:
            output[SUBTESTS] = n

    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        n = output.get(SUBTESTS)
        counts = config.stash.get(self.key, None)
        if item is not None and counts is not None and type(n) is int and n > 0:
            counts[_node_id(item)] += n

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_from_serializable(self, data: dict[str, Any]) -> Any:
        """pytest rebuilds a subtest's report with its parameters repr()'d a second time
        (``i='1'`` for ``i=1``; under pytest-xdist too): they were repr()'d where the test
        ran, so keep them as they came."""
        if data.get("_report_type") != "SubTestReport":
            return None
        from _pytest.subtests import SubtestReport

        report = SubtestReport._from_json(data)
        kwargs = data.get("_subtest.context", {}).get("kwargs")
        if isinstance(kwargs, dict):
            object.__setattr__(report.context, "kwargs", dict(kwargs))  # a frozen dataclass
        return report


def _node_id(item: pytest.Item) -> Any:
    return getattr(item, "id", item.nodeid)


def register(config: pytest.Config) -> None:
    """Register the adapter of each plugin that is active in this run."""
    pm = config.pluginmanager
    try:
        from _pytest import subtests
    except ImportError:  # pytest < 9
        subtests = None  # type: ignore[assignment]
    key = getattr(subtests, "failed_subtests_key", None)
    if key is not None and config.stash.get(key, None) is not None:
        pm.register(Subtests(key), "tach-subtests")
