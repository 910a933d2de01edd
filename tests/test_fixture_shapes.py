"""Fixture shapes and plugins that a fork would break: no run stalls, the plugins that
time tests or run them in processes of their own behave as in a plain run (or are
refused clearly)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from conftest import matrix, run_both

MODES = matrix(["test", "module", "none"], ["test", "none"])


def write_suite(pytester: pytest.Pytester, suite: dict[str, str]) -> None:
    """Write a suite given as {module name (or "conftest"): source}."""
    for name, body in suite.items():
        if name == "conftest":
            pytester.makeconftest(body)
        else:
            pytester.makepyfile(**{name: body})


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
        import pytest_tach.controller

        _say = pytest_tach.controller._say_stall

        def _said(config, items, ev):
            _say(config, items, ev)
            open({str(flag)!r}, "w").close()

        pytest_tach.controller._say_stall = _said
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


@pytest.mark.with_xdist
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
    write_suite(pytester, GATE_SUITE)
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


#: Session fixtures that leave threads running (a live server, a warmed-up thread
#: pool): every test must find them working, and each process that set one up must
#: tear it down.
THREADED_SUITE = {
    "conftest": """
        import os
        from concurrent.futures import ThreadPoolExecutor

        import pytest

        @pytest.fixture(scope="session")
        def pool():
            ex = ThreadPoolExecutor(2)
            ex.submit(lambda: None).result()  # its threads are up
            open(f"setup-{os.getpid()}", "w").close()
            yield ex
            ex.shutdown()
            open(f"teardown-{os.getpid()}", "w").close()

        @pytest.fixture(scope="session")
        def answer():
            return 42  # no thread: set up once, in the zygote
    """,
    "test_server": """
        import json
        import urllib.request

        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_json(httpserver, i):
            httpserver.expect_request(f"/x{i}").respond_with_json({"i": i})
            with urllib.request.urlopen(httpserver.url_for(f"/x{i}"), timeout=30) as r:
                assert json.loads(r.read()) == {"i": i}

        def test_fails_like_plain(httpserver):
            httpserver.expect_request("/y").respond_with_data("y")
            assert urllib.request.urlopen(httpserver.url_for("/y"), timeout=30).read() == b"z"
    """,
    "test_pool": """
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_pool_runs_tasks(pool, answer, i):
            assert pool.submit(lambda: answer + i).result(timeout=30) == 42 + i
    """,
    # setup_module and setUpClass are fixtures to pytest: a thread they start is found.
    "test_xunit": """
        from concurrent.futures import ThreadPoolExecutor

        def setup_module(module):
            module.ex = ThreadPoolExecutor(1)
            ex.submit(lambda: None).result()

        def teardown_module(module):
            ex.shutdown()

        def test_one():
            assert ex.submit(lambda: 1).result(timeout=30) == 1

        def test_two():
            assert ex.submit(lambda: 2).result(timeout=30) == 2
    """,
    "test_unit": """
        import unittest
        from concurrent.futures import ThreadPoolExecutor

        class T(unittest.TestCase):
            @classmethod
            def setUpClass(cls):
                cls.ex = ThreadPoolExecutor(1)
                cls.ex.submit(lambda: None).result()

            @classmethod
            def tearDownClass(cls):
                cls.ex.shutdown()

            def test_one(self):
                self.assertEqual(self.ex.submit(lambda: 1).result(timeout=30), 1)

            def test_two(self):
                self.assertEqual(self.ex.submit(lambda: 2).result(timeout=30), 2)
    """,
}


@pytest.mark.parametrize("mode", MODES)
def test_fixtures_that_leave_threads_running_work_in_every_test(pytester: pytest.Pytester,
                                                                 mode: str) -> None:
    """A session fixture's thread does not survive a fork: tests forked from the zygote
    that set up pytest-httpserver's server got HTTP 500 from the zygote's copy, and the
    run hung in its shutdown; a thread pool's tasks never ran. Such a fixture is now set
    up in each test process, and torn down there (setup_module's and setUpClass's too)."""
    pytest.importorskip("pytest_httpserver")
    write_suite(pytester, THREADED_SUITE)
    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode, "--tach-workers", "2", "-v"))
    assert tached == plain
    assert plain["test_server::test_fails_like_plain"] == "failed"
    assert sum(v == "passed" for v in plain.values()) == 12
    made = {p.name.split("-")[1] for p in pytester.path.glob("setup-*")}
    gone = {p.name.split("-")[1] for p in pytester.path.glob("teardown-*")}
    assert made == gone and len(made) >= 2  # the plain run's process, and tach's


def test_verbose_says_which_fixture_is_set_up_per_process(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(THREADED_SUITE["conftest"])
    pytester.makepyfile(test_pool=THREADED_SUITE["test_pool"])
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "-v", timeout=300)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["tach: zygote session: fixture 'pool' started thread*'ThreadPoolExecutor-*', "
                                 "which its test processes would not have: it is set up in each test "
                                 "process instead"])


@pytest.mark.with_xdist
@pytest.mark.parametrize("mode", MODES)
def test_each_test_process_is_a_worker_as_pytest_xdist_names_them(pytester: pytest.Pytester,
                                                                  mode: str) -> None:
    """Suites and plugins name per-worker resources (databases, ports, directories)
    after pytest-xdist's worker id: two tests running at the same time must see two
    ids, of the form pytest-xdist uses, and the same run id; a zygote is no worker."""
    pytest.importorskip("xdist")
    pytester.makeconftest("""
        import os
        import pytest

        @pytest.fixture(scope="session")
        def seen_in_zygote():
            return os.environ.get("PYTEST_XDIST_WORKER")

        @pytest.fixture
        def meet(worker_id, testrun_uid, seen_in_zygote, request):
            # Each test waits (up to a minute) for the other to be running too.
            name = request.node.name
            open(f"{name}.{worker_id}.{testrun_uid}", "w").close()
            other = "b" if name == "test_a" else "a"
            for _ in range(6000):
                if any(p.startswith(f"test_{other}.") for p in os.listdir(".")):
                    break
                time.sleep(0.01)
            return worker_id, seen_in_zygote

        import time
    """)
    for name in ("a", "b"):
        pytester.makepyfile(**{f"test_{name}": f"""
            import os

            def test_{name}(meet):
                worker_id, seen_in_zygote = meet
                assert seen_in_zygote is None
                assert os.environ["PYTEST_XDIST_WORKER"] == worker_id
                assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "2"
        """})
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "2",
                                           "--tach-isolate", mode, timeout=300)
    result.assert_outcomes(passed=2)
    marks = sorted(p.name.split(".", 1)[1] for p in pytester.path.glob("test_*.gw*"))
    (a_id, a_run), (b_id, b_run) = (m.split(".") for m in marks)
    assert {a_id, b_id} == {"gw0", "gw1"} and a_run == b_run != ""


#: Two tests in two modules share a session-scoped event loop; each waits (up to a
#: minute) until the other is running too, and each needs the loop's self-pipe: a
#: thread wakes the loop with call_soon_threadsafe.
LOOP_SUITE = {
    "conftest": """
        import asyncio
        import pytest_asyncio

        @pytest_asyncio.fixture(scope="session", loop_scope="session")
        async def session_loop():
            return asyncio.get_running_loop()
    """,
    "test_a": """
        import asyncio, os, threading
        import pytest

        pytestmark = pytest.mark.asyncio(loop_scope="session")

        async def meet(me, other):
            # Wait for the other test; return the inode of its loop's self-pipe.
            loop = asyncio.get_running_loop()
            with open(me + ".tmp", "w") as f:
                f.write(str(os.fstat(loop._ssock.fileno()).st_ino))
            os.rename(me + ".tmp", me)
            for _ in range(6000):
                if os.path.exists(other):
                    with open(other) as f:
                        return int(f.read())
                await asyncio.sleep(0.01)
            raise AssertionError(f"{other} never ran beside {me}")

        async def woken_by_a_thread(loop):
            fut = loop.create_future()
            threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, "woken")).start()
            return await asyncio.wait_for(fut, 30)

        async def check(session_loop, me, other):
            loop = asyncio.get_running_loop()
            assert loop is session_loop
            theirs = await meet(me, other)
            assert theirs != os.fstat(loop._ssock.fileno()).st_ino  # a self-pipe of its own
            assert await woken_by_a_thread(loop) == "woken"

        async def test_a(session_loop):
            await check(session_loop, "a", "b")
    """,
    "test_b": """
        import pytest
        from test_a import check

        pytestmark = pytest.mark.asyncio(loop_scope="session")

        async def test_b(session_loop):
            await check(session_loop, "b", "a")
    """,
}


@pytest.mark.parametrize("mode", MODES)
def test_a_session_event_loop_does_not_serialise_its_tests(pytester: pytest.Pytester, mode: str) -> None:
    """A session-scoped asyncio loop's self-pipe was taken for a connection its test
    processes would share, and its zygote ran them one at a time. Each test process now
    renews the loop's selector and self-pipe, and the tests run side by side."""
    asyncio_plugin = pytest.importorskip("pytest_asyncio")
    if tuple(int(x) for x in asyncio_plugin.__version__.split(".")[:2]) < (0, 24):
        pytest.skip("loop_scope needs pytest-asyncio 0.24+")
    write_suite(pytester, LOOP_SUITE)
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "2",
                                           "--tach-isolate", mode, "-v", timeout=300)
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*one at a time*")


