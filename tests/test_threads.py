"""Free-threading stress mode (--tach-threads / --tach-iterations) end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import FREE_THREADED, outcomes_by_test, requires_free_threading

BASE = ("-p", "tach", "-p", "no:cacheprovider", "-p", "no:asyncio")


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, str]]:
    xml = pytester.path / "out.xml"
    r = pytester.runpytest_subprocess(*BASE, f"--junitxml={xml}", *args)
    return r, outcomes_by_test(xml) if xml.exists() else {}


def test_option_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    for opt, bad in (("--tach-threads", "0"), ("--tach-threads", "many"), ("--tach-iterations", "-1")):
        r = pytester.runpytest_subprocess(*BASE, opt, bad)
        assert r.ret == pytest.ExitCode.USAGE_ERROR
        r.stderr.fnmatch_lines([f"*{opt}: expected a positive integer or 'auto', got '{bad}'*"])


def test_markers_and_fixtures_follow_pytest_run_parallel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import threading, pytest
        SEEN = {}
        LOCK = threading.Lock()
        def record(key, value):
            with LOCK:
                SEEN.setdefault(key, set()).add(value)

        def test_defaults(num_parallel_threads, num_iterations, thread_index, iteration_index, tmp_path):
            assert (num_parallel_threads, num_iterations) == (4, 3)
            record("pairs", (thread_index, iteration_index))
            record("tmp", str(tmp_path))
        def test_check_defaults():
            pass
        @pytest.mark.parallel_threads(1)
        def test_single(num_parallel_threads):
            assert num_parallel_threads == 1
        @pytest.mark.parallel_threads_limit(2)
        def test_limit(num_parallel_threads, thread_index):
            assert num_parallel_threads == 2 and thread_index in (0, 1)
        @pytest.mark.force_parallel_threads(6)
        def test_force(num_parallel_threads, thread_index):
            assert num_parallel_threads == 6 and 0 <= thread_index < 6
        @pytest.mark.iterations(5)
        def test_iterations(num_iterations, iteration_index):
            assert num_iterations == 5 and 0 <= iteration_index < 5
        def test_thread_comp(thread_comp, thread_index):
            thread_comp(value=42)
            with pytest.raises(AssertionError, match="differs between threads"):
                thread_comp(value=thread_index)
        @pytest.fixture
        def check(num_parallel_threads, num_iterations):
            yield
            # all 4 x 3 (thread, iteration) pairs, each thread in its own tmp_path
            assert SEEN["pairs"] == {(t, i) for t in range(4) for i in range(3)}
            assert len(SEEN["tmp"]) == 4
        def test_zz_seen(check):
            pass
    """)
    # test mode would give each test a fresh process; module mode keeps SEEN across tests
    r, outcomes = run(pytester, "--tach-threads", "4", "--tach-iterations", "3", "--tach-isolate", "module", "-v")
    assert set(outcomes.values()) == {"passed"}, r.stdout.str()
    r.stdout.fnmatch_lines(["*test_defaults PASSED ?4 threads * 3?*", "*test_single PASSED ?single-threaded?*",
                            "*test_limit PASSED ?2 threads * 3?*", "*test_force PASSED ?6 threads * 3?*",
                            "*test_iterations PASSED ?4 threads * 5?*"])


