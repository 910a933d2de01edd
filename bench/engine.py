"""Side-by-side timings of tach's engine against plain pytest, pytest-xdist,
pytest-forked and pytest-zygote on synthetic suites (`make bench`; issue: "Speed").

Each suite is generated into a temporary directory; the tools run interleaved
(A B C A B C ...) so that drift on a shared machine hits all of them alike. Per suite and
tool the table gives the median wall time with min and max, the ratios of the medians to
plain pytest and to xdist, the peak RSS of the largest process of the run, and minor page
faults per test. RSS and faults come from wait4() on the pytest process: the kernel
folds in every descendant it reaped (zygotes, test processes, xdist workers), the way
/usr/bin/time does.

Usage: python bench/engine.py [--reps N] [--suite NAME ...] [--tools t1,t2] [--out FILE]
Needs pytest-xdist and pytest-forked in the interpreter's environment (`make bench`
installs them into a separate venv).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def trivial(root: Path, n: int = 2000, per_module: int = 100) -> None:
    for m in range(n // per_module):
        (root / f"test_m{m:03d}.py").write_text(
            "".join(f"def test_{i}():\n    pass\n\n" for i in range(per_module)))


def slow_conftest(root: Path) -> None:
    (root / "conftest.py").write_text(
        "import time\n_t = time.process_time()\nwhile time.process_time() - _t < 1.0:\n    pass\n")
    trivial(root, 400, 100)


def session_fixture(root: Path) -> None:
    (root / "conftest.py").write_text(
        "import time, pytest\n@pytest.fixture(scope='session')\ndef expensive():\n"
        "    time.sleep(1.0)\n    return 42\n")
    for m in range(4):
        (root / f"test_s{m}.py").write_text(
            "".join(f"def test_{i}(expensive):\n    assert expensive == 42\n\n" for i in range(100)))


def cpu_tests(root: Path) -> None:
    body = ("def test_{i}():\n    t = time.process_time()\n"
            "    while time.process_time() - t < 0.02:\n        pass\n\n")
    for m in range(4):
        (root / f"test_c{m}.py").write_text("import time\n\n" + "".join(body.format(i=i) for i in range(50)))


def big_conftest(root: Path) -> None:
    # 200 distinct 1 MB bytes objects: resident, not zero pages the kernel could share.
    (root / "conftest.py").write_text(
        "import os\nBLOB = [os.urandom(1 << 20) for _ in range(200)]\n")
    trivial(root, 400, 100)


def module_fixtures(root: Path) -> None:
    for m in range(50):
        (root / f"test_f{m:02d}.py").write_text(
            "import time, pytest\n\n@pytest.fixture(scope='module')\ndef resource():\n"
            "    time.sleep(0.2)\n    return {}\n\n"
            + "".join(f"def test_{i}(resource):\n    resource[{i}] = 1\n\n" for i in range(10)))


SUITES = {
    "2000 trivial tests": (trivial, 2000),
    "1 s conftest import + 400 trivial": (slow_conftest, 400),
    "1 s session fixture + 400 tests": (session_fixture, 400),
    "200 tests x 20 ms CPU": (cpu_tests, 200),
    "200 MB conftest + 400 trivial": (big_conftest, 400),
    "50 modules x 0.2 s module fixture (500 tests)": (module_fixtures, 500),
}

TOOLS = {
    "pytest": [],
    "xdist -n 2": ["-n", "2"],
    "forked": ["--forked"],
    "pytest-zygote": ["--workers", "2"],
    "tach test": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "test"],
    "tach test (fork)": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "test", "--tach-reset", "fork"],
    "tach module": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "module"],
    "tach none": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "none"],
}

# The plugin each tool needs, checked before anything runs.
NEEDS = {"xdist -n 2": "xdist", "forked": "pytest_forked", "pytest-zygote": "pytest_zygote"}

# Runs that would take over 10 minutes are not made; the table says why.
# pytest-forked forks every test from the main process with nextitem=None, so a session
# fixture is set up and torn down in every test (docs/design.md: 1 s x 400 = ~404 s a run).
SKIP = {("1 s session fixture + 400 tests", "forked"):
        "skipped: over 10 min (~400 s a run: the 1 s session fixture runs in every test)"}


@dataclass
class Sample:
    wall: float
    minflt: int
    maxrss_kb: int


def run_once(python: str, root: Path, args: list[str]) -> Sample:
    """One pytest run; wall time, and faults and peak RSS of the process tree from wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-15:])
        raise RuntimeError(f"{args} failed with {proc.returncode}:\n{tail}")
    return Sample(wall, ru.ru_minflt, ru.ru_maxrss)


