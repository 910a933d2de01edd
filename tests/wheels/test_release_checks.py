"""The release's own checks (build/release/wheels.py) fail where they should: an
extension linked against a newer glibc, with a second module entry, built for
another machine. Without this, a check that passed everything would look the same."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc to build a bad extension")


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "build"))
    spec = importlib.util.spec_from_file_location("release_wheels_under_test", REPO_ROOT / "build/release/wheels.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


def _wheel(tmp_path: Path, source: str) -> Path:
    """A wheel holding two extensions built by this machine's gcc against its own glibc."""
    whl = tmp_path / "bad-0-cp310-abi3-manylinux_2_17_x86_64.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for name in ("_core", "_reset"):
            so = tmp_path / f"{name}.abi3.so"
            src = tmp_path / f"{name}.c"
            src.write_text(source.replace("NAME", name))
            subprocess.run(["gcc", "-shared", "-fPIC", "-pthread", str(src), "-o", str(so)], check=True)
            zf.write(so, f"pytest_tach/{so.name}")
    return whl


GOOD_SOURCE = "void *PyInit_NAME(void) { return 0; }\n"
BAD_SOURCE = """
#include <pthread.h>
static void *run(void *a) { return a; }
void *PyInit_NAME(void) { pthread_t t; pthread_create(&t, 0, run, 0); return 0; }
void *PyInit_other(void) { return 0; }  /* a second module entry: a wrong file packed */
"""


def test_a_clean_extension_passes(release, tmp_path: Path) -> None:
    whl = release.Artifact(_wheel(tmp_path, GOOD_SOURCE), "t", "x86_64")
    lines = release.check_elf(whl)
    assert len(lines) == 2 and "exports PyInit__core" in lines[0]


def test_a_newer_glibc_and_a_second_module_entry_fail(release, tmp_path: Path) -> None:
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or "?"
    if tuple(int(x) for x in glibc.split()[-1].split(".")[:2]) < (2, 34):
        pytest.skip(f"pthread_create is versioned GLIBC_2.34 from glibc 2.34 on; this is {glibc}")
    whl = release.Artifact(_wheel(tmp_path, BAD_SOURCE), "t", "x86_64")
    with pytest.raises(release.ReleaseError) as e:
        release.check_elf(whl)
    assert "needs GLIBC_2.34" in str(e.value) and "PyInit_other" in str(e.value)


def test_another_machine_fails(release, tmp_path: Path) -> None:
    whl = release.Artifact(_wheel(tmp_path, GOOD_SOURCE), "t", "aarch64")
    with pytest.raises(release.ReleaseError, match="machine EM_X86_64"):
        release.check_elf(whl)
