"""The one place that imports the Go extension ``pytest_tach._core`` and decodes its answers.

The extension starts the Go runtime (and its threads) when imported, so it must only be
imported in tach's main process after the root zygote has been forked (docs/design.md, rule
1). Importing it lazily, through :func:`core`, keeps ``import pytest_tach`` from doing so.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import msgpack

#: The extension ABI this Python code speaks (go/core/main.go: abi).
ABI = 2

_core: ModuleType | None = None


class CoreUnavailable(ImportError):
    """The Go extension is missing, broken, or from a different build of tach."""


def core() -> ModuleType:
    """Import ``pytest_tach._core`` on first use and check that it matches this package."""
    global _core
    if _core is None:
        try:
            from pytest_tach import _core as mod
        except ImportError as e:
            raise CoreUnavailable(
                f"tach's Go extension could not be loaded for {sys.implementation.cache_tag}: {e}. "
                "Reinstall tach for this interpreter (pip install --force-reinstall tach)."
            ) from e
        info = _unpack(mod.version())
        if info.get("abi") != ABI:
            raise CoreUnavailable(
                f"pytest_tach._core speaks ABI {info.get('abi')}, this tach needs {ABI}: "
                "the extension and the Python package come from different builds"
            )
        _core = mod
    return _core


def core_loaded() -> bool:
    """Whether the Go runtime has been loaded into this process."""
    return "pytest_tach._core" in sys.modules


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def version() -> dict[str, Any]:
    """{'tach': ..., 'go': 'go1.x', 'abi': N} from the extension."""
    info: dict[str, Any] = _unpack(core().version())
    return info


def probe() -> dict[str, Any]:
    """Kernel release, usable CPUs and the kernel-feature probes (go/sysinfo)."""
    report: dict[str, Any] = _unpack(core().probe())
    return report


def protocol() -> dict[str, Any]:
    """The protocol as the supervisor knows it (go/supervisor/proto.go: Protocol)."""
    described: dict[str, Any] = _unpack(core().protocol())
    return described


def frames(stream: bytes) -> list[Any]:
    """Split and validate a stream of length-prefixed msgpack frames in Go."""
    decoded: list[Any] = _unpack(core().frames(stream))
    return decoded
