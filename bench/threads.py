"""Stress mode against pytest-run-parallel: same suite, same threads x iterations,
interleaved runs, median wall time (issue: "thread-stress overhead ... <= 1.3x").

Also times collection (--co) of 2000 tests with and without --tach-threads, since
thread-unsafe detection must not slow collection (tach analyses after collection, once,
before the first fork).

Usage: python bench/threads.py [--reps N] [--threads 4] [--iterations 10] [--append FILE]
Needs pytest-run-parallel installed beside tach (for the comparison only).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from engine import run_once  # bench/engine.py

SUITE = '''
import threading
LOCK = threading.Lock()
SHARED = {{}}

def test_work_{i}(thread_index):
    total = 0
    for k in range(3000):
        total += k * k
    with LOCK:
        SHARED[thread_index] = total
    assert total == 8995500500
'''


def make_suite(root: Path, n: int) -> None:
    per = 50
    for m in range(n // per):
        (root / f"test_s{m}.py").write_text("".join(SUITE.format(i=i) for i in range(per)))


def medians(py: str, root: Path, variants: dict[str, list[str]], reps: int) -> dict[str, float]:
    """Median wall time of each variant, run interleaved (A B A B ...)."""
    walls: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, extra in variants.items():
            walls[name].append(run_once(py, root, extra).wall)
    return {k: statistics.median(v) for k, v in walls.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--tests", type=int, default=200)
    ap.add_argument("--append", help="also append the markdown tables to this file")
    args = ap.parse_args()
    lines: list[str] = []

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    py = sys.executable
    t, it = str(args.threads), str(args.iterations)
    tools = {
        "pytest-run-parallel": ["-p", "no:tach", "--parallel-threads", t, "--iterations", it],
        "tach": ["-p", "tach", "-p", "no:run-parallel", "--tach-threads", t, "--tach-iterations", it],
        "tach --tach-isolate none": ["-p", "tach", "-p", "no:run-parallel", "--tach-threads", t,
                                     "--tach-iterations", it, "--tach-isolate", "none"],
    }
    out(f"## Stress mode vs pytest-run-parallel: CPython {sys.version.split()[0]}"
        f"{' (free-threaded)' if 'free-threading' in sys.version else ''}")
    out()
    out(f"bench/threads.py: {args.tests} tests, {t} threads × {it} iterations, median of {args.reps} "
        "interleaved runs; tach in its default `--tach-isolate test` (a process per test) and "
        "`none` (long-lived runners), one test body at a time like pytest-run-parallel "
        "(with `test`, the next test's process is forked and set up meanwhile).")
    out()
    out("| tool | wall s | × run-parallel |")
    out("|---|---:|---:|")
    root = Path(tempfile.mkdtemp(prefix="tach-bench-threads-"))
    try:
        make_suite(root, args.tests)
        med = medians(py, root, tools, args.reps)
        for name, m in med.items():
            out(f"| {name} | {m:.2f} | {m / med['pytest-run-parallel']:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    root = Path(tempfile.mkdtemp(prefix="tach-bench-collect-"))
    try:
        for m in range(20):
            (root / f"test_c{m}.py").write_text(
                "import pytest\n" + "".join(f"def test_{i}(): pass\n" for i in range(100)))
        co = {"plain --co": ["-p", "no:run-parallel", "--co"],
              "tach --co": ["-p", "tach", "-p", "no:run-parallel", "--co"],
              "tach --co --tach-threads 8": ["-p", "tach", "-p", "no:run-parallel", "--co", "--tach-threads", "8"]}
        med = medians(py, root, co, args.reps)
        out()
        out("| collection of 2000 tests | wall s | × tach --co |")
        out("|---|---:|---:|")
        for name, m in med.items():
            out(f"| {name} | {m:.2f} | {m / med['tach --co']:.2f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