ORDER_SUITE = {
    "conftest": """
        def note(name):
            with open("log", "a") as f:
                f.write(name + "\\n")
    """,
    "test_a": """
        import time
        import pytest
        from conftest import note

        @pytest.mark.order("last")
        def test_z_last():
            note("last")

        @pytest.mark.parametrize("i", range(4))
        def test_unordered(i):
            note(f"u{i}")
            time.sleep(0.2)
            note(f"u{i}-end")

        @pytest.mark.order(after="test_b.py::test_b_unordered")
        def test_relative():
            note("relative")
    """,
    "test_b": """
        import time
        import pytest
        from conftest import note

        # Each takes a while: a test started beside it would note itself first.
        @pytest.mark.order(1)
        def test_b_second():
            time.sleep(0.2)
            note("second")

        @pytest.mark.order("first")
        def test_b_first():
            time.sleep(0.2)
            note("first")

        def test_b_unordered():
            note("bu")
    """,
}


@pytest.mark.parametrize("mode", MODES)
def test_pytest_order_is_honoured(pytester: pytest.Pytester, mode: str) -> None:
    """pytest-order's order held in a plain run only: tests started two at a time,
    longest first. Now the tests it places before the others run (in its order) before
    any other starts, those it places last after all others, and a test placed after
    another runs after it; the rest run in parallel."""
    pytest.importorskip("pytest_order")
    write_suite(pytester, ORDER_SUITE)
    result = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-workers", "2",
                                           "--tach-isolate", mode, timeout=300)
    result.assert_outcomes(passed=9)
    log = (pytester.path / "log").read_text().split()
    assert log[:2] == ["first", "second"] and log[-1] == "last", log  # "last" after every end
    assert log.index("bu") < log.index("relative"), log


