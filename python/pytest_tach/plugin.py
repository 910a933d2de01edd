"""pytest hooks of tach: they act only in a run that turned tach on with ``-p tach``
(activation.py says why every run loads them)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import pytest

import pytest_tach
from pytest_tach import activation, handover, options, snapshot, xdistcompat

if TYPE_CHECKING:
    # Named in the StashKeys below (strings): the modules load when a run needs them.
    from pytest_tach.controller import RunResult  # noqa: F401
    from pytest_tach.forward import Forwarder  # noqa: F401
    from pytest_tach.monitor import Lines  # noqa: F401

_SETTINGS = pytest.StashKey[options.Settings]()
_FORWARDER = pytest.StashKey["Forwarder"]()
_RESULT = pytest.StashKey["RunResult"]()
_LINES = pytest.StashKey["Lines"]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pytest_tach._skip_assertion_rewriting()
    handover.add_hookspecs(pluginmanager)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """--tach-coverage starts recording before conftests are imported, as pytest-cov
    does: their module-level lines are collection's."""
    if not activation.requested(early_config):
        return
    from pytest_tach import monitor

    lines = monitor.early_start(early_config)
    if lines is not None:
        early_config.stash[_LINES] = lines


def pytest_addoption(parser: pytest.Parser) -> None:
    options.addoption(parser)
    handover.addini(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not activation.requested(config):
        activation.refuse_options(config, options.CLI_OPTIONS)
        return
    settings = options.settings(config)  # raises UsageError on a bad value
    if config.getoption("usepdb", False) and settings.workers > 1:
        # One test at a time, so the debugger owns the terminal.
        settings = dataclasses.replace(settings, workers=1)
    settings = _resolve_reset(settings)
    xdistcompat.refuse(config, settings)
    config.stash[_SETTINGS] = settings
    config.addinivalue_line("markers", "timeout(seconds): tach's per-test deadline "
                            "(when pytest-timeout is not installed)")
    config.addinivalue_line("markers", "tach_serial: under tach, run this test with no "
                            "other test running at the same time")
    from pytest_tach.forward import Forwarder

    fw = Forwarder(config)
    config.stash[_FORWARDER] = fw
    config.pluginmanager.register(fw, "tach-forwarder")
    _configure_stress(config, settings)
    _configure_lines(config)
    if settings.workers > 0:
        from pytest_tach import covbridge, pluginstate, reached, timeouts

        covbridge.register(config)
        pluginstate.register(config)
        timeouts.register(config, fw)
        reached.register(config)


def _resolve_reset(settings: options.Settings) -> options.Settings:
    """Turn --tach-reset auto into snapshot or fork, as the kernel allows."""
    if settings.reset == "fork" or settings.isolate != "test" or settings.workers == 0:
        return dataclasses.replace(settings, reset="fork")
    why = snapshot.unavailable()
    if why is None:
        return dataclasses.replace(settings, reset="snapshot")
    if settings.reset == "snapshot":
        raise pytest.UsageError(f"--tach-reset snapshot: not available here: {why}")
    return dataclasses.replace(settings, reset="fork")


def _configure_stress(config: pytest.Config, settings: options.Settings) -> None:
    from pytest_tach.stress import plugin as stress

    other = config.pluginmanager.has_plugin("run-parallel")
    theirs = str(getattr(config.option, "parallel_threads", "1")) not in ("1", "None")
    if other and (settings.stress or theirs):
        raise pytest.UsageError(
            "pytest-run-parallel is active in this run too, and both would run test bodies in "
            "threads. Use tach's --tach-threads/--tach-iterations (its markers, fixtures and "
            "ini keys work the same) and disable the other with -p no:run-parallel.")
    for line, doc in stress.MARKERS.items():
        config.addinivalue_line("markers", f"{line}: {doc} (tach stress mode)")
    plugin = stress.StressPlugin(config, settings.threads, settings.iterations,
                                 settings.skip_thread_unsafe, settings.require_gil_disabled)
    config.pluginmanager.register(plugin, "tach-stress")
    if not other:  # its fixtures have the same names and meaning
        from pytest_tach.stress import fixtures as stressfixtures

        config.pluginmanager.register(stressfixtures, "tach-stress-fixtures")


def _configure_lines(config: pytest.Config) -> None:
    lines = config.stash.get(_LINES, None)
    if lines is None:
        return
    from pytest_tach import monitor

    data_file = config.getoption("tach_coverage_data")
    if data_file:
        try:
            import coverage
        except ImportError:
            raise pytest.UsageError("--tach-coverage-data: coverage.py is not installed "
                                    "(pip install coverage)") from None
        current = coverage.Coverage.current()
        if current is not None and os.path.abspath(current.config.data_file) == os.path.abspath(data_file):
            raise pytest.UsageError(f"--tach-coverage-data {data_file}: coverage.py (pytest-cov or "
                                    "coverage run) writes that file in this run; name another")
    config.pluginmanager.register(monitor.LineCoverage(config, lines, data_file), "tach-lines")


def _engine_active(config: pytest.Config) -> bool:
    s = config.stash.get(_SETTINGS, None)
    return s is not None and s.workers > 0 and not config.option.collectonly


def pytest_report_header(config: pytest.Config) -> list[str]:
    s = config.stash.get(_SETTINGS, None)
    if s is None:
        return []
    from pytest_tach import gil

    if s.workers == 0:
        lines = [f"tach {pytest_tach.__version__}: --tach-workers 0, tests run in-process"]
    else:
        timeout = f", timeout {s.timeout:g}s" if s.timeout else ""
        workers = f"{s.workers} worker{'s' if s.workers != 1 else ''}"
        reset = f", reset={s.reset}" if s.isolate == "test" else ""
        lines = [f"tach {pytest_tach.__version__}: {workers}, isolate={s.isolate}{reset}{timeout}"]
    if s.stress:
        lines.append(f"tach stress: {s.threads} threads x {s.iterations} iterations per test")
    build = "free-threaded build" if gil.free_threaded_build() else "build with the GIL"
    lines.append(f"tach python: {build}, GIL {'enabled' if gil.gil_enabled() else 'disabled'} now")
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    config = session.config
    if not _engine_active(config):
        return None
    # As pytest's own loop: collection errors stop the run before any test.
    if session.testsfailed and not config.option.continue_on_collection_errors:
        raise session.Interrupted(
            f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} during collection")
    from pytest_tach import engine

    config.stash[_RESULT] = engine.run(session, config.stash[_SETTINGS], config.stash[_FORWARDER])
    if session.shouldfail:
        raise session.Failed(session.shouldfail)
    if session.shouldstop:
        raise session.Interrupted(session.shouldstop)
    return True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Put the summary sections in collection order.

    Tests finish in whatever order concurrency gives; the terminal reporter lists
    failures, errors and warnings in the order it saw them. Its summary is printed after
    this hook (its own sessionfinish wraps ours), so sorting its stats here makes the
    summary read as in a sequential run.
    """
    if session.config.stash.get(_RESULT, None) is None:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None:
        return
    order = {item.nodeid: i for i, item in enumerate(session.items)}
    for reports in tr.stats.values():
        if isinstance(reports, list):
            reports.sort(key=lambda r: order.get(str(getattr(r, "nodeid", "")), -1))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    result = config.stash.get(_RESULT, None)
    if result is None or not config.stash[_SETTINGS].report or not result.stats:
        return
    tr = terminalreporter
    tr.write_sep("=", "tach report")
    slow = sorted(result.stats, key=lambda s: s.wall, reverse=True)[:10]
    tr.write_line("slowest tests (wall / cpu / max rss):")
    for st in slow:
        tr.write_line(f"  {st.wall:8.3f}s {st.cpu:8.3f}s {st.maxrss_kb / 1024:8.1f} MiB  {st.nodeid}")
    hungry = sorted(result.stats, key=lambda s: s.maxrss_kb, reverse=True)[:10]
    tr.write_line("most memory-hungry tests (max rss / wall):")
    for st in hungry:
        tr.write_line(f"  {st.maxrss_kb / 1024:8.1f} MiB {st.wall:8.3f}s  {st.nodeid}")
