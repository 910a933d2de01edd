"""Fixture shapes and plugins that a fork would break: no run stalls, the plugins that
time tests or run them in processes of their own behave as in a plain run (or are
refused clearly)."""

from __future__ import annotations

import pytest

from conftest import matrix

MODES = matrix(["test", "module", "none"], ["test", "none"])


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("mode", ["test", "module", "none"])
def test_a_parametrized_session_fixture_used_by_one_module_does_not_stall(
        pytester: pytest.Pytester, mode: str, workers: str) -> None:
    """Found on a real suite: with --tach-isolate none and one or two workers, the
    long-lived runners of the first two modules sat idle, counted against the limit,
    while the session zygote still had to fork the zygote for the parameter's value;
    the run waited forever after two tests."""
    pytester.makepyfile(test_a="def test_a():\n    pass\n", test_b="def test_b():\n    pass\n",
                        test_c="""
        import pytest

        @pytest.fixture(scope="session", params=["x"])
        def p(request):
            return request.param

        def test_c(p):
            assert p == "x"
    """)
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-isolate", mode,
                                           "--tach-workers", workers, timeout=120)
    result.assert_outcomes(passed=3)


def test_a_run_that_stops_moving_says_what_it_waits_for(pytester: pytest.Pytester) -> None:
    """A test that hangs (here: until tach has said so) is named, with how long it has
    been running, instead of the run waiting silently."""
    flag = pytester.path / "said"
    pytester.makeconftest(f"""
        import tach.engine

        _say = tach.engine._say_stall

        def _said(config, items, ev):
            _say(config, items, ev)
            open({str(flag)!r}, "w").close()

        tach.engine._say_stall = _said
    """)
    pytester.makepyfile(test_hang=f"""
        import os
        import time

        def test_hangs_until_told():
            for _ in range(6000):  # at most a minute: tach must have said something by then
                if os.path.exists({str(flag)!r}):
                    return
                time.sleep(0.01)
            raise AssertionError("tach never said what the run waits for")
    """)
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "1",
                                           "-o", "tach_stall_report=0.2", timeout=120)
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"tach: nothing has moved for \d+ s; 1 tests not finished; waiting for: "
                                  r"test_hang.py::test_hangs_until_told \(running for \d+ s, pid \d+\)"])


def test_a_bad_stall_report_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "tach", "-o", "tach_stall_report=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option tach_stall_report: expected a number of seconds >= 0 (0: never), "
                                 "got 'soon'*"])


def test_pytest_xdist_at_once_is_refused_clearly(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "tach", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-xdist is active in this run too*Drop -n and let tach run them*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    # With tach's engine off, pytest-xdist runs the tests.
    pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "0", "-n", "2").assert_outcomes(passed=1)


#: A test at its scope's teardown gate (test_c's: the last) waits for a sibling that needs longer
#: than the timeout; the wait must not count. The sibling starts its sleep only once the
#: waiting test has run its call, so the wait is long whatever the load.
GATE_SUITE = {
    "conftest": """
        import pytest

        @pytest.fixture(scope="session")
        def shared():
            return 1
    """,
    "test_a": """
        import time

        def test_hangs(shared):
            time.sleep(60)
    """,
    "test_b": """
        import os
        import time
        import pytest

        @pytest.mark.timeout(120)
        def test_sibling(shared):
            for _ in range(6000):
                if os.path.exists("called"):
                    break
                time.sleep(0.01)
            time.sleep(5)
    """,
    "test_c": """
        def test_waits_at_the_gate(shared):
            open("called", "w").close()
    """,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["thread", "signal"])
def test_pytest_timeout_times_the_test_and_reports_why(pytester: pytest.Pytester, mode: str,
                                                       method: str) -> None:
    """pytest-timeout's thread method ends the process with the reason and the stacks
    written to the terminal: they must reach the test's report. Under either method,
    the time a test waits at tach's teardown gate is not the test's."""
    pytest.importorskip("pytest_timeout")
    if method == "signal" and mode != "test":
        pytest.skip("the gate and the signal method: one mode shows it")
    for name, body in GATE_SUITE.items():
        if name == "conftest":
            pytester.makeconftest(body)
        else:
            pytester.makepyfile(**{name: body})
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess(
        "-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "2", "--tach-isolate", mode,
        "-o", f"timeout_method={method}", "--timeout", "2", f"--junitxml={xml}", timeout=180)
    from conftest import outcomes_by_test

    assert outcomes_by_test(xml) == {
        "test_a::test_hangs": "failed",
        "test_b::test_sibling": "passed",
        "test_c::test_waits_at_the_gate": "passed",
    }, result.stdout.str()
    out = result.stdout.str()
    assert "Timeout" in out
    if method == "thread":
        result.stdout.fnmatch_lines(["*Timeout (2 s, pytest-timeout, method thread)*",
                                     "*Stack of MainThread*", "*test_a.py*in test_hangs*"])
