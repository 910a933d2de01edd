"""Unit tests: what a test whose process did not finish normally reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pytest_tach import replay

ITEM: Any = SimpleNamespace(nodeid="tests/test_x.py::test_y")


def test_a_timeout_names_the_deadline_and_the_worker(tmp_path: Path) -> None:
    text = replay.crash_text(ITEM, {"outcome": "timeout", "timeout_s": 2.0, "slot": 1, "runner": 4}, str(tmp_path))
    assert text.splitlines() == ["Timeout (>2s) in 'tests/test_x.py::test_y'",
                                 "worker 'tach1' was killed after dumping its threads' stacks"]


def test_a_crash_says_how_the_process_ended(tmp_path: Path) -> None:
    ev = {"outcome": "crashed", "slot": 0, "runner": 3, "status_text": "was killed by signal 11 (SIGSEGV)"}
    assert replay.crash_text(ITEM, ev, str(tmp_path)).splitlines() == [
        "worker 'tach0' crashed while running 'tests/test_x.py::test_y'",
        "the test process was killed by signal 11 (SIGSEGV)"]


def test_an_exit_0_before_reporting_is_explained(tmp_path: Path) -> None:
    ev = {"outcome": "crashed", "slot": 0, "runner": 3, "status_text": "exited with status 0",
          "done": False, "exit_code": 0}
    assert "os._exit(0)?" in replay.crash_text(ITEM, ev, str(tmp_path))


def test_a_malformed_frame_is_named_instead_of_the_exit_status(tmp_path: Path) -> None:
    ev = {"outcome": "crashed", "slot": 0, "runner": 3, "frame_error": "bad length", "status_text": "killed"}
    lines = replay.crash_text(ITEM, ev, str(tmp_path)).splitlines()
    assert lines[1] == "the test process wrote a malformed frame to tach's connection, so tach killed it"
    assert len(lines) == 2


def test_the_stack_dump_is_cut_where_tachs_runner_begins(tmp_path: Path) -> None:
    """faulthandler's frames below the test (tach's runner, pytest's loop) are the same for
    every test: they are cut, per thread, at the first frame in the runner's module."""
    from pytest_tach.forked import runner

    runner_file = runner.__file__
    (tmp_path / "r3.tb").write_text(
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x1 (most recent call first):\n"
        '  File "/src/tests/test_x.py", line 5 in test_y\n'
        '  File "/venv/_pytest/python.py", line 159 in pytest_pyfunc_call\n'
        f'  File "{runner_file}", line 1100 in run_batch\n'
        '  File "/venv/_pytest/main.py", line 10 in main\n'
        "\nThread 0x2 (most recent call first):\n"
        '  File "/usr/lib/python3/threading.py", line 320 in wait\n')
    ev = {"outcome": "crashed", "slot": 0, "runner": 3, "status_text": "was killed by signal 11"}
    dump = replay.crash_text(ITEM, ev, str(tmp_path)).split("\n\n", 1)[1]
    assert dump.splitlines() == [
        "Fatal Python error: Segmentation fault",
        "",
        "Current thread 0x1 (most recent call first):",
        '  File "/src/tests/test_x.py", line 5 in test_y',
        '  File "/venv/_pytest/python.py", line 159 in pytest_pyfunc_call',
        "  (tach's runner and pytest's main loop below)",
        "",
        "Thread 0x2 (most recent call first):",
        '  File "/usr/lib/python3/threading.py", line 320 in wait',
    ]


def test_a_stopped_process_is_said_to_have_been_stopped(tmp_path: Path) -> None:
    ev = {"outcome": "crashed", "slot": 0, "runner": 3, "status_text": "was killed by SIGKILL (signal 9)",
          "stopped_s": 5.2}
    text = replay.crash_text(ITEM, ev, str(tmp_path))
    assert "stopped (SIGSTOP or SIGTSTP) and not continued within 5s" in text
    assert "SIGKILL" not in text


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:  # what report_fatal sees
        return e


def test_a_broken_connection_to_tach_is_put_on_the_test() -> None:
    import errno

    from pytest_tach.forked import process

    cause = process.fatal_cause(_raised(OSError(errno.EBADF, "Bad file descriptor")))
    assert "connection to tach broke" in cause and "file descriptors it did not open" in cause
    assert "connection to tach broke" in process.fatal_cause(_raised(EOFError("closed inside a frame")))


def test_any_other_fault_is_named_as_tach_s_without_a_traceback() -> None:
    from pytest_tach.forked import process

    cause = process.fatal_cause(_raised(ValueError("bad value")))
    assert cause.startswith("a fault in tach") and "ValueError: bad value" in cause
    assert "please report it" in cause and "Traceback" not in cause
