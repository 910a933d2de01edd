"""Carrying what plugins gather in forked processes to the main process (see hooks.py).

The forked side asks plugins for their ``output`` and encodes it into ``handover``
frames; the supervisor delivers a test process's frames with the test's reports and a
zygote's on their own; the main side hands each one to the plugins again. Plugins that
must act in the main process alone are unregistered from the forked side here too.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_tach import frames, hooks, protocol

#: Plugins that must act in the main process alone, as ``module.Class`` of the plugin
#: object (they register without a name). pytest-reportlog writes a line per report:
#: forked processes would write every test's reports through the inherited file, and the
#: main process again when it replays them.
MAIN_ONLY = ("pytest_reportlog.plugin.ReportLogPlugin",)


def add_hookspecs(pluginmanager: pytest.PytestPluginManager) -> None:
    """Once per plugin manager: the package is loaded in every run (an entry point), and
    a conftest that drives tach's forked side itself adds them too."""
    if not hasattr(pluginmanager.hook, "pytest_tach_forked"):
        pluginmanager.add_hookspecs(hooks)


def addini(parser: pytest.Parser) -> None:
    parser.addini("tach_main_only_plugins", "plugins (registered name, or module.Class of the "
                  "plugin object) that tach unregisters in the processes it forks: they act in "
                  "the main process only", type="linelist", default=[])


def forked(config: pytest.Config, role: str) -> None:
    """In a process tach just forked: let plugins forget what their parent hands over."""
    config.hook.pytest_tach_forked(config=config, role=role)


def drop_main_only(config: pytest.Config) -> list[str]:
    """Unregister main-only plugins in a forked process; returns their names. Called once,
    in the root zygote, so that hook callers are rebuilt once for the whole run."""
    wanted = set(MAIN_ONLY) | set(config.getini("tach_main_only_plugins"))
    pm = config.pluginmanager
    dropped = []
    for name, plugin in list(pm.list_name_plugin()):
        cls = type(plugin)
        if plugin is None or not ({name, f"{cls.__module__}.{cls.__qualname__}"} & wanted):
            continue
        pm.unregister(plugin)
        dropped.append(name)
    return dropped


def encode(config: pytest.Config, item: pytest.Item | None, test: int) -> tuple[list[bytes], list[str]]:
    """The handover frames of this process now (none when no plugin had anything), and
    what had to be dropped because it did not fit in a frame."""
    output: dict[str, Any] = {}
    config.hook.pytest_tach_handover(config=config, item=item, output=output)
    if not output:
        return [], []
    try:
        return [frames.encode(protocol.handover(test, output))], []
    except ValueError:
        pass  # over the cap: one frame per key
    out: list[bytes] = []
    dropped: list[str] = []
    for key, value in output.items():
        try:
            out.append(frames.encode(protocol.handover(test, {key: value})))
        except ValueError as e:
            dropped.append(f"{key!r}: {e}")
    if dropped:
        out.append(frames.encode(protocol.handover(test, {}, dropped)))
    return out, dropped


def receive(config: pytest.Config, item: pytest.Item | None, msg: dict[str, Any]) -> None:
    """Give one handover frame's output to the plugins of the main process."""
    data = msg.get("data")
    if isinstance(data, dict) and data:
        config.hook.pytest_tach_handover_received(config=config, item=item, output=data)
    dropped = msg.get("dropped")
    if isinstance(dropped, list) and dropped:
        where = item.nodeid if item is not None else "a zygote"
        tr = config.pluginmanager.get_plugin("terminalreporter")
        text = "; ".join(str(d) for d in dropped)
        if tr is not None:
            tr.write_line(f"tach: what plugins handed over from {where} was too large and was "
                          f"dropped: {text}", yellow=True)


def receive_frame(config: pytest.Config, raw: bytes) -> None:
    """A zygote's handover frame, as the supervisor delivered it."""
    try:
        msg = frames.decode(raw)
    except Exception:  # noqa: BLE001 - the supervisor validated it; this cannot fail
        return
    receive(config, None, msg)


def run_finished(config: pytest.Config) -> None:
    config.hook.pytest_tach_run_finished(config=config)
