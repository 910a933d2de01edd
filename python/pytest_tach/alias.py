"""The object behind the ``pytest11`` entry point named ``tach``.

PyPI's unrelated ``tach`` (a module-boundary linter) also has a ``pytest11`` entry point
named ``tach``, for its own pytest plugin. pytest gives a plugin name to the first entry
point it finds and skips the others, in an order set by the file system, so two
distributions sharing the name would make either plugin vanish at random. Therefore:

* With that other ``tach`` installed, this entry point hands pytest *its* plugin, so the
  name ``tach`` means the same as without pytest-tach installed, whichever of the two
  entry points pytest reads first. tach's own hooks come from the entry point named
  ``pytest_tach``, loaded with the other plugins, and ``-p tach`` still turns the engine on
  (activation.py reads the -p list). Only with PYTEST_DISABLE_PLUGIN_AUTOLOAD set does the
  run then need ``-p pytest_tach``, because nothing of tach's is loaded otherwise.
* Without it, this module itself is the plugin named ``tach``: it has no hooks and names
  the package in ``pytest_plugins``, which pytest loads as the plugin ``pytest_tach``. So
  ``-p tach`` loads tach also where the entry points are not autoloaded.

Nothing here runs code a test or a frame chose: the other entry point is one pytest
would have loaded itself.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata

DISTRIBUTION = "pytest-tach"


def _other_plugin() -> object | None:
    if importlib.util.find_spec("tach") is None:
        # Nothing named tach is installed (the usual case): skip reading every
        # distribution's entry points again, ~4 ms of each pytest run's start.
        return None
    for ep in metadata.entry_points(group="pytest11", name="tach"):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name.lower().replace("_", "-") != DISTRIBUTION:
            loaded: object = ep.load()
            return loaded
    return None


plugin: object | None = _other_plugin()
if plugin is None:
    pytest_plugins = ["pytest_tach"]
    plugin = sys.modules[__name__]
