"""Outcome parity of `pytest -p tach` with plain pytest on real projects' own suites.

For every project in bench/suites.toml: fetch its sdist from PyPI (pinned version,
sha256-checked, cached), make a virtual env with the project, its test requirements, the
pinned pytest and tach (a wheel built once from this checkout), then run the project's
tests with --junitxml under plain pytest and under `pytest -p tach` in each
--tach-isolate mode, and compare the outcome of every test id. For projects that name
the packages they measure (`cov`), also run both with pytest-cov (--cov-branch) and
compare coverage.py's data file by file, line by line and arc by arc, and time what
coverage costs each. Writes a markdown report (docs/parity.md by `make parity`) and
exits 1 when a mismatch is not explained in suites.toml.

Downloads, unpacked sources and venvs live under $TACH_CACHE/parity, outside the repo.

Usage: python bench/parity.py [--suites FILE] [--project NAME ...] [--modes test,module,none]
                              [--out FILE] [--python PYTHON] [--in-place] [--keep]
                              [--run-timeout S] [--test-timeout S] [--no-control]
       python bench/parity.py --add NAME==VERSION [--suites FILE]
--in-place runs every project with --python as it is (no venv, nothing installed): for
projects given as a local `path`, which is how `make test` keeps the harness itself honest.

When a run goes wrong: a run quiet for a minute says so (and its last line); a run is
killed at --run-timeout and its test processes at --test-timeout (tach's --tach-timeout);
--keep keeps each project's work directory (junit files, every run's whole output). A
second plain run (the control) tells the suite's own nondeterminism (ids made from a set,
order-dependent tests) from tach's: a test whose outcome differs between the two plain
runs is reported as the suite's, not counted against tach. --add fetches a project's
sdist hash from PyPI and appends a stanza for it to the suites file.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from engine import commit, machine  # bench/engine.py, beside this script

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - tach's own floor is 3.10, the harness follows it
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
MODES = ("test", "module", "none")
RUN_TIMEOUT = 30 * 60  # seconds for one pytest run by default; a hung run is reported, not waited on forever
TEST_TIMEOUT = 10 * 60  # seconds for one test under tach by default (--tach-timeout)
HEARTBEAT = 60  # seconds a run may be quiet before the harness says it is still going
SIMPLE_API = "https://pypi.org/simple/{name}/"


@dataclass
class Project:
    name: str
    version: str = ""
    sha256: str = ""
    path: Path | None = None  # a local directory of tests instead of an sdist
    requires: list[str] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    explain: dict[str, str] = field(default_factory=dict)
    cov: list[str] = field(default_factory=list)  # packages to measure with pytest-cov
    #: isolate mode -> why coverage data may differ from a plain run's in that mode
    cov_explain: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass
class Run:
    wall: float
    exit_code: int | None  # None: killed at RUN_TIMEOUT
    outcomes: dict[str, list[str]]  # test id -> outcomes (a list: ids may repeat)
    messages: dict[str, str]  # test id -> first lines of the failure/error/skip text
    output_tail: str


@dataclass
class Mismatch:
    test_id: str
    plain: list[str]
    tach: list[str]
    detail: str
    explanation: str = ""


@dataclass
class Limits:
    """How long runs may take, and what the harness keeps."""
    run_s: float = RUN_TIMEOUT
    test_s: float = TEST_TIMEOUT
    heartbeat_s: float = HEARTBEAT


class HarnessError(Exception):
    """A project could not be fetched, installed or run at all."""


# -- suites file ---------------------------------------------------------------------


def load_suites(path: Path) -> tuple[list[str], list[Project]]:
    """What every venv gets (the pytest pin, coverage.py and pytest-cov pins), and the
    projects."""
    data = tomllib.loads(path.read_text())
    pytest_req = [data.get("pytest", "pytest"), *data.get("coverage", [])]
    projects = []
    for entry in data.get("project", []):
        entry = dict(entry)
        local = entry.pop("path", None)
        p = Project(**entry)
        if local is not None:
            p.path = (path.parent / local).resolve()
        elif not (p.version and p.sha256):
            raise HarnessError(f"{path}: project {p.name!r} needs version and sha256 (or a local path)")
        if not p.tests:
            raise HarnessError(f"{path}: project {p.name!r} names no test paths")
        projects.append(p)
    return pytest_req, projects


# -- fetching and installing ---------------------------------------------------------


def fetch_sdist(p: Project, cache: Path) -> Path:
    """The project's sdist, from the cache or PyPI's simple API, checked against sha256."""
    dest_dir = cache / "sdists"
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in dest_dir.glob("*.tar.gz"):
        if f.name.endswith(f"-{p.version}.tar.gz") and _sha256(f) == p.sha256:
            return f
    req = urllib.request.Request(SIMPLE_API.format(name=p.name),
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        index = json.load(r)
    for f in index["files"]:
        if f["hashes"].get("sha256") == p.sha256:
            target = dest_dir / f["filename"]
            tmp = target.with_suffix(".part")
            with urllib.request.urlopen(f["url"], timeout=300) as r, open(tmp, "wb") as out:
                shutil.copyfileobj(r, out)
            if _sha256(tmp) != p.sha256:
                tmp.unlink()
                raise HarnessError(f"{p.label}: downloaded {f['filename']} does not match its sha256")
            tmp.rename(target)
            return target
    raise HarnessError(f"{p.label}: no file with sha256 {p.sha256} on PyPI")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unpack(sdist: Path, dest: Path) -> Path:
    """A fresh copy of the sdist's tree (tests may write into it)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(sdist) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
        else:  # pragma: no cover - Python without PEP 706
            tf.extractall(dest)
    (top,) = [d for d in dest.iterdir() if d.is_dir()]
    return top


