"""`pytest-tach self-test`: the report's content and the exit status."""

from __future__ import annotations

import json
import platform
import sys

from conftest import FREE_THREADED, run_python

FEATURES = {"fork", "pidfd_open", "process_vm_readv", "snapshot_reset"}


def test_json_report_has_every_field() -> None:
    r = run_python("-m", "pytest_tach", "self-test", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == (0 if report["ok"] else 1), r.stderr
    py = report["python"]
    assert py["version"] == platform.python_version()
    assert py["implementation"] == sys.implementation.name
    assert py["free_threaded_build"] is FREE_THREADED
    assert py["gil_enabled"] is (not FREE_THREADED)
    import pytest

    assert report["pytest_version"] == pytest.__version__
    assert report["go_version"].startswith("go1.")
    assert report["kernel"] == platform.release()
    assert isinstance(report["cpus"], int) and report["cpus"] >= 1
    by_name = {f["name"]: f for f in report["features"]}
    assert set(by_name) == FEATURES
    for f in report["features"]:
        assert f["status"] in ("OK", "MISSING", "DENIED")
        assert f["detail"] and f["purpose"] and isinstance(f["required"], bool)
    assert by_name["fork"]["required"] and by_name["fork"]["status"] == "OK"


def test_text_report_and_console_script() -> None:
    import shutil
    from pathlib import Path

    script = Path(sys.executable).with_name("pytest-tach")
    assert script.exists() or shutil.which("pytest-tach"), "console script `pytest-tach` not installed"
    import subprocess

    r = subprocess.run([str(script), "self-test"], capture_output=True, text=True, timeout=60)
    assert "kernel features:" in r.stdout
    assert "pidfd_open" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("self-test: ")


def test_exit_status_names_what_is_missing(monkeypatch) -> None:
    """A required feature that is not OK makes the exit status 1 and is named."""
    from pytest_tach import _native, selftest

    real = _native.probe

    def probe_without_pidfd():
        r = real()
        for f in r["features"]:
            if f["name"] == "pidfd_open":
                f["status"], f["detail"] = "MISSING", "pidfd_open(2): function not implemented"
        return r

    monkeypatch.setattr(_native, "probe", probe_without_pidfd)
    report = selftest.gather()
    assert report["missing"] == ["pidfd_open"] and report["ok"] is False
    assert "missing: pidfd_open" in selftest.render_text(report)


def test_piping_into_head_is_not_an_error() -> None:
    import subprocess

    p = subprocess.run(f"'{sys.executable}' -m pytest_tach self-test --json | head -c 10",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert "BrokenPipeError" not in p.stderr
