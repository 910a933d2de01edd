"""tach's PEP 517 build backend: builds the two extensions and packs the wheel.

Why an in-tree backend rather than setuptools/hatchling/scikit-build: the compiled parts
are one `go build -buildmode=c-shared` call and one C file for the C compiler, and what
a wheel needs around them (a zip
with METADATA, WHEEL, RECORD) is a few dozen lines. A general backend would add a build
dependency, a plugin layer and its own idea of where outputs go, to wrap those two calls.
docs/building.md has the longer argument.

Hooks: build_wheel, build_sdist, build_editable (PEP 660), and the get_requires_* hooks
(which ask for tomli on Python < 3.11, the only build requirement). A hook that cannot
build says what is missing in one message and exits 1, without a traceback.

What a build is for is a Target: the running interpreter and machine for the hooks
(native_target), or another interpreter and architecture for the release wheels
(build/release/wheels.py, `make wheels`, through release_target). GIL builds use the limited API
of CPython 3.10 (one abi3 wheel for 3.10 and every later GIL CPython); free-threaded
builds have no limited API yet and get a wheel per version (docs/building.md).

Environment knobs (native builds):
  TACH_GO     path of the go binary (else `go` on PATH, else /usr/local/go/bin/go)
  CC          the C compiler (default gcc), for cgo and for pytest_tach._reset
  CGO_CFLAGS  appended after the interpreter's include directories
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
#: the import package (the distribution is pytest-tach: see pyproject.toml)
PKG = "pytest_tach"
PKG_SRC = ROOT / "python" / PKG
GO_PKG = "./go/core"
#: pytest_tach._reset's sources: C, next to the code that loads it (its README has the contract)
RESET_DIR = PKG_SRC / "forked" / "reset"

# Files an sdist carries: enough to rebuild the wheel and run the tests.
SDIST_INCLUDE = [
    "pyproject.toml", "go.mod", "go.sum", "README.md", "Makefile", "LICENSE",
    "build", "go", "python", "tests", "examples", "docs", "bench", ".ci",
]


#: The limited API the abi3 build targets: the oldest CPython tach supports.
LIMITED_API = (3, 10)
#: Go's name for each architecture a wheel is built for (uname -m -> GOARCH).
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
#: The project's home: where README's relative links point in the long description.
REPO_URL = "https://github.com/tach-dev/tach"


class BuildError(RuntimeError):
    """A build precondition failed; the message says what to do."""


_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def _pep517_hook(hook: _Hook) -> _Hook:
    """A BuildError ends the build frontend's subprocess with its message and exit 1: pip
    shows the message, not a traceback of the backend."""
    @functools.wraps(hook)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except BuildError as e:
            print(f"\n{e}\n", file=sys.stderr)
            raise SystemExit(1) from None
    return run  # type: ignore[return-value]


# ---------------------------------------------------------------- metadata


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: get_requires_* asked the frontend for tomli
        import tomli as tomllib  # type: ignore[no-redef]
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _project() -> dict:
    return _pyproject()["project"]


def _dist_name() -> str:
    return re.sub(r"[-_.]+", "_", _project()["name"]).lower()


def _metadata() -> str:
    """Core metadata 2.4 (PEP 639: the license as an SPDX expression plus its file)."""
    p = _project()
    lines = [
        "Metadata-Version: 2.4",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '')}",
    ]
    if isinstance(p.get("license"), str):
        lines.append(f"License-Expression: {p['license']}")
    for lic in p.get("license-files", []):
        lines.append(f"License-File: {lic}")
    if p.get("keywords"):
        lines.append(f"Keywords: {','.join(p['keywords'])}")
    for url_name, url in p.get("urls", {}).items():
        lines.append(f"Project-URL: {url_name}, {url}")
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    for dep in p.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in p.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for dep in deps:
            lines.append(f'Requires-Dist: {dep}; extra == "{extra}"')
    readme = ROOT / p.get("readme", "README.md")
    body = _absolute_links(readme.read_text(encoding="utf-8")) if readme.exists() else ""
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + body


def _absolute_links(markdown: str) -> str:
    """README links files of the repository (docs/building.md); on a package index the
    long description has no repository around it, so they point at the project's."""
    return re.sub(r"\]\((?!https?:|#|mailto:)([^)\s]+)\)", rf"]({REPO_URL}/blob/main/\1)", markdown)


