"""Driving pytest's scopes from outside a test: every access to pytest's SetupState,
fixture definitions and finalizer lists that zygotes and runners make is here (and in
``pytest_tach.setuphooks``, for the setup hooks around a zygote's fixture setup), so that a
pytest upgrade touches these two files.

A zygote pushes the collectors of its level onto the session's SetupState and sets up
the fixtures of its level that its tests need, once (:class:`Fixtures`); a runner tears
down to what its zygotes hold (:class:`ScopeEnd` as pytest's ``nextitem``) and runs the
finalizers that would otherwise be left behind.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from _pytest.outcomes import TEST_OUTCOME

from pytest_tach import setuphooks
from pytest_tach.forked.process import Context, live_threads
from pytest_tach.plan import depends_on


class ScopeEnd:
    """Stands in for pytest's ``nextitem``: its chain is exactly the collectors a zygote
    holds, so ``SetupState.teardown_exact(nextitem)`` tears down only what lies below
    them (the test itself, and collectors no zygote owns)."""

    def __init__(self, chain: list[Any]) -> None:
        self._chain = chain
        self.nodeid = chain[-1].nodeid if chain else ""
        self.session = chain[0] if chain else None

    def listchain(self) -> list[Any]:
        return [*self._chain, self]


def stack(session: pytest.Session) -> list[Any]:
    """The collectors and items on the SetupState now, outermost first."""
    return list(session._setupstate.stack)


def end_of(chain: list[Any]) -> ScopeEnd | None:
    """The ``nextitem`` that tears down to `chain` (None: everything)."""
    return ScopeEnd(chain) if chain else None


def teardown_to(session: pytest.Session, chain: list[Any]) -> None:
    """Tear down everything above `chain`, as pytest's session finish would."""
    session._setupstate.teardown_exact(end_of(chain))  # type: ignore[arg-type] # a stand-in item


def push(ctx: Context, collectors: list[Any]) -> None:
    """Push collectors onto the SetupState and set them up (setup_module and friends)."""
    setupstate = ctx.session._setupstate
    config = ctx.session.config
    for col in collectors:
        if col in setupstate.stack:
            continue
        config.hook.pytest_tach_zygote_setup(config=config, node=col)
        setupstate.stack[col] = ([col.teardown], None)
        try:
            col.setup()
        except TEST_OUTCOME as exc:  # as SetupState.setup: re-raised for each test
            setupstate.stack[col] = (setupstate.stack[col][0], _stack_exc(exc))


def _stack_exc(exc: BaseException) -> Any:
    """The form in which pytest's SetupState keeps a collector's setup error.

    It changed across pytest versions (the exception; later (exception, traceback)), so
    let pytest's own SetupState.setup store it and take what it stored.
    """
    from _pytest.runner import SetupState

    class Raiser:
        def listchain(self) -> list[Any]:
            return [self]

        def setup(self) -> None:
            raise exc

        def teardown(self) -> None:
            pass

    state, raiser = SetupState(), Raiser()
    try:
        state.setup(raiser)  # type: ignore[arg-type] # a stand-in node
    except BaseException:  # noqa: BLE001, S110 - Raiser raised exc itself: nothing to handle
        pass
    return state.stack[raiser][1]  # type: ignore[index] # a stand-in node, as above


def finalizer_counts(session: pytest.Session) -> dict[Any, int]:
    """How many finalizers each node on pytest's SetupState stack has now."""
    return {node: len(fins) for node, (fins, _) in session._setupstate.stack.items()}


def take_added_finalizers(session: pytest.Session, counts: dict[Any, int]) -> list[Callable[[], object]]:
    """Remove and return the finalizers registered on `counts`' nodes since it was
    taken, in the order they must run: narrower scopes first, each newest first."""
    setup_stack = session._setupstate.stack
    out: list[Callable[[], object]] = []
    for node in reversed(list(setup_stack)):
        if node not in counts:
            continue
        fins = setup_stack[node][0]
        added = fins[counts[node]:]
        del fins[counts[node]:]
        out += reversed(added)
    return out


def run_added_finalizers(session: pytest.Session, counts: dict[Any, int]) -> list[BaseException]:
    """Run (and remove) the finalizers registered since `counts`; return their errors."""
    errors: list[BaseException] = []
    for fin in take_added_finalizers(session, counts):
        try:
            fin()
        except TEST_OUTCOME as e:
            errors.append(e)
    return errors


