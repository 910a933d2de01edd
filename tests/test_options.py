"""The zygote engine end to end (each test runs pytest in a subprocess with ``-p tach`` on
a small suite written for the purpose). Options and activation: errors that name the
option, help, and tach off without -p tach."""

from __future__ import annotations

import pytest


def test_option_errors_name_the_option_and_allowed_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "-3")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--tach-workers: expected a non-negative integer or 'auto', got '-3'*"])
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-isolate", "banana")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--tach-isolate: expected one of test, module, none, got 'banana'*"])
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-timeout", "soon")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--tach-timeout: expected a number of seconds*got 'soon'*"])
    pytester.makeini("[pytest]\ntach_isolate = sometimes\n")
    r = pytester.runpytest_subprocess("-p", "tach")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*ini option tach_isolate: expected one of test, module, none*"])


def test_options_are_in_help(pytester: pytest.Pytester) -> None:
    r = pytester.runpytest_subprocess("-p", "tach", "--help")
    r.stdout.fnmatch_lines(["*tach (turned on with -p tach): isolated, parallel, crash-proof*",
                            "*--tach-workers=N|auto*", "*--tach-isolate=MODE*", "*--tach-timeout=SECONDS*",
                            "*--tach-report*",
                            "*tach_workers*", "*tach_isolate*", "*tach_timeout*"])


def test_not_active_without_p_tach(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import os\ndef test_pid():\n    assert os.getpid() == int(os.environ['MAIN_PID'])")
    pytester.makeconftest(
        "import os\ndef pytest_configure(config):\n    os.environ['MAIN_PID'] = str(os.getpid())\n")
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:tach")
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "0")
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess("-p", "tach")
    r.assert_outcomes(failed=1)  # under the engine the test runs in another process


def test_tachs_own_modules_are_not_assertion_rewritten(pytester: pytest.Pytester) -> None:
    # -p tach marks the package for pytest's assertion rewriting, which would parse and
    # compile all of it again in every run that caches no bytecode; tach un-marks it.
    pytester.makepyfile("""
        import sys

        def test_loaders():
            # (the package's __init__ itself is imported by the hook before it can un-mark)
            mods = {name: m for name, m in sys.modules.items() if name.startswith("pytest_tach.")}
            assert len(mods) > 10
            rewritten = [n for n, m in mods.items() if type(m.__loader__).__name__ == "AssertionRewritingHook"]
            assert rewritten == []
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "1")
    r.assert_outcomes(passed=1)