def _entry_points() -> str:
    """entry_points.txt: the console scripts and every [project.entry-points] group."""
    p = _project()
    groups = {"console_scripts": p.get("scripts", {}), **p.get("entry-points", {})}
    return "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                   for group, eps in groups.items() if eps)


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Interpreter:
    """The CPython a build is for, as that interpreter describes itself."""

    version: tuple[int, int]
    free_threaded: bool
    includes: tuple[str, ...]
    ext_suffix: str
    platform: str

    @classmethod
    def at(cls, python: str) -> Interpreter:
        """Ask the interpreter at `python` (its headers must be installed)."""
        code = ("import json, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps({"
                "'impl': sys.implementation.name, 'version': sys.version_info[:2], "
                "'free_threaded': bool(sysconfig.get_config_var('Py_GIL_DISABLED')), "
                "'includes': sorted({p['include'], p['platinclude']}), "
                "'ext_suffix': sysconfig.get_config_var('EXT_SUFFIX'), "
                "'platform': sysconfig.get_platform()}))")
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise BuildError(f"tach: cannot ask {python} what it is: {e}") from e
        info = json.loads(out)
        if info.pop("impl") != "cpython":
            raise BuildError(f"tach's extensions need CPython; {python} is not")
        info["version"], info["includes"] = tuple(info["version"]), tuple(info["includes"])
        return cls(**info)

    @property
    def abi3(self) -> bool:
        """Built against the limited API (every GIL build; free-threaded ones have none)."""
        return not self.free_threaded

    def abi_tags(self) -> str:
        """python-abi part of a wheel tag: cp310-abi3, or cp313-cp313t."""
        if self.abi3:
            return f"cp{LIMITED_API[0]}{LIMITED_API[1]}-abi3"
        py = f"cp{self.version[0]}{self.version[1]}"
        return f"{py}-{py}t"

    def cflags(self) -> list[str]:
        limited = [f"-DPy_LIMITED_API=0x{LIMITED_API[0]:02x}{LIMITED_API[1]:02x}0000"] if self.abi3 else []
        return [*(f"-I{d}" for d in self.includes), *limited]


@dataclass(frozen=True)
class Target:
    """One build: an interpreter, a machine, the compiler for it and the wheel's tag."""

    interpreter: Interpreter
    platform: str  # the wheel tag's platform part: linux_x86_64, manylinux_2_17_aarch64.manylinux2014_aarch64
    ext_suffix: str  # .abi3.so, .cpython-313t-aarch64-linux-gnu.so
    cc: tuple[str, ...]
    goarch: str | None = None  # None: the host's

    @property
    def tag(self) -> str:
        return f"{self.interpreter.abi_tags()}-{self.platform}"


def native_target() -> Target:
    """The running interpreter on this machine, built with $CC: what pip install builds."""
    interp = Interpreter.at(sys.executable)
    if interp.version < LIMITED_API:
        raise BuildError(f"tach needs CPython >= {LIMITED_API[0]}.{LIMITED_API[1]}")
    return Target(interpreter=interp,
                  platform=interp.platform.replace("-", "_").replace(".", "_"),
                  ext_suffix=".abi3.so" if interp.abi3 else interp.ext_suffix,
                  cc=tuple(os.environ.get("CC", "gcc").split()))


def release_target(interp: Interpreter, arch: str, platform: str, cc: tuple[str, ...]) -> Target:
    """A wheel for a package index: `arch` (x86_64, aarch64) linked for the glibc that
    `platform` names, with `cc` a compiler that targets it (build/release/wheels.py: zig cc)."""
    if arch not in GOARCH:
        raise BuildError(f"tach: no release build for {arch}; known: {', '.join(GOARCH)}")
    v = interp.version
    suffix = ".abi3.so" if interp.abi3 else f".cpython-{v[0]}{v[1]}t-{arch}-linux-gnu.so"
    return Target(interpreter=interp, platform=platform, ext_suffix=suffix, cc=cc, goarch=GOARCH[arch])


# ---------------------------------------------------------------- go build


def _find_go() -> str:
    named = os.environ.get("TACH_GO")
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise BuildError(f"tach: Go >= {_min_go_version()}: TACH_GO={named} is not an executable file")
        return named
    cand = shutil.which("go")
    if not cand and os.path.exists("/usr/local/go/bin/go"):  # (Go's own installer puts it there)
        cand = "/usr/local/go/bin/go"
    if not cand:
        raise BuildError(
            f"tach: Go >= {_min_go_version()}, which builds pytest_tach._core: no `go` on PATH or in "
            "/usr/local/go/bin (https://go.dev/dl/ or your distribution's golang package; "
            "TACH_GO=/path/to/go names one)"
        )
    return cand