def test_failures_are_counted_with_the_first_traceback_of_each_type(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_mixed(thread_index, iteration_index):
            if thread_index == 1:
                raise KeyError(iteration_index)
            if thread_index == 2 and iteration_index < 2:
                assert iteration_index == 99
    """)
    r, outcomes = run(pytester, "--tach-threads", "4", "--tach-iterations", "5")
    assert outcomes == {"test_failures_are_counted_with_the_first_traceback_of_each_type::test_mixed": "failed"}
    out = r.stdout.str()
    assert "7 of 20 calls failed (4 threads x 5 iterations): KeyError x5, AssertionError x2" in out
    assert "KeyError: 0" in out and "assert 0 == 99" in out
    assert "first KeyError: thread 1, iteration 0" in out


def test_thread_unsafe_detection(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        thread_unsafe_fixtures = shared_db
        thread_unsafe_functions = helpers.not_threadsafe
    """)
    pytester.makepyfile(helpers="""
        import gc
        def not_threadsafe(): pass
        def cleans(): gc.collect()
        def deeper(): cleans()
    """)
    pytester.makepyfile(test_unsafe="""
        import warnings, pytest
        from unittest import mock
        import helpers

        @pytest.fixture
        def shared_db(): return {}

        def test_safe(num_parallel_threads): assert num_parallel_threads == 3
        @pytest.mark.thread_unsafe(reason="talks to a printer")
        def test_marked(num_parallel_threads): assert num_parallel_threads == 1
        def test_capsys(capsys, num_parallel_threads): assert num_parallel_threads == 1
        def test_ini_fixture(shared_db, num_parallel_threads): assert num_parallel_threads == 1
        @mock.patch("os.getcwd")
        def test_mock_decorator(getcwd, num_parallel_threads): assert num_parallel_threads == 1
        def test_warns(num_parallel_threads):
            assert num_parallel_threads == 1
            with pytest.warns(UserWarning):
                warnings.warn("x", UserWarning)
        def test_two_levels(num_parallel_threads):
            helpers.deeper()
            assert num_parallel_threads == 1
        def test_ini_function(num_parallel_threads):
            helpers.not_threadsafe()
            assert num_parallel_threads == 1
        def test_flag(num_parallel_threads):
            __thread_safe__ = False
            assert num_parallel_threads == 1
    """)
    r, outcomes = run(pytester, "--tach-threads", "3")
    assert set(outcomes.values()) == {"passed"}, r.stdout.str()
    out = r.stdout.str()
    for nodeid, why in [("test_marked", "talks to a printer"), ("test_capsys", "capsys"),
                        ("test_ini_fixture", "shared_db"), ("test_mock_decorator", "unittest.mock.patch"),
                        ("test_two_levels", "gc.collect"), ("test_ini_function", "helpers.not_threadsafe"),
                        ("test_flag", "__thread_safe__ = False")]:
        assert any(nodeid in line and why in line for line in out.splitlines()), (nodeid, why, out)
    if not FREE_THREADED or sys.version_info < (3, 14):
        assert any("test_warns" in line and "pytest.warns" in line for line in out.splitlines())
    r, outcomes = run(pytester, "--tach-threads", "3", "--tach-skip-thread-unsafe")
    assert outcomes["test_unsafe::test_safe"] == "passed"
    assert outcomes["test_unsafe::test_capsys"] == "skipped"


@pytest.mark.parametrize("workers", ["1", "0"])
def test_a_markers_bad_argument_fails_that_test_only(pytester: pytest.Pytester, workers: str) -> None:
    pytester.makepyfile("""
        import pytest
        @pytest.mark.parallel_threads("lots")
        def test_bad():
            pass
        def test_good(num_parallel_threads):
            assert num_parallel_threads == 2
    """)
    r, outcomes = run(pytester, "--tach-threads", "2", "--tach-workers", workers)
    assert sorted(outcomes.values()) == ["failed", "passed"], r.stdout.str()
    r.stdout.fnmatch_lines(["*test_bad*parallel_threads: expected a positive integer or 'auto', got 'lots'*"])
    assert "crashed" not in r.stdout.str() and "internal error" not in r.stderr.str()


def timeline_suite(pytester: pytest.Pytester, body: str) -> Path:
    """Write a test module whose tests call ``mark(request, what)`` to log moments
    (``timed_call(request, seconds)`` marks "call", sleeps, marks "called"); return the
    log (read it with read_timeline)."""
    log = pytester.path / "log.jsonl"
    pytester.makepyfile(textwrap.dedent(f"""
        import json, time, pytest
        def mark(request, what):
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps([request.node.name, what, time.monotonic()]) + "\\n")
        def timed_call(request, seconds):
            mark(request, "call")
            time.sleep(seconds)
            mark(request, "called")
    """) + textwrap.dedent(body))
    return log


def read_timeline(log: Path) -> dict[str, dict[str, list[float]]]:
    """test name -> what -> the moments it was marked (once per thread)."""
    events: dict[str, dict[str, list[float]]] = {}
    for line in log.read_text().splitlines():
        test, what, t = json.loads(line)
        events.setdefault(test, {}).setdefault(what, []).append(t)
    return events


