"""The zygote engine end to end (each test runs pytest in a subprocess with ``-p tach`` on
a small suite written for the purpose). Containment: whatever a test does to its process
(a crash, a bad frame, pytest.exit, Ctrl-C) ends in one outcome per test, and stopping a
run leaves no process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SCOPES, outcomes_by_test

MODES = ["test", "module", "none"]


CRASHERS = """
    import ctypes, os, signal, time, pytest

    def test_ok(): pass
    def test_segfault(): ctypes.string_at(0)
    def test_exit_code(): os._exit(3)
    def test_abort(): os.abort()
    def test_sigkill(): os.kill(os.getpid(), signal.SIGKILL)
    def test_exit_zero_silently(): os._exit(0)
    def test_closes_stdout_and_stderr():
        os.close(1)
        os.close(2)
    @pytest.mark.timeout(1)
    def test_hangs(): time.sleep(60)
    def test_ok_too(): pass
"""


@pytest.mark.parametrize("mode", MODES)
def test_crashes_are_contained_and_reported(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_crash=CRASHERS)
    xml = pytester.path / "out.xml"
    # -p no:timeout: tach's own deadline for the timeout marker (pytest-timeout's is
    # tests/test_fixture_shapes.py's)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "-p", "no:timeout",
                                      f"--junitxml={xml}", "--tach-isolate", mode)
    outcomes = outcomes_by_test(xml)
    assert outcomes == {
        "test_crash::test_ok": "passed", "test_crash::test_ok_too": "passed",
        "test_crash::test_closes_stdout_and_stderr": "passed",
        "test_crash::test_segfault": "failed", "test_crash::test_exit_code": "failed",
        "test_crash::test_abort": "failed", "test_crash::test_sigkill": "failed",
        "test_crash::test_exit_zero_silently": "failed", "test_crash::test_hangs": "failed",
    }
    out = r.stdout.str()
    for nodeid, why in [
        ("test_segfault", "was killed by SIGSEGV (signal 11)"),
        ("test_exit_code", "exited with code 3"),
        ("test_abort", "was killed by SIGABRT (signal 6)"),
        ("test_sigkill", "was killed by SIGKILL (signal 9)"),
        ("test_exit_zero_silently", "exited with status 0 before reporting"),
    ]:
        assert f"crashed while running 'test_crash.py::{nodeid}'" in out
        assert why in out, why
    assert "Fatal Python error: Segmentation fault" in out
    assert 'line 4 in test_segfault' in out  # faulthandler's traceback of the crash
    assert "Timeout (>1s) in 'test_crash.py::test_hangs'" in out
    assert "in test_hangs" in out  # the stack dumped before the kill
    assert r.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("mode", ["module", "none"])
def test_crash_mid_module_replaces_the_runner(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile("""
        import os, pytest
        @pytest.mark.parametrize("i", range(6))
        def test_x(i):
            if i == 2:
                os._exit(9)
    """)
    xml = pytester.path / "out.xml"
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-isolate", mode, f"--junitxml={xml}")
    outcomes = outcomes_by_test(xml)
    assert sorted(outcomes.values()) == ["failed"] + ["passed"] * 5, outcomes
    r.stdout.fnmatch_lines(["*crashed while running*test_x?2?*", "*exited with code 9*"])


@pytest.mark.parametrize("garbage", ["b'\\xff\\xff\\xff\\xff'", "b'\\x00\\x00\\x00\\x03\\xc1\\xc1\\xc1'"],
                         ids=["oversized", "not-msgpack"])
def test_malformed_frame_fails_the_test_and_the_run_goes_on(pytester: pytest.Pytester, garbage: str) -> None:
    pytester.makepyfile(f"""
        def test_writes_garbage(request):
            sock = request.config.pluginmanager.get_plugin("tach-forwarder").sock
            sock.sendall({garbage})
            import time; time.sleep(5)  # killed long before this ends
        def test_fine(): pass
    """)
    xml = pytester.path / "out.xml"
    r = pytester.runpytest_subprocess("-p", "tach", f"--junitxml={xml}")
    assert outcomes_by_test(xml) == {
        "test_malformed_frame_fails_the_test_and_the_run_goes_on::test_writes_garbage": "failed",
        "test_malformed_frame_fails_the_test_and_the_run_goes_on::test_fine": "passed"}
    r.stdout.fnmatch_lines(["*crashed while running*test_writes_garbage*", "*malformed frame*"])


def test_zygote_crash_fails_its_tests_and_the_run_goes_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad="""
        import os, pytest
        @pytest.fixture(scope="module")
        def dies():
            os._exit(7)
        def test_a(dies): pass
        def test_b(dies): pass
    """, test_good="def test_c(): pass\ndef test_d(): pass\n")
    xml = pytester.path / "out.xml"
    r = pytester.runpytest_subprocess("-p", "tach", f"--junitxml={xml}")
    outcomes = outcomes_by_test(xml)
    assert outcomes["test_good::test_c"] == outcomes["test_good::test_d"] == "passed"
    assert outcomes["test_bad::test_a"] in ("failed", "error")
    assert outcomes["test_bad::test_b"] in ("failed", "error")
    assert len(outcomes) == 4
    r.stdout.fnmatch_lines(["*zygote for *Module:test_bad.py (pid *) exited with code 7*"])


def test_root_zygote_death_errors_every_unreported_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, signal, pytest
        def test_first():
            os.killpg(os.getpgrp(), signal.SIGKILL)  # takes the root and every zygote with it
        @pytest.mark.parametrize("i", range(5))
        def test_rest(i): pass
    """)
    xml = pytester.path / "out.xml"
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "1", f"--junitxml={xml}")
    outcomes = outcomes_by_test(xml)
    assert len(outcomes) == 6, outcomes  # every selected test has exactly one outcome
    assert all(o in ("failed", "error") for o in outcomes.values()), outcomes
    assert "tach could not run" in r.stdout.str()


