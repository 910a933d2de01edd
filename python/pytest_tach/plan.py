"""Which zygotes each test needs: the fork tree, derived from pytest's collection tree.

For every item this computes a chain of *levels*, outermost first. A level is one zygote:
it stands for a scope node (the session, a package, a module, a class) and, when that
scope has parametrized fixtures, one set of parameter values. A zygote pushes its scope's
collectors onto pytest's SetupState and sets up the fixtures of its scope that its tests
need, once; every test forked from it inherits them.

Levels exist only where a scope owns fixtures the item uses (plus the session level,
always), so a module without module-scoped fixtures costs no zygote: its tests fork from
the session zygote and set their module up themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from _pytest import nodes

_SCOPE_RANK = {"session": 0, "package": 1, "module": 2, "class": 3, "function": 4}


@dataclass
class Level:
    """One zygote in an item's chain."""

    key: str
    #: collectors this zygote pushes onto the SetupState (those between its parent
    #: level's node, exclusive, and its own node, inclusive)
    push: list[nodes.Node]
    #: fixture names (in the item's setup order) this zygote sets up for the item
    fixtures: list[str] = field(default_factory=list)
    #: whether the level is the parameter-specific half of a scope
    parametrized: bool = False
    #: the scope it stands for: session, package, module or class
    scope: str = "session"


def _fixturedefs(item: pytest.Item) -> dict[str, Any] | None:
    info = getattr(item, "_fixtureinfo", None)
    if info is None or not hasattr(item, "_request"):
        return None  # doctests and custom items set up their own fixtures in the test process
    return dict(info.name2fixturedefs)


def _scope_node(item: pytest.Item, fixturedef: Any) -> nodes.Node | None:
    scope = fixturedef.scope
    if scope == "session":
        return item.session
    if scope == "package":
        try:
            from _pytest.fixtures import get_scope_package

            pkg = get_scope_package(item, fixturedef)
        except Exception:  # noqa: BLE001 - private API, changed across pytest versions: no package
            pkg = None
        return pkg if pkg is not None else item.session
    if scope == "module":
        return item.getparent(pytest.Module)
    if scope == "class":
        return item.getparent(pytest.Class)
    return None


def depends_on(name: str, targets: set[str], defs: dict[str, Any], seen: set[str]) -> bool:
    """Whether fixture `name` is one of `targets` or needs one (transitively), as defs
    (an item's name2fixturedefs) resolve it."""
    if name in targets:
        return True
    if name in seen or name not in defs:
        return False
    seen.add(name)
    return any(depends_on(dep, targets, defs, seen) for dep in defs[name][-1].argnames)


def _lookup(item: pytest.Item, name: str) -> Sequence[Any] | None:
    """The definitions of fixture `name` visible to item, as its request would find them
    at run time (request.getfixturevalue)."""
    fm = getattr(item.session, "_fixturemanager", None)
    if fm is None:
        return None
    try:
        if pytest.version_tuple >= (8, 1):
            return fm.getfixturedefs(name, item)  # type: ignore[no-any-return] # pytest >= 8.1's signature
        return fm.getfixturedefs(name, item.parent.nodeid if item.parent else "")  # type: ignore[no-any-return] # older one
    except Exception:  # noqa: BLE001 - a name that does not resolve is not set up
        return None


def resolve(item: pytest.Item, names: Sequence[str]) -> dict[str, Any] | None:
    """item's name2fixturedefs, plus `names` (fixtures it reaches at run time) and what
    they need, as its request would resolve them; None for an item that sets up its own
    fixtures (see _fixturedefs)."""
    own = _fixturedefs(item)
    if own is None:
        return None
    defs = dict(own)
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in defs or name == "request":
            continue
        found = _lookup(item, name)
        if found:
            defs[name] = found
            todo.extend(found[-1].argnames)
    return defs


