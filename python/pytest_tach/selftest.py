"""``pytest-tach self-test``: what this machine and interpreter give tach, and what is missing.

Checks run where they are honest: Python-level facts here, kernel features in Go
(go/sysinfo) on real targets. The exit status is 0 only when every feature the engine
requires is OK and the extension loaded.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

import pytest_tach
from pytest_tach import gil, snapshot


def gather() -> dict[str, Any]:
    """Collect the report. Never raises for a missing capability: it reports it."""
    import pytest

    from pytest_tach import _native

    report: dict[str, Any] = {
        "tach_version": pytest_tach.__version__,
        "python": {
            "version": platform.python_version(),
            "implementation": sys.implementation.name,
            "executable": sys.executable,
            "free_threaded_build": gil.free_threaded_build(),
            "gil_enabled": gil.gil_enabled(),
        },
        "pytest_version": pytest.__version__,
        "go_version": None,
        "kernel": platform.release(),
        "cpus": None,
        "features": [],
        "errors": [],
    }
    try:
        info = _native.version()
        probe = _native.probe()
    except _native.CoreUnavailable as e:
        report["errors"].append(str(e))
    else:
        report["go_version"] = info["go"]
        report["kernel"] = probe["kernel"]
        report["cpus"] = probe["cpus"]
        report["features"] = probe["features"]
    report["features"].append(snapshot.feature())
    # Measured after loading the extension: that is the state tach runs in.
    report["python"]["gil_enabled"] = gil.gil_enabled()
    missing = [f["name"] for f in report["features"] if f["required"] and f["status"] != "OK"]
    if report["python"]["free_threaded_build"] and report["python"]["gil_enabled"]:
        report["errors"].append(
            "free-threaded build but the GIL is enabled (PYTHON_GIL=1, -X gil=1, or a module "
            "imported before tach re-enabled it)"
        )
    report["missing"] = missing
    report["ok"] = not missing and not report["errors"] and report["go_version"] is not None
    return report


def render_text(r: dict[str, Any]) -> str:
    py = r["python"]
    build = "free-threaded" if py["free_threaded_build"] else "with GIL"
    lines = [
        f"tach {r['tach_version']}",
        f"  python   {py['implementation']} {py['version']} ({build}; GIL "
        f"{'enabled' if py['gil_enabled'] else 'disabled'} now)  {py['executable']}",
        f"  pytest   {r['pytest_version']}",
        f"  go       {r['go_version'] or 'extension not loaded'}",
        f"  kernel   {r['kernel']}",
        f"  cpus     {r['cpus'] if r['cpus'] is not None else '?'} usable by this process",
        "",
        "kernel features:",
    ]
    width = max((len(f["name"]) for f in r["features"]), default=0)
    for f in r["features"]:
        need = "required" if f["required"] else "optional"
        lines.append(f"  {f['name']:<{width}}  {f['status']:<7}  {need}: {f['purpose']}")
        lines.append(f"  {'':<{width}}           {f['detail']}")
    for e in r["errors"]:
        lines.append(f"error: {e}")
    if r["ok"]:
        lines.append("\nself-test: OK, everything the engine requires is present")
    else:
        what = ", ".join(r["missing"]) or "see errors above"
        lines.append(f"\nself-test: FAILED, missing: {what}")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    r = gather()
    print(json.dumps(r, indent=2, sort_keys=True) if as_json else render_text(r))
    return 0 if r["ok"] else 1
