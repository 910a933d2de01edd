"""tach: run a pytest suite through forked zygotes, isolated, in parallel, crash-proof.

Activate it per run with ``pytest -p tach``; installing the package does not turn it on.
``-p tach`` registers this module as the plugin, so the hooks (defined in
:mod:`tach.plugin`) are re-exported here: ``-p no:tach`` then blocks all of them.
"""

__version__ = "0.1.0"

from tach.plugin import (  # after __version__, which plugin.py reads
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
