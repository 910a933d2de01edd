"""Plugins that keep state in the processes tach forks, or that must act in the main
process alone: each behaves as in a plain run (tach's handover hooks, hooks.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import matrix

#: every mode on 3.11 and 3.12; elsewhere the default mode (see conftest.matrix)
MODES = matrix(["test", "module", "none"], ["test"])


def _reportlog_entries(path: Path) -> Counter[tuple[str, str, str, str]]:
    """Each line of a report log, without what differs from run to run (durations,
    timestamps, the pytest version line's contents)."""
    out: Counter[tuple[str, str, str, str]] = Counter()
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        kind = doc["$report_type"]
        if doc.get("nodeid", "").startswith("runpytest-"):
            continue  # pytester's --basetemp of each run, collected as a directory
        if kind == "WarningMessage":
            out[(kind, doc.get("nodeid", ""), doc.get("when", ""), doc.get("message", ""))] += 1
        else:
            out[(kind, doc.get("nodeid", ""), doc.get("when", ""), doc.get("outcome", ""))] += 1
    return out


@pytest.mark.parametrize("mode", MODES)
def test_reportlog_writes_each_report_once(pytester: pytest.Pytester, mode: str) -> None:
    """pytest-reportlog writes a line per report: the forked processes used to write
    every report through the inherited file, and the main process again on replay."""
    pytest.importorskip("pytest_reportlog")
    pytester.makepyfile(test_log="""
        import warnings
        import pytest

        @pytest.fixture(scope="module")
        def shared():
            return 1

        def test_pass(shared):
            pass

        def test_fail(shared):
            assert shared == 2

        def test_warns():
            warnings.warn(UserWarning("careful"))

        @pytest.mark.skip(reason="no")
        def test_skip():
            pass
    """)
    plain, tached = pytester.path / "plain.jsonl", pytester.path / "tach.jsonl"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--report-log={plain}")
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-isolate", mode,
                                      f"--report-log={tached}")
    r.assert_outcomes(passed=2, failed=1, skipped=1, warnings=1)
    expected = _reportlog_entries(plain)
    assert sum(expected.values()) > 10  # session start/finish, 12 reports, a warning
    assert _reportlog_entries(tached) == expected


def test_main_only_plugins_ini_unregisters_a_plugin_from_forked_processes(pytester: pytest.Pytester) -> None:
    """tach_main_only_plugins: a plugin that writes a line per report (to a file it
    opened in the main process) writes each report once, from the main process."""
    pytester.makeconftest("""
        import os

        class Writer:
            def __init__(self, path):
                self.f = open(path, "a", buffering=1)

            def pytest_runtest_logreport(self, report):
                self.f.write(f"{os.getpid()} {report.nodeid} {report.when}\\n")

        def pytest_configure(config):
            config.pluginmanager.register(Writer("reports.txt"), "report-writer")
    """)
    pytester.makepyfile(test_x="def test_a(): pass\ndef test_b(): pass\n")
    pytester.makeini("[pytest]\ntach_main_only_plugins = report-writer\n")
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
    lines = (pytester.path / "reports.txt").read_text().splitlines()
    assert len(lines) == 6 and len({line.split()[0] for line in lines}) == 1, lines


@pytest.mark.parametrize("mode", MODES)
def test_failed_subtests_fail_their_test(pytester: pytest.Pytester, mode: str) -> None:
    """pytest >= 9's subtests: the test of a failed subtest fails (it was reported passed:
    pytest counts failed subtests where the test ran, and reads the count where its
    report is logged)."""
    pytest.importorskip("_pytest.subtests")
    pytester.makepyfile(test_sub="""
        def test_two_fail(subtests):
            for i in range(4):
                with subtests.test(i=i):
                    assert i % 2 == 0

        def test_all_pass(subtests):
            with subtests.test("fine"):
                pass

        def test_plain():
            pass
    """)
    from conftest import run_both

    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode))
    assert plain["test_sub::test_two_fail"] == "failed"
    assert tached == plain
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-isolate", mode)
    r.stdout.fnmatch_lines(["SUBFAILED(i=1) *", "*contains 2 failed subtests*", "*3 failed, 2 passed*"])


