"""Side-by-side timings of tach's engine against plain pytest, pytest-xdist and
pytest-forked on synthetic suites (issue: "Speed").

Each suite is generated into a temporary directory; the tools run interleaved
(A B C A B C ...) so that drift on a shared machine hits all of them alike; the table
reports the median wall time, the ratio to plain pytest and to xdist, and minor page
faults per test (from RUSAGE_CHILDREN, which accumulates every reaped descendant, so it
covers zygotes and test processes too).

Usage: python bench/engine.py [--reps N] [--suite NAME ...] [--tools t1,t2]
Needs pytest-xdist and pytest-forked in the interpreter's environment (make bench-engine
installs them into a separate venv).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


SUITES = {
    "2000 trivial tests": (trivial, 2000),
    "1 s conftest import + 400 trivial": (slow_conftest, 400),
    "1 s session fixture + 400 tests": (session_fixture, 400),
    "200 tests x 20 ms CPU": (cpu_tests, 200),
}

TOOLS = {
    "pytest": [],
    "xdist -n 2": ["-n", "2"],
    "forked": ["--forked"],
    "tach test": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "test"],
    "tach module": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "module"],
    "tach none": ["-p", "tach", "--tach-workers", "2", "--tach-isolate", "none"],
}

# pytest-forked runs session fixtures in every test (DESIGN.md: 1 s x 400 = 404 s).
SKIP = {("1 s session fixture + 400 tests", "forked"): "skipped: ~400 s (session fixture per test)"}


def run_once(python: str, root: Path, args: list[str]) -> tuple[float, int, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                       cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        tail = "\n".join(p.stdout.splitlines()[-15:])
        raise RuntimeError(f"{args} failed with {p.returncode}:\n{tail}")
    return wall, after.ru_minflt - before.ru_minflt, after.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--suite", action="append", choices=list(SUITES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {list(TOOLS)}")
    suites = args.suite or list(SUITES)
    print(f"# tach engine benchmark: {os.cpu_count()} CPUs, {sys.version.split()[0]}, "
          f"median of {args.reps} interleaved runs\n")
    print("| suite | tool | wall s | × pytest | × xdist | minor faults/test |")
    print("|---|---|---:|---:|---:|---:|")
    for name in suites:
        make, ntests = SUITES[name]
        root = Path(tempfile.mkdtemp(prefix="tach-bench-"))
        try:
            make(root)
            walls: dict[str, list[float]] = {t: [] for t in tools}
            faults: dict[str, list[int]] = {t: [] for t in tools}
            for _ in range(args.reps):
                for t in tools:
                    if (name, t) in SKIP:
                        continue
                    w, f, _ = run_once(args.python, root, TOOLS[t])
                    walls[t].append(w)
                    faults[t].append(f)
            med = {t: statistics.median(v) for t, v in walls.items() if v}
            for t in tools:
                if (name, t) in SKIP:
                    print(f"| {name} | {t} | {SKIP[name, t]} | | | |")
                    continue
                base, xd = med.get("pytest"), med.get("xdist -n 2")
                r1 = f"{med[t] / base:.2f}" if base else ""
                r2 = f"{med[t] / xd:.2f}" if xd else ""
                fpt = statistics.median(faults[t]) / ntests
                print(f"| {name} | {t} | {med[t]:.2f} | {r1} | {r2} | {fpt:.0f} |", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
