"""Whether this pytest run turned tach on.

tach is loaded through its ``pytest11`` entry points (``tach`` and ``pytest_tach``; the
import package is ``pytest_tach`` because PyPI's unrelated ``tach`` owns the import name
``tach``, and alias.py says how the two share the plugin name). That is how ``-p tach``
finds it, also under PYTEST_DISABLE_PLUGIN_AUTOLOAD=1: pytest loads a plugin named by
``-p`` from the entry points whether or not it autoloads the others. But entry points
are also loaded by every other pytest run in the environment, so installing tach would
change them all. It does not: the hooks act only in a run that asked for tach with ``-p``
(on the command line, in PYTEST_ADDOPTS or in the ini file's addopts, which pytest all
parses into one list before it loads any plugin), as pytest-xdist does nothing without
``-n``; ``-p no:tach`` (or ``no:pytest_tach``) wins over them.
"""

from __future__ import annotations

import pytest

#: what ``-p`` names tach by: ``tach``, or the package's own entry point ``pytest_tach``
#: (which alone loads tach where PyPI's tach is installed and autoloading is off)
NAMES = ("tach", "pytest_tach")


def requested(config: pytest.Config) -> bool:
    specs = getattr(config.known_args_namespace, "plugins", None) or []
    return any(n in specs for n in NAMES) and not any(f"no:{n}" in specs for n in NAMES)


def refuse_options(config: pytest.Config, cli_options: dict[str, tuple[str, object]]) -> None:
    """A run without ``-p tach`` that passes a --tach-... option would silently run
    without tach, which is never what was meant: say what to add instead."""
    given = [flag for dest, (flag, default) in cli_options.items()
             if getattr(config.option, dest, default) != default]
    if given:
        raise pytest.UsageError(
            f"{', '.join(given)}: tach is not turned on in this run; add -p tach "
            "(on the command line, in PYTEST_ADDOPTS or in the ini file's addopts)")
