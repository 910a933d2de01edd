"""A zygote's fixture setup, seen by plugins as the first test's setup.

In a plain run a higher-scoped fixture is set up inside the setup phase of the first
test that needs it: inside every ``pytest_runtest_setup`` hook and wrapper (capture,
logging, pytest-socket's socket block, pytest-randomly's reseed, a conftest's own hook)
and inside the warnings plugin's ``catch_warnings_for_item``. A zygote sets such
fixtures up outside any test, so here it runs that test's setup hooks around them:
pytest's own innermost step (``runner.pytest_runtest_setup``, which would set up the
test itself) finds a stand-in SetupState whose ``setup`` sets up the zygote's fixtures
instead. Then the test's teardown hooks run around nothing (the stand-in tears nothing
down), so plugins put the process back as between two tests (pytest-socket lets sockets
through again) before the zygote forks from it.

What the hooks produced for the setup phase (captured output and log sections,
recorded warnings) is taken off the item here and handed to the process that runs the
test, which reports it on that test as a plain run would. Every access to pytest's
internals this needs is in this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from _pytest.outcomes import TEST_OUTCOME


@dataclass
class Produced:
    """What a zygote's setup produced that belongs to one test's setup report."""

    test: int  #: the test's index
    #: report sections of the setup phase, [when, key, content] (captured stdout and
    #: stderr, the log, a plugin's own)
    sections: list[list[str]] = field(default_factory=list)
    #: recorded warnings, as the Forwarder sends them
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self) -> dict[str, Any]:
        return {"test": self.test, "sections": self.sections, "warnings": self.warnings}

    @classmethod
    def from_frame(cls, msg: dict[str, Any]) -> Produced:
        return cls(int(msg["test"]), [list(s) for s in msg["sections"]], list(msg["warnings"]))


def take_for(pending: list[Produced], tests: list[int]) -> list[Produced]:
    """Remove from `pending` what belongs to `tests`, and return it."""
    wanted = set(tests)
    taken = [p for p in pending if p.test in wanted]
    pending[:] = [p for p in pending if p.test not in wanted]
    return taken


class _SetupOnly:
    """Stands in for the session's SetupState while the test's runtest hooks run.

    pytest's innermost setup step calls ``setup(item)`` on it; that runs the zygote's
    fixture setup, with the real SetupState back in place (fixtures register their
    finalizers through it). The innermost teardown step tears nothing down."""

    def __init__(self, session: pytest.Session, real: Any, inner: Callable[[], None]) -> None:
        self.session = session
        self.real = real
        self.inner = inner
        self.reached = False

    def setup(self, item: pytest.Item) -> None:
        self.reached = True
        self.session._setupstate = self.real
        try:
            self.inner()
        finally:
            self.session._setupstate = cast(Any, self)

    def teardown_exact(self, nextitem: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@contextlib.contextmanager
def _warnings_caught(item: pytest.Item) -> Iterator[None]:
    """Warnings recorded as the warnings plugin records them during a test (its filters,
    the test's filterwarnings marks), unless that plugin is off."""
    if item.config.pluginmanager.getplugin("warnings") is None:
        yield
        return
    from _pytest.warnings import catch_warnings_for_item

    with catch_warnings_for_item(config=item.config, ihook=item.ihook, when="runtest", item=item):
        yield


def set_up_as(index: int, item: pytest.Item, inner: Callable[[], None],
              held: list[dict[str, Any]]) -> Produced | None:
    """Run `inner` (the zygote's fixture setup) inside `item`'s setup hooks, then run
    the item's teardown hooks around nothing.

    Returns what the setup phase produced for `item`'s report (`index` is the test's),
    or None when the hooks never got to `inner`: a hook ended the setup first (a skip
    or xfail mark, a conftest's ``pytest.skip``), as it will again in the test's own
    process. Then no fixture was set up for this item, as in a plain run, and the
    caller tries the next. `held` is where the Forwarder keeps the warnings recorded
    meanwhile.
    """
    session = item.session
    real = session._setupstate
    stand_in = _SetupOnly(session, real, inner)
    before = len(item._report_sections)
    held_before = len(held)
    session._setupstate = cast(Any, stand_in)  # it stands in for a SetupState
    try:
        with _warnings_caught(item):  # it hands them to the hook on leaving
            try:
                item.ihook.pytest_runtest_setup(item=item)
            except TEST_OUTCOME:
                # A skip or error before the fixtures (inner never ran), or raised by
                # a hook after them: it is the test's own to raise again in its setup.
                pass
        produced = Produced(
            index,
            [[when, key, content] for when, key, content in item._report_sections[before:]
             if when == "setup"],
            held[held_before:])
        del item._report_sections[before:]
        with _warnings_caught(item):
            try:
                # nextitem is the item itself: what runs next here is that test, in
                # the process forked for it (nothing is torn down before it).
                item.ihook.pytest_runtest_teardown(item=item, nextitem=item)
            except TEST_OUTCOME:
                pass  # the test's own teardown runs these hooks again
    finally:
        session._setupstate = real
        # What the teardown hooks produced is left to the test's own teardown.
        del item._report_sections[before:]
        del held[held_before:]
    return produced if stand_in.reached else None


def add_to_setup_report(item: pytest.Item, sections: list[list[str]]) -> None:
    """Give `item` the setup sections a zygote produced for it (those its own setup
    adds merge with them: see merge_sections)."""
    item._report_sections.extend((when, key, content) for when, key, content in sections)


def merge_sections(item: pytest.Item, when: str) -> None:
    """Join `item`'s report sections of one phase that share a key (the zygote's
    captured log and the test's own, say) into one, as a plain run shows them: one
    "Captured log setup" with the fixture's records, then the test's."""
    merged: dict[tuple[str, str], int] = {}
    out: list[tuple[str, str, str]] = []
    for section in item._report_sections:
        w, key, content = section
        if w != when:
            out.append(section)
            continue
        at = merged.get((w, key))
        if at is None:
            merged[(w, key)] = len(out)
            out.append(section)
        else:
            joiner = "" if key in ("stdout", "stderr") else "\n"
            out[at] = (w, key, out[at][2] + joiner + content)
    item._report_sections[:] = out
