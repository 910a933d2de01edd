"""tach's own per-test line collector, on sys.monitoring (PEP 669; CPython 3.12+).

``--tach-coverage`` records, for every test, the lines of the project's own files that
it ran, per phase (setup, run, teardown), and keeps them under pytest's cache directory
(``tach-coverage/lines.json``), for later features that pick the tests a change
affects. ``--tach-coverage-data=PATH`` also writes them as a coverage.py data file with
pytest-cov's per-test contexts (``nodeid|setup``, ``|run``, ``|teardown``; lines run at
collection under the empty context), written through coverage.py's ``CoverageData``, so
``coverage report/html/xml/json --data-file=PATH`` read it.

Why it is cheap: a line event calls back once and is then disabled (``DISABLE``) at
that line, for good. A plain run can therefore tell which test ran a line only for the
first test that ran it. Under tach every test runs in a process whose memory, the
monitoring state included, is put back after it (``--tach-reset snapshot``) or is
fresh: each test's lines call back once each, however often they run. Line events are
set on the project's code objects only (found after collection; modules imported
later are armed as they load), so no other code calls back at all. Where a process
runs several tests (``module``/``none``) or was forked from a zygote whose fixtures ran
project code, the code objects that fired are re-armed before the next test.

Lines only: on 3.12 and 3.13 a branch event can only be disabled for both directions
at once (3.14's BRANCH_LEFT/BRANCH_RIGHT can; untested here). Uses its own tool id, so
it runs beside coverage.py (pytest-cov) on either core without sharing anything.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import sysconfig
import types
from pathlib import Path
from typing import Any

import pytest

from pytest_tach.attribution import Attribution, Restore

KEY = "tach-lines"
CACHE_DIR = "tach-coverage"
#: a label: (nodeid, phase), or None for what belongs to no test (collection)
Label = tuple[str, str] | None
#: sys.monitoring tool ids tried, highest first: coverage.py's sysmon core takes the
#: lowest free one from COVERAGE_ID (1) up; 0 is the debugger's by convention.
TOOL_IDS = (5, 4, 3, 2)


def available() -> str | None:
    """Why the collector cannot run here, or None."""
    # One expression: mypy checks it on one version, and either branch is dead on one.
    return None if sys.version_info >= (3, 12) else (
        f"needs CPython 3.12+ (sys.monitoring), this is {sys.version.split()[0]}")


class _Arming(importlib.abc.MetaPathFinder):
    """Arms a project module's code objects before the module runs: a module a test
    imports while it runs is not among the code objects found after collection."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        loader = getattr(spec, "loader", None)
        if (spec is None or type(loader) is not importlib.machinery.SourceFileLoader
                or not self.lines.ours(spec.origin or "")):
            return None  # not ours to change: the finders after this one decide
        lines = self.lines

        class ArmingLoader(importlib.machinery.SourceFileLoader):
            def exec_module(self, module: types.ModuleType) -> None:
                code = self.get_code(module.__name__)
                if code is not None:
                    lines.arm(code)
                    exec(code, module.__dict__)  # noqa: S102 - what SourceFileLoader does

        spec.loader = ArmingLoader(loader.name, loader.path)
        return spec


