"""tach and pytest-xdist's ecosystem.

pytest-xdist and tach both run a session's tests in worker processes, so one run cannot
have both (``refuse``). What plugins and suites read to tell pytest-xdist's workers
apart, each test process of tach's provides the same way (``become_worker``): suites
name per-worker databases, ports and directories by it (pytest-django suffixes its
test database with the worker id). A zygote is no worker: fixtures it sets up see none,
as in a plain run.
"""

from __future__ import annotations

import os
import sys

import pytest

from pytest_tach import options


def refuse(config: pytest.Config, settings: options.Settings) -> None:
    """With tach's engine on, -n/--dist/--tx is a usage error: each xdist worker would
    run its share under a tach engine of its own, with xdist's worker protocol in the
    processes tach forks."""
    if settings.workers == 0 or not config.pluginmanager.has_plugin("xdist"):
        return
    opt = config.option
    if getattr(opt, "numprocesses", None) or getattr(opt, "tx", None) or getattr(opt, "dist", "no") != "no":
        raise pytest.UsageError(
            "pytest-xdist is active in this run too (-n/--dist/--tx), and both would run the "
            "tests in worker processes. Drop -n and let tach run them (--tach-workers N, "
            "default: the usable CPUs), or run without -p tach (or with --tach-workers 0).")


def per_process_fixtures(config: pytest.Config, listed: tuple[str, ...]) -> frozenset[str]:
    """The fixtures to set up in each test process: those listed (ini
    tach_per_process_fixtures), and pytest-django's test databases unless each lives in
    memory. One test database set up in a zygote would be shared by every test process
    at once (sqlite file: "database is locked", "UNIQUE constraint failed"; a server
    database: tests see each other's rows), where each pytest-xdist worker creates its
    own, named after the worker. An in-memory sqlite database is copied by the fork:
    set up once, in the zygote, it is each process's own."""
    names = set(listed)
    if config.pluginmanager.has_plugin("django") and not _django_test_dbs_in_memory():
        names.update(_DJANGO_PER_WORKER)
    return frozenset(names)


#: pytest-django's session fixtures that create the test databases, and those that
#: name them after the worker (set up in a zygote, they would name them for none)
_DJANGO_PER_WORKER = ("django_db_setup", "django_db_modify_db_settings",
                      "django_db_modify_db_settings_xdist_suffix",
                      "django_db_modify_db_settings_parallel_suffix")


def _django_test_dbs_in_memory() -> bool:
    try:
        from django.conf import settings

        databases = settings.DATABASES
    except Exception:  # noqa: BLE001 - not configured (no settings): nothing to share
        return True
    for db in databases.values():
        name = (db.get("TEST") or {}).get("NAME")
        if "sqlite3" not in str(db.get("ENGINE", "")):
            return False
        if name and name != ":memory:" and not str(name).startswith("file:memorydb"):
            return False
    return True


def become_worker(config: pytest.Config, slot: int, count: int, run_id: str) -> None:
    """Make this test process worker ``gw<slot>`` of ``count``, as pytest-xdist's
    worker ``gw<slot>`` would be: its environment variables, and ``config.workerinput``
    (pytest-xdist's ``worker_id`` and ``testrun_uid`` fixtures read it). No two test
    processes running at the same time share a slot."""
    worker = f"gw{slot}"
    os.environ["PYTEST_XDIST_WORKER"] = worker
    os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(count)
    config.workerinput = {  # type: ignore[attr-defined] # what xdist sets on a worker
        "workerid": worker, "workercount": count, "testrunuid": run_id, "mainargv": list(sys.argv),
    }