#: A small Django project: a file test database (sqlite), tests that use it in
#: transactions and with transaction=True, and Django's live_server (a thread serving
#: the project), as pytest-django runs them.
DJANGO_SUITE = {
    "settings": """
        SECRET_KEY = "not secret"
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "app"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3",
                                 "TEST": {"NAME": "test_db.sqlite3"}}}
        USE_TZ = True
        DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
        ROOT_URLCONF = "urls"
        STATIC_URL = "/static/"
    """,
    "urls": """
        from django.contrib.auth.models import User
        from django.http import JsonResponse
        from django.urls import path

        def count(request):
            return JsonResponse({"users": User.objects.count()})

        urlpatterns = [path("count", count)]
    """,
    "app/__init__": "",
    "app/models": """
        from django.db import models

        class Item(models.Model):
            name = models.CharField(max_length=20)
    """,
    "app/migrations/__init__": "",
    "app/migrations/0001_initial": """
        from django.db import migrations, models

        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [migrations.CreateModel(name="Item", fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=20))])]
    """,
    "test_db": """
        import pytest
        from django.contrib.auth.models import User
        from app.models import Item

        @pytest.mark.django_db
        @pytest.mark.parametrize("i", range(6))
        def test_create(i):
            User.objects.create(username=f"u{i}")
            Item.objects.create(name=f"i{i}")
            assert User.objects.count() == 1 and Item.objects.count() == 1

        @pytest.mark.django_db(transaction=True)
        @pytest.mark.parametrize("i", range(3))
        def test_transactional(i):
            User.objects.create(username=f"t{i}")
            assert User.objects.count() == 1

        def test_without_the_database():
            with pytest.raises(RuntimeError, match="Database access not allowed"):
                User.objects.count()
    """,
    "test_live": """
        import json
        import urllib.request

        import pytest
        from django.contrib.auth.models import User

        @pytest.mark.parametrize("i", range(3))
        def test_live_server_sees_the_test_database(live_server, transactional_db, i):
            User.objects.create(username=f"l{i}")
            with urllib.request.urlopen(live_server.url + "/count", timeout=30) as r:
                assert json.loads(r.read()) == {"users": 1}
    """,
}