def versions(python: str) -> str:
    code = ("import importlib.metadata as m, sys\n"
            "names = ['pytest', 'pytest-xdist', 'pytest-forked', 'pytest-zygote', 'tach']\n"
            "have = []\n"
            "for n in names:\n"
            "    try: have.append(f'{n} {m.version(n)}')\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(f\"CPython {sys.version.split()[0]}, \" + ', '.join(have))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def machine() -> str:
    """The machine, for a report's header (bench/parity.py uses it too)."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs usable, {mem:.0f} GiB, Linux {platform.release()}"


def append_to(path: str | None, text: str) -> None:
    """Append a report section to path (a bench script's --append), if one was given."""
    if path:
        with open(path, "a") as f:
            f.write(text)


def commit() -> str:
    """The checkout's commit, so a table says which tach it measured."""
    return subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--suite", action="append", choices=list(SUITES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--out", help="also write the markdown report to this file")
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {list(TOOLS)}")
    suites = args.suite or list(SUITES)
    for t in tools:
        if t in NEEDS and subprocess.run([args.python, "-c", f"import {NEEDS[t]}"], capture_output=True).returncode:
            ap.error(f"tool {t!r} needs {NEEDS[t]}, which {args.python} cannot import (make bench installs it)")
    lines = [
        "# Benchmarks: tach against plain pytest, pytest-xdist, pytest-forked and pytest-zygote", "",
        f"Generated by `make bench` (bench/engine.py) at tach {commit()}. Machine: {machine()}; "
        f"{versions(args.python)}.", "",
        f"Each suite is generated afresh; the tools run interleaved (A B C … A B C …), "
        f"{args.reps} repetitions; wall is the median (min–max), ratios are of medians from "
        "this same run. Peak RSS is the largest single process of the run (wait4 on the "
        "pytest process covers every descendant it reaped, like /usr/bin/time); faults are "
        "minor page faults of the whole run divided by the number of tests. tach, xdist and "
        "pytest-zygote use 2 workers.", "",
        "| suite | tool | wall s (min–max) | × pytest | × xdist | × zygote | peak RSS MB | minor faults/test |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in suites:
        make, ntests = SUITES[name]
        root = Path(tempfile.mkdtemp(prefix="tach-bench-"))
        try:
            make(root)
            samples: dict[str, list[Sample]] = {t: [] for t in tools if (name, t) not in SKIP}
            for _ in range(args.reps):
                for t in samples:
                    samples[t].append(run_once(args.python, root, TOOLS[t]))
            med = {t: statistics.median(s.wall for s in v) for t, v in samples.items()}
            for t in tools:
                if t not in samples:
                    row = f"| {name} | {t} | {SKIP[name, t]} | | | | | |"
                else:
                    v = samples[t]
                    base, xd, zy = med.get("pytest"), med.get("xdist -n 2"), med.get("pytest-zygote")
                    r1 = f"{med[t] / base:.2f}" if base else ""
                    r2 = f"{med[t] / xd:.2f}" if xd else ""
                    r3 = f"{med[t] / zy:.2f}" if zy else ""
                    walls = [s.wall for s in v]
                    rss = max(s.maxrss_kb for s in v) / 1024
                    fpt = statistics.median(s.minflt for s in v) / ntests
                    row = (f"| {name} | {t} | {med[t]:.2f} ({min(walls):.2f}–{max(walls):.2f}) | {r1} | {r2} "
                           f"| {r3} | {rss:.0f} | {fpt:.0f} |")
                lines.append(row)
                print(row, flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
