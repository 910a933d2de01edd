"""What every gauntlet case checks of a tach run, whatever was done to it.

A case runs ``python -m pytest -p tach`` on a suite written for it, in a subprocess of its
own, does something to the run (or the suite does something to itself) and then holds
the run to the same invariants:

- every selected test ended with exactly one outcome (its reports, as the main process
  replayed them, read by a probe plugin: no phase reported twice, and the test's outcome
  decided by a failed setup or by a call);
- no process of the run is left: every process tach or a test started carries a token in
  its environment, and none may be alive once the run is over;
- tach printed no traceback of its own;
- the exit code is the one pytest gives for the outcomes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: a plugin the run loads: it writes, from the main process only, the selected tests and
#: every report replayed there
PROBE = '''
import json, os
_main = os.getpid()

def pytest_configure(config):
    global _main
    _main = os.getpid()
    os.environ["GAUNTLET_MAIN"] = str(_main)  # the tests' processes inherit it

def _write(rec):
    if os.getpid() == _main:
        with open(os.environ["GAUNTLET_LOG"], "a") as f:
            f.write(json.dumps(rec) + "\\n")

def pytest_collection_finish(session):
    _write({"selected": [item.nodeid for item in session.items]})

def pytest_runtest_logreport(report):
    _write({"id": report.nodeid, "when": report.when, "outcome": report.outcome})
'''

#: a frame of tach's own code in a traceback (a module of the package: a directory named
#: tach higher up, such as the default cache ~/.cache/tach/venv/..., is not one), or
#: tach's last-resort message
TACH_TRACEBACK = re.compile(r'File "[^"]*/pytest_tach/(?:forked/|stress/)?[^"/]*\.py", line \d+|tach: internal error')

#: how long a run's processes may take to go once its main process is gone: a bound for
#: a loaded machine, not a measure (the bench keeps times)
SETTLE_S = 30.0


@dataclass
class Run:
    rc: int
    out: str
    token: str
    selected: list[str] = field(default_factory=list)
    #: test id -> [(phase, outcome), ...] as replayed in the main process
    reports: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def outcome(self, nodeid: str) -> str:
        """The test's one outcome: passed, failed, skipped or error (a failed setup or
        teardown); raises AssertionError when it has none or more than one."""
        reports = self.reports.get(nodeid, [])
        phases = [when for when, _ in reports]
        assert len(phases) == len(set(phases)), f"{nodeid}: a phase reported twice: {reports}"
        got = dict(reports)
        if got.get("setup", "passed") != "passed":
            assert "call" not in got, f"{nodeid}: a call after a failed setup: {reports}"
            return "skipped" if got["setup"] == "skipped" else "error"
        assert "call" in got, f"{nodeid}: no outcome: {reports}"
        if got.get("teardown", "passed") == "failed":
            return "error"
        return got["call"]

    def no_phase_twice(self) -> None:
        for nodeid, reports in self.reports.items():
            phases = [when for when, _ in reports]
            assert len(phases) == len(set(phases)), f"{nodeid}: a phase reported twice: {reports}"

    def outcomes(self) -> dict[str, str]:
        unselected = set(self.reports) - set(self.selected)
        assert not unselected, f"reports for tests not selected: {sorted(unselected)}"
        return {nodeid: self.outcome(nodeid) for nodeid in self.selected}

    def check(self, rc: int | None = None) -> dict[str, str]:
        """Hold the run to every invariant; returns its outcomes."""
        assert not TACH_TRACEBACK.search(self.out), f"a traceback of tach's:\n{self.out[-6000:]}"
        outcomes = self.outcomes()
        if rc is None:
            bad = any(o in ("failed", "error") for o in outcomes.values())
            rc = 1 if bad else 0
        assert self.rc == rc, f"exit code {self.rc}, expected {rc}:\n{self.out[-6000:]}"
        return outcomes


def run(path: Path, *args: str, during: Callable[[subprocess.Popen[bytes]], None] | None = None,
        preexec: Callable[[], None] | None = None, timeout: float = 600,
        expect_main_alive: bool = True, env: dict[str, str] | None = None) -> Run:
    """Run pytest -p tach in path (env: added to the environment); `during` gets the
    process while it runs."""
    (path / "gauntlet_probe.py").write_text(PROBE)
    token = uuid.uuid4().hex
    log = path / f"reports-{token}.jsonl"
    out_path = path / f"out-{token}.txt"
    env = {**os.environ, **(env or {}), "GAUNTLET_TOKEN": token, "GAUNTLET_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH")) if p)}
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "tach", "-p", "gauntlet_probe",
             "-p", "no:cacheprovider", *args],
            cwd=path, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
        try:
            if during is not None:
                during(proc)
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    left = leftovers(token)
    result = Run(rc, out_path.read_text(errors="replace"), token)
    assert not left, f"processes of the run left: {left}\n{result.out[-4000:]}"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "selected" in rec:
                result.selected = rec["selected"]
            else:
                result.reports.setdefault(rec["id"], []).append((rec["when"], rec["outcome"]))
    return result


def collected(path: Path) -> bool:
    """Whether a run in path has finished collecting (the probe said which tests it selected)."""
    return any('"selected"' in log.read_text() for log in path.glob("reports-*.jsonl"))


def leftovers(token: str, settle: float = SETTLE_S) -> list[str]:
    """Processes still alive (zombies aside) with the run's token in their environment,
    after waiting up to `settle` seconds for them to go."""
    needle = f"GAUNTLET_TOKEN={token}".encode()
    deadline = time.monotonic() + settle
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if needle not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state != "Z":
                found.append(f"{proc.name} ({state}) {cmd[:120]}")
        if not found or time.monotonic() > deadline:
            if found:  # do not leave them to the next case either
                for entry in found:
                    try:
                        os.kill(int(entry.split()[0]), signal.SIGKILL)
                    except OSError:
                        pass
            return found
        time.sleep(0.1)


def wait_for(predicate: Callable[[], bool], what: str, bound: float = 120) -> None:
    """Wait until predicate() holds (a bound for a loaded machine, not a measure)."""
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, f"not within {bound:g}s: {what}"
        time.sleep(0.05)