def _min_go_version() -> str:
    m = re.search(r"^go (\d+\.\d+(?:\.\d+)?)$", (ROOT / "go.mod").read_text(), re.M)
    return m.group(1) if m else "1.22"


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def check_go(go: str) -> str:
    """Return the toolchain's version, or raise BuildError if it is too old."""
    try:
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, check=True,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"tach: `{go} env GOVERSION` failed: {e}") from e
    need = _min_go_version()
    if _version_tuple(out) < _version_tuple(need):
        raise BuildError(
            f"tach: Go {out.removeprefix('go')} at {go} is too old; tach needs Go >= {need}. "
            "Install a newer Go or point TACH_GO at one."
        )
    return out


def preflight(target: Target, system: str = sys.platform) -> str:
    """Check everything a build needs at once; return the go binary. A BuildError names
    all that is missing, so a user installs it in one go rather than one per attempt."""
    if not system.startswith("linux"):
        # (pip chose the sdist because no wheel fits; a compiler error would say less)
        raise BuildError(f"pytest-tach runs on Linux only: its engine forks test processes and uses "
                         f"pidfds and userfaultfd; this is {system}.")
    missing, go = [], ""
    try:
        go = _find_go()
        check_go(go)
    except BuildError as e:
        missing.append(str(e).removeprefix("tach: "))
    if not shutil.which(target.cc[0]):
        missing.append(f"a C compiler, for cgo and pytest_tach._reset: `{target.cc[0]}` was not found "
                       "(install gcc, or set CC)")
    if not any((Path(d) / "Python.h").exists() for d in target.interpreter.includes):
        missing.append(f"this Python's headers: no Python.h in {', '.join(target.interpreter.includes)} "
                       "(Debian/Ubuntu: python3-dev; Fedora: python3-devel)")
    if missing:
        raise BuildError(
            "pytest-tach cannot be built from source here. It compiles a Go extension and a C "
            "extension, and this machine lacks:\n" + "".join(f"  - {m}\n" for m in missing)
            + "pip installs a prebuilt wheel instead wherever one fits (Linux x86_64 and aarch64, "
            "glibc >= 2.17, CPython >= 3.10 and 3.13t) and builds from source only where none "
            "does, or when told to (--no-binary).")
    return go


def build_extension(dest_dir: Path, target: Target | None = None) -> list[Path]:
    """Build tach's two extensions for `target` (default: this interpreter) into dest_dir.

    pytest_tach._core is the Go supervisor (main process only); pytest_tach._reset is plain C with no
    Go in it, because the forked processes that use it must never start a Go runtime.
    """
    target = target or native_target()
    go = preflight(target)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # A build for another ABI left here (python/pytest_tach/ after `make ext` on another
    # interpreter) would be imported instead where its suffix comes first.
    for old in [*dest_dir.glob("_core*.so"), *dest_dir.glob("_reset*.so")]:
        old.unlink()
    return [build_core(dest_dir, target, go), build_reset(dest_dir, target)]


def build_reset(dest_dir: Path, target: Target) -> Path:
    """Build pytest_tach._reset (python/pytest_tach/forked/reset/*.c) into dest_dir; return the file.
    Hidden visibility: calls between its files are direct, through no PLT slot (the
    restore rewrites memory while it runs); only PyInit__reset is exported."""
    out = dest_dir / f"_reset{target.ext_suffix}"
    sources = [str(p) for p in sorted(RESET_DIR.glob("*.c"))]
    cmd = [*target.cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", *target.interpreter.cflags(),
           *os.environ.get("CFLAGS", "").split(), *sources, "-o", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"tach: `{' '.join(cmd)}` failed:\n{proc.stderr}")
    return out