@pytest.mark.with_django
@pytest.mark.parametrize("mode", MODES)
def test_a_django_project_with_a_file_database_and_a_live_server(pytester: pytest.Pytester,
                                                                  mode: str) -> None:
    """Under tach the live server answered from the zygote (and the run hung), and
    test processes sharing one sqlite file failed (a read-only database, tables that
    already exist). Each test process is now a worker with a database of its own, as
    under pytest-xdist, and sets the live server up for itself."""
    pytest.importorskip("pytest_django")
    for name, body in DJANGO_SUITE.items():
        path = pytester.path / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    plain, tached = run_both(pytester, tach_args=("--tach-isolate", mode, "--tach-workers", "2"))
    assert sum(v == "passed" for v in plain.values()) == 13
    assert tached == plain
    assert not list(pytester.path.glob("test_db.sqlite3*"))  # every test database removed


def counted_database(pytester: pytest.Pytester, more_fixtures: str) -> Callable[..., int]:
    """A conftest with a session fixture `database` (3) that appends a line to a file at
    each setup, and `more_fixtures`; returns count(passed, *args, **outcomes): run pytest
    with args, check that `passed` tests passed (and the other outcomes), return how
    many times `database` was set up."""
    setups = pytester.path / "setups.txt"
    pytester.makeconftest(textwrap.dedent(f"""
        import pytest

        @pytest.fixture(scope="session")
        def database():
            with open({str(setups)!r}, "a") as f:
                f.write("setup\\n")
            return 3
    """) + textwrap.dedent(more_fixtures))

    def count(passed: int, *args: str, **outcomes: int) -> int:
        setups.unlink(missing_ok=True)
        result = pytester.runpytest_subprocess(*args, timeout=120)
        result.assert_outcomes(passed=passed, **outcomes)
        return len(setups.read_text().splitlines())

    return count


