"""tach: run a pytest suite through forked zygotes, isolated, in parallel, crash-proof.

Turn it on per run with ``pytest -p tach``; installing the package does not (see
activation.py). The distribution is pytest-tach and this package pytest_tach; ``tach``
is the name of its ``pytest11`` entry point, which registers this module as the plugin,
so the hooks (defined in :mod:`pytest_tach.plugin`) are re-exported here: ``-p no:tach``
then blocks all of them.

PYTEST_DONT_REWRITE: this marker keeps pytest's assertion rewriting away from this module
(nothing here is a test's assertion), and from warning that it was imported before it
could be rewritten, which the ``tach`` entry point (alias.py, a submodule) makes happen.
"""

__version__ = "0.1.0"


def _skip_assertion_rewriting() -> None:
    """pytest marks this package for assertion rewriting (as a plugin distribution's
    top-level package, and again when a plugin spec imports it by name: the ``tach``
    entry point's pytest_plugins), which parses and compiles every module of it again
    (~50 of them) in every run where bytecode is not cached (PYTHONDONTWRITEBYTECODE,
    read-only installs, first runs): ~0.1 s of each run's start. tach's modules hold no
    test assertions to rewrite, so un-mark them: here, before the others are imported,
    and when the plugin is registered (plugin.pytest_addhooks), after pytest's marking
    by name. The hook's attributes are pytest's own, so anything unexpected leaves the
    rewriting as it was."""
    import sys

    for hook in sys.meta_path:
        if type(hook).__name__ == "AssertionRewritingHook":
            try:
                hook._must_rewrite.discard(__name__)  # type: ignore[attr-defined]
                hook._marked_for_rewrite_cache.clear()  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass


_skip_assertion_rewriting()

from pytest_tach.plugin import (  # noqa: E402 - after __version__ (plugin.py reads it) and the un-marking
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
