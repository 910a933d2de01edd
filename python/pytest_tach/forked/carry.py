"""Modules a test imported, carried into the snapshot of its reusable test process.

A restore takes a process back to its snapshot, sys.modules included, so a module that
tests import lazily (inside a function, as idna does with its 200 KB table module) was
imported again by every test: parsed and compiled again where no bytecode is cached,
executed again, its pages written and restored again. On idna's suite that was half of
the test mode's time. Plain pytest imports such a module once, for the tests after it.

So after a test imported modules, its process restores itself, imports them again (in
the order the test did, by name, the usual import system finding them), and, if the
state that makes is one it can snapshot, takes its snapshot anew there. Later tests of
the process then start with those modules imported and untouched by the test that
first imported them, as if its zygote had imported them before forking it. Modules
that do not come back as the same file, fail to import, or leave a thread behind are
not carried (the process restores itself once more, to the snapshot it had) and never
tried again in that process.

All of this happens inside the test process, on what it imported itself: no other
process imports anything because of it. The list crosses the restore in a small shared
mapping made before the first snapshot (a restore puts back private memory only).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import mmap
import os
import struct
import sys
from typing import Any

#: the mailbox's size; a longer list is not carried (nothing breaks, it stays slower)
SIZE = 1 << 20
_LEN = struct.Struct("<I")


def _origin(module_or_spec: Any) -> str | None:
    spec = getattr(module_or_spec, "__spec__", module_or_spec)
    origin = getattr(spec, "origin", None)
    return origin if isinstance(origin, str) else None


def _traced() -> bool:
    """Whether a tracer or a sys.monitoring tool (coverage.py, tach's --tach-coverage, a
    profiler) is on: the lines an import runs between two tests must not be recorded
    against either, so nothing is carried then."""
    if sys.gettrace() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6))


class Carry:
    """Made before the process's first snapshot; see the module's docstring. The box
    holds {"rejected": [names], "new": [[name, origin], ...]}: "new" is taken by the
    next settle(), "rejected" stays for the life of the process (private memory is
    restored, so the box is where both live)."""

    def __init__(self) -> None:
        self.box = mmap.mmap(-1, SIZE, flags=mmap.MAP_SHARED)
        self.base = frozenset(sys.modules)
        self.off = _traced()

    # -- before a restore: what the test imported -----------------------------------
    def note(self) -> None:
        """Write down the modules imported since the snapshot (called after the test,
        just before restoring)."""
        if self.off or len(sys.modules) == len(self.base):
            return
        rejected = self._read().get("rejected", [])
        skip = self.base.union(rejected)
        new = [[name, _origin(mod)] for name, mod in list(sys.modules.items())
               if name not in skip and _carriable(name, mod)]
        if new:
            self._write({"rejected": rejected, "new": new})

    # -- after a restore: carry them ------------------------------------------------
    def settle(self, reset: Any) -> None:
        """Called each time a restore came back (reset: the _reset module). Imports what
        the test imported and snapshots anew; returns once the process is idle at a
        snapshot. May not return (restores itself to the old snapshot, or exits)."""
        while True:
            msg = self._read()
            todo = [(str(n), o) for n, o in msg.get("new", ())]
            if not todo:
                return
            todo, gone = _findable(todo)
            broken = _import(todo)
            # "new" taken; what cannot be carried is not tried again in this process
            self._write({"rejected": [*msg.get("rejected", ()), *gone, *broken]})
            if broken:
                # An import failed midway, or started a thread: undo what the imports did;
                # the others are carried after the next test that imports them.
                _back(reset)
            if not todo:
                if len(sys.modules) != len(self.base):  # (a lookup imported a parent)
                    _back(reset)
                return
            self.base = frozenset(sys.modules)
            reset.release()
            try:
                again = reset.snapshot()
            except (reset.ResetUnavailable, OSError):
                os._exit(0)  # not reusable any more: the zygote forks the next test's process
            if again == 0:
                return  # the new snapshot: idle, as after a restore
            # else a later restore came back into the snapshot() above: look again

    # -- the box --------------------------------------------------------------------
    def _write(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode()
        if _LEN.size + len(data) > SIZE:
            data = json.dumps({"rejected": msg.get("rejected", [])}).encode()  # too many to carry
            if _LEN.size + len(data) > SIZE:
                data = b"{}"
        self.box[_LEN.size:_LEN.size + len(data)] = data
        self.box[:_LEN.size] = _LEN.pack(len(data))

    def _read(self) -> dict[str, Any]:
        (n,) = _LEN.unpack(self.box[:_LEN.size])
        if n == 0:
            return {}
        msg: dict[str, Any] = json.loads(self.box[_LEN.size:_LEN.size + n])
        return msg


def _carriable(name: str, mod: Any) -> bool:
    return getattr(mod, "__name__", None) == name and name != "__main__" and _origin(mod) is not None


def _back(reset: Any) -> None:
    """Restore to the snapshot (does not return); exit where that is refused (a thread an
    import started): the zygote forks the next test's process anew."""
    try:
        reset.restore()
    except (reset.ResetUnavailable, OSError):
        pass
    os._exit(0)


def _findable(todo: list[tuple[str, str | None]]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Split them into those the import system finds as the same file now, and the
    others (a module the test imported from a directory of its own, a tmp_path on
    sys.path, that is gone or would find another file, such as a project's setup.py
    for "setup", which must not run). Looking up a dotted name imports its parents,
    found here before it; a name under one not found is not looked up."""
    found: list[tuple[str, str | None]] = []
    gone: list[str] = []
    for name, origin in todo:
        if any(name.startswith(g + ".") for g in gone):
            gone.append(name)
            continue
        try:
            same = _origin(importlib.util.find_spec(name)) == origin
        except BaseException:  # noqa: BLE001 - a parent's import failed: not carried
            same = False
        (found.append((name, origin)) if same else gone.append(name))
    return found, gone


def _import(todo: list[tuple[str, str | None]]) -> list[str]:
    """Import them in order; the names not to try again, empty if all went well."""
    for name, origin in todo:
        try:
            mod = sys.modules.get(name) or importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - whatever the import did, a restore undoes it
            return [name]
        if _origin(mod) != origin:
            return [name]
    if len(os.listdir("/proc/self/task")) != 1:
        return [name for name, _ in todo]  # one of them started a thread
    return []
