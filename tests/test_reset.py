"""--tach-reset snapshot: a test process is reused, restored to the moment it was
forked after each test. What a test changes must not reach the next one, and what
cannot be restored must make tach fork a fresh process instead."""

from __future__ import annotations

import json

import pytest

from pytest_tach import _reset

pytestmark = pytest.mark.skipif(_reset.probe() is not None, reason=f"snapshot/restore: {_reset.probe()}")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-reset", "snapshot",
                                         "--tach-workers", "1", *args)


MUTATE = """
    import ctypes, json, mmap, os, signal, sys, pytest

    STATE = []

    def probe():
        return {
            "pid": os.getpid(),
            "state": list(STATE),
            "env": os.environ.get("TACH_RESET_PROBE"),
            "cwd": os.getcwd(),
            "sigusr1": signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL,
            "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
            "imported": "wave" in sys.modules,
            "wave_mark": getattr(sys.modules.get("wave"), "TACH_MARK", None),
            "umask": os.umask(0o22),
        }

    @pytest.fixture(scope="module")
    def shared():
        return {"hits": 0}

    @pytest.mark.parametrize("i", range(8))
    def test_mutate(i, shared, tmp_path):
        seen = probe()
        seen["shared"] = shared["hits"]
        with open(os.path.join(os.path.dirname(__file__), "seen.jsonl"), "a") as f:
            f.write(json.dumps(seen) + "\\n")
        # change everything a restore must undo
        STATE.append(i)
        shared["hits"] += 1
        os.environ["TACH_RESET_PROBE"] = str(i)
        os.chdir(tmp_path)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        os.open(__file__, os.O_RDONLY)
        import wave  # a module not imported before (carried into the snapshot: see below)
        wave.TACH_MARK = i
        blob = bytearray(8 << 20)  # a mapping of its own (malloc's mmap threshold)
        m = mmap.mmap(-1, 1 << 20)
        garbage = [object() for _ in range(100000)]  # new obmalloc arenas, then freed
        del garbage
        os.umask(0o077)
"""


def test_each_test_sees_the_process_as_forked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mutate=MUTATE)
    r = run(pytester)
    r.assert_outcomes(passed=8)
    seen = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    assert len(seen) == 8
    first = seen[0]
    assert len({s["pid"] for s in seen}) < 8, "no process was reused: the test proves nothing"
    pids: set[int] = set()
    for s in seen:
        assert s["state"] == [] and s["shared"] == 0 and s["env"] is None
        assert s["cwd"] == first["cwd"] and s["sigusr1"]
        assert s["fds"] == first["fds"], "an fd opened by an earlier test is still open"
        assert s["umask"] == first["umask"]
        # A module an earlier test of the process imported is imported (carried into its
        # snapshot, as in plain pytest), untouched by that test.
        assert s["imported"] == (s["pid"] in pids) and s["wave_mark"] is None
        pids.add(s["pid"])


def test_modules_a_test_imported_are_carried_into_the_snapshot(pytester: pytest.Pytester) -> None:
    """A module a test imports lazily is imported again for each later test of the
    process only if it cannot be carried: the process imports it once more after its
    restore and snapshots there. Not one the test imported from a directory of its own."""
    pytester.makepyfile(lazymod="""
        import os
        with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        STATE = []
    """)
    pytester.makepyfile(test_lazy="""
        import json, os, sys, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_lazy(i, tmp_path):
            seen = {"pid": os.getpid(), "had": "lazymod" in sys.modules, "tmpmod": "tmpmod" in sys.modules,
                    "setup": "setup" in sys.modules}
            import lazymod
            seen["state"] = list(lazymod.STATE)
            lazymod.STATE.append(i)
            # one it cannot carry: its directory is gone from sys.path after the restore,
            # and one that would find another file then (the project's setup.py: not run)
            (tmp_path / "tmpmod.py").write_text("X = 1\\n")
            (tmp_path / "setup.py").write_text("Y = 1\\n")
            sys.path.insert(0, str(tmp_path))
            import setup, tmpmod
            with open(os.path.join(os.path.dirname(__file__), "seen.jsonl"), "a") as f:
                f.write(json.dumps(seen) + "\\n")
    """)
    pytester.makepyfile(setup="open(__file__ + '.ran', 'w').close()")
    r = run(pytester)
    r.assert_outcomes(passed=6)
    seen = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    imports = (pytester.path / "imports.log").read_text().split()
    assert len({s["pid"] for s in seen}) < 6, "no process was reused: the test proves nothing"
    pids: set[int] = set()
    for s in seen:
        assert s["had"] == (s["pid"] in pids) and s["state"] == [] and not s["tmpmod"] and not s["setup"]
        pids.add(s["pid"])
    # each process: its first test's import, then the one carried into its snapshot
    assert all(imports.count(str(pid)) <= 2 for pid in pids), imports
    assert len(imports) < len(seen)
    assert not (pytester.path / "setup.py.ran").exists()