def adopt_finalizers(session: pytest.Session, base_fins: dict[Any, int], item: pytest.Item,
                     end: list[Any]) -> None:
    """Before a batch's last test tears down: a fixture of a scope the process leaves
    standing that was set up there, not in a zygote (one a zygote sets up per test
    process, or one a test reached with request.getfixturevalue), registered its
    teardown on a node the process never tears down. Give it to the test instead, to
    run after the test's own: torn down once, in the process that set it up, with an
    error reported on that test's teardown, as a pytest-xdist worker would at its end.
    `base_fins`: the finalizer counts when the process started (its zygotes')."""
    keep = set(end)
    moved = take_added_finalizers(session, {n: c for n, c in base_fins.items() if n in keep})
    setup_stack = session._setupstate.stack
    if moved and item in setup_stack:
        setup_stack[item][0][:0] = reversed(moved)


def finish_param_fixtures(session: pytest.Session, param_fixtures: set[int]) -> None:
    """Run the pending finalizers of one parameter value's fixtures (ids of their
    definitions), newest first: pytest registers ``partial(fixturedef.finish,
    request=subrequest)`` on the scope node, which the base zygote of that scope owns.
    Errors have no test left to land on: print them."""
    for finalizers, _ in session._setupstate.stack.values():
        for fin in reversed(list(finalizers)):
            func = getattr(fin, "func", None)  # partial(fixturedef.finish, ...)
            owner = getattr(func, "__self__", None)
            if id(owner) in param_fixtures and getattr(func, "__name__", "") == "finish":
                finalizers.remove(fin)
                try:
                    fin()
                except Exception:  # noqa: BLE001 - no test left to report it on
                    traceback.print_exc()


