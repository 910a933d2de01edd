"""tach: run a pytest suite through forked zygotes, isolated, in parallel, crash-proof.

Activate it per run with ``pytest -p tach``; installing the package does not turn it on.
``-p tach`` registers this module as the plugin, so the hooks (defined in
:mod:`tach.plugin`) are re-exported here: ``-p no:tach`` then blocks all of them.
"""

__version__ = "0.1.0"


def _skip_assertion_rewriting() -> None:
    """``-p tach`` marks this package for pytest's assertion rewriting, which parses and
    compiles every module of it again (~50 of them) in every run where bytecode is not
    cached (PYTHONDONTWRITEBYTECODE, read-only installs, first runs): ~0.1 s of each
    run's start. tach's modules hold no test assertions to rewrite, so un-mark them
    before they are imported; the hook's attributes are pytest's own, so anything
    unexpected leaves the rewriting as it was."""
    import sys

    for hook in sys.meta_path:
        if type(hook).__name__ == "AssertionRewritingHook":
            try:
                hook._must_rewrite.discard(__name__)  # type: ignore[attr-defined]
                hook._marked_for_rewrite_cache.clear()  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass


_skip_assertion_rewriting()

from tach.plugin import (  # noqa: E402 - after __version__ (plugin.py reads it) and the un-marking
    pytest_addhooks,
    pytest_addoption,
    pytest_configure,
    pytest_load_initial_conftests,
    pytest_report_header,
    pytest_runtestloop,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

__all__ = [
    "__version__",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_configure",
    "pytest_load_initial_conftests",
    "pytest_report_header",
    "pytest_runtestloop",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
]