def build_tach_wheel(python: str, out: Path) -> Path:
    """One wheel of this checkout, installed into every project's venv."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(REPO)], check=True)
    (wheel,) = sorted(out.glob("pytest_tach-*.whl"))
    return wheel


def ensure_venv(p: Project, src: Path, python: str, cache: Path, pytest_req: list[str], wheel: Path) -> str:
    ident = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True,
                           text=True, check=True).stdout
    key = hashlib.sha256(json.dumps([ident, pytest_req, p.name, p.version, p.requires]).encode()).hexdigest()[:12]
    venv = cache / "venvs" / f"{p.name}-{p.version}-{key}"
    py = str(venv / "bin" / "python")
    stamp = venv / ".parity-ok"
    if not stamp.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [py, "-m", "pip", "install", "-q"]
        _pip(p, venv, [*pip, *pytest_req, "msgpack", *p.requires])
        _pip(p, venv, [*pip, str(src)])
        stamp.write_text(key)
    if any(venv.glob("lib/python*/site-packages/tach-*.dist-info")):  # before the rename to pytest-tach
        _pip(p, venv, [py, "-m", "pip", "uninstall", "-q", "-y", "tach"])
    _pip(p, venv, [py, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
    return py


def _pip(p: Project, venv: Path, cmd: list[str]) -> None:
    """Run pip; when it fails, the error names what pip said, not only its exit status."""
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        said = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise HarnessError(f"{p.label}: installing into {venv} failed (pip exit {proc.returncode}): "
                           + " / ".join(said[-8:]))


# -- running and reading junitxml ----------------------------------------------------


def run_pytest(py: str, cwd: Path, p: Project, extra: list[str], junit: Path, cache_dir: Path,
               limits: Limits, what: str, data_file: Path | None = None) -> Run:
    """One pytest run, its whole output kept beside its junit file (NAME.out); a run
    quiet for limits.heartbeat_s says so on stderr, one over limits.run_s is killed."""
    cmd = [py, "-m", "pytest", "-q", "-o", f"cache_dir={cache_dir}", f"--junitxml={junit}",
           *extra, *p.args, *p.tests]
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    if data_file is not None:
        env["COVERAGE_FILE"] = str(data_file)
    out_path = junit.with_suffix(".out")
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = _wait(proc, out_path, t0, limits, f"{p.label}: {what}")
        except BaseException:  # Ctrl-C or SIGTERM of the harness: the run goes with it
            _kill_group(proc)
            raise
    wall = time.perf_counter() - t0
    text = out_path.read_text(errors="replace")
    outcomes, messages = parse_junit(junit) if junit.exists() else ({}, {})
    return Run(wall, code, outcomes, messages, "\n".join(text.splitlines()[-20:]))


def _wait(proc: subprocess.Popen[bytes], out_path: Path, t0: float, limits: Limits, label: str) -> int | None:
    """The run's exit code; None when it was killed at the limit (its whole process
    group: tach's and the suite's processes with it)."""
    size, quiet_since = -1, time.perf_counter()
    while True:
        now = time.perf_counter()
        if now - t0 > limits.run_s:
            _kill_group(proc)
            print(f"   {label}: killed at the {limits.run_s:g} s limit", file=sys.stderr, flush=True)
            return None
        try:
            return proc.wait(timeout=min(5.0, limits.heartbeat_s))
        except subprocess.TimeoutExpired:
            pass
        grown = out_path.stat().st_size
        if grown != size:
            size, quiet_since = grown, time.perf_counter()
        elif time.perf_counter() - quiet_since >= limits.heartbeat_s:
            quiet_since = time.perf_counter()
            last = _last_line(out_path)
            print(f"   {label}: still running after {time.perf_counter() - t0:.0f} s, quiet for "
                  f"{limits.heartbeat_s:g} s; last line: {last!r}", file=sys.stderr, flush=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _last_line(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 2000))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1][-200:] if lines else ""


def parse_junit(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Per test id (classname::name), its outcome: passed, failed, error, failed+error,
    skipped or xfailed; and the first lines of what explains a non-pass."""
    outcomes: dict[str, list[str]] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        tags = set()
        detail = []
        for child in case:
            if child.tag in ("failure", "error"):
                tags.add(child.tag.replace("failure", "failed"))
            elif child.tag == "skipped":
                tags.add("xfailed" if child.get("type") == "pytest.xfail" else "skipped")
            else:
                continue
            text = (child.get("message") or "") + "\n" + (child.text or "")
            detail.append("\n".join(line for line in text.strip().splitlines()[:6]))
        outcomes.setdefault(tid, []).append("+".join(sorted(tags)) or "passed")
        if detail:
            messages[tid] = "\n".join(detail)
    for v in outcomes.values():
        v.sort()
    return outcomes, messages