@pytest.mark.parametrize("mode", MODES)
def test_a_session_fixture_reached_at_run_time_is_set_up_once_from_the_second_run(
        pytester: pytest.Pytester, mode: str) -> None:
    """A session fixture that tests reach only by name while they run (a function fixture's
    request.getfixturevalue, as pytest-django's django_db marker does) is not in their
    closure: the first run sets it up in each test process; tach learns it, and from the
    next run their session zygote sets it up once, as a plain run does. Each setup
    appends a line to a file, so the count is exact."""
    count = counted_database(pytester, """
        @pytest.fixture
        def rows(request):
            if request.node.get_closest_marker("db") is None:
                return None
            return request.getfixturevalue("database")
    """)
    pytester.makeini("[pytest]\nmarkers = db\n")
    for m in range(3):
        pytester.makepyfile(**{f"test_m{m}": "".join(
            f"import pytest\n\n@pytest.mark.db\ndef test_{i}(rows):\n    assert rows == 3\n\n" for i in range(4))
            + "def test_plain(rows):\n    assert rows is None\n"})

    assert count(15, "-p", "no:cacheprovider") == 1
    tach = ("-p", "tach", "--tach-isolate", mode, "--tach-workers", "2")
    first = count(15, *tach)  # learned here: each test process set it up for itself
    if mode == "test":  # one process per test (how many a long-lived runner takes varies)
        assert first == 12
    assert count(15, *tach) == 1
    if mode == "test":
        assert count(15, *tach, "--cache-clear") == 12


@pytest.mark.parametrize("mode", MODES)
def test_a_class_fixture_of_a_test_outside_any_class_is_that_tests_own(pytester: pytest.Pytester,
                                                                        mode: str) -> None:
    """pytest sets a class-scoped fixture up for a test outside any class as if it were
    function-scoped (on the test itself). Found on djangorestframework's suite, where
    pytest-django's autouse class fixture unblocks the database for Django TestCase
    classes: tach had set it up once in the session zygote for a module-level test, and
    the classes got that cached value instead of their own setup."""
    pytester.makeini("[pytest]\npythonpath = .\n")
    pytester.makepyfile(state="STATE = {'cls': None}\n")
    pytester.makeconftest("""
        import pytest
        import state

        @pytest.fixture(scope="class", autouse=True)
        def per_class(request):
            state.STATE["cls"] = request.cls.__name__ if request.cls is not None else None
            yield
            state.STATE["cls"] = None
    """)
    pytester.makepyfile(test_mixed="""
        from state import STATE

        def test_before():
            assert STATE["cls"] is None

        class TestA:
            def test_a(self):
                assert STATE["cls"] == "TestA"

            def test_b(self):
                assert STATE["cls"] == "TestA"

        def test_after():
            assert STATE["cls"] is None
    """)
    plain, tach = run_both(pytester, tach_args=("--tach-isolate", mode, "--tach-workers", "2"))
    assert set(plain.values()) == {"passed"} and len(plain) == 4
    assert tach == plain


@pytest.mark.parametrize("mode", MODES)
def test_a_session_fixture_a_class_fixture_reaches_is_set_up_once_from_the_second_run(
        pytester: pytest.Pytester, mode: str) -> None:
    """The same through a class fixture, as pytest-django's does for Django TestCase
    classes (their class fixture reaches the session's django_db_setup): under `test` the
    class zygotes set it up, each its own; tach learns it there too."""
    count = counted_database(pytester, """
        @pytest.fixture(scope="class", autouse=True)
        def class_db(request):
            request.cls.rows = request.getfixturevalue("database")
    """)
    for m in range(2):
        pytester.makepyfile(**{f"test_k{m}": "".join(
            f"class TestK{c}:\n" + "".join(f"    def test_{i}(self):\n        assert self.rows == 3\n\n"
                                          for i in range(2)) for c in range(3))})

    assert count(12, "-p", "no:cacheprovider") == 1
    tach = ("-p", "tach", "--tach-isolate", mode, "--tach-workers", "2")
    first = count(12, *tach)
    if mode == "test":  # each class zygote set it up
        assert first == 6
    assert count(12, *tach) == 1


