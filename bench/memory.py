"""Whole-tree peak memory against the fork-based peers (`make bench`; issue 19).

One suite: a conftest that builds ~300 MB of Python objects at import, and 200 trivial
tests in 4 modules. Each tool runs it at 2, 4 and 8 workers (memory needs no cores:
more workers than cores only makes the run slower). The peak is of the whole process
tree (the main process, zygotes, test processes and what they hold, page cache
excluded where the kernel says so): a fresh memory cgroup per run where this machine
lets us make one (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`), else the sum of
every process's PSS sampled every 20 ms (which can miss a short peak: the header says
which was used). "heap" is plain pytest's peak on this suite minus its peak on the same
tests without the conftest, so "+ per worker" (from 2 to 8 workers) reads as a share
of it.

Usage: python bench/memory.py [--workers 2,4,8] [--tools t1,t2] [--append FILE]
Needs pytest-xdist and pytest-zygote in the interpreter's environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import append_to, commit, machine, versions  # after the path insert: bench/ is not a package

CONFTEST = "BIG = [[str(i) * 4 for i in range(j, j + 100)] for j in range(0, 3_000_000, 100)]\n"

#: tool -> its arguments for N workers (None: runs once, in one process)
TOOLS = {
    "pytest": None,
    "xdist": lambda n: ["-n", str(n)],
    "pytest-zygote": lambda n: ["--workers", str(n)],
    "tach test": lambda n: ["-p", "tach", "--tach-workers", str(n), "--tach-isolate", "test"],
    "tach test (fork)": lambda n: ["-p", "tach", "--tach-workers", str(n), "--tach-isolate", "test",
                                   "--tach-reset", "fork"],
    "tach module": lambda n: ["-p", "tach", "--tach-workers", str(n), "--tach-isolate", "module"],
    "tach none": lambda n: ["-p", "tach", "--tach-workers", str(n), "--tach-isolate", "none"],
}
NEEDS = {"xdist": "xdist", "pytest-zygote": "pytest_zygote"}


def make_suite(root: Path, heap: bool) -> None:
    if heap:
        (root / "conftest.py").write_text(CONFTEST)
    for m in range(4):
        (root / f"test_m{m}.py").write_text("".join(f"def test_{i}():\n    pass\n\n" for i in range(50)))


class Cgroup:
    """A fresh memory cgroup for one run, v1 or v2; None from make() where we may not."""

    def __init__(self, path: Path, peak_file: str) -> None:
        self.path = path
        self.peak_file = peak_file

    @staticmethod
    def make() -> Cgroup | None:
        name = f"tach-bench-{uuid.uuid4().hex[:8]}"
        for base, peak in ((Path("/sys/fs/cgroup/memory"), "memory.max_usage_in_bytes"),
                           (Path("/sys/fs/cgroup"), "memory.peak")):
            if not (base / "cgroup.procs").exists():
                continue
            try:
                (base / name).mkdir()
            except OSError:
                continue
            if (base / name / peak).exists():
                return Cgroup(base / name, peak)
            (base / name).rmdir()
        return None

    def enter(self) -> None:
        """In the child before exec: move into the group."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mb(self) -> float:
        return int((self.path / self.peak_file).read_text()) / 2**20

    def remove(self) -> None:
        for _ in range(50):  # the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def pss_tree_mb(root_pid: int) -> float:
    """The sum of PSS over root_pid and its descendants, now."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


def run(python: str, root: Path, args: list[str]) -> tuple[float, float, str]:
    """One run: (peak MB, wall s, how the peak was measured)."""
    cg = Cgroup.make()
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=cg.enter if cg else None)
        peak = 0.0
        if cg is None:
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, pss_tree_mb(proc.pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
        out = proc.communicate()[0]
        wall = time.perf_counter() - t0
        if cg is None:
            done.set()
            sampler.join()
        else:
            peak = cg.peak_mb()
    finally:
        if cg is not None:
            cg.remove()
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-15:])
        raise RuntimeError(f"{args} failed with {proc.returncode}:\n{tail}")
    return peak, wall, "cgroup" if cg else "PSS sampled"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,4,8")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--append", help="append the markdown table to this file")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {list(TOOLS)}")
    for t in tools:
        if t in NEEDS and subprocess.run([args.python, "-c", f"import {NEEDS[t]}"], capture_output=True).returncode:
            ap.error(f"tool {t!r} needs {NEEDS[t]}, which {args.python} cannot import (make bench installs it)")

    root = Path(tempfile.mkdtemp(prefix="tach-bench-mem-"))
    bare = Path(tempfile.mkdtemp(prefix="tach-bench-mem-bare-"))
    try:
        make_suite(root, heap=True)
        make_suite(bare, heap=False)
        base, _, how = run(args.python, bare, [])
        results: dict[tuple[str, int], tuple[float, float]] = {}
        for n in workers:  # interleaved: drift hits every tool alike
            for t in tools:
                make_args = TOOLS[t]
                if make_args is None:
                    if n == workers[0]:
                        peak, wall, how = run(args.python, root, [])
                        results[t, 1] = (peak, wall)
                    continue
                peak, wall, how = run(args.python, root, make_args(n))
                results[t, n] = (peak, wall)
                print(f"{t} x{n}: {peak:.0f} MB, {wall:.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(bare, ignore_errors=True)

    heap = results.get(("pytest", 1), (base, 0.0))[0] - base
    cols = " | ".join(f"{n} workers MB (s)" for n in workers)
    lines = [
        "", "## Memory: the whole process tree's peak", "",
        f"bench/memory.py at tach {commit()}; {machine()}; {versions(args.python)}. "
        f"Peak measured by {'a fresh memory cgroup per run' if how == 'cgroup' else 'summing PSS every 20 ms'}. "
        f"A conftest builds ~300 MB of Python objects; 200 trivial tests in 4 modules. Plain pytest's peak is "
        f"{results.get(('pytest', 1), (0.0, 0.0))[0]:.0f} MB, {base:.0f} MB without the conftest: the heap is "
        f"{heap:.0f} MB. × zygote: against pytest-zygote at the same workers. + per worker: the growth from "
        f"{workers[0]} to {workers[-1]} workers per added worker, as a share of the heap. One run each "
        "(memory does not drift the way time does).", "",
        f"| tool | {cols} | × zygote at {workers[0]} | + per worker |",
        "|---|" + "---:|" * (len(workers) + 2),
    ]
    for t in tools:
        if TOOLS[t] is None:
            peak, wall = results[t, 1]
            lines.append(f"| {t} (1 process) | {peak:.0f} ({wall:.2f}) |" + " |" * (len(workers) + 1))
            continue
        cells = [f"{results[t, n][0]:.0f} ({results[t, n][1]:.2f})" for n in workers]
        z = results.get(("pytest-zygote", workers[0]))
        ratio = f"{results[t, workers[0]][0] / z[0]:.2f}" if z else ""
        grow = ""
        if len(workers) > 1 and heap > 0:
            per = (results[t, workers[-1]][0] - results[t, workers[0]][0]) / (workers[-1] - workers[0])
            grow = f"{per:.0f} MB ({100 * per / heap:.0f}%)"
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {ratio} | {grow} |")
    text = "\n".join(lines) + "\n"
    print(text)
    append_to(args.append, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
