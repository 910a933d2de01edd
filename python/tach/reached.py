"""Higher-scoped fixtures that tests reach only at run time: learned in one run, set up
by the zygotes of the next.

tach's plan reads each test's fixture closure to decide what its zygotes set up. A
session fixture that a test reaches by name while it runs is not in that closure:
pytest-django's ``django_db_setup`` (its ``django_db`` marker requests a function
fixture that needs it, through ``request.getfixturevalue``), or anything a fixture
asks for with ``request.getfixturevalue``. Such a fixture is set up in the test's own
process, so once per test (per test process under ``--tach-isolate module``/``none``)
where a plain run sets it up once: the same outcome, at that cost.

So a test process reports each higher-scoped fixture it had to set up for itself with
the test's reports; the main process keeps them in pytest's cache by test id
(``tach/reached-fixtures``), and the next run's plan has that test's zygotes set them up
with its own fixtures (:func:`tach.plan.chain`), where a plain run's scope says. A name
that no longer resolves to a higher-scoped fixture for the test is ignored; a test that
stops reaching one still gets it from its zygote until ``--cache-clear``.
"""

from __future__ import annotations

from typing import Any

import pytest

KEY = "tach/reached-fixtures"
#: the handover key (tach.hooks.pytest_tach_handover) a test process reports them under
OUTPUT = "reached_fixtures"
#: what one test may report; more is not a fixture list but a test process misbehaving
MAX_NAMES = 64


def learned(config: pytest.Config) -> dict[str, list[str]]:
    """What earlier runs learned: test id -> fixture names."""
    cache = getattr(config, "cache", None)
    got = cache.get(KEY, {}) if cache is not None else {}
    if not isinstance(got, dict):
        return {}
    return {k: [n for n in v if isinstance(n, str)] for k, v in got.items()
            if isinstance(k, str) and isinstance(v, list)}


class Reached:
    """The plugin (registered as ``tach-reached``): records in test processes, keeps in
    the main process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.in_test_process = False
        #: this test's, in a test process
        self.names: list[str] = []
        #: test id -> names, from this run's test processes (main process)
        self.found: dict[str, list[str]] = {}

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        self.in_test_process = role == "runner"
        self.names, self.found = [], {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> None:
        if not self.in_test_process or fixturedef.scope == "function":
            return
        item = getattr(request, "_pyfuncitem", None)
        info = getattr(item, "_fixtureinfo", None)
        if info is None or fixturedef.argname in info.name2fixturedefs:
            return  # in the test's closure: the plan knows it (set up per process on purpose)
        if fixturedef.argname not in self.names:
            self.names.append(fixturedef.argname)

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        if item is not None and self.names:
            output[OUTPUT] = self.names
            self.names = []

    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        names = output.get(OUTPUT)
        if item is None or not isinstance(names, list) or len(names) > MAX_NAMES:
            return
        have = self.found.setdefault(item.nodeid, [])
        have.extend(n for n in names if isinstance(n, str) and n not in have)

    def pytest_tach_run_finished(self, config: pytest.Config) -> None:
        cache = getattr(config, "cache", None)
        if cache is None or not self.found:
            return
        keep = learned(config)
        for nodeid, names in self.found.items():
            keep[nodeid] = list(dict.fromkeys([*keep.get(nodeid, []), *names]))
        cache.set(KEY, keep)


def register(config: pytest.Config) -> None:
    config.pluginmanager.register(Reached(config), "tach-reached")