def chain(item: pytest.Item, reached: Sequence[str] = (), resolved: dict[str, Any] | None = None) -> list[Level]:
    """The zygote levels item needs, outermost (the session) first. `reached`: fixtures
    it reached at run time in an earlier run (pytest_tach.reached), set up with its own;
    `resolved`: resolve(item, reached), where the caller has it already."""
    chain_nodes = item.listchain()
    session = chain_nodes[0]
    defs = _fixturedefs(item)
    if defs is not None and reached:
        defs = resolved if resolved is not None else resolve(item, reached)
    by_node: dict[nodes.Node, list[str]] = {}
    if defs:
        used: list[str] = getattr(item, "fixturenames", [])  # a Function's, as defs is
        for name in [*used, *(n for n in reached if n not in used)]:
            fds = defs.get(name)
            if not fds:
                continue  # "request" and other pseudo-fixtures
            fd = fds[-1]
            if _SCOPE_RANK.get(fd.scope, 4) >= 4:
                continue
            node = _scope_node(item, fd)
            if node is None and fd.scope == "class":
                # pytest's own fallback for a test outside any class: the fixture lives
                # on the test itself, set up and torn down with it (pytest-django's
                # autouse _django_setup_unittest is one): the test process's.
                continue
            if node is None or node not in chain_nodes:
                node = session
            by_node.setdefault(node, []).append(name)
    callspec = getattr(item, "callspec", None)
    indices: dict[str, int] = callspec.indices if callspec is not None else {}
    levels: list[Level] = []
    pushed_upto = 0
    for depth, node in enumerate(chain_nodes[:-1]):
        names = by_node.get(node)
        if node is not session and not names:
            continue
        names = names or []
        push = list(chain_nodes[pushed_upto:depth + 1])
        pushed_upto = depth + 1
        params = sorted(n for n in names if n in indices)
        base_key = "session" if node is session else f"{type(node).__name__}:{node.nodeid}"
        scope = ("session" if node is session else "class" if isinstance(node, pytest.Class)
                 else "module" if isinstance(node, pytest.Module) else "package")
        parent_key = levels[-1].key + " > " if levels else ""
        if not params:
            levels.append(Level(parent_key + base_key, push, names, scope=scope))
            continue
        targets = set(params)
        dependent = [n for n in names if depends_on(n, targets, defs or {}, set())]
        base = [n for n in names if n not in dependent]
        levels.append(Level(parent_key + base_key, push, base, scope=scope))
        pkey = ",".join(f"{n}={indices[n]}" for n in params)
        levels.append(Level(f"{levels[-1].key}[{pkey}]", [], dependent, parametrized=True, scope=scope))
    return levels


def batch_key(item: pytest.Item) -> str:
    """What --tach-isolate module runs as one unit: the item's module (or its file, for
    items outside a Python module, like doctests in text files)."""
    mod = item.getparent(pytest.Module)
    return mod.nodeid if mod is not None else item.nodeid.split("::")[0]


#: --tach-isolate none never cuts a module into pieces smaller than this: each piece
#: sets the module's fixtures up again.
MIN_CHUNK = 100
#: ... and cuts one only when it holds more than 1/(CHUNKS_PER_WORKER * workers) of the
#: run, so that no single module keeps one worker busy while the others idle.
CHUNKS_PER_WORKER = 4


