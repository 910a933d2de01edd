"""Watching the GIL on free-threaded CPython: which import turned it back on, and when.

CPython re-enables the GIL, for the rest of the process, when it loads an extension
module that does not declare ``Py_mod_gil`` -- while creating the module. So the watch
wraps exactly that: extension modules found on ``sys.meta_path`` get a loader (a subclass
of the standard one, so nothing that checks loader types notices) that compares
``sys._is_gil_enabled()`` before and after ``create_module``. It needs no warning to be
shown, so it works under ``-W error`` (where CPython's warning becomes the import's
exception) and ``-p no:warnings`` alike.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import ExtensionFileLoader, ModuleSpec
from typing import Any


def free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    fn = getattr(sys, "_is_gil_enabled", None)
    return True if fn is None else bool(fn())


@dataclass(frozen=True)
class Event:
    module: str
    context: str  # e.g. "collection of tests/test_x.py" or a test's node id

    def describe(self) -> str:
        return f"importing {self.module!r} during {self.context} enabled the GIL"


events: list[Event] = []
def _startup() -> str:
    return "startup"


#: says what the process is doing now (set by the plugin: collecting, or which test)
context: Callable[[], str] = _startup


class _WatchedLoader(ExtensionFileLoader):
    def create_module(self, spec: ModuleSpec) -> Any:
        before = gil_enabled()
        try:
            return super().create_module(spec)
        finally:
            if not before and gil_enabled():
                events.append(Event(spec.name, context()))


class _Finder:
    """Finds nothing itself: asks the finders after it and watches extension modules."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if type(spec.loader) is ExtensionFileLoader:
                    spec.loader = _WatchedLoader(spec.loader.name, spec.loader.path)
                return spec
        return None

    def invalidate_caches(self) -> None:
        pass


_finder = _Finder()


def install() -> None:
    """Start watching (idempotent). Only meaningful on a free-threaded build."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def take() -> list[Event]:
    """Events since the last call."""
    out = list(events)
    events.clear()
    return out
