"""The Go extension: loading, its msgpack API, and calls from many threads at once."""

from __future__ import annotations

import struct
import threading

import msgpack
import pytest

from conftest import EXT_SUFFIX
from pytest_tach import _native


def frame(obj: object) -> bytes:
    payload = msgpack.packb(obj)
    return struct.pack(">I", len(payload)) + payload


def test_version_reports_go_runtime_and_abi() -> None:
    import pytest_tach

    info = _native.version()
    assert info["tach"] == pytest_tach.__version__
    assert info["go"].startswith("go1.")
    assert info["abi"] == _native.ABI


def test_extension_is_built_for_this_interpreter() -> None:
    """GIL builds: the limited API (abi3); free-threaded ones: this version's own ABI."""
    import sysconfig

    core = _native.core()
    assert core.__file__.endswith(EXT_SUFFIX)
    assert core.FREE_THREADED_BUILD == int(bool(sysconfig.get_config_var("Py_GIL_DISABLED")))


def test_frames_round_trip() -> None:
    values = [{"t": "report", "n": 1, "data": b"\x00\xff", "nested": {"k": [1, "x", None, True]}},
              {"t": "ping", "f": 1.5, "neg": -7, "big": 2**63 + 1}]
    assert _native.frames(b"".join(frame(v) for v in values)) == values


@pytest.mark.parametrize(
    "stream, error",
    [
        (struct.pack(">I", 1 << 30), "exceeds size cap"),
        (struct.pack(">I", 10) + b"abc", "truncated"),
        (struct.pack(">I", 5) + b"\xdd\xff\xff\xff\xff", "declared length"),
        (struct.pack(">I", 1) + b"\xc1", "unsupported msgpack code"),
    ],
    ids=["too-large", "truncated", "array32-lie", "bad-code"],
)
def test_bad_frame_becomes_error_entry(stream: bytes, error: str) -> None:
    good = frame({"t": "ok"})
    out = _native.frames(good + stream)
    assert out[0] == {"t": "ok"}
    assert out[-1]["t"] == "error" and error in out[-1]["error"]
    assert len(out) == 2


def test_frames_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        _native.core().frames("not bytes")


def test_eight_threads_calling_core_at_once_get_their_own_results() -> None:
    """The GIL is released around every Go call: concurrent callers must not mix up
    inputs and outputs (on 3.13t they truly run in parallel)."""
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(300):
            values = [{"t": "w", "thread": i, "iter": j, "pad": b"x" * (i * 100 + j)}]
            got = _native.frames(frame(values[0]))
            if got != values:
                errors.append(f"thread {i} iter {j}: got {got!r:.80}")
                return
            if j % 100 == 0 and _native.version()["abi"] != _native.ABI:
                errors.append("version() changed under concurrency")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung calling into _core"
    assert errors == []
