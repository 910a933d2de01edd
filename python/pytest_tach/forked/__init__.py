"""The forked side of the engine: zygotes and test processes. Pure Python, no Go
(docs/design.md, rule 1).

Every process here is a fork of pytest's main process taken right after collection, so
the whole collected session (items, fixture definitions, plugins) is already in memory.

* The **root zygote** is forked by the main process. It never runs a test; it forks
  session-level zygotes when the supervisor asks.
* A **scope zygote** pushes its scope's collectors onto pytest's SetupState, sets up the
  fixtures of its scope that its tests need (once), and forks runners and child zygotes
  for narrower scopes. It never runs a test itself.
* A **runner** runs ``item.ihook.pytest_runtest_protocol`` for a batch of items in
  order: one item (``--tach-isolate test``), a module's items (``module``), or module
  after module (``none``). Between items pytest gets the real next item; after the last,
  a stand-in whose chain is what the runner must keep, so pytest tears down exactly the
  rest. The last batch of a zygote (its *final* unit, dispatched once all others are
  done) tears the zygote's own scope down too: once, right after its last test, with any
  error landing on that test, exactly as in a plain run.

Each process talks to the supervisor over its own connection to a unix socket in a
private (0700) directory; zygotes reap their children and report how they ended.

The package, by role:

* ``process``: what every forked process shares (the inherited Context, fork, the
  first steps of a child, the last resort when tach's own code fails in one);
* ``zygote``: the zygote's loop and the supervisor's commands; ``start_root``;
* ``scopes``: every access to pytest's SetupState, fixture definitions and finalizers;
* ``runner``: what a test process does;
* ``sources``: where test processes come from: a fork per job, or a pool of processes
  restored in place (--tach-reset snapshot), chosen once per zygote.
"""

from pytest_tach.forked.process import Context
from pytest_tach.forked.zygote import start_root

__all__ = ["Context", "start_root"]
