"""coverage.py under tach: what forked processes measure reaches the main process.

coverage.py measures in every process tach forks (the tracer, or sys.monitoring, is
inherited), but a forked process exits through ``os._exit`` and a reused one is
restored after each test, so its measurements never reach a data file. This plugin,
active whenever a ``coverage.Coverage`` is started in the main process (pytest-cov's,
or ``coverage run``'s), moves them:

* after a fork, each started Coverage's collector gets a :class:`Recorder` in place of
  its data file, and forgets what it had not yet recorded (the parent records that);
* a test process hands over what the test ran, per coverage context, with the test's
  reports; a zygote what its fixtures' setup ran (:mod:`pytest_tach.hooks`);
* the main process merges it (:mod:`pytest_tach.covmerge`) and, before ``pytest_runtestloop`` returns (so before
  pytest-cov combines and reports), adds it to that Coverage's data through
  coverage.py's own ``CoverageData`` API, under the same contexts.

The main process's own measurements (collection, imports) are untouched. Uses these
coverage.py internals, stable since 5.0: ``Coverage._instances``, ``._collector``,
``._data``, ``._inorout``; ``Collector.covdata``, ``.data``, ``.tracers``,
``.flush_data()``, ``.switch_context()``.
"""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import pytest

from pytest_tach import covmerge
from pytest_tach.attribution import Attribution, Restore

KEY = "coverage"


def started() -> list[Any]:
    """The Coverage objects measuring in this process now, oldest first."""
    cov_mod = sys.modules.get("coverage")
    cls = getattr(cov_mod, "Coverage", None)
    if cls is None:
        return []
    instances = getattr(cls, "_instances", None)
    if instances is None:
        current = cls.current()
        instances = [current] if current is not None else []
    return [c for c in instances if getattr(c, "_collector", None) is not None and getattr(c, "_started", True)]


class Recorder:
    """Takes a collector's flushed data in a forked process, in memory, in place of the
    CoverageData it would write to disk; only the methods a Collector calls."""

    def __init__(self, context: str | None) -> None:
        self.base = context  # the context this process started in
        self.context = context
        self.lines: dict[str | None, dict[str, set[int]]] = {}
        self.arcs: dict[str | None, dict[str, set[tuple[int, int]]]] = {}
        self.tracers: dict[str, str] = {}
        self.inherited_tracers: dict[str, str] = {}
        self.unmatched: list[str] = []  # source packages not seen by the time of the fork
        self.imported: set[str] = set()  # source packages imported by then

    def set_context(self, context: str | None) -> str | None:
        old, self.context = self.context, context
        return old

    def add_lines(self, line_data: Mapping[str, Collection[int]]) -> None:
        files = self.lines.setdefault(self.context, {})
        for name, lines in line_data.items():
            files.setdefault(name, set()).update(lines)

    def add_arcs(self, arc_data: Mapping[str, Collection[tuple[int, int]]]) -> None:
        files = self.arcs.setdefault(self.context, {})
        for name, arcs in arc_data.items():
            files.setdefault(name, set()).update(arcs)

    def add_file_tracers(self, file_tracers: Mapping[str, str]) -> None:
        for name, plugin in file_tracers.items():
            if self.inherited_tracers.get(name) != plugin:
                self.tracers[name] = plugin

    def clear(self) -> None:
        self.lines, self.arcs, self.tracers = {}, {}, {}


def _adopt(cov: Any) -> None:
    """In a process just forked: record in memory, starting from nothing."""
    collector = cov._collector
    rec = collector.covdata
    if not isinstance(rec, Recorder):
        rec = Recorder(getattr(rec, "_current_context", None))
        collector.covdata = rec
        # Nothing in a forked process may touch the data file: coverage.py would take
        # it for its own after a fork and erase it (CoverageData._start_using), and
        # under `coverage run` without -p it is the main process's file.
        cov._data = _fork_data(rec)
        cov._auto_save = False
        cov._warn_no_data = False
        cov._warn_unimported_source = False
    rec.clear()
    rec.context = rec.base
    rec.inherited_tracers = dict(getattr(collector, "file_tracers", {}))
    # The parent records (or has handed over) what it measured but had not flushed.
    for data in collector.data.values():
        data.clear()
    for tracer in collector.tracers:
        if hasattr(tracer, "reset_activity"):
            tracer.reset_activity()
    inorout = getattr(cov, "_inorout", None)
    if inorout is not None:
        rec.unmatched = list(getattr(inorout, "source_pkgs_unmatched", []))
        rec.imported = {p for p in getattr(inorout, "source_pkgs", []) if p in sys.modules}


