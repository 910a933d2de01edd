"""tach's PEP 517 build backend: builds the two extensions and packs the wheel.

Why an in-tree backend rather than setuptools/hatchling/scikit-build: the compiled parts
are one `go build -buildmode=c-shared` call and one C file for the C compiler, and what
a wheel needs around them (a zip
with METADATA, WHEEL, RECORD) is a few dozen lines. A general backend would add a build
dependency, a plugin layer and its own idea of where outputs go, to wrap those two calls.
docs/building.md has the longer argument.

Hooks: build_wheel, build_sdist, build_editable (PEP 660), and the get_requires_* hooks
(which ask for tomli on Python < 3.11, the only build requirement).

Environment knobs:
  TACH_GO     path of the go binary (else `go` on PATH, else /usr/local/go/bin/go)
  CGO_CFLAGS  appended after the interpreter's include directories
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

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


class BuildError(RuntimeError):
    """A build precondition failed; the message says what to do."""


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
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '')}",
    ]
    lic = p.get("license")
    if isinstance(lic, dict) and "text" in lic:
        lines.append(f"License: {lic['text']}")
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
    body = readme.read_text(encoding="utf-8") if readme.exists() else ""
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + body


def _entry_points() -> str:
    """entry_points.txt: the console scripts and every [project.entry-points] group."""
    p = _project()
    groups = {"console_scripts": p.get("scripts", {}), **p.get("entry-points", {})}
    return "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                   for group, eps in groups.items() if eps)


# ---------------------------------------------------------------- wheel tag


def wheel_tag() -> str:
    """The wheel tag for the running interpreter, e.g. cp313-cp313t-linux_x86_64.

    The extension uses CPython's full (non-limited) API, so the wheel is tied to one
    CPython minor version and ABI (the trailing t marks free-threaded builds).
    """
    if sys.implementation.name != "cpython":
        raise BuildError(f"tach's extension needs CPython; this is {sys.implementation.name}")
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    abiflags = getattr(sys, "abiflags", "")
    if not abiflags and sysconfig.get_config_var("Py_GIL_DISABLED"):
        abiflags = "t"
    plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{py}-{py}{abiflags}-{plat}"


# ---------------------------------------------------------------- go build


def _find_go() -> str:
    cand = os.environ.get("TACH_GO") or shutil.which("go")
    if not cand and os.path.exists("/usr/local/go/bin/go"):
        cand = "/usr/local/go/bin/go"
    if not cand:
        raise BuildError(
            "tach: building the extension needs the Go toolchain, and no `go` was found "
            "on PATH (set TACH_GO=/path/to/go). Install Go >= "
            f"{_min_go_version()} from https://go.dev/dl/ or your distribution."
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


def build_extension(dest_dir: Path) -> list[Path]:
    """Build tach's two extensions for the running interpreter into dest_dir.

    pytest_tach._core is the Go supervisor (main process only); pytest_tach._reset is plain C with no
    Go in it, because the forked processes that use it must never start a Go runtime.
    """
    return [build_core(dest_dir), build_reset(dest_dir)]


def _includes() -> list[str]:
    paths = sysconfig.get_paths()
    if not (Path(paths["include"]) / "Python.h").exists():
        raise BuildError(
            f"tach: Python.h not found in {paths['include']}; install this interpreter's "
            "development headers (e.g. python3-dev)"
        )
    return sorted({paths["include"], paths["platinclude"]})


def _find_cc() -> list[str]:
    cc = os.environ.get("CC", "gcc").split()
    if not shutil.which(cc[0]):
        raise BuildError(f"tach: building needs a C compiler and `{cc[0]}` was not found (set CC)")
    return cc


def build_reset(dest_dir: Path) -> Path:
    """Build pytest_tach._reset (python/pytest_tach/forked/reset/*.c) into dest_dir; return the file.
    Hidden visibility: calls between its files are direct, through no PLT slot (the
    restore rewrites memory while it runs); only PyInit__reset is exported."""
    cc = _find_cc()
    out = dest_dir / f"_reset{sysconfig.get_config_var('EXT_SUFFIX')}"
    dest_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in sorted(RESET_DIR.glob("*.c"))]
    cmd = [*cc, "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", *[f"-I{d}" for d in _includes()],
           *os.environ.get("CFLAGS", "").split(), *sources, "-o", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"tach: `{' '.join(cmd)}` failed:\n{proc.stderr}")
    return out


def build_core(dest_dir: Path) -> Path:
    """Build pytest_tach._core (the Go supervisor) into dest_dir; return the file."""
    go = _find_go()
    check_go(go)
    _find_cc()  # cgo's
    includes = _includes()
    ext_suffix = sysconfig.get_config_var("EXT_SUFFIX")
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"_core{ext_suffix}"
    with tempfile.TemporaryDirectory(prefix="tach-go-") as tmp:
        tmp_out = Path(tmp) / out.name  # go also writes a .h next to it: keep that out
        env = {
            **os.environ,
            "CGO_ENABLED": "1",
            "GOTOOLCHAIN": "local",  # never download a toolchain during a pip install
            "CGO_CFLAGS": " ".join(
                [f"-I{d}" for d in includes] + ["-O2"]
                + os.environ.get("CGO_CFLAGS", "").split()
            ),
        }
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
    print(f"tach: built {out.name} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
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


def _wheel_name() -> tuple[str, str, str]:
    name, version, tag = _dist_name(), _project()["version"], wheel_tag()
    return f"{name}-{version}-{tag}.whl", f"{name}-{version}.dist-info", tag


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    filename, dist_info, tag = _wheel_name()
    with tempfile.TemporaryDirectory(prefix="tach-ext-") as tmp:
        exts = build_extension(Path(tmp))
        whl = _Wheel(Path(wheel_directory) / filename, dist_info)
        for p in _package_files():
            whl.add(f"{PKG}/" + p.relative_to(PKG_SRC).as_posix(), p.read_bytes())
        for ext in exts:
            whl.add(f"{PKG}/{ext.name}", ext.read_bytes(), executable=True)
        whl.close(tag)
    return filename


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    """PEP 660: a .pth pointing at python/, with the extension built in place there.

    After changing Go code, rebuild in place with `make ext` (or reinstall).
    """
    filename, dist_info, tag = _wheel_name()
    build_extension(PKG_SRC)
    whl = _Wheel(Path(wheel_directory) / filename, dist_info)
    whl.add(f"__editable__.{PKG}.pth", (str(PKG_SRC.parent) + "\n").encode())
    whl.close(tag)
    return filename


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