SETUP_HOOKS_SUITE = {
    "conftest": """
        import logging, socket, warnings
        import pytest

        @pytest.fixture(scope="session")
        def talky():
            print("session fixture printed")
            logging.getLogger("fx").warning("session fixture logged")
            warnings.warn(UserWarning("session fixture warned"))
            return 1

        @pytest.fixture(scope="module")
        def module_talky(talky):
            print("module fixture printed")
            return talky + 1

        @pytest.fixture(scope="session")
        def connects():
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()

        @pytest.fixture
        def own():
            print("function fixture printed")
            logging.getLogger("fx").warning("function fixture logged")
    """,
    "test_a": """
        import pytest

        @pytest.mark.skip(reason="skipped before its fixtures are set up")
        def test_0_skipped(module_talky):
            pass

        def test_1_first(module_talky, own):
            print("test printed")
            assert module_talky == 3

        def test_2_second(talky):
            assert talky == 2
    """,
    "test_b": """
        def test_socket(connects):
            pass

        def test_no_socket():
            pass
    """,
}


def _setup_reports(path: Any) -> dict[tuple[str, str], tuple[str, list[Any]]]:
    """From a report log: each report's outcome and sections by (test, phase)."""
    import json

    reports: dict[tuple[str, str], tuple[str, list[Any]]] = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if doc["$report_type"] == "TestReport":
            reports[(doc["nodeid"], doc["when"])] = (doc["outcome"], doc["sections"])
    return reports


def _warnings_summary(result: pytest.RunResult) -> list[str]:
    """The warnings summary's lines (each test id, then its warnings)."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "warnings summary" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("-- Docs"))
    return lines[start + 1:end]


@pytest.mark.parametrize("mode", MODES)
def test_zygote_setup_runs_inside_the_first_tests_setup_hooks(pytester: pytest.Pytester, mode: str) -> None:
    """A higher-scoped fixture set up in a zygote is set up inside the setup hooks of the
    first test (in collection order) whose setup reaches it, as in a plain run: a
    plugin's hook sees it (pytest-socket's --disable-socket refuses a session fixture's
    socket), and what capture, logging and the warnings plugin gather lands on that
    test's setup report, merged with what its own fixtures produce (a test skipped
    before its fixtures is not that test)."""
    pytest.importorskip("pytest_socket")
    write_suite(pytester, SETUP_HOOKS_SUITE)
    plain, tached = pytester.path / "plain.jsonl", pytester.path / "tach.jsonl"
    common = ("-p", "no:cacheprovider", "--disable-socket")
    expected_run = pytester.runpytest_subprocess(*common, f"--report-log={plain}", timeout=120)
    result = pytester.runpytest_subprocess("-p", "tach", *common, "--tach-isolate", mode, "--tach-workers", "2",
                                           f"--report-log={tached}", timeout=120)
    result.assert_outcomes(passed=1, failed=2, skipped=1, errors=1, warnings=2)
    expected = _setup_reports(plain)
    first = expected[("test_a.py::test_1_first", "setup")][1]
    assert [name for name, _ in first] == ["Captured stdout setup", "Captured log setup"]
    assert first[0][1] == "session fixture printed\nmodule fixture printed\nfunction fixture printed\n"
    assert expected[("test_b.py::test_socket", "setup")][0] == "failed"  # the socket blocked
    assert _setup_reports(tached) == expected
    summary = _warnings_summary(expected_run)
    assert summary[0] == "test_a.py::test_1_first"
    assert _warnings_summary(result) == summary


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_reused_test_process_forked_before_a_fixture_was_set_up_takes_no_test_that_needs_it(
        pytester: pytest.Pytester, workers: str) -> None:
    """A reusable test process is restored to the moment it was forked: one forked
    before its zygote set a fixture up (here for the first test, which a skip mark ends
    before its fixtures, so nothing was set up for it) lacked the fixture, took later
    tests, and set it up again for each of them."""
    count = counted_database(pytester, "")
    pytester.makepyfile(test_m="import pytest\n\n@pytest.mark.skip\ndef test_skipped(database):\n    pass\n\n"
                        + "".join(f"def test_{i}(database):\n    assert database == 3\n\n" for i in range(8)))
    assert count(8, "-p", "tach", "--tach-isolate", "test", "--tach-workers", workers, "-p", "no:cacheprovider",
                 skipped=1) == 1
