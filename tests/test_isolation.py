"""The zygote engine end to end (each test runs pytest in a subprocess with ``-p tach`` on
a small suite written for the purpose). Isolation: a process per test (or module),
fixtures set up once per scope and torn down once, shared connections and tach_serial
run alone, the supervisor's socket out of reach, big modules spread over runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCOPES

MODES = ["test", "module", "none"]


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
            assert "pytest_tach._core" not in sys.modules, "Go was loaded into a test process"
            (tmp_path.parent / f"pid{i}").write_text(str(os.getpid()))
    """)
    # --tach-reset snapshot reuses a process, restored between tests (tests/test_reset.py)
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-reset", "fork", "--basetemp", str(pytester.path / "bt"))
    r.assert_outcomes(passed=6)
    pids = {p.read_text() for p in (pytester.path / "bt").glob("pid*")}
    assert len(pids) == 6




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
