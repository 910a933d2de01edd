"""The gauntlet: tach under faults. Each case does something to a run (or has a test do
something to its own process) and holds the run to harness.Run.check's invariants: one
outcome per selected test, no process of the run left, no traceback of tach's, pytest's
exit code. Where plain pytest would have died too, the report must say what happened."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from harness import TACH_TRACEBACK, Run, collected, run, wait_for

from conftest import FREE_THREADED

#: `make gauntlet` runs every case in full, under load, on the main interpreter. What it
#: tests is tach's handling of processes, the same on every GIL build: of the other
#: interpreters' runs, the free-threaded one alone takes a part (one mode, one repeat,
#: fewer moments), for its own runtime.
FULL = os.environ.get("TACH_GAUNTLET") == "full"
pytestmark = pytest.mark.skipif(not (FULL or FREE_THREADED),
                                reason="make gauntlet runs it on the main interpreter; in part on 3.13t")
MODES = ["test", "module", "none"] if FULL else ["test"]
#: how many times each cheap case runs: a fault that shows one run in a few must show here
REPEAT = 3 if FULL else 1
MOMENTS = 20 if FULL else 4


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    return tmp_path


def write(path: Path, **files: str) -> None:
    import textwrap

    for name, text in files.items():
        (path / f"{name}.py").write_text(textwrap.dedent(text))


# -- reports that do not fit in a frame ------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_report_bigger_than_a_frame_is_cut_and_shown(suite: Path, mode: str) -> None:
    write(suite, test_big="""
        import sys
        def test_big_message():
            assert False, "head-of-message " + "z" * 20_000_000 + " end-of-message"
        def test_big_output():
            chunk = "y" * 999 + "\\n"
            print("first-line-of-output")
            for _ in range(100_000):
                sys.stdout.write(chunk)
            print("last-line-of-output")
            assert 0
        def test_ok(): pass
    """)
    r = run(suite, "--tach-isolate", mode, "--tach-workers", "2")
    assert r.check() == {"test_big.py::test_big_message": "failed",
                         "test_big.py::test_big_output": "failed", "test_big.py::test_ok": "passed"}
    for shown in ("head-of-message", "end-of-message", "first-line-of-output", "last-line-of-output"):
        assert shown in r.out
    assert r.out.count("the report did not fit") >= 2


# -- a zygote killed mid-run -------------------------------------------------------------

KILLER = """
    import os, signal, pytest

    def ancestors():
        '''The zygotes above this test's process, innermost first, the root last.'''
        main, pid, chain = int(os.environ["GAUNTLET_MAIN"]), os.getppid(), []
        while pid != main:
            chain.append(pid)
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        return chain

    @pytest.fixture(scope="session")
    def sess():
        return 1

    @pytest.fixture(scope="module")
    def mod(sess):
        return 2
"""


@pytest.mark.parametrize("which", ["innermost", "outer", "root"])
@pytest.mark.parametrize("mode", MODES)
def test_a_zygote_killed_mid_run(suite: Path, mode: str, which: str) -> None:
    pick = {"innermost": "chain[0]", "outer": "chain[len(chain) // 2]", "root": "chain[-1]"}[which]
    write(suite, conftest=KILLER, test_a=f"""
        import os, signal, pytest
        from conftest import ancestors

        class TestC:
            @pytest.fixture(scope="class")
            def cls(self, mod):
                return 3
            @pytest.mark.parametrize("i", range(6))
            def test_x(self, i, cls):
                if i == 2:
                    chain = ancestors()
                    os.kill({pick}, signal.SIGKILL)

        @pytest.mark.parametrize("i", range(4))
        def test_y(i, mod): pass
    """, test_b="""
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_z(i, sess): pass
    """)
    for _ in range(REPEAT):
        r = run(suite, "--tach-isolate", mode, "--tach-workers", "2")
        outcomes = r.check()
        # (the killing test itself may have reported before its process followed)
        if set(outcomes.values()) != {"passed"}:
            assert "tach could not run" in r.out or "zygote for" in r.out, r.out[-3000:]


# -- a reused test process killed while it restores ------------------------------------

RESTORED = """
    import os, pytest

    STATE = []  # a test that finds something here ran on memory not put back

    @pytest.fixture(scope="session")
    def sess():
        return [1]

    @pytest.fixture(scope="module")
    def mod(sess):
        return [2]

    def check(i, tmp_dir):
        assert STATE == [], STATE
        STATE.append(i)
        with open(os.path.join(tmp_dir, f"ran-{os.getpid()}"), "a") as f:
            f.write(f"{i}\\n")
