"""Rebuilding a test's reports in the main process and replaying them through pytest's
hooks, so that the terminal, junitxml, --lf, --durations and every other reporting
plugin see what they would in a plain run.

A test's events arrive together, when its process has ended, and are replayed in one
burst: logstart, its reports in the order the test produced them, its warnings,
logfinish. Interleaving nothing keeps -v output identical to a sequential run.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import pytest

from pytest_tach import frames, handover


def serialize_warning(wm: warnings.WarningMessage) -> dict[str, Any]:
    """A recorded warning as plain data (the shape pytest-xdist uses)."""
    msg = wm.message
    data: dict[str, Any] = {}
    if isinstance(msg, Warning):
        data["message_str"] = str(msg)
        data["message_module"] = type(msg).__module__
        data["message_class_name"] = type(msg).__name__
        try:
            json.dumps(msg.args)
            data["message_args"] = list(msg.args)
        except (TypeError, ValueError):
            data["message_args"] = None
    else:
        data.update(message_str=str(msg), message_module=None, message_class_name=None,
                    message_args=None)
    cat = wm.category
    data["category_module"] = cat.__module__ if cat else None
    data["category_class_name"] = cat.__name__ if cat else None
    for attr in wm._WARNING_DETAILS:  # type: ignore[attr-defined] # private, stable since 3.0
        if attr in ("message", "category"):
            continue
        value = getattr(wm, attr, None)
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = None
        data[attr] = value
    return data


def _loaded_class(module: str | None, name: str | None) -> type | None:
    """A class from a module that is already imported. Nothing is imported on the say-so
    of a frame: frames come from test processes and are not trusted."""
    if not module or not name:
        return None
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, Warning) else None


def unserialize_warning(data: dict[str, Any]) -> warnings.WarningMessage:
    cls = _loaded_class(data.get("message_module"), data.get("message_class_name"))
    message: Any = None
    if cls is not None and data.get("message_args") is not None:
        try:
            message = cls(*data["message_args"])
        except Exception:  # noqa: BLE001 - fall back to the text
            message = None
    if message is None:
        text = data.get("message_str", "")
        message = cls(text) if cls is not None else text
    category = _loaded_class(data.get("category_module"), data.get("category_class_name"))
    kwargs = {"message": message, "category": category or UserWarning}
    for attr in warnings.WarningMessage._WARNING_DETAILS:  # type: ignore[attr-defined] # as above
        if attr not in ("message", "category"):
            kwargs[attr] = data.get(attr)
    return warnings.WarningMessage(**kwargs)


def _fixup(data: dict[str, Any]) -> dict[str, Any]:
    """msgpack turns tuples into lists; give back the tuples pytest's code expects."""
    if isinstance(data.get("location"), list):
        data["location"] = tuple(data["location"])
    if isinstance(data.get("longrepr"), list):  # skip reports: (path, lineno, reason)
        data["longrepr"] = tuple(data["longrepr"])
    for key in ("sections", "user_properties"):
        if isinstance(data.get(key), list):
            data[key] = [tuple(x) if isinstance(x, list) else x for x in data[key]]
    return data


def crash_text(item: pytest.Item, ev: dict[str, Any], fault_dir: str) -> str:
    """The longrepr of a test whose process did not finish normally."""
    slot = ev.get("slot", -1)
    outcome = ev["outcome"]
    lines: list[str] = []
    if outcome == "timeout":
        lines.append(f"Timeout (>{ev.get('timeout_s', 0):g}s) in '{item.nodeid}'")
        lines.append(f"worker 'tach{slot}' was killed after dumping its threads' stacks")
    elif outcome == "lost":
        lines.append(f"tach could not run '{item.nodeid}': {ev.get('reason', '')}")
    else:
        lines.append(f"worker 'tach{slot}' crashed while running '{item.nodeid}'")
        if ev.get("frame_error"):
            lines.append("the test process wrote a malformed frame to tach's connection, "
                         "so tach killed it")
        elif ev.get("stopped_s") is not None:
            lines.append(f"the test process was stopped (SIGSTOP or SIGTSTP) and not continued "
                         f"within {ev['stopped_s']:.0f}s, so tach killed it (plain pytest would "
                         "have stopped with it, waiting for a SIGCONT)")
        elif ev.get("status_text"):
            lines.append(f"the test process {ev['status_text']}")
        if ev.get("done") is False and ev.get("exit_code") == 0:
            lines.append("it exited with status 0 before reporting (os._exit(0)? closed "
                         "tach's connection?)")
    path = os.path.join(fault_dir, f"r{ev.get('runner', -1)}.tb")
    try:
        with open(path, errors="replace") as f:
            dump = f.read().strip()
    except OSError:
        dump = ""
    if dump:
        lines += ["", _trim_dump(dump)]
    return "\n".join(lines)


