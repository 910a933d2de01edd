"""State that other plugins (and pytest's own) keep in the process that ran a test,
carried to the main process through tach's handover hooks (hooks.py), one adapter per
plugin, each registered only when its plugin is active. coverage.py has a module of its
own (covbridge.py)."""

from __future__ import annotations

from typing import Any

import pytest

SUBTESTS = "pytest-subtests"
BENCHMARK = "pytest-benchmark"
SYRUPY = "syrupy"
#: syrupy's report collections, as its pytest-xdist support merges them
SYRUPY_COLLECTIONS = ("created", "failed", "matched", "updated", "used")


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


class Benchmark:
    """pytest-benchmark keeps each benchmark's timings in a list of its session object;
    the table, --benchmark-json, --benchmark-autosave and --benchmark-compare read that
    list in the main process at the end, which had none ("Not saving anything, no
    benchmarks have been run!"). Each test's benchmarks come with it, and are put in
    collection order at the end, as a plain run appends them. A test that benchmarks
    runs with no other test running (as if marked tach_serial): timings taken beside
    other tests would measure the competition for the cores. (Not carried:
    --benchmark-cprofile's profile.)"""

    FIELDS = ("name", "fullname", "group", "param", "params", "extra_info", "iterations")

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.order: dict[int, int] = {}  # id(Metadata) -> index of its test
        self.index: dict[str, int] = {}  # nodeid -> index in collection order

    @property
    def session(self) -> Any:
        """pytest-benchmark's BenchmarkSession (made in its trylast pytest_configure)."""
        return self.config._benchmarksession  # type: ignore[attr-defined] # set by pytest-benchmark

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.index = {item.nodeid: i for i, item in enumerate(session.items)}
        if self.session.disabled or self.session.skip:
            return
        for item in session.items:
            if "benchmark" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.tach_serial)

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        self.session.benchmarks.clear()  # the parent's (none are run in zygotes)

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        from pytest_benchmark.utils import funcname

        done = []
        for bench in self.session.benchmarks:
            entry = {f: getattr(bench, f, None) for f in self.FIELDS}
            entry["options"] = {k: funcname(v) if callable(v) else v for k, v in bench.options.items()}
            entry["data"] = list(bench.stats.data)
            entry["has_error"] = bool(getattr(bench.fixture, "has_error", False))
            done.append(entry)
        self.session.benchmarks.clear()  # the list the fixture appends to
        if done:
            output[BENCHMARK] = done

    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        from types import SimpleNamespace

        from pytest_benchmark.stats import Metadata, Stats

        entries = output.get(BENCHMARK)
        if not isinstance(entries, list):
            return
        index = self.index.get(item.nodeid, 0) if item is not None else 0
        for e in entries:
            if not isinstance(e, dict) or not all(isinstance(d, (int, float)) for d in e.get("data") or []):
                continue
            bench = Metadata.__new__(Metadata)
            for f in self.FIELDS:
                setattr(bench, f, e.get(f))
            bench.options = e.get("options") if isinstance(e.get("options"), dict) else {}
            bench.cprofile_stats = None
            bench.stats = Stats()
            bench.stats.data = list(e.get("data") or [])
            bench.fixture = SimpleNamespace(has_error=bool(e.get("has_error")))
            self.order[id(bench)] = index
            self.session.benchmarks.append(bench)

    def pytest_tach_run_finished(self, config: pytest.Config) -> None:
        self.session.benchmarks.sort(key=lambda b: self.order.get(id(b), 0))