def test_one_call_at_a_time_while_the_next_test_is_set_up(pytester: pytest.Pytester) -> None:
    """Stress mode with one worker: test bodies never overlap (each test's threads have
    the cores), but the next test's process is forked and set up meanwhile."""
    log = timeline_suite(pytester, f"""
        @pytest.fixture(autouse=True)
        def setup_mark(request):
            mark(request, "setup")
        def next_test_set_up():
            # Until one more test is set up than have started their bodies (the last
            # waits for nothing); bounded, so that a tach that does not prepare the
            # next test fails below instead of hanging.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                events = [json.loads(line) for line in open({str(pytester.path / "log.jsonl")!r})]
                called = {{t for t, what, _ in events if what == "call"}}
                set_up = {{t for t, what, _ in events if what == "setup"}}
                if len(called) == 5 or len(set_up) > len(called):
                    return
                time.sleep(0.01)
        @pytest.mark.parametrize("i", range(5))
        def test_body(i, request):
            mark(request, "call")
            next_test_set_up()
            mark(request, "called")
    """)
    r, outcomes = run(pytester, "--tach-threads", "2", "--tach-workers", "1")
    assert list(outcomes.values()) == ["passed"] * 5, r.stdout.str()
    events = read_timeline(log)
    calls = sorted((min(e["call"]), max(e["called"]), min(e["setup"])) for e in events.values())
    assert len(calls) == 5
    for (_, end, _), (start, _, _) in pairwise(calls):
        assert start >= end, "two tests ran their bodies at once"
    prepared = sum(setup < end for (_, end, _), (_, _, setup) in pairwise(calls))
    assert prepared == 4, f"the next test was set up during the body in only {prepared} of 4"


def test_the_call_turn_passes_on_at_teardown_and_waiting_for_it_is_not_timed(
        pytester: pytest.Pytester) -> None:
    """A test whose call passed gives the turn on before its teardown; a failed one
    keeps it until it is done. The wait for a turn is no part of a test's call duration
    (it was: --durations, junit times and the duration history tach schedules by showed
    the time spent waiting for the previous test)."""
    log = timeline_suite(pytester, f"""
        def next_call_started(i):
            # Until test_body[i + 1] starts its body; bounded, so that a tach whose next
            # call waits for this teardown fails below instead of hanging.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with open({str(pytester.path / "log.jsonl")!r}) as f:
                    if any(json.loads(line)[:2] == [f"test_body[{{i + 1}}]", "call"] for line in f):
                        return
                time.sleep(0.01)
        @pytest.fixture(autouse=True)
        def slow_teardown(request, i):
            yield
            mark(request, "teardown")
            if i == 1:
                time.sleep(0.5)  # it holds the turn meanwhile
            elif i < 3:
                next_call_started(i)
            mark(request, "torndown")
        @pytest.mark.parametrize("i", range(4))
        def test_body(i, request):
            timed_call(request, 0.2)
            assert i != 1
    """)
    r, outcomes = run(pytester, "--tach-threads", "2", "--tach-workers", "1",
                      "--durations=0", "--durations-min=0")
    assert list(outcomes.values()) == ["passed", "failed", "passed", "passed"], r.stdout.str()
    events = read_timeline(log)
    order = [f"test_body[{i}]" for i in range(4)]
    for prev, nxt in pairwise(order):
        start, torn = min(events[nxt]["call"]), max(events[prev]["torndown"])
        if prev == "test_body[1]":
            assert start >= torn, "the next call started while a failed test still held the turn"
        else:
            assert start < torn, f"{nxt} waited for {prev}'s teardown"
    calls = [float(line.split()[0][:-1]) for line in r.stdout.lines if line.split()[1:2] == ["call"]]
    assert len(calls) == 4, r.stdout.str()
    # (That a duration leaves the wait out is checked below, without a clock: on a busy
    # machine a 0.2 s body's call phase can take longer than any bound a wait exceeds.)


def test_the_wait_for_a_turn_is_taken_off_the_call_phase() -> None:
    """What the Forwarder does to the call phase a turn was waited for in: it starts
    when the wait ended and lasts that much less; other phases are left alone."""
    import types

    from pytest_tach.forward import Forwarder

    fw = Forwarder(types.SimpleNamespace())  # type: ignore[arg-type]  # its config is not used here
    for when, waited, expected in (("call", 2.0, (102.0, 0.25, 0.0)), ("setup", 2.0, (100.0, 2.25, 2.0)),
                                   ("call", 0.0, (100.0, 2.25, 0.0))):
        fw.waited = waited
        call = types.SimpleNamespace(when=when, start=100.0, duration=2.25)
        wrapper = fw.pytest_runtest_makereport(item=None, call=call)  # type: ignore[arg-type]
        next(wrapper)
        assert (call.start, call.duration, fw.waited) == expected, when


