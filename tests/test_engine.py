"""The zygote engine end to end: each test here runs pytest in a subprocess with
``-p tach`` on a small suite written for the purpose, and checks what a user would see."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import outcomes_by_test, run_both

MODES = ["test", "module", "none"]

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
    r.stdout.fnmatch_lines(["*tach: isolated, parallel, crash-proof*", "*--tach-workers=N|auto*",
                            "*--tach-isolate=MODE*", "*--tach-timeout=SECONDS*", "*--tach-report*",
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


def test_each_test_in_its_own_process_and_go_only_in_main(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import os, sys
        def pytest_configure(config):
            os.environ["MAIN_PID"] = str(os.getpid())
    """)
    pytester.makepyfile("""
        import os, sys, pytest
        @pytest.mark.parametrize("i", range(6))
        def test_pid(i, tmp_path):
            assert os.getpid() != int(os.environ["MAIN_PID"])
            assert "tach._core" not in sys.modules, "Go was loaded into a test process"
            (tmp_path.parent / f"pid{i}").write_text(str(os.getpid()))
    """)
    # --tach-reset snapshot reuses a process, restored between tests (tests/test_reset.py)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-reset", "fork", "--basetemp", str(pytester.path / "bt"))
    r.assert_outcomes(passed=6)
    pids = {p.read_text() for p in (pytester.path / "bt").glob("pid*")}
    assert len(pids) == 6


SCOPES = """
    import os, pytest
    LOG = os.path.join(os.path.dirname(__file__), "log.txt")
    def log(s):
        with open(LOG, "a") as f:
            f.write(s + "\\n")

    @pytest.fixture(scope="session")
    def sess():
        log("session-setup")
        yield [1, 2, 3]
        log("session-teardown")
"""


@pytest.mark.parametrize("mode", MODES)
def test_fixture_scopes_are_set_up_once_and_torn_down_once(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeconftest(SCOPES)
    isolated = mode == "test"
    for m in ("a", "b"):
        pytester.makepyfile(**{f"test_{m}": f"""
            import pytest
            from conftest import log
            STATE = []
            @pytest.fixture(scope="module")
            def mod(sess):
                log("module-setup-{m}")
                yield {{"items": list(sess)}}
                log("module-teardown-{m}")

            @pytest.mark.parametrize("i", range(5))
            def test_mutates(mod, i):
                if {isolated}:
                    assert mod["items"] == [1, 2, 3], "a sibling's mutation leaked"
                    assert STATE == [], "a sibling's module global leaked"
                else:  # one process runs the module's tests in order, as plain pytest
                    assert mod["items"] == [1, 2, 3] + list(range(i))
                mod["items"].append(i)
                STATE.append(i)

            def test_plain(sess):
                assert sess == [1, 2, 3]
        """})
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "2", "--tach-isolate", mode)
    r.assert_outcomes(passed=12)
    log = (pytester.path / "log.txt").read_text().split()
    assert log.count("session-setup") == 1 and log.count("session-teardown") == 1
    for m in ("a", "b"):
        assert log.count(f"module-setup-{m}") == 1 and log.count(f"module-teardown-{m}") == 1
        assert log.index(f"module-setup-{m}") < log.index(f"module-teardown-{m}")
    assert log[0] == "session-setup" and log[-1] == "session-teardown"


