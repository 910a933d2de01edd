"""The release artifacts of `make wheels`, installed the way a user installs them.

Each wheel goes into a brand-new venv of every CPython on the machine (TACH_WHEEL_PYTHONS),
chosen by pip's own tag matching from the directory of artifacts, with neither Go nor a C
compiler reachable; there it runs the self-test, a small suite through the engine with
snapshot reset and a crash, and on free-threaded builds the GIL check. The aarch64 abi3
wheel runs the same way on an aarch64 CPython under qemu-user (TACH_EMULATED, the
launcher build/release/emulated.py prepares). The sdist is built once where Go and a
compiler are present, and once where they are not.

`make wheels-check` (part of `make test`) sets TACH_WHEELS to the artifacts' directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import EXT_SUFFIX, installed_env

WHEELS = os.environ.get("TACH_WHEELS", "")
if not WHEELS:
    pytest.skip("make wheels-check runs these, after make wheels", allow_module_level=True)
DIST = Path(WHEELS)
MANIFEST = json.loads((DIST / "wheels.json").read_text())
ARCH = os.uname().machine


def _describe(python: str) -> tuple[str, bool]:
    out = subprocess.run([python, "-c", "import sys, sysconfig; print(sys.version.split()[0], "
                          "bool(sysconfig.get_config_var('Py_GIL_DISABLED')))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    return out[0], out[1] == "True"


def _interpreters() -> list[tuple[str, str, bool]]:
    """(python, version, free-threaded), one per minor version and build."""
    seen: dict[tuple[str, bool], tuple[str, str, bool]] = {}
    for py in os.environ.get("TACH_WHEEL_PYTHONS", sys.executable).split():
        version, ft = _describe(py)
        seen.setdefault((".".join(version.split(".")[:2]), ft), (py, version, ft))
    return sorted(seen.values(), key=lambda i: (i[1].split("."), i[2]))


INTERPRETERS = _interpreters()
#: Nothing a build would need is reachable: the venv's own scripts only.
NO_TOOLS = ("go", "gcc", "cc", "clang", "zig")

SUITE = {
    "conftest.py": """
        import json, os
        import pytest

        @pytest.fixture(autouse=True)
        def record(request):
            yield
            from pytest_tach import _reset
            with open(os.path.join(os.path.dirname(__file__), "seen.jsonl"), "a") as f:
                f.write(json.dumps({"test": request.node.name, "pid": os.getpid(),
                                    "stats": _reset.stats()}) + "\\n")
    """,
    "test_state.py": """
        import os, sys
        import pytest

        STATE = []

        @pytest.fixture(scope="module")
        def shared():
            return {"hits": 0}

        @pytest.mark.parametrize("i", range(8))
        def test_mutate(i, shared):
            # what the previous test did in this process is gone: the restore put it back
            assert STATE == [] and shared["hits"] == 0 and "TACH_SMOKE" not in os.environ
            STATE.append(i)
            shared["hits"] += 1
            os.environ["TACH_SMOKE"] = str(i)
            import wave  # a module first imported by a test
    """,
    "test_crash.py": """
        import os, signal

        def test_segfault():
            os.kill(os.getpid(), signal.SIGSEGV)

        def test_after_the_crash():
            assert True
    """,
}

GIL_CHECK = """
import importlib, pkgutil, sys
import pytest_tach
names = [m.name for m in pkgutil.walk_packages(pytest_tach.__path__, "pytest_tach.")]
for name in names:
    importlib.import_module(name)
    assert not sys._is_gil_enabled(), f"GIL enabled by importing {name}"