class Fixtures:
    """The fixtures of one zygote's level: which it set up for which test, which are
    set up in each test process instead, and what their setup produced (captured output,
    warnings) for the tests that have not run yet.

    `serial(why)` is called when a fixture listed in tach_serial_fixtures is set up;
    `per_process(why)` when one turned out to need each test process to set it up."""

    def __init__(self, ctx: Context, depth: int, serial: Callable[[str], None],
                 per_process: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.depth = depth  # how many levels of each item's chain this process holds
        self._serial = serial
        self._per_process = per_process
        #: what fixture setup here produced for tests not run yet (output, warnings)
        self.pending: list[setuphooks.Produced] = []
        self.level_fixtures: set[tuple[int, str]] = set()  # (item index, name) set up here
        #: fixtures set up in each test process instead: listed so, or their setup here
        #: left a thread running
        self.per_process: set[str] = set(ctx.per_process_fixtures)

    def set_up(self, tests: list[int]) -> bool:
        """Set up the fixtures of this zygote's own level that these tests need; say
        whether anything new was set up.

        They are set up inside the setup hooks of the first of these tests that needs
        one (see setuphooks), as a plain run sets them up inside that test's setup; what
        those hooks produce (captured output, log, warnings) goes to the process that
        runs the tests. A fixture that raises is cached by pytest with its exception;
        each test that needs it gets the same error at setup, as in a plain run.
        """
        if self.depth == 0:
            return False
        new = [i for i in tests if self._new_fixtures(i)]
        if not new:
            return False
        did_setup = False

        def inner() -> None:
            nonlocal did_setup
            did_setup = self._set_up(tests)

        runs = {id(d) for i in new for d in self._runs(i)}
        if not runs:
            # Only fixtures set up here already (or set up in each test process):
            # nothing runs that a hook would see.
            self._set_up_captured(tests[0], inner)
            return did_setup
        fw = self.ctx.forwarder
        fw.hold = True
        try:
            for i in self._needing(runs, tests):
                produced = setuphooks.set_up_as(i, self.ctx.items[i], inner, fw.held)
                if produced is not None:
                    if produced.sections or produced.warnings:
                        self.pending.append(produced)
                    break
            # Else each of them ends its setup before its fixtures (a skip mark, say):
            # as in a plain run, none sets them up; a later test that needs them will.
        finally:
            fw.hold = False
        return did_setup

    def parametrized(self, index: int) -> set[int]:
        """ids of the fixture definitions this zygote set up for one parameter value.

        Their finalizers are registered on the scope node, which the base zygote of that
        scope owns, so a final batch that tears down only to the scope node leaves them
        pending: the runner runs them (finish_param_fixtures).
        """
        if self.depth == 0:
            return set()
        level = self.ctx.levels[index][self.depth - 1]
        if not level.parametrized:
            return set()
        defs = self.ctx.fixture_defs(index)
        return {id(defs[n][-1]) for n in level.fixtures if n in defs}

    def _level_names(self, i: int) -> list[str]:
        """The fixtures of this zygote's level that test `i` needs."""
        levels = self.ctx.levels[i]
        return levels[self.depth - 1].fixtures if self.depth <= len(levels) else []

    def _new_fixtures(self, i: int) -> list[str]:
        """The fixtures of this level test `i` needs that were not looked at for it."""
        return [name for name in self._level_names(i)
                if (i, name) not in self.level_fixtures and name not in self.per_process]

    def _runs(self, i: int) -> list[Any]:
        """The definitions of test `i`'s new fixtures whose functions would run here."""
        item_defs = self.ctx.fixture_defs(i)
        out = []
        for name in self._new_fixtures(i):
            defs = item_defs.get(name)
            if defs and defs[-1].cached_result is None and not depends_on(
                    name, self.per_process, item_defs, set()):
                out.append(defs[-1])
        return out

    def _needing(self, runs: set[int], tests: list[int]) -> Iterator[int]:
        """The tests that need a fixture definition of `runs` (by id), in collection
        order: the first whose setup hooks reach its fixtures is the one whose setup
        sets them up, as in a plain run. Only these tests: the process that runs them
        is the one that can report what the setup produced."""
        for i in sorted(tests):
            item_defs = self.ctx.fixture_defs(i)
            for name in self._level_names(i):
                defs = item_defs.get(name)
                if defs and id(defs[-1]) in runs:
                    yield i
                    break

    def _set_up_captured(self, test: int, inner: Callable[[], None]) -> None:
        """Run `inner` with its output captured as test `test`'s setup output."""
        capman = self.ctx.session.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.resume_global_capture()
        try:
            inner()
        finally:
            if capman is not None:
                capman.suspend_global_capture()
                out, err = capman.read_global_capture()
                sections = [["setup", key, text] for key, text in (("stdout", out), ("stderr", err)) if text]
                if sections:
                    self.pending.append(setuphooks.Produced(test, sections))

    def _set_up(self, tests: list[int]) -> bool:
        did_setup = False
        session = self.ctx.session
        for i in tests:
            levels = self.ctx.levels[i]
            if self.depth > len(levels):
                continue
            item = self.ctx.items[i]
            for name in levels[self.depth - 1].fixtures:
                if (i, name) in self.level_fixtures or name in self.per_process:
                    continue
                self.level_fixtures.add((i, name))
                item_defs = self.ctx.fixture_defs(i)
                if depends_on(name, self.per_process, item_defs, set()):
                    self.per_process.add(name)  # it would set that one up here
                    continue
                defs = item_defs.get(name)
                if not defs or defs[-1].cached_result is None:
                    did_setup = True  # new objects: freeze them (cached ones are)
                if name in self.ctx.serial_fixtures:
                    self._serial(f"it set up fixture {name!r}, listed in tach_serial_fixtures")
                # pytest >= 9 asks that the requesting item be active (on the
                # SetupState stack); it is, for the length of this request. Only
                # higher-scoped fixtures are requested here, and they register
                # their finalizers on their own scope nodes, not on the item.
                setup_stack = session._setupstate.stack
                threads, fins = live_threads(), finalizer_counts(session)
                setup_stack[item] = ([], None)
                try:
                    cast(pytest.Function, item)._request.getfixturevalue(name)
                except TEST_OUTCOME:
                    pass  # pytest cached the error: the test's own setup re-raises it
                finally:
                    setup_stack.pop(item, None)
                started = live_threads() - threads
                if started:
                    self._set_up_per_process(item, name, started, fins)
        return did_setup

    def _set_up_per_process(self, item: pytest.Item, name: str, started: set[threading.Thread],
                            fins: dict[Any, int]) -> None:
        """Fixture `name` (or one it needed, set up with it) left a thread running: a
        live server, a thread pool. A fork copies only the thread that forks, so every
        process forked from here would hold the fixture's objects without the thread
        behind them (a server that answers from this zygote's state, a pool whose tasks
        never run, a shutdown that waits forever). So tear it down here again, and let
        each test process set it up for itself when its first test needs it (and tear
        it down after its last), as each pytest-xdist worker would."""
        self.per_process.add(name)
        names = ", ".join(sorted(repr(t.name) for t in started))
        errors = run_added_finalizers(self.ctx.session, fins)
        # The request remembers what it got (pytest asserts a remembered fixture is
        # still set up): forget what was torn down.
        known = getattr(cast(pytest.Function, item)._request, "_fixture_defs", {})
        for argname, fixturedef in list(known.items()):
            if fixturedef.cached_result is None:
                del known[argname]
        left = live_threads() & started
        why = (f"fixture {name!r} started thread{'s' if len(started) > 1 else ''} {names}, which "
               "its test processes would not have: it is set up in each test process instead")
        if left:
            why += f" (its teardown here left {len(left)} of them running)"
        if errors:
            why += f" (its teardown here raised {errors[0]!r})"
        self._per_process(why)
