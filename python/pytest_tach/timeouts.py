"""pytest-timeout under tach.

Two things differ from a plain run, and this adapter (registered when pytest-timeout is
active) puts both right in the test processes, through pytest-timeout's own hooks:

- The time a test waits at tach's teardown gate (hooks.pytest_tach_teardown_wait) is
  not the test's: plain pytest would have run the tests it waits for before it. The
  timer stops for the wait and goes on after it with what was left.
- The ``thread`` method ends a timed-out test's process with ``os._exit(1)`` after
  writing ``+++ Timeout +++`` and every thread's stack to the terminal: in a plain run
  that is the terminal, in a test process it is nobody's. Here the same text goes to
  the file tach reads a crashed test's report from, so it lands on the test.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from typing import Any

import pytest

_ARMED = pytest.StashKey["tuple[Any, float]"]()  # the settings and when the timer started


class PytestTimeout:
    def __init__(self, forwarder: Any) -> None:
        self.forwarder = forwarder  # pytest_tach.forward.Forwarder: its fault fd in a test process

    @pytest.hookimpl(tryfirst=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> bool | None:
        if self.forwarder.sock is None:
            return None  # not a test process (--tach-workers 0 has no engine)
        item.stash[_ARMED] = (settings, time.monotonic())
        method = settings.method
        if method == "signal" and threading.current_thread() is not threading.main_thread():
            method = "thread"  # as pytest-timeout decides
        if method != "thread":
            return None  # its signal method raises in the test: nothing is lost
        timer = threading.Timer(settings.timeout, self._expired, (item, settings))
        timer.name = f"pytest_timeout {item.nodeid}"

        def cancel() -> None:
            timer.cancel()
            timer.join()

        item.cancel_timeout = cancel  # type: ignore[attr-defined] # pytest-timeout's attribute
        timer.start()
        return True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_tach_teardown_wait(self, config: pytest.Config, item: pytest.Item) -> Any:
        armed = item.stash.get(_ARMED, None)
        cancel = getattr(item, "cancel_timeout", None)
        if armed is None or cancel is None or armed[0].func_only:
            yield
            return
        settings, started = armed
        used = time.monotonic() - started
        cancel()
        yield
        left = settings.timeout - used
        if left <= 0:
            return  # it went off before the wait (the test failed with it)
        config.hook.pytest_timeout_set_timer(item=item, settings=settings._replace(timeout=left))
        item.stash[_ARMED] = (settings, time.monotonic() - used)

    def _expired(self, item: pytest.Item, settings: Any) -> None:
        """pytest_timeout.timeout_timer, writing where tach reads a crash report from."""
        import pytest_timeout

        if not settings.disable_debugger_detection and pytest_timeout.is_debugging():
            return
        out = io.StringIO()
        tw = _writer(out)
        try:
            capman = item.config.pluginmanager.getplugin("capturemanager")
            stdout = stderr = None
            if capman is not None:
                capman.suspend_global_capture(item)
                stdout, stderr = capman.read_global_capture()
            tw.sep("+", title=f"Timeout ({settings.timeout:g} s, pytest-timeout, method thread)")
            if stdout:
                tw.sep("~", title="Captured stdout")
                tw.write(stdout)
            if stderr:
                tw.sep("~", title="Captured stderr")
                tw.write(stderr)
            _dump_stacks(tw)
            tw.sep("+", title="Timeout")
        except Exception as e:  # noqa: BLE001 - the process ends below whatever happens
            out.write(f"\n(tach could not write the whole timeout report: {e!r})\n")
        finally:
            try:
                if self.forwarder.fault >= 0:
                    os.write(self.forwarder.fault, out.getvalue().encode("utf-8", "replace"))
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)


def _dump_stacks(tw: Any) -> None:
    """Every thread's stack but the timer's own, as pytest_timeout.dump_stacks writes
    them, without the frames below tach's runner (the same for every test)."""
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        if ident == threading.get_ident():
            continue
        stack = traceback.extract_stack(frame)
        cut = max((i + 1 for i, fs in enumerate(stack) if fs.filename.endswith(_RUNNER)), default=0)
        tw.sep("~", title=f"Stack of {names.get(ident, '<unknown>')} ({ident})")
        if cut:
            tw.write("  (pytest's main loop and tach's runner above)\n")
        tw.write("".join(traceback.format_list(stack[cut:])))


_RUNNER = os.path.join("pytest_tach", "forked", "runner.py")


def _writer(out: io.StringIO) -> Any:
    from _pytest._io import TerminalWriter

    tw = TerminalWriter(out)
    tw.hasmarkup = False
    tw.fullwidth = 80
    return tw


def register(config: pytest.Config, forwarder: Any) -> None:
    if config.pluginmanager.has_plugin("timeout"):
        config.pluginmanager.register(PytestTimeout(forwarder), "tach-pytest-timeout")