def test_pages_left_unprotected_are_still_put_back(pytester: pytest.Pytester) -> None:
    # After a restore, the pages it put back mostly stay unprotected (they are put
    # back every time), and every 64 restores (or after a big write) all are protected
    # again. Whatever the state, each test must find memory as the zygote had it: a
    # different page of a buffer the zygote allocated is dirtied by each test, then one
    # test writes all of it.
    pytester.makepyfile("""
        import os, pytest

        BUF = bytearray(b"z" * (8 << 20))  # in the zygote: the snapshot's golden state

        @pytest.mark.parametrize("i", range(150))
        def test_page(i):
            assert BUF.count(b"z") == len(BUF), "an earlier test's write survived"
            if i == 100:
                BUF[:] = b"y" * len(BUF)
            else:
                BUF[(i * 4096 * 7) % len(BUF)] = 0
            with open(os.path.join(os.path.dirname(__file__), "pids.txt"), "a") as f:
                f.write(f"{os.getpid()}\\n")
    """)
    r = run(pytester)
    r.assert_outcomes(passed=150)
    pids = (pytester.path / "pids.txt").read_text().split()
    assert len(pids) == 150 and len(set(pids)) < 10, "processes were not reused: the test proves nothing"


def test_what_cannot_be_restored_gets_a_fresh_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os, subprocess, sys, threading, time

        STATE = []

        def test_thread_left_running():
            STATE.append(1)
            threading.Thread(target=time.sleep, args=(2,), daemon=True).start()

        def test_after_thread():
            assert STATE == [] and threading.active_count() == 1

        def test_child_left_running():
            STATE.append(2)
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])

        def test_after_child():
            assert STATE == []

        def test_closes_stdout():
            STATE.append(3)
            os.close(1)

        def test_after_stdout():
            assert STATE == []
            os.fstat(1)
    """)
    r = run(pytester)
    r.assert_outcomes(passed=6)


HEAP = """
    import json, os, pytest
    from pytest_tach import _reset

    # 96 MB of pages the zygote wrote (the heap a reused process must not copy)
    HEAP = [os.urandom(1 << 20) for _ in range(96)]

    def private_mb():
        kb = 0
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    kb += int(line.split()[1])
        return kb / 1024

    @pytest.mark.parametrize("i", range(12))
    def test_heap(i):
        assert all(len(b) == 1 << 20 for b in HEAP)
        HEAP[i] = b"changed"  # written, then put back from the holder's copy
        try:
            os.waitpid(-1, os.WNOHANG)
            children = "some"
        except ChildProcessError:
            children = "none"
        with open(os.path.join(os.path.dirname(__file__), "seen.jsonl"), "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "stats": _reset.stats(), "private_mb": private_mb(),
                                "children": children}) + "\\n")
"""


def test_a_reused_process_does_not_copy_its_zygotes_heap(pytester: pytest.Pytester) -> None:
    # The golden pages stay in the holder (a copy-on-write twin made at the snapshot):
    # the process itself holds only what tests wrote and what its restores needed.
    # Private memory counts pages, not time: a copy of the 96 MB heap would show.
    pytester.makepyfile(test_heap=HEAP)
    run(pytester).assert_outcomes(passed=12)
    seen = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    assert max(s["stats"]["restores"] for s in seen) >= 3, "no process was reused: the test proves nothing"
    for s in seen:
        assert s["private_mb"] < 48, f"a reused process holds {s['private_mb']:.0f} MB of its own"
        assert s["stats"]["fetched"] * 4096 < 48 << 20
        assert s["children"] == "none", "the test process sees a child it did not start"


def test_a_holder_gone_gets_a_fresh_process(pytester: pytest.Pytester) -> None:
    # Without its holder a process cannot be restored: the check before the restore
    # finds out and the zygote forks a fresh process for the next test.
    pytester.makepyfile("""
        import os, signal, pytest
        from pytest_tach import _reset

        PIDS = os.path.join(os.path.dirname(__file__), "pids.txt")

        def record():
            with open(PIDS, "a") as f:
                f.write(f"{os.getpid()} {_reset.stats()['restores']}\\n")

        @pytest.mark.parametrize("i", range(12))
        def test_step(i):
            record()
            if i == 1:
                os.kill(_reset.stats()["holder"], signal.SIGKILL)
    """)
    run(pytester).assert_outcomes(passed=12)
    rows = [line.split() for line in (pytester.path / "pids.txt").read_text().splitlines()]
    assert [r[1] for r in rows[:4]] == ["0", "1", "0", "1"]
    assert rows[0][0] == rows[1][0] != rows[2][0] == rows[3][0]


def test_crash_and_timeout_in_a_reused_process(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import ctypes, time, pytest

        @pytest.mark.parametrize("i", range(3))
        def test_before(i):
            pass

        def test_segfault():
            ctypes.string_at(0)

        @pytest.mark.timeout(1)
        def test_hang():
            time.sleep(30)

        @pytest.mark.parametrize("i", range(3))
        def test_after(i):
            pass
    """)
    r = run(pytester, "-rf", "-p", "no:timeout")  # tach's deadline for the marker
    r.assert_outcomes(passed=6, failed=2)
    r.stdout.fnmatch_lines([
        "*crashed while running 'test_crash_and_timeout_in_a_reused_process.py::test_segfault'*",
        "*Timeout (>1*s)*test_hang*",
    ])


