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

from tach import options


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


def become_worker(config: pytest.Config, slot: int, count: int, run_id: str) -> None:
    """Make this test process worker ``gw<slot>`` of ``count``, as pytest-xdist's
    worker ``gw<slot>`` would be: its environment variables, and ``config.workerinput``
    (pytest-xdist's ``worker_id`` and ``testrun_uid`` fixtures read it). No two test
    processes running at the same time share a slot."""
    worker = f"gw{slot}"
    os.environ["PYTEST_XDIST_WORKER"] = worker
    os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(count)
    config.workerinput = {  # type: ignore[attr-defined]
        "workerid": worker, "workercount": count, "testrunuid": run_id, "mainargv": list(sys.argv),
    }