class Lines:
    """The collector of one process (forked processes inherit it, armed)."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = [os.path.join(os.path.realpath(r), "") for r in roots]
        skip = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        skip |= {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(__file__))}
        self.skip = [os.path.join(os.path.realpath(p), "") for p in skip if p]
        self.ours_cache: dict[str, bool] = {}
        self.tool = -1
        self.label: Label = None
        #: (code, line) pairs that fired, by label: one set.add per event is atomic, so
        #: threads of a test (stress mode) cannot lose each other's lines
        self.data: dict[Label, set[tuple[types.CodeType, int]]] = {}
        self.current: set[tuple[types.CodeType, int]] = self.data.setdefault(None, set())
        self.armed: set[types.CodeType] = set()
        self.dirty: set[types.CodeType] = set()  # code objects whose lines fired (then disabled)

    def ours(self, filename: str) -> bool:
        got = self.ours_cache.get(filename)
        if got is None:
            path = os.path.realpath(filename) if filename and not filename.startswith("<") else ""
            got = bool(path) and any(path.startswith(r) for r in self.roots) and not any(
                path.startswith(s) for s in self.skip) and "site-packages" not in path
            self.ours_cache[filename] = got
        return got

    # -- recording ------------------------------------------------------------------
    def start(self) -> None:
        """Take a tool id and record what runs from now on (collection): PY_START arms
        each project code object as it first runs."""
        mon = sys.monitoring  # type: ignore[attr-defined,unused-ignore] # 3.12+ only
        for tool in TOOL_IDS:
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "tach")
                self.tool = tool
                break
        else:
            raise pytest.UsageError("--tach-coverage: every sys.monitoring tool id is taken")
        mon.register_callback(self.tool, mon.events.PY_START, self._on_start)
        mon.register_callback(self.tool, mon.events.LINE, self._on_line)
        mon.set_events(self.tool, mon.events.PY_START)

    def _on_start(self, code: types.CodeType, offset: int) -> Any:
        if code not in self.armed and self.ours(code.co_filename):
            self.arm(code)
        return sys.monitoring.DISABLE  # type: ignore[attr-defined,unused-ignore] # 3.12+ only

    def _on_line(self, code: types.CodeType, line: int) -> Any:
        self.current.add((code, line))
        return sys.monitoring.DISABLE  # type: ignore[attr-defined,unused-ignore] # 3.12+ only

    def arm(self, code: types.CodeType) -> None:
        """Line events on code and the code objects nested in it (functions, lambdas,
        comprehensions, class bodies defined inside it)."""
        if code in self.armed:
            return
        self.armed.add(code)
        sys.monitoring.set_local_events(self.tool, code, sys.monitoring.events.LINE)  # type: ignore[attr-defined,unused-ignore] # 3.12+ only
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.arm(const)

    def collection_done(self) -> None:
        """No more PY_START (its callbacks, once per function per test, would cost more
        than the tests): arm every project function alive now, and modules imported
        from now on as they load."""
        mon = sys.monitoring  # type: ignore[attr-defined,unused-ignore] # 3.12+ only
        mon.set_events(self.tool, 0)
        for obj in gc.get_objects():
            if type(obj) is types.FunctionType:
                code = obj.__code__
                if code not in self.armed and self.ours(code.co_filename):
                    self.arm(code)
        if not any(isinstance(f, _Arming) for f in sys.meta_path):
            # Right before the PathFinder: pytest's assertion rewriter (earlier in the
            # list) still imports the test modules it rewrites.
            at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
                      len(sys.meta_path))
            sys.meta_path.insert(at, _Arming(self))

    def rearm(self) -> None:
        """Turn the line events that fired back on (setting a code object's events
        again clears what DISABLE turned off in it)."""
        for fired in self.data.values():
            self.dirty.update(code for code, _ in fired)
        mon = sys.monitoring  # type: ignore[attr-defined,unused-ignore] # 3.12+ only
        for code in self.dirty:
            mon.set_local_events(self.tool, code, 0)
            mon.set_local_events(self.tool, code, mon.events.LINE)
        self.dirty.clear()

    def set_label(self, label: Label) -> Label:
        old, self.label = self.label, label
        self.current = self.data.setdefault(label, set())
        return old

    def take(self) -> dict[Label, dict[str, set[int]]]:
        """What was recorded since the last take, by label and file; the code objects
        that fired are remembered for rearm()."""
        out: dict[Label, dict[str, set[int]]] = {}
        for label, fired in self.data.items():
            if not fired:
                continue
            files = out.setdefault(label, {})
            for code, line in fired:
                files.setdefault(code.co_filename, set()).add(line)
                self.dirty.add(code)
        self.data = {}
        self.current = self.data.setdefault(self.label, set())
        return out


class LineCoverage(Attribution):
    """The plugin (registered as ``tach-lines`` with --tach-coverage)."""

    def __init__(self, config: pytest.Config, lines: Lines, data_file: str | None) -> None:
        super().__init__()
        self.config = config
        self.lines = lines
        self.data_file = data_file
        self.merged: dict[Label, dict[str, set[int]]] = {}
        self.written: list[str] = []  # where the lines went, for the summary

    # -- attribution (attribution.py) -----------------------------------------------
    def active(self) -> bool:
        return True

    def switch(self, item: pytest.Item, when: str) -> Restore | None:
        old = self.lines.set_label((item.nodeid, when))

        def restore() -> None:
            self.lines.set_label(old)

        return restore

    def on_phase(self, item: pytest.Item, when: str) -> None:
        if when == "setup":
            self.lines.rearm()  # a process that ran a test before this one
        self.lines.set_label((item.nodeid, "run" if when == "call" else when))

    # -- forked processes -------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        super().pytest_collection_finish(session)
        self.lines.collection_done()

    def pytest_tach_forked(self, config: pytest.Config, role: str) -> None:
        self.lines.take()  # the parent's: it hands them over itself
        self.lines.set_label(None)
        self.lines.rearm()

    def pytest_tach_handover(self, config: pytest.Config, item: pytest.Item | None,
                             output: dict[str, Any]) -> None:
        got = self.lines.take()
        if item is None:
            self.lines.set_label(None)  # a zygote: what runs next belongs to no test
        if got:
            output[KEY] = [[None if label is None else list(label), {f: sorted(n) for f, n in files.items()}]
                           for label, files in got.items()]

    # -- the main process -------------------------------------------------------------
    def pytest_tach_handover_received(self, config: pytest.Config, item: pytest.Item | None,
                                      output: dict[str, Any]) -> None:
        entries = output.get(KEY)
        if not isinstance(entries, list):
            return
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
                continue
            raw, files = entry
            label: Label = None
            if isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw):
                label = (raw[0], raw[1])
            elif raw is not None:
                continue
            target = self.merged.setdefault(label, {})
            for name, nums in files.items():
                if isinstance(name, str) and isinstance(nums, list):
                    target.setdefault(name, set()).update(n for n in nums if type(n) is int)

    def _merge_own(self) -> None:
        for label, files in self.lines.take().items():
            target = self.merged.setdefault(label, {})
            for name, nums in files.items():
                target.setdefault(name, set()).update(nums)

    def pytest_tach_run_finished(self, config: pytest.Config) -> None:
        self._merge_own()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Store what was measured (under --tach-workers 0 the tests ran here)."""
        self._merge_own()
        if not self.merged:
            return
        cache = getattr(self.config, "cache", None)
        if cache is not None:
            path = Path(cache.mkdir(CACHE_DIR)) / "lines.json"
            store(path, self.merged, str(self.config.rootpath))
            self.written.append(str(path))
        if self.data_file:
            write_coverage_data(self.data_file, self.merged, self.lines)
            self.written.append(f"{self.data_file} (coverage.py data)")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tests = len({label[0] for label in self.merged if label is not None})
        where = ", ".join(self.written) or "nowhere (pytest's cache is off: -p no:cacheprovider)"
        terminalreporter.write_line(f"tach coverage: the lines of {tests} tests, in {where}")


