"""On free-threaded CPython, importing tach must leave the GIL disabled.

Each check runs in a fresh interpreter: once the GIL is enabled in a process it stays
enabled, so an in-process check would depend on test order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO_ROOT, requires_free_threading, run_python

pytestmark = requires_free_threading

GIL_WARNING = "The global interpreter lock (GIL) has been enabled"


@pytest.mark.parametrize("warnings", ["default", "error"])
def test_core_import_keeps_gil_disabled(warnings: str) -> None:
    r = run_python("-W", warnings, "-c", (
        "import sys\n"
        "assert not sys._is_gil_enabled(), 'GIL on before import'\n"
        "import pytest_tach._core\n"
        "print('gil', sys._is_gil_enabled())\n"
    ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "gil False"
    assert GIL_WARNING not in r.stderr


def test_every_tach_module_and_msgpack_keep_gil_disabled() -> None:
    r = run_python("-W", "error", "-c", (
        "import importlib, pkgutil, sys\n"
        "import pytest_tach, msgpack, msgpack._cmsgpack\n"
        "names = [m.name for m in pkgutil.walk_packages(pytest_tach.__path__, 'pytest_tach.')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "    assert not sys._is_gil_enabled(), f'GIL enabled after importing {n}'\n"
        "print(len(names), 'modules', sys._is_gil_enabled())\n"
    ))
    assert r.returncode == 0, r.stderr
    count, _, gil = r.stdout.split()
    assert int(count) >= 5 and gil == "False"


def test_check_would_catch_a_module_without_the_gil_slot(tmp_path: Path) -> None:
    """Negative control: the same extension built without {Py_mod_gil, Py_MOD_GIL_NOT_USED}
    does re-enable the GIL, so the tests above can fail."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.path.exists(go) or not (REPO_ROOT / "go" / "core" / "shim.c").exists():
        pytest.skip("needs the Go toolchain and tach's source tree")
    pkg = tmp_path / "pytest_tach"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    out = pkg / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    inc = sysconfig.get_paths()["include"]
    env = {**os.environ, "CGO_ENABLED": "1", "GOTOOLCHAIN": "local",
           "CGO_CFLAGS": f"-I{inc} -DTACH_OMIT_GIL_SLOT"}
    subprocess.run([go, "build", "-buildmode=c-shared", "-o", str(out), "./go/core"],
                   cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600)
    r = subprocess.run([sys.executable, "-c",
                        "import sys, pytest_tach._core; print('gil', sys._is_gil_enabled())"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHON_GIL"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "gil True"
    assert GIL_WARNING in r.stderr and "pytest_tach._core" in r.stderr
