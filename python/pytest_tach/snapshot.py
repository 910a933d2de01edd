"""Whether this machine can restore a test process in place (``--tach-reset snapshot``).

One answer for everyone who asks: ``--tach-reset auto`` picks snapshot exactly when
:func:`unavailable` is None, and ``pytest-tach self-test`` reports the same call. The check is
the restore extension's own probe (``pytest_tach._reset.probe``): the kernel features the
restore code will use, requested the way it requests them.
"""

from __future__ import annotations

import errno
import os
from typing import Any

PURPOSE = "--tach-reset snapshot: reuse a test process, restored in place (auto picks it when OK)"


def unavailable() -> str | None:
    """None if snapshot/restore works here, else why not (one line)."""
    try:
        from pytest_tach import _reset
    except ImportError as e:
        return f"pytest_tach._reset could not be loaded: {e}"
    why: str | None = _reset.probe()
    return why


def feature() -> dict[str, Any]:
    """The self-test's row for snapshot/restore, in go/sysinfo's Feature shape."""
    why = unavailable()
    denied = why is not None and why.endswith((os.strerror(errno.EPERM), os.strerror(errno.EACCES)))
    return {
        "name": "snapshot_reset",
        "status": "OK" if why is None else "DENIED" if denied else "MISSING",
        "required": False,
        "purpose": PURPOSE,
        "detail": why or "userfaultfd async write-protect and PAGEMAP_SCAN over a private page",
    }