@pytest.mark.parametrize("mode", MODES)
def test_maxfail_stops_and_still_tears_scopes_down(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeconftest(SCOPES)
    pytester.makepyfile("""
        import time, pytest
        from conftest import log
        @pytest.fixture(scope="module")
        def mod(sess):
            yield
            log("module-teardown")
        @pytest.mark.parametrize("i", range(20))
        def test_x(i, mod):
            time.sleep(0.05)
            assert i != 2
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "1", "-x", "--tach-isolate", mode)
    r.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    r.assert_outcomes(passed=2, failed=1)
    log = (pytester.path / "log.txt").read_text().split()
    assert log.count("session-setup") == 1 and log.count("session-teardown") == 1, log
    assert log.count("module-teardown") == 1, log


def test_pytest_exit_in_a_test_ends_the_run_like_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        def test_a(): pass
        def test_b(): pytest.exit("enough for today", returncode=3)
        def test_c(): pass
    """)
    plain = pytester.runpytest_subprocess("--tach-workers", "0", "-p", "tach")
    tached = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "1")
    for r in (plain, tached):
        assert r.ret == 3
        r.stdout.fnmatch_lines(["*_pytest.outcomes.Exit: enough for today*"])


def test_keyboard_interrupt_in_a_test_interrupts_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    raise KeyboardInterrupt\ndef test_b(): pass\n")
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "1")
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


def test_pdb_gets_the_terminal(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_fails():\n    x = 6 * 7\n    assert x == 0\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tach", "--pdb", "-p", "no:cacheprovider"],
                          cwd=pytester.path, input="p x\nc\n", capture_output=True, text=True, timeout=60)
    assert "(Pdb) 42" in proc.stdout, proc.stdout[-2000:]
    assert "1 failed" in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_kills_every_process_of_the_run(pytester: pytest.Pytester, sig: int) -> None:
    pytester.makeconftest(SCOPES)
    pytester.makepyfile("""
        import time, pytest
        from conftest import log
        @pytest.fixture(scope="module")
        def slow_module(sess):
            yield
            log("module-teardown")
        @pytest.mark.parametrize("i", range(10))
        def test_sleep(i, slow_module):
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tach", "-p", "no:cacheprovider"],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_descendants(proc.pid)) < 4:
        time.sleep(0.1)  # main -> root -> session zygote -> module zygote -> tests
    run = _descendants(proc.pid)
    assert len(run) >= 4, run
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    time.sleep(0.2)
    alive = [p for p in run if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
    assert alive == [], f"left behind: {alive}"
    # As pytest does on Ctrl-C, the scopes were torn down (by their zygotes), once.
    log = (pytester.path / "log.txt").read_text().split()
    assert log.count("module-teardown") == 1 and log.count("session-teardown") == 1, log


def test_killing_main_process_kills_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import time, pytest
        @pytest.mark.parametrize("i", range(4))
        def test_sleep(i):
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tach", "-p", "no:cacheprovider"],
                            cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_descendants(proc.pid)) < 3:
        time.sleep(0.1)
    run = _descendants(proc.pid)
    assert len(run) >= 3
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in run if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == [], f"left behind after SIGKILL of the main process: {alive}"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        for c in _children(todo.pop()):
            seen.append(c)
            todo.append(c)
    return seen


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
