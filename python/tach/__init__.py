"""tach: run a pytest suite through forked zygotes, isolated, in parallel, crash-proof.

Activate it per run with ``pytest -p tach``; installing the package does not turn it on.
The pytest hooks live in :mod:`tach.plugin`; this module stays import-light so that
``python -m tach`` and ``-p tach`` cost nothing until they are used.
"""

__version__ = "0.1.0"

# `-p tach` registers this module as a plugin; pytest then loads the hooks from here.
pytest_plugins = ["tach.plugin"]