@pytest.mark.parametrize("mode", MODES)
def test_benchmark_results_reach_the_table_and_json(pytester: pytest.Pytester, mode: str) -> None:
    """pytest-benchmark: the table and --benchmark-json list every benchmark, in the
    order of a plain run (there were none: "no benchmarks have been run")."""
    pytest.importorskip("pytest_benchmark")
    pytester.makepyfile(test_bench="""
        import pytest

        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        @pytest.mark.parametrize("n", [3, 6])
        def test_fib(benchmark, n):
            assert benchmark(fib, n) >= 0

        def test_pedantic(benchmark):
            benchmark.extra_info["kind"] = "pedantic"
            benchmark.group = "slow"
            benchmark.pedantic(fib, args=(8,), rounds=3, iterations=2)

        def test_no_benchmark():
            pass
    """)

    def benchmarks(*args: str) -> list[tuple[object, ...]]:
        out = pytester.path / "bench.json"
        r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--benchmark-json={out}",
                                          "--benchmark-max-time=0.01", *args)
        r.assert_outcomes(passed=4)
        r.stdout.fnmatch_lines(["*benchmark 'slow': 1 tests*", "*test_pedantic*"])
        doc = json.loads(out.read_text())
        return [(b["fullname"], b["group"], b["param"], b["extra_info"], b["options"]["timer"],
                 b["stats"]["rounds"] if b["name"] == "test_pedantic" else b["stats"]["rounds"] > 0)
                for b in doc["benchmarks"]]

    plain = benchmarks()
    assert len(plain) == 3
    assert benchmarks("-p", "tach", "--tach-isolate", mode) == plain


SNAPSHOT_TESTS = """
import pytest

def test_dict(snapshot):
    assert {"a": 1, "b": [1, 2]} == snapshot

@pytest.mark.parametrize("n", [1, 2, 3])
def test_param(snapshot, n):
    assert n * 10 == snapshot

class TestC:
    def test_two(self, snapshot):
        assert "x" == snapshot
        assert "y" == snapshot(name="named")
"""


def _syrupy_supported() -> bool:
    from importlib.metadata import version

    pytest.importorskip("syrupy")
    return int(version("syrupy").split(".")[0]) >= 7


def test_syrupy_before_7_is_refused_clearly(pytester: pytest.Pytester) -> None:
    if _syrupy_supported():
        pytest.skip("syrupy >= 7 is installed (on Python >= 3.11)")
    pytester.makepyfile(test_snap=SNAPSHOT_TESTS)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--snapshot-update")
    assert r.ret == 4
    assert "tach needs syrupy >= 7" in r.stderr.str()
    assert "Traceback" not in r.stderr.str() + r.stdout.str()
    assert not (pytester.path / "__snapshots__").exists()


@pytest.mark.parametrize("mode", MODES)
def test_syrupy_snapshots_written_used_and_deleted_as_in_a_plain_run(pytester: pytest.Pytester, mode: str) -> None:
    """syrupy: --snapshot-update writes the snapshots (tests of one module write one
    file at once), a comparison run finds them all used, and an unused one is reported
    and deleted as in a plain run. Before: every snapshot was "unused", and
    --snapshot-update deleted them all."""
    if not _syrupy_supported():
        pytest.skip("syrupy < 7 (on Python 3.10): tach refuses it, see above")
    snaps = pytester.path / "__snapshots__"

    def run(tach: bool, *args: str) -> tuple[int, list[str], str]:
        extra = ("-p", "tach", "--tach-isolate", mode) if tach else ()
        r = pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra, *args)
        out = r.stdout.str()
        summary = out[out.index("snapshot report summary"):].splitlines()[1:-1] if "snapshot report" in out else []
        files = "".join(p.read_text() for p in sorted(snaps.glob("*"))) if snaps.exists() else ""
        return int(r.ret), [line for line in summary if line.strip()], files

    def scenario(tach: bool) -> list[tuple[int, list[str], str]]:
        import shutil

        shutil.rmtree(snaps, ignore_errors=True)
        pytester.makepyfile(test_snap=SNAPSHOT_TESTS)
        steps = [run(tach, "--snapshot-update"), run(tach)]
        pytester.makepyfile(test_snap=SNAPSHOT_TESTS.replace('"x" == snapshot', '"z" == snapshot'))
        steps.append(run(tach))  # a changed value fails
        pytester.makepyfile(test_snap=SNAPSHOT_TESTS.replace("[1, 2, 3]", "[1]"))
        steps += [run(tach), run(tach, "--snapshot-update")]  # two unused: reported, then deleted
        assert not list(pytester.path.rglob("*.lock"))
        return steps

    plain = scenario(tach=False)
    assert [s[0] for s in plain] == [0, 0, 1, 1, 0]
    assert "6 snapshots generated." in plain[0][1] and plain[4][2].count("# name:") == 4
    assert scenario(tach=True) == plain