"""


@pytest.mark.parametrize("die_at", [1, 2, 3])
def test_a_reused_process_killed_while_it_restores(suite: Path, die_at: int) -> None:
    """A reusable test process (isolate test, snapshot reset) is SIGKILLed halfway
    through its die_at-th restore, its memory half put back (tach's fault point,
    TACH_FAULT_RESTORE): the test it ran keeps its outcome, the next runs in a fresh
    process, and the processes that do restore hand each test memory as it was."""
    from pytest_tach import _reset

    if _reset.probe() is not None:
        pytest.skip(f"snapshot/restore: {_reset.probe()}")
    write(suite, conftest=RESTORED, **{f"test_r{k}": f"""
        import pytest
        from conftest import check

        @pytest.mark.parametrize("i", range(10))
        def test_r(i, mod):
            check({k} * 100 + i, {str(suite)!r})
    """ for k in range(3)})
    for _ in range(REPEAT):
        for old in suite.glob("ran-*"):
            old.unlink()
        r = run(suite, "--tach-isolate", "test", "--tach-reset", "snapshot", "--tach-workers", "2",
                env={"TACH_FAULT_RESTORE": str(die_at)})
        assert set(r.check().values()) == {"passed"}, r.out[-3000:]
        per_process = [len(f.read_text().split()) for f in suite.glob("ran-*")]
        assert sum(per_process) == 30
        # Each process died at its die_at-th restore (ran die_at tests at most); with
        # die_at > 1 processes were restored and reused before that.
        assert max(per_process) <= die_at, per_process
        if die_at > 1:
            assert max(per_process) == die_at, per_process


# -- the main process stopped from outside -----------------------------------------------

SLEEPERS = """
    import time, pytest
    @pytest.fixture(scope="module")
    def mod():
        yield
    @pytest.mark.parametrize("i", range(8))
    def test_sleep(i, mod):
        time.sleep(600)
