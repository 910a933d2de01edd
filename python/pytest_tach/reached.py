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
the test's reports, and a zygote each one a fixture of its own level reached (a Django
TestCase's class fixture reaches the session's database setup, so each class zygote
set it up); the main process keeps them in pytest's cache by test id
(``tach/reached-fixtures``), and the next run's plan has that test's zygotes set them up
with its own fixtures (:func:`pytest_tach.plan.chain`), where a plain run's scope says. A name
that no longer resolves to a higher-scoped fixture for the test is ignored; a test that
stops reaching one still gets it from its zygote until ``--cache-clear``.
"""

from __future__ import annotations

from typing import Any

import pytest

KEY = "pytest-tach/reached-fixtures"
#: the handover key (pytest_tach.hooks.pytest_tach_handover) a test process reports them under
OUTPUT = "reached_fixtures"
#: what one test may report, and how many tests one handover may name; more is not a
#: fixture list but a forked process misbehaving
MAX_NAMES = 64
MAX_TESTS = 100_000


def learned(config: pytest.Config) -> dict[str, list[str]]:
    """What earlier runs learned: test id -> fixture names."""
    cache = getattr(config, "cache", None)
    got = cache.get(KEY, {}) if cache is not None else {}
    if not isinstance(got, dict):
        return {}
    return {k: [n for n in v if isinstance(n, str)] for k, v in got.items()
            if isinstance(k, str) and isinstance(v, list)}


class Reached:
    """The plugin (registered as ``tach-reached``): records in forked processes, keeps in
    the main process."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.forked = False
        #: test id -> names, set up here since the last handover (forked processes), or
        #: reported by them in this run (the main process)
        self.found: dict[str, list[str]] = {}

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        self.forked, self.found = True, {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> None:
        # In a test process: set up for its test. In a zygote: for the test it sets its
        # level up for, by a fixture of that level (pytest-django's class fixture for
        # Django TestCases reaches the session's database setup): each zygote of that
        # level would set it up again.
        if not self.forked or fixturedef.scope == "function":
            return
        item = getattr(request, "_pyfuncitem", None)
        info = getattr(item, "_fixtureinfo", None)
        if item is None or info is None or fixturedef.argname in info.name2fixturedefs:
            return  # in the test's closure: the plan knows it (set up per process on purpose)
        names = self.found.setdefault(item.nodeid, [])
        if fixturedef.argname not in names:
            names.append(fixturedef.argname)

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        if self.found:
            output[OUTPUT] = self.found
            self.found = {}

    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        got = output.get(OUTPUT)
        if not isinstance(got, dict) or len(got) > MAX_TESTS:
            return
        for nodeid, names in got.items():
            if not isinstance(nodeid, str) or not isinstance(names, list) or len(names) > MAX_NAMES:
                continue
            have = self.found.setdefault(nodeid, [])
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
