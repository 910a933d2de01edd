"""A race that stress mode finds: `make demo` runs this file with 4 threads x 10
iterations per test. The unlocked cache is built several times when threads arrive
together (the first build is slow); the locked one is built once.

    pytest -p tach --tach-threads 4 --tach-iterations 10 examples/threads
"""

import threading
import time

_cache = None
_builds = []


def get_config():
    global _cache
    if _cache is None:  # check-then-set without a lock: a race
        _builds.append(1)
        time.sleep(0.01)  # parsing a big file, say
        _cache = {"debug": False}
    return _cache


def test_config_is_built_once():
    assert get_config()["debug"] is False
    assert len(_builds) == 1, f"the config was built {len(_builds)} times"


_locked_cache = None
_locked_builds = []
_lock = threading.Lock()


def get_config_locked():
    global _locked_cache
    with _lock:
        if _locked_cache is None:
            _locked_builds.append(1)
            time.sleep(0.01)
            _locked_cache = {"debug": False}
    return _locked_cache


def test_locked_config_is_built_once():
    assert get_config_locked()["debug"] is False
    assert len(_locked_builds) == 1