@pytest.mark.parametrize("mode", MODES)
def test_testmon_records_every_test_and_selects_as_in_a_plain_run(pytester: pytest.Pytester, mode: str) -> None:
    """pytest-testmon: a second run selects nothing, and after a change only the test
    that ran the changed code (before: tests lost their data, and every forked process
    wrote to the database)."""
    pytest.importorskip("testmon")
    import sqlite3

    pytester.makepyfile(pkg="def a():\n    return 1\n\ndef b():\n    return 2\n")
    pytester.makepyfile(test_x="""
        import pytest
        import pkg

        def test_a():
            assert pkg.a() == 1

        def test_b():
            assert pkg.b() == 2

        @pytest.mark.parametrize("n", range(4))
        def test_many(n):
            assert pkg.a() + n >= 1

        def test_none():
            pass
    """)

    def runs(*tach: str) -> list[object]:
        for f in pytester.path.glob(".testmondata*"):
            f.unlink()
        seen: list[object] = []
        for change in (None, None, ("return 2", "return 3")):
            if change:
                src = pytester.path / "pkg.py"
                src.write_text(src.read_text().replace(*change))
            r = pytester.runpytest_subprocess("--testmon", *tach)
            seen.append(r.parseoutcomes())
            db = sqlite3.connect(pytester.path / ".testmondata")
            seen.append([db.execute(f"select count(*) from {t}").fetchone()[0]
                         for t in ("test_execution", "test_execution_file_fp", "file_fp")])
            db.close()
        (pytester.path / "pkg.py").write_text("def a():\n    return 1\n\ndef b():\n    return 2\n")
        return seen

    plain = runs()
    assert plain[4] == {"failed": 1, "deselected": 6}
    assert runs("-p", "tach", "--tach-isolate", mode) == plain


def test_testmon_beside_pytest_cov(pytester: pytest.Pytester) -> None:
    """pytest-testmon stops pytest-cov's measuring while it measures, and hands pytest-cov
    the lines afterwards: they reach pytest-cov's report (they were lost, and tach
    printed an internal error from coverage.py in every test process)."""
    pytest.importorskip("testmon")
    pytest.importorskip("pytest_cov")
    pytester.makepyfile(pkg="def a():\n    return 1\n\ndef b():\n    return 2\n")
    pytester.makepyfile(test_x="import pkg\n\ndef test_a():\n    assert pkg.a()\n\ndef test_b():\n    assert pkg.b()\n")

    def total(*tach: str) -> str:
        for f in [*pytester.path.glob(".testmondata*"), *pytester.path.glob(".coverage*")]:
            f.unlink()
        r = pytester.runpytest_subprocess("--testmon", "--cov=pkg", "--cov-report=term", *tach)
        assert "internal error" not in r.stdout.str() + r.stderr.str()
        return next(line for line in r.stdout.lines if line.startswith("TOTAL"))

    plain = total()
    assert plain.endswith("100%")
    for mode in MODES:
        assert total("-p", "tach", "--tach-isolate", mode) == plain


@pytest.mark.parametrize("mode", MODES)
def test_dependency_chains_hold_as_in_a_plain_run(pytester: pytest.Pytester, mode: str) -> None:
    """pytest-dependency: a test runs only if the tests it depends on passed earlier
    (before: 3 passed, 6 skipped against 7 passed, 2 skipped; the results were recorded
    in other processes). Module, class and session scope; a module fixture beside."""
    pytest.importorskip("pytest_dependency")
    pytester.makepyfile(test_a="""
        import pytest

        @pytest.fixture(scope="module")
        def shared():
            return {}

        @pytest.mark.dependency()
        def test_one(shared):
            pass

        @pytest.mark.dependency()
        def test_fails():
            assert False

        @pytest.mark.dependency(depends=["test_one"])
        def test_needs_one(shared):
            pass

        @pytest.mark.dependency(depends=["test_fails"])
        def test_needs_failed():
            pass

        @pytest.mark.dependency(depends=["test_needs_one"])
        def test_chain():
            pass

        def test_unrelated(shared):
            pass

        class TestK:
            @pytest.mark.dependency()
            def test_k1(self):
                pass

            @pytest.mark.dependency(depends=["TestK::test_k1"])
            def test_k2(self):
                pass
    """, test_b="""
        import pytest

        @pytest.mark.dependency(depends=["test_a.py::test_one"], scope="session")
        def test_across_modules():
            pass

        @pytest.mark.dependency(depends=["test_a.py::test_fails"], scope="session")
        def test_across_to_failed():
            pass
    """)
    from conftest import run_both

    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode))
    assert sorted(plain.values()).count("skipped") == 2 and sorted(plain.values()).count("passed") == 7
    assert tached == plain
