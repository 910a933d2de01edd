"""Hooks tach adds to pytest's, for plugins that keep state in the processes tach forks.

Under ``pytest -p tach`` tests run in processes forked from the collected session, and
fixtures of higher scopes are set up in *zygotes*, processes of their own. A plugin that
accumulates something while tests run (coverage, benchmark results, snapshots) would
find nothing of it in the main process, where pytest reports; and a reused test process
is restored after each test, erasing it. These hooks let a plugin ship what it gathered
to the main process, as pytest-xdist's ``workeroutput`` and ``pytest_testnodedown`` do
for its workers, but once per test instead of once per worker.

In a forked process, in this order:

1. :func:`pytest_tach_forked`: forget what the parent will hand over itself.
2. :func:`pytest_tach_zygote_setup` (zygotes only): a collector is about to be set up.
3. :func:`pytest_tach_handover`: put what must reach the main process into ``output``.

In the main process:

4. :func:`pytest_tach_handover_received`: ``output`` as a forked process filled it.
5. :func:`pytest_tach_run_finished`: every process has ended; merge what was received.

A plugin that must act in the main process alone (it writes a file per report, say)
either returns early where ``pytest_tach_forked`` told it it is in a forked process, or
is named in the ini key ``tach_main_only_plugins``: tach unregisters it from the forked
side before the first test.

Values in ``output`` travel as msgpack: ``None``, ``bool``, ``int``, ``float``, ``str``,
``bytes``, lists and dicts of them (tuples arrive as lists). One frame holds at most
16 MiB; tach splits ``output`` by key, so a single key's value must fit. Nothing in it is
imported or executed by tach.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_tach_forked(config: pytest.Config, role: str) -> None:
    """Called in a process tach has just forked, before it does anything else.

    ``role`` is ``"zygote"`` (it will set fixtures up and fork more processes) or
    ``"runner"`` (it will run tests; under ``--tach-reset snapshot`` it is restored to
    this moment after each test, so what it holds here is what every test starts with).

    Everything the parent had accumulated is still in memory; the parent hands it over
    itself, so forget it here or it is counted twice.
    """


def pytest_tach_zygote_setup(config: pytest.Config, node: pytest.Collector) -> None:
    """Called in a zygote before it sets up the collector ``node`` (a package's
    ``setup_module``, say), which a plain run does in the setup of the first test under
    ``node``. (Fixtures a zygote sets up go through pytest's own
    ``pytest_fixture_setup``.)"""


def pytest_tach_handover(config: pytest.Config, item: pytest.Item | None,
                         output: dict[str, Any]) -> None:
    """Called in a forked process to collect what must reach the main process: add it to
    ``output`` under a key of your own.

    In a test process: after each test's protocol has finished (its teardown included),
    before the process tells tach the test is done and then exits or, reused, is
    restored; ``item`` is that test. What a process gathers while a test runs therefore
    arrives with that test, and what a test that crashes or is killed had gathered is
    lost (what earlier tests handed over is not).

    In a zygote: after it set fixtures up (and, when the run stops early, after it tore
    them down); ``item`` is ``None``.
    """


def pytest_tach_handover_received(config: pytest.Config, item: pytest.Item | None,
                                  output: dict[str, Any]) -> None:
    """Called in the main process with ``output`` as a forked process filled it in
    :func:`pytest_tach_handover`. ``item`` is the test it came with (called before the
    test's reports are replayed, so that they find the state in place), or ``None`` when
    a zygote sent it.

    ``output`` comes from a process running the tests' code: check its shape before
    using it, and never import or execute anything it names.
    """


def pytest_tach_teardown_wait(config: pytest.Config, item: pytest.Item) -> None:
    """Called in a test process when ``item``, the last test of a scope's final batch,
    waits before its teardown until every other test of the scopes it tears down is
    done (a plain run would run those before it). tach's own implementation waits;
    wrap it (``hookwrapper=True``) to do something around the wait: it is not the
    test's time (a per-test timer should not run meanwhile)."""


def pytest_tach_run_finished(config: pytest.Config) -> None:
    """Called in the main process when every process of the run has ended and all they
    handed over has been received, from inside ``pytest_runtestloop``: before what
    plugins wrapping that hook do after it (pytest-cov reports there). Also called when
    the run was stopped or interrupted."""