def compare(p: Project, plain: Run, tach: Run, nondeterministic: dict[str, str] | None = None) -> list[Mismatch]:
    """Tests whose outcomes differ, each with its explanation: the suites file's, else
    the suite's own nondeterminism when the control run saw that test change too."""
    out = []
    for tid in sorted(set(plain.outcomes) | set(tach.outcomes)):
        a, b = plain.outcomes.get(tid, ["missing"]), tach.outcomes.get(tid, ["missing"])
        if a != b:
            detail = tach.messages.get(tid) or plain.messages.get(tid, "")
            out.append(Mismatch(tid, a, b, detail, explanation(p, tid, nondeterministic)))
    return out


def explanation(p: Project, tid: str, nondeterministic: dict[str, str] | None) -> str:
    """Why a test's outcome may differ: the suites file's word for it (by id or glob),
    else the suite's own nondeterminism when the control run saw it change; else ""."""
    why = p.explain.get(tid) or next((v for k, v in p.explain.items() if fnmatch.fnmatchcase(tid, k)), "")
    if not why and nondeterministic and tid in nondeterministic:
        why = f"the suite's own nondeterminism: {nondeterministic[tid]}"
    return why


def control_diff(first: Run, second: Run) -> dict[str, str]:
    """Tests whose outcome differs between two plain runs (or exist in one only)."""
    out = {}
    for tid in sorted(set(first.outcomes) | set(second.outcomes)):
        a, b = first.outcomes.get(tid, ["missing"]), second.outcomes.get(tid, ["missing"])
        if a != b:
            out[tid] = f"plain pytest gave {'/'.join(a)}, then {'/'.join(b)}"
    return out


