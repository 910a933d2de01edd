"""The build backend (build/tach_build.py) and the wheel it makes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO_ROOT

BACKEND = REPO_ROOT / "build" / "tach_build.py"
pytestmark = pytest.mark.skipif(not BACKEND.exists(), reason="needs tach's source tree")


@pytest.fixture
def backend():
    spec = importlib.util.spec_from_file_location("tach_build_under_test", BACKEND)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wheel_tag_names_interpreter_abi_and_platform(backend) -> None:
    tag = backend.wheel_tag()
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
    assert tag == f"{py}-{py}{t}-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"


def test_missing_go_is_a_clear_error(backend, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("TACH_GO", raising=False)
    monkeypatch.setattr(backend.os.path, "exists", lambda p: False)
    with pytest.raises(backend.BuildError, match=r"needs the Go toolchain.*TACH_GO"):
        backend._find_go()


def test_too_old_go_is_a_clear_error(backend, tmp_path) -> None:
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\necho go1.19.4\n")
    fake.chmod(0o755)
    with pytest.raises(backend.BuildError, match=r"Go 1\.19\.4 .* too old; tach needs Go >= 1\.22"):
        backend.check_go(str(fake))


def test_broken_go_is_a_clear_error(backend, tmp_path) -> None:
    fake = tmp_path / "go"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(backend.BuildError, match=r"GOVERSION` failed"):
        backend.check_go(str(fake))


def test_wheel_installs_into_a_brand_new_venv(tmp_path) -> None:
    """`pip wheel .` -> a fresh venv -> `python -m tach self-test` runs from the wheel."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(REPO_ROOT)], check=True, timeout=600)
    (whl,) = wheels.glob("tach-*.whl")
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        wheel_meta = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"tach/_core{ext}" in names
    assert not any(n.endswith(".h") or "__pycache__" in n for n in names)
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert f"Tag: {py}-{py}" in wheel_meta

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", str(whl)], check=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON_GIL")}
    r = subprocess.run([str(vpy), "-m", "tach", "self-test", "--json"], capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    report = json.loads(r.stdout)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert report["python"]["executable"] == str(vpy)
    assert report["go_version"].startswith("go1.")


def test_sdist_contains_what_a_rebuild_needs(backend, tmp_path) -> None:
    import tarfile

    name = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tf:
        names = set(tf.getnames())
    base = name.removesuffix(".tar.gz")
    for needed in ("pyproject.toml", "go.mod", "go.sum", "go/core/shim.c", "go/core/main.go",
                   "build/tach_build.py", "python/tach/__init__.py", "PKG-INFO"):
        assert f"{base}/{needed}" in names, needed
    assert not any(n.endswith(".so") or "__pycache__" in n for n in names)
