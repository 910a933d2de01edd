"""How far tach scales: the main process's serial cost per test (`make bench`; issue 19).

The main process collects, then takes every report the test processes send and replays
it through pytest's hooks, one at a time: whatever the worker count, the run cannot go
faster than the main process can take reports. This measures that cost on trivial
tests (where it weighs most), from inside the main process:

* the main thread's CPU time during pytest_runtestloop (the serial part: decoding
  frames, tach's replay, pytest's reporting hooks; waiting for frames costs none),
* of which pytest's hooks (logstart, logreport, logfinish, report_from_serializable:
  what a plain pytest run pays too), timed by a hook wrapper around every other
  implementation,
* the Go supervisor's threads: the process's CPU time minus the main thread's,
* the test processes and zygotes: the whole tree's CPU time (wait4) minus the main
  process's.

From these: the ceiling (tests per second the main thread can take), and the projected
speed of the test loop at 8, 16 and 32 workers on as many cores, min(workers / worker
cost, 1 / main-thread cost), against plain pytest's own loop cost per test.

Usage: python bench/ceiling.py [--tests N] [--workers N] [--reps N] [--append FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import append_to, commit, machine, versions  # after the path insert: bench/ is not a package

PROBE = '''
    """Loaded with -p: the main process's CPU during the test loop, split."""
    import json, os, resource, time
    import pytest

    MAIN = os.getpid()
    DATA = {"hooks": 0.0}

    def _cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtestloop(session):
        t, p = time.thread_time(), _cpu()
        yield
        if os.getpid() == MAIN:
            DATA.update(thread=time.thread_time() - t, process=_cpu() - p, tests=len(session.items))
            with open(os.environ["CEILING_OUT"], "w") as f:
                json.dump(DATA, f)

    def _timed(name):
        @pytest.hookimpl(hookwrapper=True)
        def wrapper(*args, **kwargs):
            t = time.thread_time()
            yield
            if os.getpid() == MAIN:
                DATA["hooks"] += time.thread_time() - t
        wrapper.__name__ = name
        return wrapper

    pytest_runtest_logstart = _timed("pytest_runtest_logstart")
    pytest_runtest_logreport = _timed("pytest_runtest_logreport")
    pytest_runtest_logfinish = _timed("pytest_runtest_logfinish")
    pytest_report_from_serializable = _timed("pytest_report_from_serializable")
'''


@dataclass
class Sample:
    thread: float  # main thread CPU s in the loop
    process: float  # main process CPU s in the loop (all threads)
    hooks: float  # of thread: pytest's reporting hooks
    tree: float  # CPU s of the whole run (every process)
    tests: int


def run(python: str, root: Path, args: list[str]) -> Sample:
    out = root / "ceiling.json"
    env = {**os.environ, "CEILING_OUT": str(out), "PYTHONPATH": str(root)}
    proc = subprocess.Popen([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                             "-p", "ceiling_probe", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()  # type: ignore[union-attr]
    _, status, ru = os.wait4(proc.pid, 0)
    proc.stdout.close()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args} failed:\n" + "\n".join(text.splitlines()[-15:]))
    d = json.loads(out.read_text())
    return Sample(d["thread"], d["process"], d["hooks"], ru.ru_utime + ru.ru_stime, d["tests"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--append", help="append the markdown section to this file")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tach-bench-ceiling-"))
    try:
        (root / "ceiling_probe.py").write_text(textwrap.dedent(PROBE))
        per = 100
        for m in range(max(1, args.tests // per)):
            (root / f"test_m{m:03d}.py").write_text("".join(f"def test_{i}():\n    pass\n\n" for i in range(per)))
        modes = {
            "pytest": [],
            "tach none": ["-p", "tach", "--tach-workers", str(args.workers), "--tach-isolate", "none"],
            "tach test": ["-p", "tach", "--tach-workers", str(args.workers), "--tach-isolate", "test"],
        }
        samples: dict[str, list[Sample]] = {m: [] for m in modes}
        for _ in range(args.reps):  # interleaved
            for m, extra in modes.items():
                samples[m].append(run(args.python, root, extra))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def med(m: str, f: str) -> float:
        return statistics.median(getattr(s, f) for s in samples[m])

    n = samples["pytest"][0].tests
    plain_ms = 1000 * med("pytest", "thread") / n  # a plain run's loop: one process does everything
    lines = [
        "", "## How far it scales: the main process's cost per test", "",
        f"bench/ceiling.py at tach {commit()}; {machine()}; {versions(args.python)}. {n} trivial tests, "
        f"{args.workers} workers, medians of {args.reps} interleaved runs; CPU per test in ms, measured inside "
        "the main process during pytest_runtestloop (main thread: time.thread_time; the Go supervisor's threads: "
        "the process's CPU minus the main thread's) and for the rest of the tree with wait4. The main thread is "
        "serial: the ceiling is 1 / its cost. Plain pytest's loop (one process runs and reports every test) "
        f"costs {plain_ms:.3f} ms a test.", "",
        "| mode | main thread | of it pytest's hooks | of it tach (decode, replay) | Go threads | test processes, "
        "zygotes | ceiling tests/s | 8 / 16 / 32 workers × plain loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ("tach none", "tach test"):
        thread = med(m, "thread")
        hooks = med(m, "hooks")
        go = med(m, "process") - thread
        # Everything outside the main process: the tree's CPU minus the main process's.
        # (The main process's CPU outside the loop, collection and start-up, is about
        # plain pytest's: subtract plain's non-loop share to leave the loop's workers.)
        plain_outside = med("pytest", "tree") - med("pytest", "process")
        workers_cpu = med(m, "tree") - med(m, "process") - plain_outside
        c_m, c_w = thread / n, max(workers_cpu, 0.0) / n
        proj = []
        for w in (8, 16, 32):
            per_test = max(c_w / w, c_m)  # s per test with w workers on w cores
            proj.append(f"{(plain_ms / 1000) / per_test:.1f}")
        lines.append(
            f"| {m} | {1000 * c_m:.3f} | {1000 * hooks / n:.3f} | {1000 * (thread - hooks) / n:.3f} "
            f"| {1000 * go / n:.3f} | {1000 * c_w:.3f} | {1 / c_m:,.0f} | {' / '.join(proj)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    append_to(args.append, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