def build_core(dest_dir: Path, target: Target, go: str) -> Path:
    """Build pytest_tach._core (the Go supervisor) into dest_dir; return the file."""
    out = dest_dir / f"_core{target.ext_suffix}"
    with tempfile.TemporaryDirectory(prefix="tach-go-") as tmp:
        tmp_out = Path(tmp) / out.name  # go also writes a .h next to it: keep that out
        env = {
            **os.environ,
            "CGO_ENABLED": "1",
            "GOTOOLCHAIN": "local",  # never download a toolchain during a pip install
            "CC": " ".join(target.cc),
            "CGO_CFLAGS": " ".join([*target.interpreter.cflags(), "-O2", *os.environ.get("CGO_CFLAGS", "").split()]),
        }
        if target.goarch:
            env.update(GOOS="linux", GOARCH=target.goarch)
        cmd = [
            go, "build", "-buildmode=c-shared", "-trimpath",
            "-ldflags", f"-s -w -X main.version={_project()['version']}",
            "-o", str(tmp_out), GO_PKG,
        ]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"tach: `{' '.join(cmd)}` failed:\n{proc.stderr}")
        shutil.copy2(tmp_out, out)
    print(f"tach: built {out.name} ({target.tag}) in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return out


# ---------------------------------------------------------------- wheel writing


class _Wheel:
    def __init__(self, path: Path, dist_info: str):
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.dist_info = dist_info
        self.records: list[str] = []

    def add(self, arcname: str, data: bytes, executable: bool = False) -> None:
        zi = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
        zi.external_attr = (0o755 if executable else 0o644) << 16
        zi.compress_type = zipfile.ZIP_DEFLATED
        self.zf.writestr(zi, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.records.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self, tag: str) -> None:
        d = self.dist_info
        self.add(f"{d}/METADATA", _metadata().encode())
        self.add(f"{d}/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: tach_build\nRoot-Is-Purelib: false\n"
            f"Tag: {tag}\n"
        ).encode())
        ep = _entry_points()
        if ep:
            self.add(f"{d}/entry_points.txt", ep.encode())
        for lic in _project().get("license-files", []):  # PEP 639: under .dist-info/licenses/
            self.add(f"{d}/licenses/{lic}", (ROOT / lic).read_bytes())
        self.records.append(f"{d}/RECORD,,")
        self.zf.writestr(
            zipfile.ZipInfo(f"{d}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)),
            "\n".join(self.records) + "\n",
        )
        self.zf.close()


def _package_files() -> list[Path]:
    """Python sources of the package (no caches, no extension built in place)."""
    out = []
    for p in sorted(PKG_SRC.rglob("*")):
        if p.is_dir() or "__pycache__" in p.parts or p.parent == RESET_DIR:
            continue  # (the extension's sources: built, not shipped)
        if p.name.startswith(("_core", "_reset")) and p.suffix in (".so", ".h"):
            continue
        out.append(p)
    return out


def _wheel_name(target: Target) -> tuple[str, str]:
    name, version = _dist_name(), _project()["version"]
    return f"{name}-{version}-{target.tag}.whl", f"{name}-{version}.dist-info"


def write_wheel(wheel_directory: Path, target: Target) -> Path:
    """Build the extensions for `target` and pack them with the package into a wheel."""
    filename, dist_info = _wheel_name(target)
    with tempfile.TemporaryDirectory(prefix="tach-ext-") as tmp:
        exts = build_extension(Path(tmp), target)
        whl = _Wheel(wheel_directory / filename, dist_info)
        for p in _package_files():
            whl.add(f"{PKG}/" + p.relative_to(PKG_SRC).as_posix(), p.read_bytes())
        for ext in exts:
            whl.add(f"{PKG}/{ext.name}", ext.read_bytes(), executable=True)
        whl.close(target.tag)
    return wheel_directory / filename


@_pep517_hook
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return write_wheel(Path(wheel_directory), native_target()).name


@_pep517_hook
def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """PEP 660: a .pth pointing at python/, with the extension built in place there.

    After changing Go code, rebuild in place with `make ext` (or reinstall).
    """
    target = native_target()
    filename, dist_info = _wheel_name(target)
    build_extension(PKG_SRC, target)
    whl = _Wheel(Path(wheel_directory) / filename, dist_info)
    whl.add(f"__editable__.{PKG}.pth", (str(PKG_SRC.parent) + "\n").encode())
    whl.close(target.tag)
    return filename


@_pep517_hook
def build_sdist(sdist_directory, config_settings=None):
    name, version = _dist_name(), _project()["version"]
    base = f"{name}-{version}"
    path = Path(sdist_directory) / f"{base}.tar.gz"

    def keep(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(ti.name).parts
        if "__pycache__" in parts or ti.name.endswith((".so", ".pyc")):
            return None
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        return ti

    with tarfile.open(path, "w:gz") as tf:
        for entry in SDIST_INCLUDE:
            if (ROOT / entry).exists():
                tf.add(ROOT / entry, arcname=f"{base}/{entry}", filter=keep)
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tf.addfile(ti, io.BytesIO(pkg_info))
    return path.name


def _requires() -> list[str]:
    return ["tomli>=1.1"] if sys.version_info < (3, 11) else []


def get_requires_for_build_wheel(config_settings=None):
    return _requires()


def get_requires_for_build_editable(config_settings=None):
    return _requires()


def get_requires_for_build_sdist(config_settings=None):
    return _requires()
