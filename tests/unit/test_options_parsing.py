"""Unit tests: option and ini values into settings, with the error a user sees."""

from __future__ import annotations

import pytest

from pytest_tach import options


@pytest.mark.parametrize(("value", "minimum", "want"), [("3", 1, 3), (" 0 ", 0, 0), (2, 1, 2), ("7", 0, 7)])
def test_int_or_auto_takes_integers_at_or_above_the_minimum(value: object, minimum: int, want: int) -> None:
    assert options.parse_int_or_auto(value, "--tach-workers", minimum) == want


def test_int_or_auto_auto_is_the_cpus_this_process_may_use() -> None:
    import os

    assert options.parse_int_or_auto("AUTO", "--tach-workers", 1) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("value", "minimum", "kind"), [("0", 1, "positive"), ("-1", 0, "non-negative"),
                                                       ("two", 1, "positive"), ("1.5", 1, "positive")])
def test_int_or_auto_names_the_source_and_the_bad_value(value: str, minimum: int, kind: str) -> None:
    with pytest.raises(pytest.UsageError) as e:
        options.parse_int_or_auto(value, "tach_workers (ini)", minimum)
    assert str(e.value) == f"tach_workers (ini): expected a {kind} integer or 'auto', got {value!r}"


def test_choice_is_case_insensitive_and_lists_the_choices() -> None:
    assert options.parse_choice(" Module ", "--tach-isolate", ("test", "module", "none")) == "module"
    with pytest.raises(pytest.UsageError, match=r"--tach-isolate: expected one of test, module, none, got 'x'"):
        options.parse_choice("x", "--tach-isolate", ("test", "module", "none"))


@pytest.mark.parametrize(("value", "want"), [("0", 0.0), ("2.5", 2.5), ("1e3", 1000.0)])
def test_timeout_takes_non_negative_seconds(value: str, want: float) -> None:
    assert options.parse_timeout(value, "--tach-timeout") == want


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon", ""])
def test_timeout_refuses_what_is_not_a_finite_non_negative_number(value: str) -> None:
    with pytest.raises(pytest.UsageError, match=r"--tach-timeout: expected a number of seconds >= 0 "
                                                r"\(0: no deadline\)"):
        options.parse_timeout(value, "--tach-timeout")
