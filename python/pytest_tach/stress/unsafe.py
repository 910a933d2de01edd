"""Which tests must not run their body in several threads at once, and why.

A test is thread-unsafe when it is marked so, uses a fixture whose state is per-process
(capsys, monkeypatch, ...), or its source (followed two calls deep, decorators
included) uses something that is: ``pytest.warns``/``warnings.catch_warnings`` (unless
warnings are context-aware), ``unittest.mock``, ``gc.collect``, ``ctypes`` on a
free-threaded build, a function listed in ``thread_unsafe_functions``, or sets
``__thread_safe__ = False``. The same rules as pytest-run-parallel's, reimplemented.

The analysis runs once per test in the main process before the first fork, and only when
stress mode is on (``StressPlugin.prepare``): test processes inherit the answers.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_tach import gil

_BUILTIN_UNSAFE_FIXTURES = frozenset({"capsys", "capteesys", "capsysbinary", "capfd",
                                      "capfdbinary", "monkeypatch"})
_WARNING_CATCHERS = frozenset({"pytest.warns", "pytest.deprecated_call", "_pytest.recwarn.warns",
                               "_pytest.recwarn.deprecated_call", "warnings.catch_warnings"})
_MAX_LEVEL = 2


@dataclass(frozen=True)
class Config:
    fixtures: frozenset[str]
    functions: frozenset[str]  # dotted names from thread_unsafe_functions
    free_threaded: bool
    warnings_safe: bool


def warnings_are_thread_safe() -> bool:
    """Python 3.14 can make warnings context-aware (per thread): then catching them in
    one thread does not disturb the others."""
    return bool(getattr(sys.flags, "context_aware_warnings", 0)
                and getattr(sys.flags, "thread_inherit_context", 0))


def make_config(config: pytest.Config) -> Config:
    safe_warnings = warnings_are_thread_safe()
    fixtures = set(_BUILTIN_UNSAFE_FIXTURES) | set(_ini(config, "thread_unsafe_fixtures"))
    if not safe_warnings:
        fixtures.add("recwarn")
    return Config(fixtures=frozenset(fixtures),
                  functions=frozenset(_ini(config, "thread_unsafe_functions")),
                  free_threaded=gil.free_threaded_build(),
                  warnings_safe=safe_warnings)


def _ini(config: pytest.Config, name: str) -> list[str]:
    try:
        return [str(x) for x in config.getini(name)]
    except ValueError:  # not registered (pytest-run-parallel registers it otherwise)
        return []


def reason(item: pytest.Item, cfg: Config) -> str | None:
    """Why item must run single-threaded, or None."""
    m = item.get_closest_marker("thread_unsafe")
    if m is not None:
        return m.kwargs.get("reason") or (m.args[0] if m.args else "is marked thread_unsafe")
    used = sorted(set(getattr(item, "fixturenames", ())) & cfg.fixtures)
    if used:
        return f"uses thread-unsafe fixture(s) {', '.join(used)}"
    fn = getattr(item, "obj", None)
    if not isinstance(item, pytest.Function) or not callable(fn):
        return "is not a Python test function"
    fn = inspect.unwrap(fn)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return "is a coroutine function (its event loop belongs to one thread)"
    try:
        return _scan(fn, cfg, 0)
    except Exception:  # noqa: BLE001 - analysis is best effort; assume safe, as pytest-run-parallel
        return None


@functools.lru_cache(maxsize=4096)
def _scan(fn: Any, cfg: Config, level: int) -> str | None:
    if getattr(fn, "__thread_safe__", True) is False:
        return f"{_name(fn)} sets __thread_safe__ = False"
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return None
    glb = getattr(fn, "__globals__", {})
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Name) and target.id == "__thread_safe__"
                        and isinstance(node.value, ast.Constant) and not node.value.value):
                    return f"{_name(fn)} sets __thread_safe__ = False"
        targets: list[ast.expr] = []
        if isinstance(node, ast.Call):
            targets.append(node.func)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            targets += [d for d in node.decorator_list if not isinstance(d, ast.Call)]
        for target in targets:
            dotted, obj = _resolve(target, glb)
            if dotted is None:
                continue
            why = _verdict(dotted, cfg)
            if why:
                return why if level == 0 else f"calls {_name(fn)}, which {why}"
            if level < _MAX_LEVEL and inspect.isfunction(obj) and obj is not fn:
                deeper = _scan(obj, cfg, level + 1)
                if deeper:
                    return deeper if level == 0 else f"calls {_name(fn)}, which {deeper}"
    return None


def _verdict(dotted: str, cfg: Config) -> str | None:
    if dotted in cfg.functions:
        return f"calls {dotted} (listed in thread_unsafe_functions)"
    if dotted.startswith(("unittest.mock", "mock.")) or dotted == "mock":
        return f"uses {dotted} (unittest.mock patches process-wide state)"
    if dotted in _WARNING_CATCHERS and not cfg.warnings_safe:
        return f"uses {dotted} (the warnings filters are process-wide)"
    if dotted == "gc.collect":
        return "calls gc.collect (a collection stops or races every thread)"
    if cfg.free_threaded and (dotted == "ctypes" or dotted.startswith("ctypes.")):
        return f"uses {dotted} (ctypes is not thread-safe on free-threaded builds)"
    return None


def _resolve(node: ast.AST, glb: dict[str, Any]) -> tuple[str | None, Any]:
    """The dotted name a call target refers to, through the function's globals."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in glb:
        return None, None
    base = glb[node.id]
    parts.reverse()
    if inspect.ismodule(base):
        prefix = base.__name__
    else:
        mod = getattr(base, "__module__", None)
        qual = getattr(base, "__qualname__", None)
        if not isinstance(mod, str) or not isinstance(qual, str):
            return None, None
        prefix = f"{mod}.{qual}"
    obj = base
    for p in parts:
        obj = getattr(obj, p, None)
    return ".".join([prefix, *parts]), obj


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))