def test_a_plugin_that_reruns_failed_tests_gets_the_turn_again(pytester: pytest.Pytester) -> None:
    """pytest-rerunfailures runs a test's whole protocol again, logging its reports only
    after each attempt: the rerun calls the test while it still holds the turn (its
    call failed), or after it gave the turn on (its call passed, its teardown failed).
    Both reruns run, bodies never overlap, and each test ends with one outcome (a rerun
    used to be a protocol error that killed the test as crashed)."""
    pytest.importorskip("pytest_rerunfailures")
    log = timeline_suite(pytester, """
        import os
        def first_time(request, what):
            path = f"{request.node.name}.{what}"
            if os.path.exists(path):
                return False
            open(path, "w").close()
            return True
        @pytest.fixture
        def flaky_teardown(request):
            yield
            if first_time(request, "teardown"):
                raise RuntimeError("teardown fails the first time")
        def test_flaky_call(request):
            timed_call(request, 0.05)
            assert not first_time(request, "call")
        def test_flaky_teardown(request, flaky_teardown):
            timed_call(request, 0.05)
        def test_steady(request):
            timed_call(request, 0.05)
    """)
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "--reruns", "2")
    for leftover in (log, *pytester.path.glob("test_*.call"), *pytester.path.glob("test_*.teardown")):
        leftover.unlink()
    r, outcomes = run(pytester, "--tach-threads", "2", "--tach-workers", "1", "--reruns", "2")
    by_name = {k.split("::")[-1]: v for k, v in outcomes.items()}
    assert by_name == {"test_flaky_call": "passed", "test_flaky_teardown": "passed",
                       "test_steady": "passed"}, r.stdout.str()
    # (pytest-rerunfailures counts the passed call before the failed teardown: 4 passed)
    assert r.parseoutcomes() == plain.parseoutcomes() == {"passed": 4, "rerun": 2}, r.stdout.str()
    events = read_timeline(log)
    assert {t: len(e["call"]) for t, e in events.items()} == {
        "test_flaky_call": 4, "test_flaky_teardown": 4, "test_steady": 2}
    # One interval per attempt (2 threads each); a test's rerun may come after the
    # next test's call, once it gave the turn on.
    calls = sorted((min(e["call"][k:k + 2]), max(e["called"][k:k + 2]), t)
                   for t, e in events.items() for k in range(0, len(e["call"]), 2))
    for (_, end, prev), (start, _, nxt) in pairwise(calls):
        assert end <= start, f"{nxt} called while {prev} was"


def test_exitfirst_stops_where_plain_pytest_stops(pytester: pytest.Pytester) -> None:
    """The process set up ahead must not take its turn before the test dispatched
    before it: with one worker, tests run their bodies in order, as in a plain run."""
    pytester.makepyfile("""
        import pytest
        @pytest.mark.parametrize("i", range(6))
        def test_a(i):
            assert i != 2
    """)
    for _ in range(3):
        r, outcomes = run(pytester, "--tach-threads", "2", "--tach-workers", "1", "-x")
        assert list(outcomes.values()) == ["passed", "passed", "failed"], r.stdout.str()


