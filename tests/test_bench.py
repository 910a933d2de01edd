"""The offline slice of `make bench` and `make parity`: the harnesses themselves must
not rot between the (long, downloading) full runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FULL_MATRIX, REPO_ROOT

BENCH = REPO_ROOT / "bench"


def test_bench_tables_two_synthetic_suites(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "engine.py"), "--reps", "1", "--tools", "pytest,tach module",
         "--suite", "1 s session fixture + 400 tests", "--suite", "200 MB conftest + 400 trivial",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line}
    assert float(rows["1 s session fixture + 400 tests", "tach module"][1]) > 0
    plain = rows["200 MB conftest + 400 trivial", "pytest"]
    tach = rows["200 MB conftest + 400 trivial", "tach module"]
    assert plain[1] == "1.00"
    assert float(tach[1]) > 0
    # Peak RSS comes from wait4 over the process tree: the conftest's 200 MB must show.
    assert float(plain[4]) >= 200 and float(tach[4]) >= 200
    assert "Machine:" in out.read_text()


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_memory_bench_measures_the_whole_tree(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "memory.py"), "--workers", "2,3", "--tools", "pytest,tach module",
         "--append", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    heap = float(text.split("the heap is ")[1].split()[0])
    assert heap >= 150, text  # the conftest's ~300 MB of objects, whatever measured it
    row = next(line for line in text.splitlines() if line.startswith("| tach module |"))
    peaks = [float(c.split()[0]) for c in row.split("|")[2:4]]
    # The whole tree: the main process and the zygote's share of the heap at least.
    assert all(p >= heap for p in peaks), row


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_faults_bench_measures_a_stopped_run(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "faults.py"), "--reps", "1", "--workers", "2", "--modes", "module",
         "--signals", "SIGKILL,SIGINT", "--append", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in out.read_text().splitlines() if line.startswith("| `module`"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert len(cells) == 2 and all(float(c.split(" / ")[0]) > 0 for c in cells), row


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_ceiling_bench_splits_the_main_process_cost(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "ceiling.py"), "--tests", "300", "--reps", "1", "--append", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| tach ")]
    assert len(rows) == 2, out.read_text()
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        thread, hooks, own = (float(c) for c in cells[:3])
        # The main thread did the replaying: its cost is there, and splits into its parts.
        assert thread > 0 and hooks > 0 and abs(thread - hooks - own) < 0.002, row
        assert int(cells[5].replace(",", "")) > 0


SCENARIO = {
    "test_plain.py": """
        import pytest

        @pytest.fixture(scope="module")
        def box():
            return []

        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_param(n, box):
            box.append(n)
            assert len(box) >= 1

        def test_skip():
            pytest.skip("not here")

        @pytest.mark.xfail(strict=True)
        def test_xfail():
            assert False

        def test_fails():
            assert 1 == 2
    """,
    "test_order.py": """
        STATE = {}

        def test_writer():
            STATE["seen"] = True

        def test_reader_needs_writer():
            # Passes only when test_writer ran earlier in the same process.
            assert STATE.get("seen")
    """,
}


def _write_suites(tmp_path: Path, name: str, files: dict[str, str], extra: str) -> Path:
    """A local project of these files, and a suites.toml naming it (extra: its keys)."""
    proj = tmp_path / name
    for rel, body in files.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(textwrap.dedent(body))
    suites = tmp_path / "suites.toml"
    suites.write_text(textwrap.dedent(f"""
        [[project]]
        name = "{name}"
        path = "{name}"
        tests = ["."]
        args = ["-p", "no:randomly"]
    """) + extra + "\n")
    return suites


def _scenario(tmp_path: Path, explain: bool) -> Path:
    explanation = ('explain = { "test_order::test_reader_*" = '
                   '"depends on test_writer having run in the same process" }') if explain else ""
    return _write_suites(tmp_path, "scenario", SCENARIO, explanation)


def _parity(tmp_path: Path, suites: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    out = tmp_path / "parity.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "parity.py"), "--in-place", "--suites", str(suites),
         "--modes", "test,module", "--out", str(out), "--cache", str(tmp_path / "cache"), *extra],
        capture_output=True, text=True, timeout=600)
    return proc, out.read_text() if out.exists() else ""


def test_parity_finds_and_reports_an_order_dependent_test(tmp_path: Path) -> None:
    proc, report = _parity(tmp_path, _scenario(tmp_path, explain=False))
    # The order-dependent test passes in a plain run and under module isolation (one
    # process per module, in order), but fails under test isolation: a mismatch the
    # harness must find, show with tach's longrepr, and fail on while unexplained.
    assert proc.returncode == 1, proc.stderr
    row = next(line for line in report.splitlines() if line.startswith("| scenario"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "8"  # tests
    assert cells[2].startswith("7/8")  # identical under test
    assert cells[3] == "8/8"  # identical under module
    assert "`test_order::test_reader_needs_writer`: pytest passed, tach failed — **unexplained**" in report
    assert "assert None" in report  # the first lines of tach's longrepr
    assert "Projects with 100% identical outcomes under `--tach-isolate module`: 1/1." in report


def test_parity_accepts_an_explained_mismatch(tmp_path: Path) -> None:
    proc, report = _parity(tmp_path, _scenario(tmp_path, explain=True))
    assert proc.returncode == 0, proc.stderr + report
    assert "**explained**: depends on test_writer having run in the same process" in report


COVERAGE_SCENARIO = {
    "covpkg/__init__.py": """
        SEEN = []

        def mark():
            SEEN.append(1)

        def check():
            if SEEN:
                return "after another test"
            return "first"
    """,
    "test_cov.py": """
        import covpkg

        def test_mark():
            covpkg.mark()

        def test_check():
            assert covpkg.check()
    """,
}


def _coverage_scenario(tmp_path: Path, explain: bool) -> Path:
    explanation = ('cov_explain = { test = "check() sees what mark() left only in one process" }'
                   if explain else "")
    return _write_suites(tmp_path, "covscenario", COVERAGE_SCENARIO, f'cov = ["covpkg"]\n{explanation}')


def test_parity_compares_coverage_and_finds_a_difference(tmp_path: Path) -> None:
    """Outcomes match in every mode, but under test isolation check() never sees what
    mark() did: one line more, one less. The coverage comparison must say so, and fail
    on it while unexplained; under module isolation the data is identical."""
    proc, report = _parity(tmp_path, _coverage_scenario(tmp_path, explain=False))
    assert proc.returncode == 1, proc.stderr
    row = next(line for line in report.splitlines() if line.startswith("| covscenario") and " / " in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2].startswith("**no**") and cells[3] == "yes"
    assert "covscenario `test` coverage differs — **unexplained**" in report
    proc, report = _parity(tmp_path, _coverage_scenario(tmp_path, explain=True))
    assert proc.returncode == 0, proc.stderr + report
    assert "**explained**: check() sees what mark() left only in one process" in report


FLAKY = {
    "test_flaky.py": """
        from pathlib import Path

        RUNS = Path(__file__).with_name("runs.txt")

        def test_alternates():
            # Its outcome flips from one pytest run to the next (the suite's doing).
            n = int(RUNS.read_text()) if RUNS.exists() else 0
            RUNS.write_text(str(n + 1))
            assert n % 2 == 0

        def test_steady():
            pass
    """,
}


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_parity_tells_the_suites_nondeterminism_by_a_control_run(tmp_path: Path) -> None:
    """A test that flips between two plain runs is reported as the suite's own, not
    counted against tach; with --no-control it is an unexplained mismatch."""
    suites = _write_suites(tmp_path, "flaky", FLAKY, "")
    proc, report = _parity(tmp_path, suites)
    assert "## The suites' own nondeterminism" in report, proc.stderr
    assert "`test_flaky::test_alternates`: plain pytest gave passed, then failed" in report
    assert "**explained**: the suite's own nondeterminism" in report
    assert proc.returncode == 0, proc.stderr + report
    assert f"bench/parity.py over {suites}" in report  # the suites file it really read


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_the_soak_reports_a_test_whose_outcome_changes_between_runs(tmp_path: Path) -> None:
    """--repeat runs each mode again: a test that flips from run to run is a flake, the
    suite's when the control saw it flip too; without the control it is unexplained and
    the harness fails. A steady test is not listed."""
    suites = _write_suites(tmp_path, "flaky", FLAKY, "")
    proc, report = _parity(tmp_path, suites, "--repeat", "3", "--modes", "test")
    assert "## Soak" in report and "Each mode run 3 times" in report, proc.stderr
    assert "| flaky | 1 flaky, all the suite's |" in report
    assert "- `test_flaky::test_alternates`: passed, then failed, then passed — the suite's own" in report
    assert "test_steady" not in report.split("## Soak")[1]
    assert proc.returncode == 0, proc.stderr + report
    proc, report = _parity(tmp_path, _write_suites(tmp_path, "flaky2", FLAKY, ""), "--repeat", "2",
                           "--modes", "module", "--no-control")
    assert "1 flaky, **1 unexplained**" in report, proc.stderr + report
    assert proc.returncode == 1


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_parity_says_a_quiet_run_is_going_and_kills_it_at_the_limit(tmp_path: Path) -> None:
    suites = _write_suites(tmp_path, "hangs", {"test_hang.py": """
        import time
        def test_hangs():
            time.sleep(600)
    """}, "")
    out = tmp_path / "parity.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "parity.py"), "--in-place", "--suites", str(suites), "--modes", "test",
         "--out", str(out), "--cache", str(tmp_path / "cache"), "--run-timeout", "12", "--heartbeat", "2",
         "--keep"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "hangs: plain: still running after" in proc.stderr and "last line:" in proc.stderr
    assert "hangs: plain: killed at the 12 s limit" in proc.stderr
    kept = next(line.split("kept: ")[1].split(" (")[0] for line in proc.stderr.splitlines() if "kept: " in line)
    assert (Path(kept) / "plain.out").exists()
    shutil.rmtree(kept, ignore_errors=True)


@pytest.mark.skipif(not FULL_MATRIX, reason="the harness is the same on every interpreter: 3.11 and 3.12 run it")
def test_parity_stopped_takes_its_run_with_it(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) of the harness mid-run: the pytest run it started goes too, and
    the harness says where it stopped."""
    import os
    import signal
    import time

    suites = _write_suites(tmp_path, "stopped", {"test_hang.py": """
        import time
        def test_hangs():
            time.sleep(600)
    """}, "")
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "parity.py"), "--in-place", "--suites", str(suites), "--modes", "test",
             "--cache", str(tmp_path / "cache"), "--heartbeat", "1"], stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 120  # a bound for a loaded machine, not a measure
    while "still running" not in err.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.1)

    def runs() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if b"tach-parity-stopped-" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
        return found

    assert runs()  # the hanging run, going
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert "parity: interrupted in stopped" in err.read_text()
    assert not runs()