def soak_diff(p: Project, runs: list[Run], nondeterministic: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Tests whose outcome under tach was not the same in every run: what each run
    gave, and whose nondeterminism it is when known (the suites file's explanation, or
    the control run's; empty: unexplained, so tach's until shown otherwise)."""
    out = {}
    for tid in sorted(set().union(*(r.outcomes for r in runs))):
        seen = ["/".join(r.outcomes.get(tid, ["missing"])) for r in runs]
        if len(set(seen)) > 1:
            out[tid] = (", then ".join(seen), explanation(p, tid, nondeterministic))
    return out


# -- coverage ------------------------------------------------------------------------

#: prints a coverage.py data file as JSON: {file: [lines, arcs]}
DUMP = """
import json, sys
from coverage import CoverageData
d = CoverageData(sys.argv[1]); d.read()
print(json.dumps({f: [sorted(d.lines(f) or []), sorted(d.arcs(f) or [])] for f in d.measured_files()}))
"""


def read_coverage(py: str, data_file: Path) -> dict[str, list[list[object]]]:
    out = subprocess.run([py, "-c", DUMP, str(data_file)], capture_output=True, text=True)
    if out.returncode != 0:
        raise HarnessError(f"reading {data_file.name}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def coverage_diff(plain: dict[str, list[list[object]]], tach: dict[str, list[list[object]]]) -> list[str]:
    """Files measured by one run only, and per file the lines and arcs one run lacks."""
    out = []
    for f in sorted(set(plain) | set(tach)):
        if f not in tach or f not in plain:
            out.append(f"{f}: measured {'by plain pytest only' if f in plain else 'under tach only'}")
            continue
        for i, kind in enumerate(("lines", "arcs")):
            a = {json.dumps(x) for x in plain[f][i]}
            b = {json.dumps(x) for x in tach[f][i]}
            if a != b:
                out.append(f"{os.path.basename(f)}: {kind} plain only {sorted(a - b)[:8]}, "
                           f"tach only {sorted(b - a)[:8]}")
    return out


def totals(data: dict[str, list[list[object]]]) -> tuple[int, int, int]:
    return len(data), sum(len(v[0]) for v in data.values()), sum(len(v[1]) for v in data.values())


# -- the report ----------------------------------------------------------------------


@dataclass
class Result:
    project: Project
    plain: Run | None = None
    #: the second plain run, and the tests whose outcome it changed
    control: Run | None = None
    nondeterministic: dict[str, str] = field(default_factory=dict)
    modes: dict[str, Run] = field(default_factory=dict)
    mismatches: dict[str, list[Mismatch]] = field(default_factory=dict)
    error: str = ""
    #: with coverage: the plain run with --cov, each mode's, and their data
    cov_plain: Run | None = None
    cov_modes: dict[str, Run] = field(default_factory=dict)
    cov_data_plain: dict[str, list[list[object]]] = field(default_factory=dict)
    cov_diffs: dict[str, list[str]] = field(default_factory=dict)
    #: with --repeat: every run of each mode (the first is modes[m]), and the tests whose
    #: outcome under tach changed between them -> (what each run gave, whose it is)
    repeats: dict[str, list[Run]] = field(default_factory=dict)
    flaky: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)

    def identical(self, mode: str) -> bool:
        return (self.plain is not None and mode in self.modes and not self.mismatches[mode]
                and self.modes[mode].exit_code == self.plain.exit_code)

    def unexplained(self) -> int:
        return (sum(1 for ms in self.mismatches.values() for m in ms if not m.explanation)
                + sum(1 for fl in self.flaky.values() for _, whose in fl.values() if not whose))

    def coverage_unexplained(self) -> list[str]:
        return [m for m, d in self.cov_diffs.items() if d and m not in self.project.cov_explain]


def render(results: list[Result], modes: list[str], header: str, limits: Limits | None = None) -> str:
    limits = limits or Limits()
    lines = [header, "",
             "| project | tests | " + " | ".join(f"identical `{m}`" for m in modes)
             + " | pytest s | " + " | ".join(f"× `{m}`" for m in modes) + " |",
             "|---|---:|" + "---:|" * len(modes) + "---:|" + "---:|" * len(modes)]
    for r in results:
        if r.error or r.plain is None:
            lines.append(f"| {r.project.label} | error: {r.error} |" + " |" * (2 * len(modes) + 1))
            continue
        n = sum(len(v) for v in r.plain.outcomes.values())
        cells = []
        for m in modes:
            run = r.modes[m]
            same = n - sum(len(x.plain) for x in r.mismatches[m] if x.plain != ["missing"])
            cell = f"{same}/{n}"
            if run.exit_code != r.plain.exit_code:
                cell += f" (exit {run.exit_code} vs {r.plain.exit_code})"
            cells.append(cell)
        ratios = [f"{r.modes[m].wall / r.plain.wall:.2f}" for m in modes]
        lines.append(f"| {r.project.label} | {n} | " + " | ".join(cells)
                     + f" | {r.plain.wall:.1f} | " + " | ".join(ratios) + " |")
    # The bar is module isolation; a run without it counts its first mode.
    headline = "module" if "module" in modes else modes[0]
    ok = [r for r in results if r.identical(headline)]
    lines += ["", f"Projects with 100% identical outcomes under `--tach-isolate {headline}`: "
              f"{len(ok)}/{len(results)}."]
    covered = [r for r in results if r.cov_plain is not None]
    if covered:
        lines += ["", "## Coverage", "",
                  "The same suites with pytest-cov (`--cov=PKG --cov-branch`), plain and under tach: "
                  "coverage.py's data compared file by file, line by line and arc by arc. Overhead is "
                  "the wall time with coverage over the same run without (plain pytest's and each tach "
                  "mode's); ÷ divides tach's overhead by plain pytest-cov's (one run each).", "",
                  "| project | files / lines / arcs | " + " | ".join(f"same `{m}`" for m in modes)
                  + " | overhead pytest | " + " | ".join(f"`{m}` (÷)" for m in modes) + " |",
                  "|---|---:|" + "---:|" * len(modes) + "---:|" + "---:|" * len(modes)]
        for r in covered:
            assert r.plain is not None and r.cov_plain is not None
            f, ln, arcs = totals(r.cov_data_plain)
            same = ["yes" if not r.cov_diffs.get(m) else
                    ("explained" if m in r.project.cov_explain else f"**no** ({len(r.cov_diffs[m])})")
                    for m in modes]
            base = r.cov_plain.wall / r.plain.wall
            ratios = {m: r.cov_modes[m].wall / r.modes[m].wall for m in modes}
            over = [f"{ratios[m]:.2f} ({ratios[m] / base:.2f})" for m in modes]
            lines.append(f"| {r.project.label} | {f} / {ln} / {arcs} | " + " | ".join(same)
                         + f" | {base:.2f} | " + " | ".join(over) + " |")
        for r in covered:
            for m, d in r.cov_diffs.items():
                if d:
                    why = r.project.cov_explain.get(m, "")
                    lines += ["", f"{r.project.label} `{m}` coverage differs"
                              + (f" — **explained**: {why}" if why else " — **unexplained**") + ":", "```",
                              *d[:20], "```"]
    details = [(r, m, ms) for r in results for m, ms in r.mismatches.items() if ms]
    if details:
        lines += ["", "## Mismatches", ""]
    for r, m, ms in details:
        lines += [f"### {r.project.label}, `--tach-isolate {m}`", ""]
        for x in ms:
            lines.append(f"- `{x.test_id}`: pytest {'/'.join(x.plain)}, tach {'/'.join(x.tach)}"
                         + (f" — **explained**: {x.explanation}" if x.explanation else " — **unexplained**"))
            if x.detail:
                lines += ["", "  ```", *("  " + ln for ln in x.detail.splitlines()), "  ```", ""]
    for r in results:
        for m, run in r.modes.items():
            if run.exit_code is None or (r.plain and r.plain.exit_code is None):
                lines += ["", f"{r.project.label} `{m}` hit the {limits.run_s:g} s limit:", "```",
                          run.output_tail, "```"]
    soaked = [r for r in results if any(len(v) > 1 for v in r.repeats.values())]
    if soaked:
        n_runs = max(len(v) for r in soaked for v in r.repeats.values())
        lines += ["", "## Soak", "",
                  f"Each mode run {n_runs} times in a row: the tests whose outcome under tach was not "
                  "the same every time (a flake), with whose nondeterminism it is.", "",
                  "| project | " + " | ".join(f"`{m}`" for m in modes) + " |",
                  "|---|" + "---|" * len(modes)]
        for r in soaked:
            cells = []
            for m in modes:
                fl = r.flaky.get(m, {})
                bad = sum(1 for _, whose in fl.values() if not whose)
                cells.append("same each time" if not fl else
                             f"{len(fl)} flaky" + (f", **{bad} unexplained**" if bad else ", all the suite's"))
            lines.append(f"| {r.project.label} | " + " | ".join(cells) + " |")
        for r in soaked:
            for m, fl in r.flaky.items():
                if fl:
                    lines += ["", f"{r.project.label} `{m}`:"]
                    lines += [f"- `{tid}`: {seen}" + (f" — {whose}" if whose else " — **unexplained**")
                              for tid, (seen, whose) in list(fl.items())[:20]]
    shaky = [r for r in results if r.nondeterministic]
    if shaky:
        lines += ["", "## The suites' own nondeterminism", "",
                  "Tests whose outcome differed between two plain pytest runs (the control): a "
                  "difference under tach on these is the suite's, not tach's.", ""]
        for r in shaky:
            lines.append(f"- {r.project.label}: {len(r.nondeterministic)} tests")
            lines += [f"  - `{tid}`: {why}" for tid, why in list(r.nondeterministic.items())[:20]]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------


def run_project(p: Project, args: argparse.Namespace, pytest_req: list[str], wheel: Path | None,
                modes: list[str]) -> Result:
    res = Result(p)
    cache = Path(args.cache)
    limits = Limits(args.run_timeout, args.test_timeout, args.heartbeat)
    work = Path(tempfile.mkdtemp(prefix=f"tach-parity-{p.name}-"))
    tach_args = ["-p", "tach", "--tach-workers", str(args.workers), f"--tach-timeout={limits.test_s:g}"]
    try:
        if p.path is not None:
            src = work / "src"
            shutil.copytree(p.path, src)
        else:
            src = unpack(fetch_sdist(p, cache), cache / "src" / f"{p.name}-{p.version}")
        py = args.python if args.in_place else ensure_venv(p, src, args.python, cache, pytest_req, wheel)
        cache_dir = work / "pytest-cache"
        print(f"== {p.label}: plain pytest", file=sys.stderr, flush=True)
        res.plain = run_pytest(py, src, p, ["-p", "no:tach"], work / "plain.xml", cache_dir, limits, "plain")
        # Exit 2-5 (interrupted, internal error, usage error, nothing collected): the
        # suite did not run as its authors meant, so there would be nothing to compare.
        if not res.plain.outcomes or res.plain.exit_code not in (0, 1):
            raise HarnessError(f"plain pytest did not run the suite (exit {res.plain.exit_code}):\n"
                               f"{res.plain.output_tail}")
        if args.control:
            print(f"== {p.label}: plain pytest again (the control)", file=sys.stderr, flush=True)
            res.control = run_pytest(py, src, p, ["-p", "no:tach"], work / "control.xml", cache_dir, limits,
                                     "control")
            res.nondeterministic = control_diff(res.plain, res.control)
            if res.nondeterministic:
                print(f"   {len(res.nondeterministic)} tests changed between two plain runs",
                      file=sys.stderr, flush=True)
        for m in modes:
            runs = res.repeats.setdefault(m, [])
            for i in range(args.repeat):
                again = f" (run {i + 1} of {args.repeat})" if args.repeat > 1 else ""
                print(f"== {p.label}: tach --tach-isolate {m}{again}", file=sys.stderr, flush=True)
                name = m if i == 0 else f"{m}.{i + 1}"
                run = run_pytest(py, src, p, [*tach_args, "--tach-isolate", m], work / f"{name}.xml",
                                 cache_dir, limits, name)
                runs.append(run)
                found = compare(p, res.plain, run, res.nondeterministic)
                print(f"   {len(found)} mismatches, {run.wall:.1f} s vs {res.plain.wall:.1f} s",
                      file=sys.stderr, flush=True)
                if i == 0:
                    res.modes[m], res.mismatches[m] = run, found
            if len(runs) > 1:
                res.flaky[m] = soak_diff(p, runs, res.nondeterministic)
                if res.flaky[m]:
                    print(f"   {len(res.flaky[m])} tests changed between the {m} runs", file=sys.stderr, flush=True)
        if p.cov and not args.no_coverage:
            covargs = [*(f"--cov={pkg}" for pkg in p.cov), "--cov-branch", "--cov-report="]
            print(f"== {p.label}: plain pytest with coverage", file=sys.stderr, flush=True)
            res.cov_plain = run_pytest(py, src, p, ["-p", "no:tach", *covargs], work / "plain-cov.xml", cache_dir,
                                       limits, "plain with coverage", work / "plain.cov")
            res.cov_data_plain = read_coverage(py, work / "plain.cov")
            for m in modes:
                print(f"== {p.label}: tach --tach-isolate {m} with coverage", file=sys.stderr, flush=True)
                res.cov_modes[m] = run_pytest(
                    py, src, p, [*tach_args, "--tach-isolate", m, *covargs],
                    work / f"{m}-cov.xml", cache_dir, limits, f"{m} with coverage", work / f"{m}.cov")
                res.cov_diffs[m] = coverage_diff(res.cov_data_plain, read_coverage(py, work / f"{m}.cov"))
                print(f"   coverage: {len(res.cov_diffs[m])} differences", file=sys.stderr, flush=True)
    except (HarnessError, OSError, subprocess.CalledProcessError) as e:
        res.error = str(e).splitlines()[0]
        print(f"   error: {e}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"   kept: {work} (junit files and each run's whole output, NAME.out)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


def add_project(spec: str, suites: Path) -> str:
    """Append a stanza for NAME==VERSION to the suites file, its sdist's sha256 from
    PyPI; returns the stanza (its tests path is a guess to check)."""
    name, sep, version = spec.partition("==")
    if not (sep and name and version):
        raise HarnessError(f"--add wants NAME==VERSION, not {spec!r}")
    req = urllib.request.Request(SIMPLE_API.format(name=name),
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            index = json.load(r)
    except OSError as e:
        raise HarnessError(f"--add: PyPI has no project {name!r} (or cannot be reached): {e}") from e
    norm = name.lower().replace("-", "_").replace(".", "_")
    for f in index["files"]:
        fname = f["filename"]
        if fname.endswith(".tar.gz") and fname.lower().replace("-", "_").replace(".", "_").startswith(
                f"{norm}_{version.replace('.', '_')}_tar"):
            stanza = (f'\n[[project]]\nname = "{name}"\nversion = "{version}"\n'
                      f'sha256 = "{f["hashes"]["sha256"]}"\n'
                      '# a guess: check the sdist\'s layout, and add `requires` for its test dependencies\n'
                      'tests = ["tests"]\n')
            with open(suites, "a") as out:
                out.write(stanza)
            return stanza
    raise HarnessError(f"--add: no sdist of {name} {version} on PyPI")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default=str(REPO / "bench" / "suites.toml"))
    ap.add_argument("--project", action="append", help="only these projects (repeatable)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="write the markdown report here too")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--in-place", action="store_true", help="use --python as it is: no venvs, no installs")
    ap.add_argument("--no-coverage", action="store_true", help="compare outcomes only, skip the coverage runs")
    ap.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT, help="seconds one pytest run may take")
    ap.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT,
                    help="seconds one test may take under tach (its --tach-timeout)")
    ap.add_argument("--heartbeat", type=float, default=HEARTBEAT,
                    help="seconds a run may be quiet before the harness says it is still going")
    ap.add_argument("--keep", action="store_true",
                    help="keep each project's work directory: junit files and every run's output")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the second plain run that tells the suite's own nondeterminism")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="the soak: run each mode N times and report tests whose outcome changed")
    ap.add_argument("--add", metavar="NAME==VERSION",
                    help="append a stanza for this PyPI project to the suites file (sha256 filled in)")
    default_cache = Path(os.environ.get("TACH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                               Path.home() / ".cache") / "tach")
    ap.add_argument("--cache", default=str(default_cache / "parity"))
    args = ap.parse_args(argv)
    if args.add:
        try:
            print(add_project(args.add, Path(args.suites)), end="")
        except HarnessError as e:
            print(f"parity: {e}", file=sys.stderr)
            return 2
        return 0
    if args.repeat < 1:
        ap.error("--repeat wants a count of 1 or more")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"unknown modes {bad}; known: {list(MODES)}")
    pytest_req, projects = load_suites(Path(args.suites))
    if args.project:
        unknown = set(args.project) - {p.name for p in projects}
        if unknown:
            ap.error(f"unknown projects {sorted(unknown)}")
        projects = [p for p in projects if p.name in args.project]
    wheel = None
    measured = commit()  # what the wheel is built from (the checkout may move on meanwhile)
    if not args.in_place:
        wheel = build_tach_wheel(args.python, Path(args.cache) / "wheel")
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    header = ("# Parity with plain pytest on real projects\n\n"
              f"Generated by `make parity` (bench/parity.py over {_shown(Path(args.suites))}): each project's "
              "own test suite from its pinned PyPI sdist, run with --junitxml under plain pytest "
              f"and under `pytest -p tach --tach-workers {args.workers}` in each isolate mode; "
              "outcomes compared per test id (junitxml classname::name). \"identical\" counts "
              "tests whose outcome matches plain pytest; × is the wall-time ratio to plain pytest "
              "(one run each, so small suites mostly measure startup).\n\n"
              f"Machine: {machine()}; tach {measured}; CPython {version}; {', '.join(pytest_req)}.")
    limits = Limits(args.run_timeout, args.test_timeout, args.heartbeat)
    results: list[Result] = []
    signal.signal(signal.SIGTERM, _interrupted)
    for p in projects:
        try:
            results.append(run_project(p, args, pytest_req, wheel, modes))
        except KeyboardInterrupt:
            print(f"parity: interrupted in {p.label}"
                  + (f"; {args.out} has the projects done before it" if args.out and results else ""),
                  file=sys.stderr)
            return 130
        if args.out and len(results) < len(projects):  # what is done so far survives a stop
            Path(args.out).write_text(render(results, modes, header + f"\n\n**In progress**: {len(results)} "
                                             f"of {len(projects)} projects so far.", limits))
    report = render(results, modes, header, limits)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    failed = [r.project.label for r in results if r.error]
    unexplained = sum(r.unexplained() for r in results) + sum(len(r.coverage_unexplained()) for r in results)
    exit_mismatch = [r.project.label for r in results for m in modes
                     if r.plain and m in r.modes and r.modes[m].exit_code != r.plain.exit_code
                     and not r.mismatches[m]]
    if failed or unexplained or exit_mismatch:
        print(f"parity: {len(failed)} projects failed to run {failed}, {unexplained} unexplained "
              f"mismatches, exit-code-only differences {exit_mismatch}", file=sys.stderr)
        return 1
    return 0


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