def batch_keys(items: Sequence[pytest.Item], isolate: str, workers: int) -> list[str]:
    """Each item's batch: "" under --tach-isolate test (every test alone), its module
    under module. Under none, a module that would hold a worker for a large share of the
    run is cut into consecutive chunks that runners take independently, as pytest-xdist
    does with any module. A cut falls where the test's class changes, so a class's
    fixtures are still set up once, unless the class alone is bigger than a chunk (then
    it is cut too, and each piece sets the class up, as under xdist). Without the cut a
    suite whose tests sit mostly in one class (idna: 6,336 of 6,366) runs on one
    worker."""
    if isolate == "test":
        return [""] * len(items)
    keys = [batch_key(item) for item in items]
    if isolate != "none" or workers < 2:
        return keys
    chunk = max(MIN_CHUNK, -(-len(items) // (CHUNKS_PER_WORKER * workers)))
    classes = [item.getparent(pytest.Class) for item in items]
    sizes: dict[Any, int] = {}  # tests per module key and per class node
    for k, cls in zip(keys, classes, strict=True):
        sizes[k] = sizes.get(k, 0) + 1
        if cls is not None:
            sizes[cls] = sizes.get(cls, 0) + 1
    out: list[str] = []
    # module -> (chunk number, tests in that chunk so far, class of the last test)
    state: dict[str, tuple[int, int, Any]] = {}
    for k, cls in zip(keys, classes, strict=True):
        if sizes[k] <= chunk:
            out.append(k)
            continue
        n, filled, last_cls = state.get(k, (0, 0, None))
        if filled >= chunk and (cls is None or cls is not last_cls or sizes[cls] > chunk):
            n, filled = n + 1, 0
        state[k] = (n, filled + 1, cls)
        out.append(f"{k}#{n}")
    return out


def plan(items: Sequence[pytest.Item], isolate: str = "test",
         reached: dict[str, list[str]] | None = None,
         resolved: dict[int, dict[str, Any]] | None = None) -> list[list[Level]]:
    """Each item's zygote chain. With isolate module or none, the chain stops above the
    module: a runner sets modules and classes up itself, as a plain pytest process.
    `reached`: test id -> fixtures it reached at run time in an earlier run; `resolved`:
    by item index, resolve(item, its reached names), where the caller has it already."""
    reached, resolved = reached or {}, resolved or {}
    chains = [chain(item, reached.get(item.nodeid, ()), resolved.get(i)) for i, item in enumerate(items)]
    if isolate != "test":
        chains = [[lv for lv in c if lv.scope in ("session", "package")] for c in chains]
    return chains


_WIDTH = {"class": 0, "module": 1, "package": 2, "session": 3}


def dependency_groups(items: Sequence[pytest.Item], automark: bool) -> dict[int, str]:
    """pytest-dependency: which tests must run in one process, in collection order.

    A test marked ``dependency(depends=[...])`` is skipped unless the tests it names
    passed earlier; pytest-dependency records their results on the nodes of the process
    that ran them. So every test taking part (marked ``dependency``, or all tests with
    the ini key automark_dependency) runs in one process with the others it may name,
    in collection order: per module, or per package or for the whole session where a
    ``depends`` reaches that wide. Returns item index -> group, for those taking part.
    """
    involved: dict[int, Any] = {}
    widest: dict[Any, int] = {}  # a package node or the session -> widest scope reaching it
    for i, item in enumerate(items):
        marker = item.get_closest_marker("dependency")
        if marker is None and not automark:
            continue
        involved[i] = marker
        scope = marker.kwargs.get("scope", "module") if marker is not None and marker.kwargs.get("depends") else ""
        if scope in ("session", "package"):
            node = item.session if scope == "session" else item.getparent(pytest.Package)
            if node is not None:
                widest[node] = max(widest.get(node, 0), _WIDTH[scope])
    whole_session = any(_WIDTH["session"] == w for w in widest.values())
    groups: dict[int, str] = {}
    for i in involved:
        item = items[i]
        if whole_session:
            groups[i] = "dependency:session"
            continue
        pkg = item.getparent(pytest.Package)
        if pkg is not None and pkg in widest:
            groups[i] = f"dependency:{pkg.nodeid}"
            continue
        groups[i] = f"dependency:{batch_key(item)}"
    return groups


def cut_for_group(chain_: list[Level], group: str) -> list[Level]:
    """An item's chain when it runs in a group's process: only the zygotes every test
    of the group can share (the session's, and for a package group the package's); the
    process sets up the rest itself, as a plain pytest process does."""
    keep = ("session",) if group.endswith(":session") else ("session", "package")
    return [lv for lv in chain_ if lv.scope in keep]


#: pytest-order's named positions (pytest_order.sorter.orders_map)
_ORDINALS = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "sixth": 5,
             "seventh": 6, "eighth": 7, "last": -1, "second_to_last": -2, "third_to_last": -3,
             "fourth_to_last": -4, "fifth_to_last": -5, "sixth_to_last": -6,
             "seventh_to_last": -7, "eighth_to_last": -8}

#: the phases of a run with pytest-order: tests ordered before the unordered ones, the
#: unordered ones (and those ordered only relative to others), tests ordered after them
BEFORE, UNORDERED, AFTER = 0, 1, 2


def order_groups(items: Sequence[pytest.Item], sparse: bool) -> tuple[dict[int, str], dict[int, int]]:
    """pytest-order sorts the collected items; a plain run then runs them in that order.
    Under tach, the tests it orders run in one process each group, in collection order
    (pytest-order's order): those with a position at or after the start
    (``order(0)``, ``"first"``) before every other test starts, those with a negative
    one (``"last"``) after every other test is done, those placed only relative to
    others (``before=``/``after=``) among the rest; the unordered tests run in parallel
    between. With --sparse-ordering the positions are literal, so the whole run is one
    group. Returns (item index -> group, item index -> phase)."""
    groups: dict[int, str] = {}
    phases: dict[int, int] = {}
    labels: list[str] = []
    for i, item in enumerate(items):
        if sparse:
            groups[i], phases[i] = "order:session", UNORDERED
            continue
        marker = item.get_closest_marker("order")
        if marker is None:
            continue
        position = marker.args[0] if marker.args else marker.kwargs.get("index")
        if isinstance(position, str):
            position = _ORDINALS.get(position)
        related = [marker.kwargs.get("before"), marker.kwargs.get("after")]
        for rel in related:
            labels += [rel] if isinstance(rel, str) else list(rel or ())
        if isinstance(position, int):
            phase = BEFORE if position >= 0 else AFTER
            groups[i], phases[i] = f"order-{phase}:session", phase
        elif any(related):
            groups[i], phases[i] = "order:session", UNORDERED
    # A test named by before=/after= runs in the group of those that name it (matched
    # as pytest-order matches labels, by the end of the node id, more widely if anything).
    for i, item in enumerate(items):
        if i not in groups and any(_names(item.nodeid, label) for label in labels):
            groups[i], phases[i] = "order:session", UNORDERED
    return groups, phases


def _names(nodeid: str, label: str) -> bool:
    base = nodeid.partition("[")[0]
    return any(n == label or n.endswith(("::" + label, "/" + label)) for n in (nodeid, base))
