"""fit.shrink: a report too big for a frame is cut where it is big, and says so."""

from __future__ import annotations

from pytest_tach import fit, frames


def _report(**big: object) -> dict[str, object]:
    return {"t": "report", "test": 3, "data": {
        "nodeid": "test_a.py::test_x", "when": "call", "outcome": "failed",
        "location": ["test_a.py", 1, "test_x"], "keywords": {"test_x": 1}, "duration": 0.5,
        **big}}


def test_a_report_that_fits_is_returned_as_it_is() -> None:
    msg = _report(longrepr="short")
    assert fit.shrink(msg) == msg


def test_a_huge_text_keeps_its_head_and_tail_and_says_what_went() -> None:
    text = "HEAD" + "z" * 30_000_000 + "TAIL"
    msg = _report(longrepr=text, sections=[["Captured stdout call", "out\n"]])
    out = fit.shrink(msg)
    frame = frames.encode(out)  # fits now: no TooBig
    assert len(frame) <= frames.MAX_FRAME
    data = out["data"]
    kept = data["longrepr"]
    assert kept.startswith("HEAD") and kept.endswith("TAIL")
    assert "characters cut here" in kept
    # everything small is whole
    for key in ("nodeid", "when", "outcome", "location", "keywords", "duration", "sections"):
        assert data[key] == msg["data"][key]  # type: ignore[index]


def test_a_long_list_of_lines_loses_its_middle_lines() -> None:
    lines = [f"line {i} " + "x" * 100 for i in range(400_000)]
    out = fit.shrink(_report(longrepr={"reprtraceback": {"lines": lines}}))
    assert len(frames.encode(out)) <= frames.MAX_FRAME
    kept = out["data"]["longrepr"]["reprtraceback"]["lines"]
    assert kept[0] == lines[0] and kept[-1] == lines[-1]
    marker = [line for line in kept if "lines cut here" in line]
    assert len(marker) == 1
    assert len(kept) - 1 + int(marker[0].split("tach: ")[1].split()[0].replace(",", "")) == len(lines)


def test_several_big_texts_share_the_room() -> None:
    out = fit.shrink(_report(longrepr="a" * 12_000_000,
                             sections=[["Captured stdout call", "b" * 12_000_000],
                                       ["Captured stderr call", "c" * 12_000_000]]), limit=4 << 20)
    data = out["data"]
    sizes = [len(data["longrepr"])] + [len(s[1]) for s in data["sections"]]
    assert max(sizes) - min(sizes) < 1000, sizes  # an equal share each
    assert len(frames.encode(out)) <= 4 << 20


def test_non_ascii_text_is_counted_by_its_encoded_size() -> None:
    out = fit.shrink(_report(longrepr="é" * 10_000_000))
    assert len(frames.encode(out)) <= frames.MAX_FRAME
