"""State a zygote holds that would be shared, not copied, by the processes it forks,
and what tach does about it.

An asyncio event loop set up by a higher-scoped fixture (pytest-asyncio's
``loop_scope="session"``, anyio's) holds two kernel objects that a fork shares rather
than copies: its selector's epoll instance (the processes would add and remove each
other's fds in one interest list, and take each other's events) and its self-pipe, a
connected socket pair (one process's wake-up would wake another). The loop is idle in
the zygote (no test runs there), so each test process can take a fresh epoll with the
same registrations and a fresh self-pipe, and then owns the loop alone: the zygote
need not run its tests one at a time.
"""

from __future__ import annotations

import gc
import sys
from typing import Any


def event_loops() -> list[Any]:
    """The open selector event loops in this process (a heap walk: called only when a
    zygote found a connected socket, to tell a loop's self-pipe from a connection)."""
    if "asyncio" not in sys.modules:
        return []
    from asyncio.selector_events import BaseSelectorEventLoop

    # gc.get_objects() leaves out what gc.freeze() froze (zygotes freeze what their
    # fixtures made): thaw for the walk (both are list splices, not walks).
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        return [o for o in gc.get_objects()
                if isinstance(o, BaseSelectorEventLoop) and not o.is_closed() and not o.is_running()]
    finally:
        if frozen:
            gc.freeze()


def self_pipe_fds(loop: Any) -> set[int]:
    """The fds of loop's self-pipe (its two connected sockets)."""
    return {s.fileno() for s in (getattr(loop, "_ssock", None), getattr(loop, "_csock", None))
            if s is not None and s.fileno() >= 0}


def renew(loop: Any) -> None:
    """Give loop, in a freshly forked process, a selector and a self-pipe of its own."""
    if loop.is_closed():
        return
    old = loop._selector
    new = type(old)()
    for key in list(old.get_map().values()):
        new.register(key.fileobj, key.events, key.data)
    loop._selector = new
    old.close()  # this process's fd of the shared epoll instance, not the instance
    loop._close_self_pipe()  # unregisters it from the new selector, closes our ends
    loop._make_self_pipe()