print(len(names), sys._is_gil_enabled())
"""


def _env(venv: Path) -> dict[str, str]:
    return {**installed_env("TACH_GO", "CC"), "PATH": str(venv / "bin")}


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def _expected(version: str, ft: bool) -> str:
    """The wheel pip must pick for this interpreter here."""
    if ft:
        py = "cp" + "".join(version.split(".")[:2])
        return f"{py}-{py}t-manylinux_2_17_{ARCH}.manylinux2014_{ARCH}"
    return f"cp310-abi3-manylinux_2_17_{ARCH}.manylinux2014_{ARCH}"


def test_every_interpreter_has_a_wheel_here() -> None:
    tags = {row["tag"] for row in MANIFEST}
    assert INTERPRETERS, "TACH_WHEEL_PYTHONS named no interpreter"
    for _, version, ft in INTERPRETERS:
        assert _expected(version, ft) in tags, (version, ft, sorted(tags))
    assert sum(row["tag"] == "sdist" for row in MANIFEST) == 1


@pytest.mark.parametrize("python,version,ft", INTERPRETERS,
                         ids=[f"{v}{'t' if ft else ''}" for _, v, ft in INTERPRETERS])
def test_wheel_works_without_go(python: str, version: str, ft: bool, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    env, vpy = _env(venv), str(venv / "bin" / "python")
    assert not [t for t in NO_TOOLS if shutil.which(t, path=env["PATH"])]

    # pip picks the wheel by its tags, from the artifacts alone; then the dependencies
    r = _run([vpy, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(DIST), "--no-deps",
              "--only-binary", ":all:", "pytest-tach"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run([vpy, "-m", "pip", "install", "-q", "--find-links", str(DIST), "pytest-tach"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    (wheel_file,) = venv.glob("lib/python*/site-packages/pytest_tach-*.dist-info/WHEEL")
    assert f"Tag: {_expected(version, ft)}\n" in wheel_file.read_text()

    r = _run([str(venv / "bin" / "pytest-tach"), "self-test"], env, tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)

    suite = tmp_path / "suite"
    suite.mkdir()
    for name, body in SUITE.items():
        (suite / name).write_text(textwrap.dedent(body))
    r = _run([vpy, "-m", "pytest", "-p", "tach", "--tach-workers", "1", "--tach-reset", "snapshot",
              "-p", "no:cacheprovider", "-rf", "."], env, suite)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "1 failed, 9 passed" in r.stdout, r.stdout
    assert "crashed while running 'test_crash.py::test_segfault'" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr and "GIL" not in r.stderr, r.stderr
    seen = [json.loads(line) for line in (suite / "seen.jsonl").read_text().splitlines()]
    mutate = [s for s in seen if s["test"].startswith("test_mutate")]
    assert len(mutate) == 8
    # snapshot reset, not a process per test: later tests ran in a process restored in place
    assert max(s["stats"]["restores"] for s in mutate if s["stats"]) > 0, mutate
    assert len({s["pid"] for s in mutate}) < 8, mutate

    if ft:
        r = _run([vpy, "-W", "error", "-c", GIL_CHECK], env, tmp_path)
        assert r.returncode == 0, r.stderr
        count, gil = r.stdout.split()
        assert int(count) >= 20 and gil == "False", r.stdout


def test_aarch64_wheel_under_emulation(tmp_path: Path) -> None:
    """The aarch64 abi3 wheel on CPython 3.11 for aarch64 under qemu-user: the extensions
    load and the engine runs a suite and contains a crash. qemu-user implements neither
    userfaultfd nor process_vm_readv, so the self-test reports snapshot reset missing
    (optional) and the tests run in forked processes."""
    run = os.environ.get("TACH_EMULATED", "")
    if not run:
        pytest.skip("make wheels-check names the emulated aarch64 CPython in TACH_EMULATED")
    tag = _expected("3.11", False).replace(ARCH, "aarch64")
    (row,) = [row for row in MANIFEST if row["tag"] == tag]
    site = tmp_path / "site"
    with zipfile.ZipFile(DIST / row["file"]) as zf:
        zf.extractall(site)
    env = {**_env(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}

    r = _run([run, "-c", "import platform, pytest_tach._core as c, pytest_tach._reset as r; "
              "print(platform.machine(), c.__file__, r.__file__)"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["aarch64", f"{site}/pytest_tach/_core.abi3.so", f"{site}/pytest_tach/_reset.abi3.so"]
    r = _run([run, "-m", "pytest_tach", "self-test"], env, tmp_path)
    assert r.returncode == 0 and "self-test: OK" in r.stdout, (r.stdout, r.stderr)

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_state.py").write_text(textwrap.dedent(SUITE["test_state.py"]))
    (suite / "test_crash.py").write_text(textwrap.dedent(SUITE["test_crash.py"]))
    r = _run([run, "-m", "pytest", "-p", "tach", "--tach-workers", "2", "-p", "no:cacheprovider", "-rf", "."],
             env, suite)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "1 failed, 9 passed" in r.stdout and "crashed while running 'test_crash.py::test_segfault'" in r.stdout, \
        r.stdout


def _sdist() -> Path:
    (row,) = [row for row in MANIFEST if row["tag"] == "sdist"]
    return DIST / row["file"]


def test_sdist_builds_where_go_and_a_compiler_are(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(_sdist())],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    (whl,) = tmp_path.glob("pytest_tach-*.whl")
    with zipfile.ZipFile(whl) as zf:
        assert {f"pytest_tach/_core{EXT_SUFFIX}", f"pytest_tach/_reset{EXT_SUFFIX}"} <= set(zf.namelist())


def test_sdist_without_go_and_a_compiler_says_what_is_missing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {**_env(venv), "TACH_GO": str(tmp_path / "no-go" / "go")}
    r = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", str(_sdist())], env, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "pytest-tach cannot be built from source here" in out, out
    assert "Go >= 1.22" in out and "a C compiler" in out, out
    assert "Traceback" not in out, out