def _fork_data(rec: Recorder) -> Any:
    """What a forked process's Coverage gets as its data: whatever is added to it goes
    where its collector's data goes, the Recorder (pytest-testmon adds the lines it
    measured for pytest-cov there: ``get_data().add_lines``), and nothing is kept or
    written (the main process lists the files that never ran)."""
    from coverage.data import CoverageData

    class ForkData(CoverageData):
        def add_lines(self, line_data: Mapping[str, Collection[int]]) -> None:
            rec.add_lines(line_data)

        def add_arcs(self, arc_data: Mapping[str, Collection[tuple[int, int]]]) -> None:
            rec.add_arcs(arc_data)

        def add_file_tracers(self, file_tracers: Mapping[str, str]) -> None:
            rec.add_file_tracers(file_tracers)

        def touch_file(self, filename: str, plugin_name: str = "") -> None:
            pass

        def touch_files(self, filenames: Iterable[str], plugin_name: str | None = None) -> None:
            pass

    return ForkData(no_disk=True)


def _take(cov: Any) -> dict[str, Any] | None:
    """What this process measured since the fork or the last take, as plain data."""
    collector = cov._collector
    rec = collector.covdata
    if not isinstance(rec, Recorder):
        return None
    collector.flush_data()
    payload: dict[str, Any] = {"id": id(cov)}
    if rec.lines:
        payload["lines"] = [[ctx, {f: list(ls) for f, ls in files.items()}]
                            for ctx, files in rec.lines.items()]
    if rec.arcs:
        payload["arcs"] = [[ctx, {f: [n for arc in arcs for n in arc] for f, arcs in files.items()}]
                           for ctx, files in rec.arcs.items()]
    if rec.tracers:
        payload["tracers"] = rec.tracers
        rec.inherited_tracers.update(rec.tracers)
    inorout = getattr(cov, "_inorout", None)
    if inorout is not None:
        now = getattr(inorout, "source_pkgs_unmatched", [])
        matched = [p for p in rec.unmatched if p not in now]
        if matched:
            payload["matched"] = matched
            rec.unmatched = list(now)
        files = {}
        for pkg in getattr(inorout, "source_pkgs", []):
            mod = sys.modules.get(pkg)
            if pkg not in rec.imported and mod is not None and isinstance(getattr(mod, "__file__", None), str):
                files[pkg] = mod.__file__
                rec.imported.add(pkg)
        if files:
            payload["pkg_files"] = files
    rec.clear()
    return payload if len(payload) > 1 else None


