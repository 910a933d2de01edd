"""Which test a piece of work belongs to, as a plain run would say.

Per-test coverage labels each line with the test and phase that ran it (``setup``,
``run``, ``teardown``). In a plain run a fixture of a higher scope is set up in the setup
of the first test, in collection order, that needs it, and a scope is torn down in the
teardown of the last test under it. Under tach a zygote sets fixtures up outside any
test, and the test that tears a scope down may be another. :class:`Attribution` tells
its subclass, in forked processes, which test and phase to label work with; the
subclass says how (pytest-cov's contexts in covbridge.py, tach's own collector in
monitor.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

Restore = Callable[[], None]


class Attribution:
    """Base plugin: subclasses implement :meth:`switch` (and :meth:`active`)."""

    def __init__(self) -> None:
        self.items: list[pytest.Item] = []
        #: (id of the FixtureDef, its scope node's nodeid, parameter index) -> first test
        self.first_fixture: dict[tuple[int, str, int], int] = {}
        self.first_under: dict[Any, int] = {}  # collector -> first test under it
        self.last_under: dict[Any, int] = {}  # collector -> last test under it
        self.current: pytest.Item | None = None  # the test whose protocol runs here

    # -- what subclasses provide ----------------------------------------------------
    def switch(self, item: pytest.Item, when: str) -> Restore | None:
        """Label what runs from now on as item's phase `when`; return a function that
        puts the previous label back, or None when there is nothing to label here."""
        raise NotImplementedError

    def active(self) -> bool:
        """Whether labelling happens in this process (a forked one, with data to label)."""
        raise NotImplementedError

    def on_phase(self, item: pytest.Item, when: str) -> None:
        """A phase of item's protocol (setup, call, teardown) begins in this process."""

    # -- the plugin -----------------------------------------------------------------
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from pytest_tach.plan import _fixturedefs, _scope_node

        self.items = list(session.items)
        for i, item in enumerate(self.items):
            for node in item.listchain()[:-1]:
                self.first_under.setdefault(node, i)
                self.last_under[node] = i
            defs = _fixturedefs(item)
            if not defs:
                continue
            indices = getattr(getattr(item, "callspec", None), "indices", {})
            for name in getattr(item, "fixturenames", []):  # a Function's, as defs is
                fds = defs.get(name)
                if not fds or fds[-1].scope == "function":
                    continue
                scope_node = _scope_node(item, fds[-1])
                if scope_node is not None:
                    self.first_fixture.setdefault((id(fds[-1]), scope_node.nodeid, indices.get(name, 0)), i)

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Any:
        self.current = item
        yield
        self.current = None

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Any:
        self.on_phase(item, "setup")
        yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        self.on_phase(item, "call")
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Any:
        """A higher-scoped fixture belongs to the setup of the first test that needs it."""
        restore = None
        if fixturedef.scope != "function" and self.first_fixture:
            try:
                key = (id(fixturedef), request.node.nodeid, getattr(request, "param_index", 0))
            except Exception:  # noqa: BLE001 - a request pytest could not place
                key = None
            first = self.first_fixture.get(key) if key else None
            if first is not None and self.items[first] is not self.current:
                restore = self.switch(self.items[first], "setup")
        yield
        if restore is not None:
            restore()

    def pytest_tach_zygote_setup(self, config: pytest.Config, node: pytest.Collector) -> None:
        first = self.first_under.get(node)
        if first is not None:
            self.switch(self.items[first], "setup")  # the zygote's handover puts it back

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Any) -> Any:
        """Each scope this teardown ends belongs to the teardown of the last test under
        it: a finalizer appended to a node's list runs first of the node's own."""
        self.on_phase(item, "teardown")
        if self.last_under and self.active():
            stack = item.session._setupstate.stack
            keep = set(nextitem.listchain()) if nextitem is not None else set()
            for node, (finalizers, _) in list(stack.items()):
                if node is item or node in keep:
                    continue
                last = self.last_under.get(node)
                target = self.items[last] if last is not None else item
                finalizers.append(functools.partial(self.switch, target, "teardown"))
        yield