def store(path: Path, merged: dict[Label, dict[str, set[int]]], root: str) -> None:
    """Keep this run's lines per test: files by path relative to the rootdir, with the
    sha1 of their contents now, so a later run can tell which ones changed."""
    names = sorted({f for files in merged.values() for f in files})
    index = {f: i for i, f in enumerate(names)}
    files = []
    for f in names:
        try:
            digest = hashlib.sha1(Path(f).read_bytes()).hexdigest()  # noqa: S324 - a content tag
        except OSError:
            digest = None
        files.append({"path": os.path.relpath(f, root), "sha1": digest})
    tests: dict[str, dict[str, dict[str, list[int]]]] = {}
    collection: dict[str, list[int]] = {}
    for label, by_file in merged.items():
        lines = {str(index[f]): sorted(n) for f, n in by_file.items()}
        if label is None:
            collection = lines
        else:
            tests.setdefault(label[0], {})[label[1]] = lines
    doc = {"version": 1, "rootdir": root, "files": files, "collection": collection, "tests": tests}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.replace(path)


def write_coverage_data(path: str, merged: dict[Label, dict[str, set[int]]], lines: Lines) -> None:
    """A coverage.py data file of the lines, under pytest-cov's context names. Project
    files that never ran are listed too (as coverage.py lists those of its --source),
    so that reports show them at 0%."""
    from coverage import CoverageData

    if os.path.exists(path):
        os.remove(path)
    data = CoverageData(basename=path)
    for label, files in sorted(merged.items(), key=lambda kv: ("" if kv[0] is None else "|".join(kv[0]))):
        data.set_context("" if label is None else f"{label[0]}|{label[1]}")
        data.add_lines({f: sorted(n) for f, n in files.items()})
    measured = {os.path.realpath(f) for files in merged.values() for f in files}
    data.touch_files([f for f in _python_files(lines) if os.path.realpath(f) not in measured])
    data.write()


def _python_files(lines: Lines) -> list[str]:
    """The project's importable source files, found the way coverage.py finds those of
    a --source directory (packages need an __init__.py)."""
    from coverage.files import find_python_files

    out = []
    for root in lines.roots:
        try:
            found = find_python_files(root, False)
        except TypeError:  # coverage.py < 7: one argument
            found = find_python_files(root)  # type: ignore[call-arg] # old signature
        out += [f for f in found if lines.ours(f)]
    return out


def early_start(config: pytest.Config) -> Lines | None:
    """Start recording before conftests are imported (pytest_load_initial_conftests),
    as pytest-cov does, so that their module-level lines count as collection's."""
    ns = config.known_args_namespace
    if not (getattr(ns, "tach_coverage", False) or getattr(ns, "tach_coverage_data", None)):
        return None
    why = available()
    if why is not None:
        raise pytest.UsageError(f"--tach-coverage: {why}")
    lines = Lines([str(config.rootpath)])
    lines.start()
    return lines
