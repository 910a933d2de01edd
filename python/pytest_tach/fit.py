"""Cut a report that does not fit in one frame, saying so where it was cut.

A test's report can be larger than a frame may be (16 MiB): ``assert a == b`` on two big
structures under ``-vv`` makes a diff of tens of megabytes, a test may print 100 MB that
pytest captures. Plain pytest shows such a failure; tach must show it too, not lose it.
So the report is cut to fit: the biggest texts lose their middle (their head and tail are
usually what tells the failure), long lists of lines lose their middle lines, and the
cut says how much went. Everything small (outcome, location, keywords, durations) is kept
whole, so the report replays like any other.
"""

from __future__ import annotations

from typing import Any

from pytest_tach.frames import MAX_FRAME

#: room kept below the frame cap for the encoding's own overhead (type tags, lengths)
_SLACK = 1 << 20
#: a list of more strings than this is taken for lines of text: it loses its middle lines
_LINES = 32


def note(cut: int, unit: str) -> str:
    return (f"\n... [tach: {cut:,} {unit} cut here: the report did not fit in the "
            f"{MAX_FRAME >> 20} MiB a message from a test process may take] ...\n")


def shrink(msg: dict[str, Any], limit: int | None = None) -> dict[str, Any]:
    """msg with its biggest texts and line lists cut so that it encodes in about
    ``limit`` bytes (the frame cap less some slack by default). The big ones are cut to
    one size, the largest that fits: a 20 MB message and 100 MB of output each keep as
    much as the other."""
    budget = max((limit if limit is not None else MAX_FRAME) - _SLACK, 1 << 16)
    units: list[int] = []
    _units(msg, units)
    fixed = size(msg) - sum(units)
    level = _level(units, budget - fixed)
    return {k: _cut(v, level) for k, v in msg.items()}


def size(x: Any) -> int:
    """An upper bound of x's encoded size, cheap to compute (a str's UTF-8 may take up
    to 4 bytes a character; an ASCII one takes one)."""
    if isinstance(x, str):
        return len(x) if x.isascii() else 4 * len(x)
    if isinstance(x, (bytes, bytearray)):
        return len(x)
    if isinstance(x, dict):
        return sum(size(k) + size(v) + 2 for k, v in x.items()) + 5
    if isinstance(x, (list, tuple)):
        return sum(size(v) + 1 for v in x) + 5
    return 9


def _is_lines(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > _LINES and all(isinstance(v, str) for v in x)


def _units(x: Any, out: list[int]) -> None:
    """The sizes of what can be cut (texts, byte strings, lists of lines), in walk order."""
    if isinstance(x, (str, bytes, bytearray)) or _is_lines(x):
        out.append(size(x))
    elif isinstance(x, dict):
        for v in x.values():
            _units(v, out)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _units(v, out)


def _level(sizes: list[int], budget: int) -> int:
    """The largest size T such that cutting every unit to T fits budget (water-filling:
    the small ones stay whole, the big ones share what is left equally)."""
    left = max(budget, 0)
    ordered = sorted(sizes)
    for n, s in enumerate(ordered):
        share = left // (len(ordered) - n)
        if s > share:
            return max(share, 1024)
        left -= s
    return max(left, 1024)


def _cut(x: Any, level: int) -> Any:
    if isinstance(x, str):
        return x if size(x) <= level else _cut_text(x, level)
    if isinstance(x, (bytes, bytearray)):
        half = level // 2
        return x if len(x) <= level else bytes(x[:half]) + bytes(x[-half:])
    if _is_lines(x):
        return x if size(x) <= level else _cut_lines(list(x), level)
    if isinstance(x, dict):
        return {k: _cut(v, level) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_cut(v, level) for v in x]
    return x


def _cut_text(s: str, budget: int) -> str:
    per = 1 if s.isascii() else 4
    keep = max(budget // per - 200, 64)
    head = keep * 2 // 3
    tail = keep - head
    return s[:head] + note(len(s) - keep, "characters") + s[len(s) - tail:]


def _cut_lines(lines: list[str], budget: int) -> list[str]:
    """Keep the first and the last lines that fit in budget; one line in their place
    says how many went."""
    head: list[str] = []
    tail: list[str] = []
    room = budget - 200
    i, j = 0, len(lines) - 1
    # two thirds of the room to the head, the rest to the tail
    head_room = room * 2 // 3
    while i <= j and size(lines[i]) + 1 <= head_room:
        head_room -= size(lines[i]) + 1
        room -= size(lines[i]) + 1
        head.append(lines[i])
        i += 1
    while j >= i and size(lines[j]) + 1 <= room:
        room -= size(lines[j]) + 1
        tail.append(lines[j])
        j -= 1
    cut = j - i + 1
    if cut <= 0:
        return lines
    return [*head, note(cut, "lines").strip("\n"), *tail[::-1]]
