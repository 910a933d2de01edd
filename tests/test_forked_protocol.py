"""The forked side against a fake supervisor written in Python, as go/supervisor's tests
drive it with fake zygotes: a conftest takes over pytest's run loop, forks the root
zygote itself, and plays the supervisor's part of the protocol over the same unix
socket, one command at a time. Every frame must be one the supervisor accepts
(pytest_tach.protocol, held to Go's side by tests/unit/test_protocol.py), and each connection
must carry exactly the expected exchange: what the Go supervisor relies on, checked
without it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pytest_tach import _reset

FAKE_SUPERVISOR = r'''
import json, os, socket, tempfile

import pytest

from pytest_tach import forked, frames, handover, plan, protocol
from pytest_tach.forward import Forwarder

KINDS = {"string": str, "int": int, "bool": bool, "map": dict, "number": (int, float)}
OUT = os.environ["FAKE_OUT"]
RESET = os.environ["FAKE_RESET"] == "1"


def pytest_addhooks(pluginmanager):
    handover.add_hookspecs(pluginmanager)


def pytest_addoption(parser):
    handover.addini(parser)


def pytest_configure(config):
    config.pluginmanager.register(Forwarder(config), "tach-forwarder")


class Conn:
    """One accepted connection: its frames, checked against the protocol, by type."""

    def __init__(self, sock):
        self.sock, self.seen = sock, []
        sock.settimeout(60)  # far above any load: a missing frame fails, it never hangs

    def recv(self):
        msg = frames.recv(self.sock)
        assert msg is not None, f"connection closed after {self.seen}"
        t = msg["t"]
        for field, kind in protocol.TO_SUPERVISOR[t].items():  # (KeyError: unknown frame)
            assert isinstance(msg[field], KINDS[kind]) and not (kind == "int" and msg[field] is True), msg
        self.seen.append(t)
        return msg

    def until(self, t):
        while True:
            msg = self.recv()
            if msg["t"] == t:
                return msg

    def send(self, msg):
        frames.send(self.sock, msg)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    items = list(session.items)
    private = tempfile.mkdtemp(prefix="fake-")
    path = os.path.join(private, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(60)
    levels = plan.plan(items, "test")
    ctx = forked.Context(session=session, items=items, levels=levels, sock_path=path, fault_dir=private,
                         forwarder=session.config.pluginmanager.get_plugin("tach-forwarder"),
                         listen_fd=listener.fileno(), reset=RESET, workers=1, run_id="fake")
    root_pid = forked.start_root(ctx, own_group=False)
    accept = lambda: Conn(listener.accept()[0])
    root = accept()
    assert root.recv() == protocol.hello("zygote", 0) | {"pid": root_pid}
    tests = list(range(len(items)))
    root.send({"t": "spawn", "id": 1, "key": levels[0][0].key, "tests": tests, "final": True})
    zygote_pid = root.until("forked")["pid"]
    zygote = accept()
    assert zygote.recv()["id"] == 1 and zygote.recv() == protocol.ready(1)
    runners, pids = [], []
    conn = None
    for runner, test in enumerate(tests):
        final = test == tests[-1]
        zygote.send({"t": "run", "runner": runner, "tests": [test], "final": final, "persistent": False,
                     "slot": 0})
        forked_msg = zygote.until("forked")
        assert (forked_msg["kind"], forked_msg["id"]) == ("runner", runner)
        pids.append(forked_msg["pid"])
        if conn is None or not RESET:
            conn = accept()  # a reused process keeps its connection
            runners.append(conn)
        first = conn.recv()
        if conn.seen == ["hello"]:  # a new connection's (written by the zygote before the
            # fork, under ForkEach: its pid is the zygote's; the supervisor takes the
            # runner's from "forked")
            assert (first["role"], first["id"]) == ("runner", runner)
        else:  # a reused process, restored, keeps its connection
            assert first == protocol.take(runner)
        assert conn.recv() == protocol.start(test)
        whens = [conn.recv()["data"]["when"] for _ in range(2)]
        if final:  # the zygote's last test waits at the teardown gate
            assert conn.recv() == protocol.await_gate(test)
            conn.send({"t": "go"})
        whens.append(conn.recv()["data"]["when"])
        assert whens == ["setup", "call", "teardown"]
        assert conn.recv()["t"] == "done"
        if RESET and not final:
            assert conn.recv() == protocol.rest()  # restores itself; keeps the connection
        exited = zygote.until("exited")
        assert exited["pid"] == forked_msg["pid"] and exited["status"] == 0
    zygote.send({"t": "exit"})
    assert root.until("exited")["pid"] == zygote_pid
    root.send({"t": "exit"})
    _, status = os.waitpid(root_pid, 0)
    with open(OUT, "w") as f:
        json.dump({"root": root.seen, "zygote": zygote.seen, "runners": [c.seen for c in runners],
                   "pids": pids, "status": status}, f)
    return True
'''


@pytest.mark.parametrize("reset", [False, True], ids=["fork-each", "pool"])
def test_the_forked_side_speaks_the_protocol_to_a_fake_supervisor(pytester: pytest.Pytester, reset: bool,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if reset and _reset.probe() is not None:
        pytest.skip(f"snapshot/restore: {_reset.probe()}")
    pytester.makeconftest(FAKE_SUPERVISOR)
    pytester.makepyfile(test_four=textwrap.dedent("""
        def test_a(): pass
        def test_b(): pass
        def test_c(): pass
        def test_d(): pass
    """))
    out = tmp_path / "exchange.json"
    monkeypatch.setenv("FAKE_OUT", str(out))
    monkeypatch.setenv("FAKE_RESET", "1" if reset else "0")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=240)
    assert out.exists(), r.stdout.str() + r.stderr.str()
    seen = json.loads(out.read_text())
    per_test = ["start", "report", "report", "report", "done"]
    assert seen["root"] == ["hello", "forked", "exited"]
    assert seen["zygote"] == ["hello", "ready", *["forked", "exited"] * 4]
    assert seen["status"] == 0
    if not reset:  # a process per test, each on its own connection
        assert len(set(seen["pids"])) == 4
        assert seen["runners"] == [["hello", *per_test]] * 3 + [["hello", "start", "report", "report", "await",
                                                                  "report", "done"]]
    else:  # one process, restored after each test, on one connection
        assert len(set(seen["pids"])) == 1
        (one,) = seen["runners"]
        assert one == ["hello", *per_test, "rest", "take", *per_test, "rest", "take", *per_test, "rest",
                       "take", "start", "report", "report", "await", "report", "done"]
