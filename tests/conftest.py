"""Shared helpers for tach's own test suite.

These tests run against the *installed* tach (make test installs it into a venv per
interpreter), never against python/ on sys.path, so that they test what users get.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

requires_free_threading = pytest.mark.skipif(
    not FREE_THREADED, reason="needs a free-threaded CPython build (make test runs one)"
)


def run_python(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run this interpreter in a subprocess (a fresh process: a clean GIL state)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHON_GIL", None)  # tests must see the interpreter's default
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