def test_refuses_to_double_run_with_pytest_run_parallel(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_configure(config):
            config.pluginmanager.register(object(), "run-parallel")  # stands for the plugin
    """)
    pytester.makepyfile("def test_x(): pass")
    r = pytester.runpytest_subprocess(*BASE, "--tach-threads", "2")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*pytest-run-parallel is active in this run too*-p no:run-parallel*"])


def test_header_says_build_and_gil_state(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    r = pytester.runpytest_subprocess(*BASE)
    build = "free-threaded build, GIL disabled now" if FREE_THREADED else "build with the GIL, GIL enabled now"
    r.stdout.fnmatch_lines([f"tach python: {build}"])


# -- proof on real races: free-threaded CPython ----------------------------------------

RACES = """
    import threading, pytest

    class Counter:
        n = 0

    @pytest.fixture
    def counter(num_parallel_threads, num_iterations):
        c = Counter()
        c.both_read = threading.Barrier(num_parallel_threads, timeout=60)
        yield c
        assert c.n == num_parallel_threads * num_iterations, f"lost updates: {c.n}"

    LOCK = threading.Lock()

    @pytest.mark.parametrize("trial", range(3))
    def test_unlocked(counter, trial):
        # A read-modify-write whose threads all read before any writes: updates are
        # lost on every iteration, whatever the load (how often a plain += races is a
        # matter of scheduling, and of how busy the machine is).
        seen = counter.n
        counter.both_read.wait()
        counter.n = seen + 1
        counter.both_read.wait()  # every write done before the next iteration reads

    @pytest.mark.parametrize("trial", range(3))
    def test_locked(counter, trial):
        with LOCK:
            seen = counter.n
            counter.n = seen + 1
"""


@requires_free_threading
def test_unlocked_counter_race_is_caught_and_the_locked_one_passes(pytester: pytest.Pytester) -> None:
    """The test's threads share its function fixtures and run at once; its teardown sees
    the updates they lost. (How often a natural race shows is a benchmark's question.)"""
    pytester.makepyfile(test_races=RACES)
    r, outcomes = run(pytester, "--tach-threads", "4", "--tach-iterations", "20")
    unlocked = [o for k, o in outcomes.items() if "test_unlocked" in k]
    locked = [o for k, o in outcomes.items() if "test_locked" in k]
    assert unlocked == ["error"] * 3, outcomes  # teardown finds lost updates
    assert locked == ["passed"] * 3, outcomes
    # Each iteration's 4 increments made 1: 20 of 80, in every trial.
    r.stdout.fnmatch_lines(["E * AssertionError: lost updates: 20"] * 3)
    assert "BrokenBarrierError" not in r.stdout.str()


@requires_free_threading
def test_stress_processes_inherit_an_immortalized_heap(pytester: pytest.Pytester) -> None:
    """Free-threaded 3.13 walks the whole heap when a process starts its first thread,
    immortalizing classes, functions, modules and code. In stress mode the root zygote
    does that once, so the test processes (each starting threads) do not repeat it;
    without stress mode reference counts stay as in a plain run."""
    pytester.makepyfile("""
        import sys, pytest
        class C:
            pass
        IMMORTAL = sys.getrefcount(C) >= 2**32 - 1
        def test_refcount(num_parallel_threads):
            assert IMMORTAL is False  # collection, in the main process: plain counts
            assert (sys.getrefcount(C) >= 2**32 - 1) == (num_parallel_threads > 1)
    """)
    for args in (("--tach-threads", "2"), ()):
        r, outcomes = run(pytester, *args)
        assert list(outcomes.values()) == ["passed"], r.stdout.str()


@requires_free_threading
def test_classic_races_are_caught(pytester: pytest.Pytester) -> None:
    # Each race is made certain, not likely: the thread first inside waits (bounded, far
    # above any load) until a second thread has come to the same point, so the test
    # depends on tach running the bodies at once, not on how the machine schedules them.
    pytester.makepyfile(test_classic="""
        import threading

        tried = threading.Event()  # a thread called next() while another was inside
        def items():
            i = 0
            while True:  # endless: the only way next() can fail here is the race
                if not tried.is_set():
                    tried.wait(60)  # inside the generator until another thread tries it
                yield i
                i += 1
        SHARED = items()
        def test_shared_generator():
            out = []
            for _ in range(50):
                try:
                    out.append(next(SHARED))  # two threads inside one generator: ValueError
                finally:
                    tried.set()

        _cache = None
        BUILT = []
        both_saw_none = threading.Event()
        def get_cache():
            global _cache
            if _cache is None:
                BUILT.append(1)
                if len(BUILT) >= 2:
                    both_saw_none.set()
                both_saw_none.wait(60)  # a slow initializer: another thread arrives meanwhile
                _cache = {"ready": True}
            return _cache
        def test_lazy_global_cache():
            get_cache()
            assert len(BUILT) == 1, f"built {len(BUILT)} times"

        REGISTRY = {}
        MADE = []
        SECOND = {f"k{i}": threading.Event() for i in range(100)}
        def make(key):
            MADE.append(key)
            if MADE.count(key) >= 2:
                SECOND[key].set()
            SECOND[key].wait(60)  # a slow constructor: another thread arrives meanwhile
            return object()
        def test_dict_check_then_set(iteration_index):
            key = f"k{iteration_index}"
            if key not in REGISTRY:
                REGISTRY[key] = make(key)
            assert MADE.count(key) == 1, f"{key} made {MADE.count(key)} times"
    """)
    r, outcomes = run(pytester, "--tach-threads", "8", "--tach-iterations", "100")
    assert outcomes == {f"test_classic::{t}": "failed" for t in
                        ("test_shared_generator", "test_lazy_global_cache", "test_dict_check_then_set")}, r.stdout.str()
    out = r.stdout.str()
    # CPython 3.13t's generators are not thread-safe: two threads in one generator get
    # "generator already executing" or crash the interpreter outright (seen here:
    # SIGSEGV). Either way the test fails, and a crash takes only its own process.
    assert ("generator already executing" in out
            or "crashed while running 'test_classic.py::test_shared_generator'" in out)
    assert "built" in out and "made" in out


def _build_extension(tmp: Path, name: str, gil_slot: bool, body: str) -> None:
    slot = "{Py_mod_gil, Py_MOD_GIL_NOT_USED}," if gil_slot else ""
    src = tmp / f"{name}.c"
    src.write_text(textwrap.dedent(f"""
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        {body}
        static PyMethodDef methods[] = {{{{"use", use, METH_NOARGS, ""}}, {{NULL, NULL, 0, NULL}}}};
        static PyModuleDef_Slot slots[] = {{
        #ifdef Py_GIL_DISABLED
            {slot}
        #endif
            {{0, NULL}}}};
        static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", NULL, 0, methods, slots}};
        PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModuleDef_Init(&def); }}
    """))
    out = tmp / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}",
                    str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)


