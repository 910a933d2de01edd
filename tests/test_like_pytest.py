"""The zygote engine end to end (each test runs pytest in a subprocess with ``-p tach`` on
a small suite written for the purpose). What a user sees is plain pytest's: collection,
selection, reporting, outcomes on scenario suites, async tests, warnings, -s, in-process
runs, and tach's own report."""

from __future__ import annotations

import sys
import textwrap

import pytest

from conftest import run_both

MODES = ["test", "module", "none"]


def test_collect_only_and_collection_errors_behave_as_plain_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ok="def test_a(): pass\ndef test_b(): pass\n")
    r = pytester.runpytest_subprocess("-p", "tach", "--co", "-q")
    r.stdout.fnmatch_lines(["test_ok.py::test_a", "test_ok.py::test_b", "*2 tests collected*"])
    pytester.makepyfile(test_broken="import nonexistent_module_xyz\n")
    r = pytester.runpytest_subprocess("-p", "tach")
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines(["*1 error during collection*"])


def test_selection_options_apply(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        def test_alpha(): pass
        def test_beta(): assert 0
        @pytest.mark.slow
        def test_gamma(): pass
    """)
    pytester.makeini("[pytest]\nmarkers = slow\n")
    r = pytester.runpytest_subprocess("-p", "tach", "-k", "alpha or gamma", "-m", "not slow")
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess("-p", "tach", "--deselect", "test_selection_options_apply.py::test_beta")
    r.assert_outcomes(passed=2)
    # --lf uses the cache the previous runs wrote from the main process.
    r = pytester.runpytest_subprocess("-p", "tach")
    r.assert_outcomes(passed=2, failed=1)
    r = pytester.runpytest_subprocess("-p", "tach", "--lf")
    r.assert_outcomes(failed=1)


@pytest.mark.parametrize("mode", MODES)
def test_reporting_matches_plain_pytest(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile("""
        import logging, warnings, pytest
        def test_out(record_property):
            print("to stdout")
            logging.getLogger("x").warning("a log line")
            record_property("answer", 42)
            warnings.warn(UserWarning("careful"))
            assert 0
        @pytest.mark.xfail(strict=True)
        def test_xpass_strict(): pass
        @pytest.mark.xfail(reason="known")
        def test_xfail(): assert 0
        def test_skip(): pytest.skip("not today")
    """)
    args = ("-rA", "-p", "no:cacheprovider", "--durations=3")
    plain = pytester.runpytest_subprocess(*args)
    tached = pytester.runpytest_subprocess("-p", "tach", "--tach-isolate", mode, *args)
    for r in (plain, tached):
        r.stdout.fnmatch_lines([
            "*Captured stdout call*", "to stdout", "*Captured log call*", "*a log line*",
            "*UserWarning: careful*", "*slowest 3 durations*",
            "SKIPPED *not today*", "XFAIL *test_xfail*", "FAILED *test_out - assert 0",
            "FAILED *test_xpass_strict*", "*2 failed, 1 skipped, 1 xfailed, 1 warning*",
        ])
    xml = pytester.path / "j.xml"
    pytester.runpytest_subprocess("-p", "tach", f"--junitxml={xml}")
    text = xml.read_text()
    assert 'name="answer" value="42"' in text


@pytest.mark.parametrize("mode", MODES)
def test_outcomes_identical_to_plain_pytest_on_scenarios(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeconftest("""
        import pytest
        @pytest.fixture(scope="session", autouse=True)
        def auto_session(): yield
        @pytest.fixture
        def broken(): raise RuntimeError("fixture error")
        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown error")
    """)
    pytester.makepyfile(test_scen="""
        import sys, unittest, pytest

        def setup_module(module): module.READY = True
        def teardown_module(module): pass

        @pytest.fixture(params=[1, 2], ids=["one", "two"])
        def num(request): return request.param

        @pytest.fixture
        def doubled(request): return request.param * 2

        def test_param(num): assert num in (1, 2)
        @pytest.mark.parametrize("doubled", [1, 3], indirect=True)
        def test_indirect(doubled): assert doubled in (2, 6)
        @pytest.mark.parametrize("a,b", [(1, 1), (2, 3)], ids=["eq", "ne"])
        def test_ids(a, b): assert a == b
        def test_fixture_error(broken): pass
        def test_teardown_error(bad_teardown): pass
        @pytest.mark.skipif(sys.platform == "linux", reason="linux")
        def test_skipif(): pass
        @pytest.mark.xfail(strict=True)
        def test_strict(): pass
        def test_setup_module_ran(): assert READY

        class TestClass:
            @classmethod
            def setup_class(cls): cls.shared = []
            @pytest.fixture(scope="class")
            def klass(self): return {"n": 1}
            def test_one(self, klass): assert self.shared == [] and klass["n"] == 1
            def test_two(self, klass): assert klass == {"n": 1}

        class TestUnit(unittest.TestCase):
            @classmethod
            def setUpClass(cls): cls.ready = True
            def test_ok(self): self.assertTrue(self.ready)
            def test_fail(self): self.assertEqual(1, 2)
            @unittest.skip("skipped")
            def test_skip(self): pass

        def answer():
            '''
            >>> 6 * 7
            42
            >>> 1 + 1
            3
            '''
    """)
    plain, tached = run_both(pytester, "--doctest-modules", tach_args=("--tach-isolate", mode))
    assert len(plain) >= 17
    assert tached == plain


@pytest.mark.parametrize("mode", MODES)
def test_outcomes_identical_on_a_conftest_hierarchy(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(helpers_plugin="""
        import pytest
        @pytest.fixture
        def helper(): return "plugin"
    """)
    pytester.makeconftest("""
        import pytest
        pytest_plugins = ["helpers_plugin"]
        SEEN = []
        @pytest.fixture(scope="session", autouse=True)
        def session_auto(): SEEN.append("session"); yield
    """)
    pkg = pytester.mkpydir("pkg")
    (pkg / "conftest.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.fixture(scope="package", autouse=True)
        def package_auto(): yield "pkg"
        @pytest.fixture
        def helper(helper): return helper + "+pkg"   # overrides and extends the plugin's
    """))
    (pkg / "test_a.py").write_text(textwrap.dedent("""
        import logging, pytest
        @pytest.fixture(scope="module", autouse=True)
        def module_auto(): yield
        def test_override(helper): assert helper == "plugin+pkg"
        def test_capsys(capsys):
            print("hello")
            assert capsys.readouterr().out == "hello\\n"
        def test_capsys_wrong(capsys):
            print("hello")
            assert capsys.readouterr().out == "bye\\n"
        def test_caplog(caplog):
            logging.getLogger("t").warning("careful")
            assert "careful" in caplog.text
        class TestAuto:
            @pytest.fixture(scope="class", autouse=True)
            def class_auto(self): yield
            @pytest.fixture(autouse=True)
            def function_auto(self): yield
            def test_in_class(self, helper): assert helper.endswith("+pkg")
    """))
    sub = pytester.mkpydir("pkg/sub")
    (sub / "conftest.py").write_text("import pytest\n@pytest.fixture\ndef helper(): return 'sub'\n")
    (sub / "test_b.py").write_text("def test_sub(helper): assert helper == 'sub'\n"
                                   "def test_sub_fails(helper): assert helper == 'pkg'\n")
    pytester.makepyfile(test_top="def test_top(helper): assert helper == 'plugin'\n")
    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode))
    assert len(plain) == 8 and sorted(plain.values()).count("failed") == 2
    assert tached == plain