def test_only_zygotes_with_enough_tests_reuse_processes(pytester: pytest.Pytester) -> None:
    # A snapshot costs about as much as forking a few test processes: a module zygote
    # with two tests forks each; one with eight snapshots and reuses.
    body = """
        import json, os, pytest
        from pytest_tach import _reset

        @pytest.fixture(scope="module")
        def mod():
            return 1

        @pytest.mark.parametrize("i", range({n}))
        def test_it(i, mod):
            with open(os.path.join(os.path.dirname(__file__), "{name}.jsonl"), "a") as f:
                f.write(json.dumps(dict(pid=os.getpid(), snapshot=_reset.stats() is not None)) + "\\n")
    """
    pytester.makepyfile(test_short=body.format(n=2, name="short"), test_long=body.format(n=8, name="long"))
    r = run(pytester)
    r.assert_outcomes(passed=10)

    def seen(name: str) -> list[dict[str, object]]:
        return [json.loads(line) for line in (pytester.path / f"{name}.jsonl").read_text().splitlines()]

    short, long = seen("short"), seen("long")
    assert [s["snapshot"] for s in short] == [False, False]
    assert len({s["pid"] for s in short}) == 2
    assert all(s["snapshot"] for s in long)
    assert len({s["pid"] for s in long}) < 8


def test_a_zygote_is_not_serial_because_of_its_own_sockets(pytester: pytest.Pytester) -> None:
    # The session zygote sets up a session fixture while processes it made reusable
    # (and its control sockets to them) exist: those sockets are its own, not state its
    # children share, so it must not run its tests one at a time.
    pytester.makepyfile("""
        import pytest

        @pytest.fixture(scope="session")
        def late():
            return 1

        @pytest.mark.parametrize("i", range(8))
        def test_first(i):
            pass

        @pytest.mark.parametrize("i", range(4))
        def test_then(i, late):
            assert late == 1
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-reset", "snapshot",
                                      "--tach-workers", "2", "-v", timeout=120)
    r.assert_outcomes(passed=12)
    assert "one at a time" not in r.stdout.str()


def test_serial_zygote_with_reused_processes_does_not_hang(pytester: pytest.Pytester) -> None:
    # A serial zygote (it holds a connected socket) starts its next test when the last
    # one's process says it is done; handling that reads other processes' messages,
    # which a first version then waited for a second time, forever.
    pytester.makepyfile("""
        import socket, pytest

        @pytest.fixture(scope="session")
        def conn():
            a, b = socket.socketpair()
            yield a
            a.close(); b.close()

        @pytest.mark.parametrize("i", range(30))
        def test_uses_conn(i, conn):
            assert conn.fileno() >= 0

        @pytest.mark.parametrize("i", range(30))
        def test_plain(i):
            pass
    """)
    r = pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", "--tach-reset", "snapshot",
                                      "--tach-workers", "2", "-v", timeout=120)
    r.assert_outcomes(passed=60)
    r.stdout.fnmatch_lines(["*runs its tests one at a time: it holds a connected socket*"])


def test_bad_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass")
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-reset", "banana")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--tach-reset: expected one of auto, snapshot, fork, got 'banana'*"])


def test_header_says_how_tests_are_reset(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass")
    r = run(pytester)
    r.stdout.fnmatch_lines(["tach *: 1 worker, isolate=test, reset=snapshot*"])
    r = pytester.runpytest_subprocess("-p", "tach", "--tach-reset", "fork")
    r.stdout.fnmatch_lines(["tach *isolate=test, reset=fork*"])