RACY_C = """
    static volatile int inside = 0;
    static PyObject *use(PyObject *m, PyObject *a) {
        Py_BEGIN_ALLOW_THREADS
        if (__sync_fetch_and_add(&inside, 1) != 0) {  /* not reentrant: crashes on overlap */
            volatile int *p = 0;
            *p = 1;
        }
        /* The first caller waits for a second one to come in: the overlap happens
           whatever the machine's load (a busy loop's length made it a matter of luck). */
        while (inside < 2) {}
        __sync_fetch_and_sub(&inside, 1);
        Py_END_ALLOW_THREADS
        Py_RETURN_NONE;
    }
"""


@requires_free_threading
def test_extension_segfault_under_threads_is_contained(pytester: pytest.Pytester) -> None:
    _build_extension(pytester.path, "racy", gil_slot=True, body=RACY_C)
    pytester.makepyfile(test_ext="import racy\ndef test_racy(): racy.use()\ndef test_other(): pass\n")
    r, outcomes = run(pytester, "--tach-threads", "4")
    assert outcomes == {"test_ext::test_racy": "failed", "test_ext::test_other": "passed"}, r.stdout.str()
    r.stdout.fnmatch_lines(["*crashed while running 'test_ext.py::test_racy'*",
                            "*killed by SIGSEGV*", "*Fatal Python error: Segmentation fault*"])


@requires_free_threading
def test_deadlock_is_killed_with_every_threads_stack(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dead="""
        import threading, time
        A, B = threading.Lock(), threading.Lock()
        def test_deadlock(thread_index):
            first, second = (A, B) if thread_index % 2 else (B, A)
            with first:
                time.sleep(0.2)
                with second:
                    pass
    """)
    r, outcomes = run(pytester, "--tach-threads", "2", "--tach-timeout", "3")
    assert outcomes == {"test_dead::test_deadlock": "failed"}
    out = r.stdout.str()
    assert "Timeout (>3s)" in out
    assert out.count("in test_deadlock") >= 2  # both stuck threads' stacks


@requires_free_threading
@pytest.mark.parametrize("where", ["collection", "test"])
def test_gil_re_enabling_import_is_named(pytester: pytest.Pytester, where: str) -> None:
    _build_extension(pytester.path, "needs_gil", gil_slot=False,
                     body="static PyObject *use(PyObject *m, PyObject *a) { Py_RETURN_NONE; }")
    if where == "collection":
        pytester.makepyfile(test_gil="import needs_gil\ndef test_a(): pass\n")
        context = "collection of test_gil.py"
    else:
        pytester.makepyfile(test_gil="def test_a():\n    import needs_gil\n")
        context = "test test_gil.py::test_a"
    for extra in ((), ("-W", "error"), ("-p", "no:warnings")):
        r, _ = run(pytester, "--tach-threads", "2", *extra)
        r.stdout.fnmatch_lines(["*the GIL was re-enabled*",
                                f"importing 'needs_gil' during {context} enabled the GIL"])
        if extra != ("-W", "error"):  # there the import itself fails, as in plain pytest
            assert r.ret == pytest.ExitCode.OK, r.stdout.str()
    r, _ = run(pytester, "--tach-threads", "2", "--tach-require-gil-disabled")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