@pytest.mark.parametrize("mode", MODES)
def test_async_tests_with_pytest_asyncio(pytester: pytest.Pytester, mode: str) -> None:
    pytest.importorskip("pytest_asyncio")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
        import asyncio, pytest
        @pytest.fixture
        async def value():
            await asyncio.sleep(0)
            return 21
        async def test_ok(value):
            await asyncio.sleep(0.01)
            assert value * 2 == 42
        async def test_fails(value):
            assert value == 0
        async def test_gather():
            assert await asyncio.gather(asyncio.sleep(0, 1), asyncio.sleep(0, 2)) == [1, 2]
    """)
    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode))
    assert sorted(plain.values()) == ["failed", "passed", "passed"]
    assert tached == plain


def test_warnings_as_errors_and_tmp_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import warnings, pytest
        def test_warns():
            warnings.warn(DeprecationWarning("old"))
        @pytest.mark.parametrize("i", range(4))
        def test_tmp(tmp_path, i):
            assert not any(tmp_path.iterdir())
            (tmp_path / "f").write_text(str(i))
        def test_factory(tmp_path_factory):
            assert tmp_path_factory.mktemp("x").is_dir()
    """)
    # pytest-asyncio (installed for the async scenario) warns at configure time
    # without its ini option, which -W error turns into an error: keep it out.
    plain, tached = run_both(pytester, "-W", "error", "-p", "no:asyncio")
    assert plain["test_warnings_as_errors_and_tmp_path::test_warns"] == "failed"
    assert tached == plain


def test_a_test_that_forks_a_subprocess_itself(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, subprocess, sys
        def test_fork():
            pid = os.fork()
            if pid == 0:
                os._exit(5)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 5
        def test_subprocess():
            out = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True)
            assert out.stdout.strip() == "42"
    """)
    plain, tached = run_both(pytester)
    assert set(plain.values()) == {"passed"}
    assert tached == plain


def test_s_shows_output_live(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_p():\n    print('LIVE-OUTPUT-MARKER')\n")
    r = pytester.runpytest_subprocess("-p", "tach", "-s")
    r.stdout.fnmatch_lines(["*LIVE-OUTPUT-MARKER*"])
    r.assert_outcomes(passed=1)


def test_sequential_in_process_runs(pytester: pytest.Pytester) -> None:
    """pytester's in-process runs, or any tool calling pytest.main() again, start the
    engine again in the same process: nothing of an earlier run may be left (a finished
    run once stayed registered in pytest_tach._core and the next one was refused)."""
    pytester.makepyfile(test_two="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    driver = pytester.makepyfile(driver="""
        import os, pytest
        def run():
            return int(pytest.main(["-q", "-p", "tach", "-p", "no:cacheprovider", "test_two.py"]))
        def fds():
            out = set()
            for fd in os.listdir("/proc/self/fd"):
                try:
                    out.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
                except FileNotFoundError:  # listdir's own, closed by now
                    pass
            return out
        codes = [run()]
        before = fds()
        codes += [run(), run()]
        print("CODES", codes, "NEW-FDS", sorted(fds() - before))
    """)
    r = pytester.run(sys.executable, str(driver))
    # The Go runtime's own epoll and eventfd count too: it opens them at the first run
    # (go/core), not whenever its scavenger first sets a timer (an intermittent +2 here).
    r.stdout.fnmatch_lines(["CODES [[]0, 0, 0[]] NEW-FDS [[][]]"])


def test_tach_report_lists_slowest_and_hungriest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import time
        def test_slow(): time.sleep(0.3)
        def test_big(): x = bytearray(64 << 20); x[::4096] = b"x" * len(x[::4096])
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-report")
    r.stdout.fnmatch_lines(["*tach report*", "slowest tests*", "*test_slow*",
                            "most memory-hungry tests*", "*MiB*test_big*"])