@pytest.mark.parametrize("mode", MODES)
def test_parametrized_module_fixture_set_up_once_per_value(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeconftest(SCOPES)
    pytester.makepyfile("""
        import pytest
        from conftest import log
        @pytest.fixture(scope="module", params=["x", "y"])
        def backend(request, sess):
            log("setup-" + request.param)
            yield request.param
            log("teardown-" + request.param)

        @pytest.mark.parametrize("n", range(3))
        def test_uses(backend, n):
            assert backend in ("x", "y")
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "2", "--tach-isolate", mode)
    r.assert_outcomes(passed=6)
    log = (pytester.path / "log.txt").read_text().split()
    assert sorted(log) == sorted(["session-setup", "setup-x", "teardown-x", "setup-y",
                                  "teardown-y", "session-teardown"]), log


def test_scope_teardown_waits_for_every_test_of_the_scope(pytester: pytest.Pytester) -> None:
    """The last test of a module starts while its siblings still run (it is the
    zygote's final unit); its teardown, which tears the module down, must wait."""
    pytester.makeconftest(SCOPES)
    pytester.makepyfile("""
        import time, pytest
        from conftest import log, LOG
        @pytest.fixture(scope="module")
        def res():
            yield
            log("module-teardown")
        def test_slow(res):
            time.sleep(1.0)
            assert "module-teardown" not in open(LOG).read()
        def test_fast(res):
            log("fast-ran")
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "2", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
    log = (pytester.path / "log.txt").read_text().split()
    assert log.index("fast-ran") < log.index("module-teardown")


INTERVALS = """
    import json, os, socket, time, pytest
    HERE = os.path.dirname(__file__)

    @pytest.fixture(autouse=True)
    def interval(request):
        start = time.monotonic()
        yield
        with open(os.path.join(HERE, "intervals.jsonl"), "a") as f:
            f.write(json.dumps([request.node.name, start, time.monotonic()]) + "\\n")
"""


def _overlaps(path: Path) -> list[tuple[str, str]]:
    import json

    spans = [json.loads(line) for line in path.read_text().splitlines()]
    return [(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1:]
            if a[1] < b[2] and b[1] < a[2]]


@pytest.mark.parametrize("how", ["socket", "ini"])
def test_zygote_sharing_a_connection_runs_its_tests_one_at_a_time(pytester: pytest.Pytester, how: str) -> None:
    pytester.makeconftest(INTERVALS + """
    @pytest.fixture(scope="session")
    def db():
        if os.environ.get("HOW") == "socket":
            a, b = socket.socketpair()  # stands for a connection to a database
            yield a
            a.close(); b.close()
        else:
            yield "handle"
    """)
    pytester.makepyfile("""
        import time, pytest
        @pytest.mark.parametrize("i", range(4))
        def test_query(db, i):
            time.sleep(0.2)
    """)
    if how == "ini":
        pytester.makeini("[pytest]\ntach_serial_fixtures =\n    db\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tach", "--tach-workers", "2", "-v",
                           "-p", "no:cacheprovider"], cwd=pytester.path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOW": how})
    assert "4 passed" in proc.stdout, proc.stdout
    why = "connected socket" if how == "socket" else "listed in tach_serial_fixtures"
    assert "runs its tests one at a time" in proc.stdout and why in proc.stdout, proc.stdout
    assert _overlaps(pytester.path / "intervals.jsonl") == []


def test_tach_serial_marker_runs_a_test_alone(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INTERVALS)
    pytester.makepyfile("""
        import time, pytest
        @pytest.mark.parametrize("i", range(6))
        def test_parallel(i):
            time.sleep(0.2)
        @pytest.mark.tach_serial
        def test_alone():
            time.sleep(0.2)
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-workers", "2", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=7)
    pairs = _overlaps(pytester.path / "intervals.jsonl")
    assert not [p for p in pairs if "test_alone" in p], pairs
    assert pairs, "the other tests should have run in parallel"


def test_tests_cannot_reach_the_supervisor_socket(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, socket
        def test_no_listener():
            for name in os.listdir("/proc/self/fd"):
                try:
                    s = socket.socket(fileno=os.dup(int(name)))
                except OSError:
                    continue
                with s:
                    if s.family == socket.AF_UNIX and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        raise AssertionError(f"inherited a listening socket: {s.getsockname()}")
    """)
    r = pytester.runpytest_subprocess("-p", "tach")
    r.assert_outcomes(passed=1)


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


def test_none_mode_spreads_a_big_module_over_runners(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by `make parity`: idna keeps 6,336 of its 6,366 tests in one unittest class,
    # packaging 20k in one module; --tach-isolate none ran each such unit on one runner
    # while the other idled (packaging: 1.48x plain pytest, 1.25x once cut).
    pytester.makepyfile(test_big="""
        import os, pytest

        def log(what):
            with open(os.path.join(os.environ["LOG_DIR"], "log"), "a") as f:
                f.write(f"{what} {os.getpid()}\\n")

        @pytest.fixture(scope="module")
        def mod():
            log("module-setup")

        @pytest.mark.parametrize("i", range(300))
        def test_f(mod, i):
            log("test")

        class TestSmall:
            @pytest.fixture(scope="class")
            def cls(self):
                log("small-class-setup")

            @pytest.mark.parametrize("i", range(60))
            def test_c(self, mod, cls, i):
                log("small-class-test")

        class TestHuge:
            @pytest.fixture(scope="class")
            def cls(self):
                log("huge-class-setup")

            @pytest.mark.parametrize("i", range(250))
            def test_h(self, mod, cls, i):
                log("huge-class-test")
    """, test_small="def test_small():\n    pass\n")
    env_dir = pytester.path / "logs"
    env_dir.mkdir()
    monkeypatch.setenv("LOG_DIR", str(env_dir))
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-isolate", "none", "--tach-workers", "2")
    r.assert_outcomes(passed=611)
    lines = [line.split() for line in (env_dir / "log").read_text().splitlines()]

    def count(what: str) -> int:
        return sum(1 for w, _ in lines if w == what)

    # 611 tests, 2 workers: chunks of 100 (the floor); the module is cut, both runners
    # take part of it, and each piece sets the module fixture up once.
    assert len({pid for w, pid in lines if w == "test"}) == 2
    assert 3 <= count("module-setup") <= 7
    # A class smaller than a chunk is never cut: one setup, one runner.
    assert count("small-class-setup") == 1
    assert len({pid for w, pid in lines if w == "small-class-test"}) == 1
    # A class bigger than a chunk is cut like a module (as pytest-xdist would).
    assert count("huge-class-setup") >= 2
    assert count("huge-class-test") == 250


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
    run once stayed registered in tach._core and the next one was refused)."""
    pytester.makepyfile(test_two="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    driver = pytester.makepyfile(driver="""
        import os, pytest
        def run():
            return int(pytest.main(["-q", "-p", "tach", "-p", "no:cacheprovider", "test_two.py"]))
        codes = [run()]
        fds = len(os.listdir("/proc/self/fd"))
        codes += [run(), run()]
        print("CODES", codes, "NEW-FDS", len(os.listdir("/proc/self/fd")) - fds)
    """)
    r = pytester.run(sys.executable, str(driver))
    r.stdout.fnmatch_lines(["CODES [[]0, 0, 0[]] NEW-FDS 0"])


def test_tach_report_lists_slowest_and_hungriest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import time
        def test_slow(): time.sleep(0.3)
        def test_big(): x = bytearray(64 << 20); x[::4096] = b"x" * len(x[::4096])
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-report")
    r.stdout.fnmatch_lines(["*tach report*", "slowest tests*", "*test_slow*",
                            "most memory-hungry tests*", "*MiB*test_big*"])
