"""The build backend (build/tach_build.py) and the wheel it makes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import EXT_SUFFIX, FREE_THREADED, FULL_MATRIX, REPO_ROOT, installed_env

BACKEND = REPO_ROOT / "build" / "tach_build.py"
pytestmark = pytest.mark.skipif(not BACKEND.exists(), reason="needs tach's source tree")


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("tach_build_under_test", BACKEND)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


def test_wheel_tag_names_interpreter_abi_and_platform(backend) -> None:
    """GIL builds: the limited API of 3.10 (abi3); free-threaded ones: their own version."""
    target = backend.native_target()
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
        assert (target.tag, target.ext_suffix) == (f"{py}-{py}t-{plat}", sysconfig.get_config_var("EXT_SUFFIX"))
    else:
        assert (target.tag, target.ext_suffix) == (f"cp310-abi3-{plat}", ".abi3.so")
        assert "-DPy_LIMITED_API=0x030a0000" in target.interpreter.cflags()


def test_missing_go_is_a_clear_error(backend, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("TACH_GO", raising=False)
    monkeypatch.setattr(backend.os.path, "exists", lambda p: False)
    with pytest.raises(backend.BuildError, match=r"Go >= 1\.22, .*no `go` on PATH.*TACH_GO"):
        backend._find_go()


def test_another_os_is_refused_before_any_compiler_runs(backend) -> None:
    with pytest.raises(backend.BuildError, match=r"runs on Linux only: .* this is darwin"):
        backend.preflight(backend.native_target(), system="darwin")


def test_everything_missing_is_named_at_once(backend, monkeypatch, tmp_path) -> None:
    """A build from the sdist on a machine without Go, a compiler or the headers: one
    message lists all three, and says that a wheel is the usual way."""
    monkeypatch.setenv("TACH_GO", str(tmp_path / "go"))
    interp = backend.Interpreter(version=(3, 11), free_threaded=False, includes=(str(tmp_path),),
                                 ext_suffix=".so", platform="linux-x86_64")
    target = backend.Target(interpreter=interp, platform="linux_x86_64", ext_suffix=".abi3.so",
                            cc=("no-such-cc",))
    with pytest.raises(backend.BuildError) as e:
        backend.preflight(target)
    msg = str(e.value)
    assert msg.startswith("pytest-tach cannot be built from source here")
    assert "TACH_GO=" in msg and "`no-such-cc` was not found" in msg and "no Python.h in" in msg
    assert "prebuilt wheel" in msg


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


#: PyPI's unrelated tach, pinned: it owns the names `tach` (distribution, import package,
#: console script, and a pytest11 entry point of its own)
OTHER_TACH = "tach==0.35.3"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` of this checkout."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(REPO_ROOT)], check=True, timeout=600)
    (whl,) = out.glob("pytest_tach-*.whl")
    return whl


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def test_wheel_installs_into_a_brand_new_venv(wheel: Path, tmp_path: Path) -> None:
    """`pip wheel .` -> a fresh venv -> `python -m pytest_tach self-test` runs from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        wheel_meta = zf.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert {f"pytest_tach/_core{EXT_SUFFIX}", f"pytest_tach/_reset{EXT_SUFFIX}"} <= set(names)
    assert not any(n.endswith(".h") or "__pycache__" in n for n in names)
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert (f"Tag: {py}-{py}t-" if FREE_THREADED else "Tag: cp310-abi3-") in wheel_meta

    vpy = _venv(tmp_path / "venv")
    subprocess.run([str(vpy), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    r = subprocess.run([str(vpy), "-m", "pytest_tach", "self-test", "--json"], capture_output=True,
                       text=True, timeout=120, env=installed_env(), cwd=tmp_path)
    report = json.loads(r.stdout)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert report["python"]["executable"] == str(vpy)
    assert report["go_version"].startswith("go1.")


def test_wheel_names_nothing_pypis_tach_owns(wheel: Path) -> None:
    """Top-level names and console scripts of the wheel: none of them is `tach`."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        eps = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"pytest_tach"}, top
    assert "[console_scripts]\npytest-tach = " in eps and "\ntach = pytest_tach.__main__" not in eps


@pytest.mark.skipif(not FULL_MATRIX, reason="the same wheel layout on every interpreter: 3.11 and 3.12 run it")
@pytest.mark.parametrize("order", ["theirs first", "ours first"])
def test_installs_beside_pypis_tach(wheel: Path, tmp_path: Path, order: str) -> None:
    """PyPI's tach and pytest-tach in one venv, installed in either order: both work.
    Theirs: its `tach` command and its pytest plugin (options --tach-base...). Ours:
    `pytest -p tach` (also with autoloading off, as -p pytest_tach), the self-test."""
    vpy = _venv(tmp_path / "venv")
    bindir = vpy.parent
    installs = [[OTHER_TACH], [str(wheel)]]
    for what in installs if order == "theirs first" else installs[::-1]:
        subprocess.run([str(vpy), "-m", "pip", "install", "-q", *what], check=True, timeout=900)
    env, cwd, version = installed_env(), tmp_path, wheel.name.split("-")[1]

    def run(*cmd: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=300,
                              env={**env, **(extra or {})}, cwd=cwd)

    r = run(str(bindir / "tach"), "--help")
    assert r.returncode == 0 and "check" in r.stdout, (r.stdout, r.stderr)
    r = run(str(vpy), "-c", "import tach, pytest_tach; print(tach.__file__)")
    assert r.returncode == 0 and r.stdout.strip().endswith("site-packages/tach/__init__.py"), r
    r = run(str(bindir / "pytest-tach"), "self-test")
    assert r.returncode == 0, (r.stdout, r.stderr)

    (tmp_path / "test_x.py").write_text(
        "import os\n"
        "MAIN = os.getpid()\n"
        "def test_where():\n    print('OTHER-PROCESS', os.getpid() != MAIN)\n")
    pytest_cmd = [str(vpy), "-m", "pytest", "-s", "-p", "no:cacheprovider", "test_x.py"]
    r = run(*pytest_cmd)  # plain: their plugin is there (its options), ours does nothing
    assert r.returncode == 0 and "OTHER-PROCESS False" in r.stdout, (r.stdout, r.stderr)
    r = run(*pytest_cmd, "--tach-base", "HEAD")
    assert "unrecognized arguments" not in r.stderr, r.stderr
    for args, extra in ((["-p", "tach"], None),
                        (["-p", "pytest_tach"], {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})):
        r = run(*pytest_cmd, *args, extra=extra)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert f"tach {version}: " in r.stdout and "OTHER-PROCESS True" in r.stdout, (args, r.stdout)


def test_sdist_contains_what_a_rebuild_needs(backend, tmp_path) -> None:
    import tarfile

    name = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as tf:
        names = set(tf.getnames())
    base = name.removesuffix(".tar.gz")
    for needed in ("pyproject.toml", "go.mod", "go.sum", "go/core/shim.c", "go/core/main.go",
                   "build/tach_build.py", "python/pytest_tach/__init__.py", "PKG-INFO"):
        assert f"{base}/{needed}" in names, needed
    assert not any(n.endswith(".so") or "__pycache__" in n for n in names)