"""


def _run_started(suite: Path) -> bool:
    return any(suite.glob("started-*"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_the_main_process_signalled(suite: Path, sig: int) -> None:
    write(suite, conftest="""
        import os, pytest
        @pytest.fixture(autouse=True)
        def started(tmp_path_factory):
            open(os.path.join(os.path.dirname(__file__), f"started-{os.getpid()}"), "w").close()
    """, test_s=SLEEPERS)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        wait_for(lambda: _run_started(suite), "a test started")
        proc.send_signal(sig)

    r = run(suite, "--tach-workers", "2", during=stop)
    if sig == signal.SIGKILL:
        assert r.rc == -signal.SIGKILL
        return
    assert r.rc == pytest.ExitCode.INTERRUPTED, r.out[-3000:]
    assert "KeyboardInterrupt" in r.out or "Terminated" in r.out or "SIGTERM" in r.out, r.out[-3000:]
    assert not r.out.count("Traceback (most recent call last)") > 1, r.out[-3000:]


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_while_a_session_teardown_hangs(suite: Path, mode: str) -> None:
    """Plain pytest, interrupted in a hanging teardown, stops there; tach stops the run
    too: what is still tearing down is killed after a bound, and nothing is left."""
    write(suite, conftest="""
        import os, time, pytest
        HERE = os.path.dirname(__file__)
        @pytest.fixture(scope="session")
        def sess():
            yield
            open(os.path.join(HERE, "teardown-started"), "w").close()
            time.sleep(600)
    """, test_t="""
        import pytest
        @pytest.mark.parametrize("i", range(4))
        def test_x(i, sess): pass
    """)

    def interrupt(proc: subprocess.Popen[bytes]) -> None:
        wait_for(lambda: (suite / "teardown-started").exists(), "the session teardown")
        proc.send_signal(signal.SIGINT)

    r = run(suite, "--tach-isolate", mode, "--tach-workers", "2", during=interrupt)
    assert not _tach_traceback(r), r.out[-3000:]
    assert r.rc == pytest.ExitCode.INTERRUPTED, r.out[-3000:]
    r.no_phase_twice()
    # Every test passed, the last one too: its process was tearing the session down when
    # the interrupt came, and its setup and call reports are shown, its teardown's not
    # (the interrupt cut it), as plain pytest shows them.
    assert all(r.outcome(f"test_t.py::test_x[{i}]") == "passed" for i in range(4)), r.out[-3000:]
    last = next(t for t, reps in r.reports.items() if "teardown" not in dict(reps))
    assert [when for when, _ in r.reports[last]] == ["setup", "call"]


@pytest.mark.parametrize("moment", range(MOMENTS))
def test_ctrl_c_at_any_moment(suite: Path, moment: int) -> None:
    """SIGINT at 20 moments spread over a run's life, from the end of collection (the
    root zygote's fork, the first scopes set up) to its end (the last reports, the
    teardown). (Earlier, Python and pytest are still starting up: their
    KeyboardInterrupt is theirs, as in any pytest run.)"""
    write(suite, conftest="""
        import pytest
        @pytest.fixture(scope="session")
        def sess():
            yield
        @pytest.fixture(scope="module")
        def mod(sess):
            yield
    """, **{f"test_m{m}": """
        import pytest
        @pytest.mark.parametrize("i", range(30))
        def test_x(i, mod): pass
    """ for m in range(4)})

    def interrupt(proc: subprocess.Popen[bytes]) -> None:
        wait_for(lambda: collected(suite) or proc.poll() is not None, "collection")
        time.sleep(moment * 0.06 * 20 / MOMENTS)
        proc.send_signal(signal.SIGINT)

    r = run(suite, "--tach-workers", "2", during=interrupt)
    assert not _tach_traceback(r), r.out[-3000:]
    if r.rc in (pytest.ExitCode.OK, -signal.SIGINT):
        # The run was over before the signal came (-SIGINT: it came in pytest's own
        # shutdown, after the summary, which plain pytest does not survive either).
        assert set(r.outcomes().values()) == {"passed"}
    else:
        assert r.rc == pytest.ExitCode.INTERRUPTED, r.out[-3000:]
        r.no_phase_twice()  # (the tests the interrupt caught have none, as in plain pytest)


def _tach_traceback(r: Run) -> bool:
    return bool(TACH_TRACEBACK.search(r.out))


# -- tests that do things to their own process -------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_test_leaves_a_daemon_behind(suite: Path, mode: str) -> None:
    write(suite, test_d="""
        import os, subprocess, sys, time
        def test_setsid_daemon():
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
        def test_double_fork():
            if os.fork() == 0:
                if os.fork() == 0:
                    os.setsid()
                    time.sleep(600)
                os._exit(0)
            os.wait()
        def test_after(): pass
    """)
    for _ in range(REPEAT):
        r = run(suite, "--tach-isolate", mode, "--tach-workers", "2")
        assert r.check() == dict.fromkeys(r.selected, "passed")


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_children_a_test_leaves_are_reaped_as_they_exit(suite: Path, mode: str) -> None:
    """Each test leaves a child that exits at once, never waited for: when the test's
    process exits, the zombie goes to the run's subreaper (the root zygote), which must
    reap it then, not at the end of the run (each would hold a pid meanwhile). (Not in
    `none`, whose long-lived processes could give the checking test a batch with leaking
    tests after it: the check would wait for them.)"""
    write(suite, conftest=KILLER, test_leak="""
        import subprocess, pytest
        import os
        LEAKS = os.path.join(os.path.dirname(__file__), "leaks.txt")
        @pytest.mark.parametrize("i", range(400))
        def test_leak(i):
            subprocess.Popen(["true"])  # never waited for
            with open(LEAKS, "a") as f:
                f.write("x")
    """, test_zz="""
        import os, time
        from conftest import ancestors
        def zombies_of(root):
            n = 0
            for task in os.listdir(f"/proc/{root}/task"):
                with open(f"/proc/{root}/task/{task}/children") as f:
                    for pid in f.read().split():
                        try:
                            with open(f"/proc/{pid}/stat") as st:
                                n += st.read().rsplit(")", 1)[1].split()[0] == "Z"
                        except OSError:
                            pass
            return n

        def wait_until(what, bound):
            deadline = time.monotonic() + bound
            while not what():
                assert time.monotonic() < deadline, what.__doc__
                time.sleep(0.05)

        def test_root_holds_few_zombies():
            root = ancestors()[-1]
            leaks = os.path.join(os.path.dirname(__file__), "leaks.txt")
            def all_leaked():
                "every leaking test has run (it may run beside this one)"
                return os.path.exists(leaks) and len(open(leaks).read()) == 400
            def reaped():
                "the root zygote reaped the leaks (each re-parented to it as a zombie)"
                return zombies_of(root) < 50
            wait_until(all_leaked, 300)
            wait_until(reaped, 120)  # bounds for a loaded machine; without reaping, never
    """)
    r = run(suite, "--tach-isolate", mode, "--tach-reset", "fork", "--tach-workers", "2")
    assert set(r.check().values()) == {"passed"}, r.out[-3000:]


@pytest.mark.parametrize("how", ["close", "dup2", "garbage"])
@pytest.mark.parametrize("mode", MODES)
def test_a_test_abuses_every_fd_it_did_not_open(suite: Path, mode: str, how: str) -> None:
    write(suite, test_f=f"""
        import os, pytest
        def fds():
            return [int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2]
        def close():
            os.closerange(3, 4096)
        def dup2():
            null = os.open(os.devnull, os.O_RDWR)
            for fd in fds():
                if fd != null:
                    os.dup2(null, fd)
        def garbage():
            for fd in fds():
                try:
                    os.write(fd, b"\\xc1\\xff garbage \\x00" * 64)
                except OSError:
                    pass
        def test_abuse():
            {how}()
        @pytest.mark.parametrize("i", range(4))
        def test_after(i): pass
    """)
    for _ in range(REPEAT):
        r = run(suite, "--tach-isolate", mode, "--tach-workers", "2")
        outcomes = r.check()
        assert all(outcomes[f"test_f.py::test_after[{i}]"] == "passed" for i in range(4))
        if outcomes["test_f.py::test_abuse"] != "passed":
            assert "test_abuse" in r.out


@pytest.mark.parametrize("timeout", [None, 5])
def test_a_test_that_stops_itself(suite: Path, timeout: int | None) -> None:
    write(suite, test_s="""
        import os, signal
        def test_stops():
            os.kill(os.getpid(), signal.SIGSTOP)
        def test_after(): pass
    """)
    args = ["--tach-workers", "2"] + ([f"--tach-timeout={timeout}"] if timeout else [])
    r = run(suite, *args)
    outcomes = r.check()
    assert outcomes == {"test_s.py::test_stops": "failed", "test_s.py::test_after": "passed"}
    assert "SIGSTOP" in r.out or "stopped" in r.out, r.out[-3000:]


# -- the run's limits --------------------------------------------------------------------

def test_a_low_open_file_limit(suite: Path) -> None:
    write(suite, **{f"test_m{m}": """
        import pytest
        @pytest.mark.parametrize("i", range(25))
        def test_x(i): pass
    """ for m in range(4)})

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    for mode in MODES:
        r = run(suite, "--tach-isolate", mode, "--tach-workers", "4", preexec=low)
        outcomes = r.check()
        assert set(outcomes.values()) == {"passed"}, r.out[-3000:]


def _full_dev_shm() -> None:
    """(In the run's process, before exec.) A mount namespace of the run's own, with a
    64 KiB tmpfs on /dev/shm, filled: what a full /dev/shm looks like to tach, without
    filling the machine's."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_rec, ms_private = 0x20000, 0x4000, 0x40000
    if (libc.unshare(clone_newns) or libc.mount(b"none", b"/", None, ms_rec | ms_private, None)
            or libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", 0, b"size=64k")):
        raise OSError(ctypes.get_errno(), "a private /dev/shm")
    fd = os.open("/dev/shm/fill", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    os.close(fd)


def _can_mount() -> bool:
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs a mount namespace of its own (root, unshare)")
def test_a_full_dev_shm(suite: Path) -> None:
    """/dev/shm full: tach's private directory goes elsewhere, and what it writes there
    (a crash's or a timeout's stacks) still reaches the report."""
    write(suite, test_f="""
        import ctypes, os, time, pytest
        def test_shm_is_full():
            assert os.statvfs("/dev/shm").f_bavail == 0
        def test_segv():
            ctypes.string_at(0)
        def test_hang():
            time.sleep(600)
        @pytest.mark.parametrize("i", range(6))
        def test_p(i): pass
    """)
    for mode in MODES:
        r = run(suite, "--tach-isolate", mode, "--tach-workers", "2", "--tach-timeout", "5",
                preexec=_full_dev_shm)
        outcomes = r.check()
        assert outcomes.pop("test_f.py::test_segv") == "failed" and outcomes.pop("test_f.py::test_hang") == "failed"
        assert set(outcomes.values()) == {"passed"}, r.out[-3000:]
        # the dumps written to the private directory: each failing test's own line
        assert re.search(r'test_f.py", line 6 in test_segv', r.out), r.out[-3000:]
        assert re.search(r'test_f.py", line 8 in test_hang', r.out), r.out[-3000:]


@pytest.mark.skipif(not FULL, reason="in full only (make gauntlet): it takes long")
def test_many_workers_on_few_cores(suite: Path) -> None:
    write(suite, **{f"test_m{m:02}": """
        import pytest
        @pytest.mark.parametrize("i", range(250))
        def test_x(i): pass
    """ for m in range(20)})
    r = run(suite, "--tach-workers", "32", "-q")
    outcomes = r.check()
    assert len(outcomes) == 5000 and set(outcomes.values()) == {"passed"}
