"""`make wheels`: the release artifacts, built and checked on one Linux machine.

For each architecture (x86_64, aarch64): one abi3 wheel for every GIL CPython >= 3.10 and
one cp313t wheel for the free-threaded 3.13 (docs/building.md says why that split), plus
the sdist. Go cross-compiles; zig cc (PyPI's ziglang) is the C compiler and linker for
each architecture, against glibc 2.17's symbols, so the wheels carry the manylinux2014
tag. Each artifact is then checked by the tools a package index and its users would trust:

- `auditwheel show`: the wheel's libraries satisfy the manylinux tag it claims;
- `abi3audit --strict`: the abi3 extensions call nothing outside 3.10's limited API;
- the ELF headers (pyelftools, what `readelf -h -d --dyn-syms` shows): the architecture,
  the one exported PyInit_ symbol, and no library beyond libc and libpthread;
- `twine check --strict`: the metadata and long description, as PyPI renders them.

With --cache DIR, a build whose inputs (sources, tool versions, interpreters) match one
kept there is copied from it instead of being rebuilt (`make test` uses that).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tach_build
from tach_build import ROOT, BuildError, Interpreter, release_target

ARCHES = ("x86_64", "aarch64")
#: The oldest glibc the wheels run on: manylinux2014's, what pip >= 19.3 understands and
#: every maintained distribution exceeds.
GLIBC = (2, 17)
#: What each extension may link: the Go runtime is static, so libc and libpthread only.
ALLOWED_NEEDED = {"libc.so.6", "libpthread.so.0"}
#: ELF e_machine per architecture.
MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
#: What goes into a wheel: a change to any of these is a new build.
INPUTS = ["pyproject.toml", "go.mod", "go.sum", "README.md", "LICENSE", "go/core",
          "python/pytest_tach", "build/tach_build.py", "build/release"]
MANIFEST = "wheels.json"


class ReleaseError(RuntimeError):
    """An artifact failed a check; the message names it and the check."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    tag: str  # wheel tag, or "sdist"
    arch: str | None = None


def platform_tag(arch: str) -> str:
    """manylinux_2_17_x86_64.manylinux2014_x86_64: the PEP 600 name and its legacy alias
    (pip before 20.3 knows only the latter)."""
    return f"manylinux_{GLIBC[0]}_{GLIBC[1]}_{arch}.manylinux2014_{arch}"


def zig_cc(arch: str) -> tuple[str, ...]:
    import ziglang  # type: ignore[import-not-found]  # (build/release/requirements.txt)

    zig = Path(ziglang.__file__).parent / "zig"
    return (str(zig), "cc", "-target", f"{arch}-linux-gnu.{GLIBC[0]}.{GLIBC[1]}")


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import version

    go = tach_build.check_go(tach_build._find_go())
    return {"go": go, **{d: version(d) for d in ("ziglang", "auditwheel", "abi3audit", "twine")}}


def cache_key(interpreters: list[Interpreter]) -> str:
    h = hashlib.sha256()
    for entry in INPUTS:
        root = ROOT / entry
        for p in sorted([root] if root.is_file() else root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".h", ".pyc"):
                h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(json.dumps([_tool_versions(), [repr(i) for i in interpreters]], sort_keys=True).encode())
    return h.hexdigest()[:20]


# ---------------------------------------------------------------- build


def build(out: Path, interpreters: list[Interpreter], arches: tuple[str, ...]) -> list[Artifact]:
    out.mkdir(parents=True, exist_ok=True)
    made = [Artifact(out / tach_build.build_sdist(str(out)), "sdist")]
    for arch in arches:
        for interp in interpreters:
            target = release_target(interp, arch, platform_tag(arch), zig_cc(arch))
            made.append(Artifact(tach_build.write_wheel(out, target), target.tag, arch))
    return made


# ---------------------------------------------------------------- checks