def _trim_dump(dump: str) -> str:
    """Cut each thread's stack in a faulthandler dump where tach's runner code begins:
    the frames below it (tach, pytest's main loop, runpy) are the same for every test."""
    out: list[str] = []
    skipping = False
    for line in dump.splitlines():
        if not line.startswith("  File "):
            skipping = False
            out.append(line)
        elif skipping:
            continue
        elif "/pytest_tach/forked/" in line:
            skipping = True
            out.append("  (tach's runner and pytest's main loop below)")
        else:
            out.append(line)
    return "\n".join(out)


def replay(config: pytest.Config, item: pytest.Item, ev: dict[str, Any], fault_dir: str,
           interrupted: bool = False) -> None:
    """Replay one finished test through the hooks; fabricate a report for a crash (not
    when the run was interrupted: then the interrupt is what ended the test)."""
    ihook = item.ihook
    msgs: list[dict[str, Any]] = []
    bad: Exception | None = None
    for raw in ev.get("frames", []):
        try:
            msgs.append(frames.decode(raw))
        except Exception as e:  # noqa: BLE001 - a test can write anything to its socket
            bad = e
            break
    # The runner computed the test's location for its reports; computing it again here
    # (item.location resolves paths) cost more than the rest of the replay.
    location = next((tuple(m["data"]["location"]) for m in msgs
                     if m.get("t") == "report" and isinstance(m.get("data", {}).get("location"), list)),
                    None) or item.location
    # What plugins handed over goes first: the test has ended, and a plugin may need its
    # state when the reports are logged (pytest's subtests fail a test whose subtests
    # failed when its call report is logged, from a count kept where the test ran).
    for msg in msgs:
        if msg.get("t") == "handover":
            handover.receive(config, item, msg)
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=location)
    whens: list[str] = []
    failed_phase = False
    for msg in msgs:
        try:
            if msg["t"] == "report":
                rep = config.hook.pytest_report_from_serializable(config=config, data=_fixup(msg["data"]))
                if rep is None or getattr(rep, "nodeid", None) != item.nodeid:
                    raise ValueError("report for another test")
            elif msg["t"] == "warning":
                d = msg["data"]
                config.hook.pytest_warning_recorded.call_historic(kwargs=dict(
                    warning_message=unserialize_warning(d["warning"]), when=d["when"],
                    nodeid=d["nodeid"], location=tuple(d["location"]) if d.get("location") else None))
                continue
            else:
                continue
        except Exception as e:  # noqa: BLE001 - a test can write anything to its socket
            bad = e
            break
        ihook.pytest_runtest_logreport(report=rep)
        whens.append(rep.when)
        failed_phase = failed_phase or (rep.when == "setup" and not rep.passed)
    if bad is not None:
        ev = {**ev, "outcome": "crashed", "status_text": f"sent a report tach could not read ({bad!r})"}
    if (ev["outcome"] != "ok" or "teardown" not in whens) and not (interrupted and bad is None):
        if ev["outcome"] == "ok":  # exited cleanly without its reports: treat as a crash
            ev = {**ev, "outcome": "crashed"}
        when = "setup" if not whens else ("call" if "call" not in whens and not failed_phase else "teardown")
        rep = pytest.TestReport(
            nodeid=item.nodeid, location=location,
            keywords={k: 1 for k in item.keywords}, outcome="failed",
            longrepr=crash_text(item, ev, fault_dir), when=when,  # type: ignore[arg-type] # str: as pytest's own
            sections=[], duration=float(ev.get("wall_s", 0.0)), user_properties=[],
        )
        ihook.pytest_runtest_logreport(report=rep)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=location)
