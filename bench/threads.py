"""Stress mode against pytest-run-parallel: same suite, same threads x iterations,
interleaved runs, median wall time (issue: "thread-stress overhead ... <= 1.3x").

Also times collection (--co) of 2000 tests with and without --tach-threads, since
thread-unsafe detection must not slow collection (tach analyses after collection, once,
before the first fork); and measures race-finding power: of 10 trials of a natural
unlocked `+=` race (no forced switch), how many each tool catches, on an idle machine and
with every core kept busy. That rate depends on scheduling and load, so it is a figure
here, never an assertion in tach's tests (those use races made certain).

Usage: python bench/threads.py [--reps N] [--threads 4] [--iterations 10] [--append FILE]
Needs pytest-run-parallel installed beside tach (for the comparison only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from engine import append_to, run_once  # bench/engine.py

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


NATURAL_RACE = '''
import pytest

class Counter:
    n = 0

@pytest.fixture
def counter(num_parallel_threads, num_iterations):
    c = Counter()
    yield c
    assert c.n == num_parallel_threads * num_iterations * 200, f"lost updates: {c.n}"

@pytest.mark.parametrize("trial", range(10))
def test_unlocked(counter, trial):
    for _ in range(200):
        counter.n += 1  # read, add, write: another thread may write in between
'''


def caught(py: str, root: Path, extra: list[str]) -> int:
    """How many of the 10 trials ended in an error (the teardown saw lost updates)."""
    xml = root / "race.xml"
    subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *extra],
                   cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return sum(1 for case in ET.parse(xml).getroot().iter("testcase")
               if any(child.tag in ("error", "failure") for child in case))


def race_power(py: str, tools: dict[str, list[str]]) -> list[tuple[str, int, int]]:
    """(tool, trials caught idle, trials caught with every core busy) for each tool."""
    root = Path(tempfile.mkdtemp(prefix="tach-bench-race-"))
    rows = []
    try:
        (root / "test_race.py").write_text(NATURAL_RACE)
        idle = {name: caught(py, root, extra) for name, extra in tools.items()}
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        try:
            busy = {name: caught(py, root, extra) for name, extra in tools.items()}
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        rows = [(name, idle[name], busy[name]) for name in tools]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


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
    out()
    out(f"| natural unlocked `+=` race, {t} threads × {it} iterations | caught of 10, idle "
        "| caught of 10, every core busy |")
    out("|---|---:|---:|")
    race_tools = {k: v for k, v in tools.items() if k != "tach --tach-isolate none"}
    for name, idle, busy in race_power(py, race_tools):
        out(f"| {name} | {idle} | {busy} |")
    append_to(args.append, "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