class _ModuleFrame:
    """What coverage.py reads of the frame it decides a file by (``f_globals``): a
    frame running any function of a module has that module's namespace there."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.f_globals = namespace


def _warm(cov: Any, done: set[str]) -> set[str]:
    """In a zygote, decide for every module already imported whether coverage.py
    measures its file, as it would at the file's first call; returns ``done`` with
    them added.

    A plain run decides once per file (Collector.should_trace_cache), but a test process
    forgets what it decided when it is restored or ends, so each test would decide again
    for every file the tests reach and the collection did not run (pytest's runtest
    machinery, assertion helpers, coverage.py's own flush): the largest part of the cost
    of coverage in `test` mode. Decided here, the answer is inherited by every process
    forked below. Only files coverage.py does *not* measure are kept: deciding to measure
    a file has a side effect (a source package counts as imported) that must happen in
    the process that runs it, and those files are few."""
    collector = cov._collector
    cache = getattr(collector, "should_trace_cache", None)
    decide = getattr(collector, "should_trace", None)
    inorout = getattr(cov, "_inorout", None)
    if not isinstance(cache, dict) or decide is None or inorout is None:
        return done
    unmatched = getattr(inorout, "source_pkgs_unmatched", None)
    seen: dict[str, dict[str, Any]] = {}  # filename -> namespace, for files no two modules share
    shared: set[str] = set()
    for name, module in list(sys.modules.items()):
        if name in done:
            continue
        done.add(name)
        if type(module) is not types.ModuleType:
            continue  # a lazy module (importlib's LazyLoader) would load on any attribute
        namespace = module.__dict__
        filename = namespace.get("__file__")
        if not isinstance(filename, str) or not filename.endswith(".py"):
            continue
        # The compiled name, where the .pyc was moved: from a function the module
        # defines. Only plain functions are looked at, by exact type: an attribute
        # lookup (even isinstance's __class__) on other objects can run code (Django's
        # lazy settings raise until configured).
        for value in list(namespace.values()):
            if type(value) is types.FunctionType and value.__module__ == name:
                filename = value.__code__.co_filename
                break
        if filename in cache or filename in shared:
            continue
        if filename in seen:  # which module's frame comes first decides: leave it open
            shared.add(filename)
            continue
        seen[filename] = namespace
    for filename, namespace in seen.items():
        if filename in shared:
            continue
        before = list(unmatched) if isinstance(unmatched, list) else []
        try:
            disp = decide(filename, _ModuleFrame(namespace))
        except Exception:  # noqa: BLE001 - coverage.py decides again at the first call, as always
            disp = None
        if isinstance(unmatched, list) and unmatched != before:
            unmatched[:] = before  # it matched a source package: decided where it runs
        elif disp is not None and not disp.trace:
            cache[filename] = disp
    return done


class CoverageBridge:
    """The plugin (registered as ``tach-coverage`` when coverage.py is imported)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.merged: dict[int, covmerge.Merged] = {}
        #: the Coverage objects measuring when this process was forked: they hand over
        #: even if stopped since (pytest-testmon stops pytest-cov's while it measures)
        self.adopted: list[Any] = []
        #: by Coverage (its id): modules whose files _warm has decided on for it, in this
        #: process or a parent (each Coverage has a cache of its own)
        self.warmed: dict[int, set[str]] = {}
        #: in a test process: gen 1 and 2 collections when its batch began (_older)
        self.older: int | None = None

    # -- forked processes ---------------------------------------------------------
    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        self.older = None
        self.adopted = list(dict.fromkeys([*self.adopted, *started()]))
        for cov in self.adopted:
            _adopt(cov)
            if role == "zygote":
                self.warmed[id(cov)] = _warm(cov, self.warmed.get(id(cov), set()))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        if self.older is None:  # a batch begins (a restored process is back before it)
            self.older = _older()

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        if item is not None and _ends_batch(config):
            # Garbage in a reference cycle (a generator a test left suspended, say) is
            # finalized by a later collection in a plain run, and coverage.py records
            # the lines its finalizer runs (a generator's exit arc). This process may
            # end (os._exit) or be restored after this test: collect now. Only what
            # this process made is looked at: its zygotes froze the rest (gc.freeze).
            # What the batch made is in generations 0 and 1 unless a collection of 1 or
            # 2 ran since it began: then a full one is needed. (A full one costs ~0.5 ms
            # in a restored process, where it first writes to pages a generation-1
            # collection leaves alone: a sizeable part of a trivial test's coverage
            # overhead in `test` mode.)
            gc.collect(1 if _older() == self.older else 2)
            self.older = None
        payloads = []
        for cov in dict.fromkeys([*self.adopted, *started()]):
            payload = _take(cov)
            if item is None:  # a zygote: what runs next belongs to no test's setup
                rec = cov._collector.covdata
                if isinstance(rec, Recorder):
                    rec.set_context(rec.base)
            if payload is not None:
                payloads.append(payload)
        if payloads:
            output[KEY] = payloads

    # -- the main process ---------------------------------------------------------
    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        payloads = output.get(KEY)
        if not isinstance(payloads, list):
            return
        for payload in payloads:
            if isinstance(payload, dict) and type(payload.get("id")) is int:
                self.merged.setdefault(payload["id"], covmerge.Merged()).add(payload)

    def pytest_tach_run_finished(self, config: pytest.Config) -> None:
        merged, self.merged = self.merged, {}
        if not merged:
            return
        mine = started()
        by_id = {id(c): c for c in mine}
        for cov_id, m in merged.items():
            # Measured by a Coverage this process started (a forked process inherits
            # it), or by one a forked process started itself ([run] patch = fork).
            cov = by_id.get(cov_id) or (mine[-1] if mine else None)
            if cov is not None:
                covmerge.write(cov, m)


class TestContexts(Attribution):
    """pytest-cov's ``--cov-context=test`` labels each line with the tests and phases
    that ran it (``nodeid|setup``, ``|run``, ``|teardown``); in forked processes this
    labels a zygote's fixture setup and a scope's teardown as a plain run does
    (attribution.py), with pytest-cov's own labels."""

    def __init__(self, pluginmanager: pytest.PytestPluginManager) -> None:
        super().__init__()
        self.pluginmanager = pluginmanager

    def _recorder(self) -> tuple[Any, Any, Recorder] | None:
        """pytest-cov's context plugin, its collector and that collector's Recorder: in
        a forked process with pytest-cov's contexts on; else None."""
        plugin = self.pluginmanager.get_plugin("_cov_contexts")
        cov = getattr(getattr(plugin, "cov_controller", None), "cov", None)
        collector = getattr(cov, "_collector", None)
        rec = getattr(collector, "covdata", None)
        return (plugin, collector, rec) if isinstance(rec, Recorder) else None

    def active(self) -> bool:
        return self._recorder() is not None

    def switch(self, item: pytest.Item, when: str) -> Restore | None:
        found = self._recorder()
        if found is None:
            return None
        plugin, collector, rec = found
        old = rec.context
        plugin.switch_context(item, when)
        _restart_sysmon(collector)

        def restore() -> None:
            collector.flush_data()
            rec.set_context(old)

        return restore

    def on_phase(self, item: pytest.Item, when: str) -> None:
        found = self._recorder()
        if found is not None:
            _restart_sysmon(found[1])

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        found = self._recorder()
        if found is not None and _uses_sysmon(found[1]):
            # Contexts are complete here (see _restart_sysmon): coverage.py's warning
            # that they are not would be false, and repeated by every test process.
            cov = found[0].cov_controller.cov
            slugs = getattr(cov, "_no_warn_slugs", None)
            if isinstance(slugs, set):
                if not slugs:  # coverage.py fills it from the config at its first warning
                    slugs.update(getattr(cov.config, "disable_warnings", []))
                slugs.add("no-sysmon-context")


def _uses_sysmon(collector: Any) -> bool:
    return any(type(t).__name__ == "SysMonitor" for t in getattr(collector, "tracers", []))


def _restart_sysmon(collector: Any) -> None:
    """coverage.py's sys.monitoring core (PEP 669) records a line once and then disables
    its event there, for good; so it cannot tell which tests ran a line (it warns that
    contexts are incomplete). Every test runs in a process of its own under tach: turning
    the events back on as each phase begins makes each line the phase runs fire once
    more, under its context. One callback per distinct line per phase."""
    if _uses_sysmon(collector):
        sys.monitoring.restart_events()  # type: ignore[attr-defined,unused-ignore]  # 3.12+: absent from older typeshed


def _older() -> int:
    """How many collections of generations 1 and 2 this process has run."""
    stats = gc.get_stats()
    return int(stats[1]["collections"]) + int(stats[2]["collections"])


def _ends_batch(config: pytest.Config) -> bool:
    """Whether the test being handed over is the last of its process's batch."""
    fw = config.pluginmanager.get_plugin("tach-forwarder")
    return fw is not None and fw.test == fw.last


def register(config: pytest.Config) -> None:
    """Register the bridge when coverage.py is in use (imported: pytest-cov imports it
    when --cov is given; `coverage run` before pytest starts)."""
    if "coverage" not in sys.modules:
        return
    config.pluginmanager.register(CoverageBridge(config), "tach-coverage")
    if getattr(config.option, "cov_context", None) == "test":
        config.pluginmanager.register(TestContexts(config.pluginmanager), "tach-coverage-contexts")
