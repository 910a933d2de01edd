"""Eight tests of a quarter second each: about 2 s in plain pytest, about half that
with two tach workers."""

import time

import pytest


@pytest.mark.parametrize("n", range(8))
def test_slow_computation(n, warehouse):
    time.sleep(0.25)
    assert warehouse["stock"]["apples"] == 3


def test_isolation_a(warehouse):
    # Mutates the session fixture's object: under tach only this test's process sees it.
    warehouse["stock"]["apples"] = 0


def test_isolation_b(warehouse):
    assert warehouse["stock"]["apples"] == 3