class Syrupy:
    """syrupy decides at the end of the run, in the main process, which snapshots were
    used, created, updated or are unused (and with --snapshot-update deletes the unused
    ones), from the assertions it recorded, and writes new snapshots then: all of which
    happened in test processes. Every snapshot was reported unused, and
    --snapshot-update deleted them all.

    Each test process writes what its test asserted (with syrupy's file lock, as under
    pytest-xdist: tests of one module write one file) and hands over the snapshots it
    used, created, updated, matched or failed, in syrupy's own transport format. The main
    process gives syrupy all of it as one worker report, the way syrupy's pytest-xdist
    support merges reports (syrupy >= 7), with the outcome of every test it replayed."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collections: dict[str, Any] = {}
        self.xfails = 0
        self.extensions: dict[str, str] = {}
        self.written: set[str] = set()

    @property
    def session(self) -> Any:
        return self.config._syrupy  # type: ignore[attr-defined] # set by syrupy

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        from syrupy.utils import set_snapshot_file_lock

        self.session._assertions.clear()  # (none are made outside tests)
        set_snapshot_file_lock(True, timeout=self.session.snapshot_file_lock_timeout)

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        from syrupy.data import Snapshot, SnapshotCollection, SnapshotCollections

        sess = self.session
        if not sess._assertions and not sess._queued_snapshot_writes:
            return
        written_before = set(sess._written_snapshot_locations)
        sess._written_snapshot_locations.update(
            loc for (_, loc) in sess._queued_snapshot_writes)  # lock sidecars to clean up
        sess.flush_snapshot_write_queue()
        found = {name: SnapshotCollections() for name in SYRUPY_COLLECTIONS}
        xfails = 0
        for assertion in sess._assertions:
            for result in assertion.executions.values():
                collection = SnapshotCollection(location=result.snapshot_location)
                collection.add(Snapshot(name=result.snapshot_name, data=result.final_data))
                found["used"].update(collection)
                if result.created:
                    found["created"].update(collection)
                elif result.updated:
                    found["updated"].update(collection)
                elif result.success:
                    found["matched"].update(collection)
                else:
                    found["failed"].update(collection)
                    xfails += _xfailed(result.test_location.item)
        extensions = {loc: f"{type(ext).__module__}.{type(ext).__qualname__}"
                      for loc, ext in sess._extensions.items()}
        sess._assertions.clear()
        output[SYRUPY] = {
            "collections": {name: c.serialize() for name, c in found.items()},
            "xfails": xfails,
            "extensions": extensions,
            "written": sorted(set(sess._written_snapshot_locations) - written_before),
        }

    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        got = output.get(SYRUPY)
        if not isinstance(got, dict):
            return
        from syrupy.data import SnapshotCollections

        for name, serialized in (got.get("collections") or {}).items():
            if name in SYRUPY_COLLECTIONS and isinstance(serialized, dict) and all(
                    isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
                    for k, v in serialized.items()):
                self.collections.setdefault(name, SnapshotCollections()).merge_serialized(serialized)
        if type(got.get("xfails")) is int:
            self.xfails += got["xfails"]
        extensions = got.get("extensions")
        if isinstance(extensions, dict):
            self.extensions.update({k: v for k, v in extensions.items() if isinstance(k, str) and isinstance(v, str)})
        written = got.get("written")
        if isinstance(written, list):
            self.written.update(w for w in written if isinstance(w, str))

    def pytest_tach_run_finished(self, config: pytest.Config) -> None:
        import sys

        sess = self.session
        # syrupy imports a worker's extension classes by name; here only those already
        # imported in this process are given (nothing is imported on a test's say-so).
        extensions = {loc: path for loc, path in self.extensions.items()
                      if path.rpartition(".")[0] in sys.modules}
        sess.add_worker_report({
            "collections": {name: c.serialize() for name, c in self.collections.items()},
            "num_xfails": self.xfails,
            "selected": {nodeid: status.value for nodeid, status in sess._selected_items.items()},
            "extensions": extensions,
        })
        if self.written:
            from syrupy.utils import cleanup_snapshot_write_sidecars

            cleanup_snapshot_write_sidecars(*self.written)


class Testmon:
    """pytest-testmon records which lines each test ran with a coverage.py of its own
    and saves them to .testmondata when the test's teardown report is logged: the main
    process does (the report carries the lines, as it does from a pytest-xdist worker).
    But testmon hands its lines over only at the end of a batch of tests, which it
    decides by pytest's ``nextitem`` being None: never so in a tach process, whose last
    test is followed by a stand-in for what its zygote keeps. And each forked process
    took itself for the only one and wrote to the database too. So in forked processes
    testmon acts as a pytest-xdist worker does, and hands its batch over at the end of
    each of tach's batches."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def _collect(self) -> Any:
        return self.config.pluginmanager.get_plugin("TestmonCollect")

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        collect = self._collect()
        if collect is not None:
            collect._running_as = "worker"  # the main process saves, from the reports

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Any) -> Any:
        from pytest_tach.forked.scopes import ScopeEnd

        collect = self._collect()
        if isinstance(nextitem, ScopeEnd) and collect is not None:
            collect.testmon._next_test_name = None  # this process's batch ends here
        yield


class SyrupyTooOld:
    """Before syrupy 7 the main process finds a run's snapshot files only through the
    assertions it made itself (none under tach), so what other processes asserted cannot
    complete its report: unused snapshots would go unreported, and before its
    pytest-xdist support (6.x) every snapshot would be called unused and
    --snapshot-update would delete them all. Refuse, clearly, to run its snapshot tests
    under tach rather than give a wrong result or lose snapshots."""

    def __init__(self, version: str) -> None:
        self.version = version

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any("snapshot" in getattr(item, "fixturenames", ()) for item in session.items):
            raise pytest.UsageError(
                f"syrupy {self.version} keeps its snapshot session in the processes that run the tests, and "
                "cannot take what other processes asserted; tach needs syrupy >= 7 for that "
                "(pip install 'syrupy>=7'), or run these tests without tach (-p no:tach)")


def _xfailed(item: Any) -> bool:
    """Whether pytest ran item as an expected failure (what syrupy's report counts)."""
    from _pytest.skipping import xfailed_key

    result = item.stash.get(xfailed_key, None) if item is not None else None
    return bool(result and result.run)


def register(config: pytest.Config) -> None:
    """Register the adapter of each plugin that is active in this run."""
    pm = config.pluginmanager
    try:
        from _pytest import subtests
    except ImportError:  # pytest < 9
        subtests = None  # type: ignore[assignment] # checked below
    key = getattr(subtests, "failed_subtests_key", None)
    if key is not None and config.stash.get(key, None) is not None:
        pm.register(Subtests(key), "tach-subtests")
    if pm.has_plugin("benchmark") or pm.has_plugin("pytest_benchmark.plugin"):
        pm.register(Benchmark(config), "tach-benchmark")
    if pm.has_plugin("syrupy"):
        from importlib.metadata import version

        syrupy_version = version("syrupy")
        if int(syrupy_version.split(".")[0]) >= 7:
            pm.register(Syrupy(config), "tach-syrupy")
        else:
            pm.register(SyrupyTooOld(syrupy_version), "tach-syrupy")
    if pm.has_plugin("TestmonCollect"):
        pm.register(Testmon(config), "tach-testmon")
