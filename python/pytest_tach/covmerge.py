"""coverage.py under tach, the main process's half: what forked processes measured
(handed over with the reports, untrusted: it comes from processes that run the tests'
code) is merged per Coverage and added to that Coverage's data through coverage.py's
own ``CoverageData`` API, under the same contexts (``covbridge`` is the plugin, and
the forked processes' half)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any


class Merged:
    """Everything forked processes measured for one Coverage of the main process."""

    def __init__(self) -> None:
        self.lines: dict[str | None, dict[str, set[int]]] = {}
        self.arcs: dict[str | None, dict[str, set[tuple[int, int]]]] = {}
        self.tracers: dict[str, str] = {}
        self.matched: set[str] = set()
        self.pkg_files: dict[str, str] = {}

    def add(self, payload: dict[str, Any]) -> None:
        """Merge one payload; what is not of the expected shape is skipped (it comes from
        a process that runs the tests' code)."""
        for ctx, files in _contexts(payload.get("lines")):
            target = self.lines.setdefault(ctx, {})
            for name, nums in files.items():
                if isinstance(name, str) and isinstance(nums, list):
                    target.setdefault(name, set()).update(n for n in nums if type(n) is int)
        for ctx, files in _contexts(payload.get("arcs")):
            target_arcs = self.arcs.setdefault(ctx, {})
            for name, flat in files.items():
                if (isinstance(name, str) and isinstance(flat, list) and len(flat) % 2 == 0
                        and all(type(n) is int for n in flat)):
                    target_arcs.setdefault(name, set()).update(zip(flat[::2], flat[1::2], strict=True))
        tracers = payload.get("tracers")
        if isinstance(tracers, dict):
            self.tracers.update({k: v for k, v in tracers.items() if isinstance(k, str) and isinstance(v, str)})
        matched = payload.get("matched")
        if isinstance(matched, list):
            self.matched.update(p for p in matched if isinstance(p, str))
        pkg_files = payload.get("pkg_files")
        if isinstance(pkg_files, dict):
            self.pkg_files.update({k: v for k, v in pkg_files.items() if isinstance(k, str) and isinstance(v, str)})


def _contexts(value: Any) -> Iterable[tuple[str | None, dict[Any, Any]]]:
    if not isinstance(value, list):
        return
    for entry in value:
        if (isinstance(entry, list) and len(entry) == 2 and (entry[0] is None or isinstance(entry[0], str))
                and isinstance(entry[1], dict)):
            yield entry[0], entry[1]


def write(cov: Any, merged: Merged) -> None:
    """Add what forked processes measured to cov's data, under their contexts."""
    inorout = getattr(cov, "_inorout", None)
    if inorout is not None and merged.matched:
        # Before pytest-cov saves: coverage.py warns about source packages it never saw.
        unmatched = getattr(inorout, "source_pkgs_unmatched", None)
        if isinstance(unmatched, list):
            unmatched[:] = [p for p in unmatched if p not in merged.matched]
    if not (merged.lines or merged.arcs):
        return
    from coverage.data import CoverageData

    data = cov._data if cov._data is not None else cov.get_data()
    # Gathered in memory first and merged in one go: written context by context, each
    # add is a transaction on the data file, and with --cov-context=test there are
    # three contexts per test (4 s for 2,000 tests, against 0.8 s this way).
    gathered = CoverageData(no_disk=True)
    for ctx, files in merged.lines.items():
        gathered.set_context(ctx)
        gathered.add_lines(files)
    for ctx, arc_files in merged.arcs.items():
        gathered.set_context(ctx)
        gathered.add_arcs(arc_files)
    data.update(gathered)
    measured = set(data.measured_files())
    tracers = {f: p for f, p in merged.tracers.items() if f in measured}
    if tracers:
        data.add_file_tracers(tracers)
    _touch_unexecuted(cov, data, merged.pkg_files)


def _touch_unexecuted(cov: Any, data: Any, pkg_files: dict[str, str]) -> None:
    """Source packages imported only in forked processes: list their files that never
    ran, as coverage.py does at save time for the packages it finds in sys.modules (in
    the main process it finds none of these)."""
    inorout = getattr(cov, "_inorout", None)
    find = getattr(inorout, "_find_executable_files", None)
    if find is None:
        return
    from coverage.inorout import canonical_path
    from coverage.python import source_for_file

    for pkg, filename in pkg_files.items():
        if pkg in sys.modules or pkg not in getattr(inorout, "source_pkgs", []):
            continue
        # The path came from a test process: only the package's own directory.
        tail = pkg.replace(".", os.sep)
        if not (filename.endswith(os.path.join(tail, "__init__.py")) or filename.endswith(tail + ".py")):
            continue
        by_plugin: dict[str | None, list[str]] = {}
        for path, plugin in find(canonical_path(source_for_file(filename))):
            by_plugin.setdefault(plugin, []).append(cov._file_mapper(path))
        for plugin, paths in by_plugin.items():
            data.touch_files(paths, plugin)