def _run(cmd: list[str], what: Path) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReleaseError(f"{what.name}: `{' '.join(cmd[:2])} ...` failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def check_manylinux(whl: Artifact, bindir: Path) -> str:
    """auditwheel's verdict must be the tag the wheel claims (or an older glibc), with no
    library outside the policy."""
    report = json.loads(_run([str(bindir / "auditwheel"), "show", "--json", str(whl.path)], whl.path))
    name = str(report.get("overall_tag", ""))
    glibc = tuple(int(x) for x in name.split("_")[1:3]) if name.startswith("manylinux_") else None
    if glibc is None or glibc > GLIBC or not name.endswith(f"_{whl.arch}") or report.get("external_libs"):
        raise ReleaseError(f"{whl.path.name}: auditwheel's verdict is {name or '?'} (external libraries: "
                           f"{report.get('external_libs')}), not manylinux_{GLIBC[0]}_{GLIBC[1]}_{whl.arch}")
    return name


def check_abi3(whl: Artifact, bindir: Path) -> None:
    if "-abi3-" in whl.path.name:
        _run([str(bindir / "abi3audit"), "--strict", "--summary", str(whl.path)], whl.path)


def check_elf(whl: Artifact) -> list[str]:
    """Each extension: the wheel's architecture, PyInit_<name> exported, only libc and
    libpthread needed, no glibc symbol newer than GLIBC. Returns one line per extension."""
    from elftools.elf.elffile import ELFFile  # type: ignore[import-not-found]

    lines = []
    with zipfile.ZipFile(whl.path) as zf:
        for name in (n for n in zf.namelist() if n.endswith(".so")):
            with zf.open(name) as raw:
                elf = ELFFile(io.BytesIO(raw.read()))
                machine = elf.header["e_machine"]
                dynsym = elf.get_section_by_name(".dynsym")
                exported = {s.name for s in dynsym.iter_symbols()
                            if s["st_shndx"] != "SHN_UNDEF" and s.name.startswith("PyInit_")}
                needed = {t.needed for t in elf.get_section_by_name(".dynamic").iter_tags()
                          if t.entry.d_tag == "DT_NEEDED"}
                versions = set()
                verneed = elf.get_section_by_name(".gnu.version_r")
                if verneed is not None:
                    for _, auxes in verneed.iter_versions():
                        versions |= {a.name for a in auxes if a.name.startswith("GLIBC_")}
            module = name.rsplit("/", 1)[-1].split(".")[0]
            newest = max((tuple(int(x) for x in v[6:].split(".")) for v in versions), default=(0,))
            problems = []
            if machine != MACHINE[whl.arch or ""]:
                problems.append(f"machine {machine}")
            if exported != {f"PyInit_{module}"}:
                problems.append(f"exports {sorted(exported)}")
            if needed - ALLOWED_NEEDED:
                problems.append(f"needs {sorted(needed - ALLOWED_NEEDED)}")
            if newest > GLIBC:
                problems.append(f"needs GLIBC_{'.'.join(map(str, newest))}")
            if problems:
                raise ReleaseError(f"{whl.path.name}: {name}: {'; '.join(problems)}")
            lines.append(f"{name}: {machine}, exports PyInit_{module}, needs {', '.join(sorted(needed))}, "
                         f"glibc symbols <= {'.'.join(map(str, newest))}")
    if len(lines) != 2:
        raise ReleaseError(f"{whl.path.name}: {len(lines)} extensions, expected _core and _reset")
    return lines


def check(made: list[Artifact], bindir: Path) -> list[dict[str, object]]:
    _run([str(bindir / "twine"), "check", "--strict", *(str(a.path) for a in made)], made[0].path)
    rows: list[dict[str, object]] = []
    for a in made:
        row: dict[str, object] = {"file": a.path.name, "tag": a.tag, "bytes": a.path.stat().st_size,
                                  "sha256": hashlib.sha256(a.path.read_bytes()).hexdigest()}
        if a.arch:
            row["auditwheel"] = check_manylinux(a, bindir)
            check_abi3(a, bindir)
            row["elf"] = check_elf(a)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- main


def _prune(cache: Path, keep: Path, entries: int = 3) -> None:
    """Keep the newest builds in the cache (each is ~6 MB); `keep` is one of them."""
    builds = sorted((p for p in cache.iterdir() if (p / MANIFEST).exists()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[entries:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make wheels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="where the artifacts go (default dist/)")
    ap.add_argument("--gil-python", default=sys.executable,
                    help="a GIL CPython >= 3.10 whose headers build the abi3 wheels (default: this one)")
    ap.add_argument("--ft-python", required=True, help="the free-threaded CPython 3.13 (make python-ft)")
    ap.add_argument("--arch", action="append", choices=ARCHES, help="default: all of them")
    ap.add_argument("--cache", type=Path, help="reuse the build kept here for the same inputs")
    args = ap.parse_args(argv)
    bindir = Path(sys.executable).parent
    t0 = time.monotonic()
    try:
        interpreters = [Interpreter.at(args.gil_python), Interpreter.at(args.ft_python)]
        if interpreters[0].free_threaded or not interpreters[1].free_threaded:
            raise ReleaseError("--gil-python must be a GIL build and --ft-python a free-threaded one")
        arches = tuple(args.arch or ARCHES)
        kept = args.cache / f"{cache_key(interpreters)}-{'-'.join(arches)}" if args.cache else None
        if kept is not None and (kept / MANIFEST).exists():
            source, how = kept, f"reused from {kept}"
        else:
            # Built aside and moved into place whole: a build stopped halfway is never reused.
            source = kept.with_suffix(".partial") if kept else Path(tempfile.mkdtemp(prefix="tach-wheels-"))
            shutil.rmtree(source, ignore_errors=True)
            rows = check(build(source, interpreters, arches), bindir)
            (source / MANIFEST).write_text(json.dumps(rows, indent=1))
            if kept is not None:
                shutil.rmtree(kept, ignore_errors=True)
                source = source.rename(kept)
                _prune(args.cache, keep=kept)
            how = "built and checked"
        rows = json.loads((source / MANIFEST).read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        for name in [*(str(row["file"]) for row in rows), MANIFEST]:
            shutil.copy2(source / name, args.out / name)
        if kept is None:
            shutil.rmtree(source)
    except (BuildError, ReleaseError, OSError, subprocess.CalledProcessError) as e:
        print(f"make wheels: {e}", file=sys.stderr)
        return 1
    print(f"make wheels: {len(rows)} artifacts in {args.out}, {how} in {time.monotonic() - t0:.0f}s")
    for row in rows:
        verdict = f"  auditwheel: {row['auditwheel']}" if "auditwheel" in row else ""
        print(f"  {row['file']:<72} {int(row['bytes']) / 1e6:5.2f} MB{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
