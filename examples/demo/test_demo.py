"""A small suite for `make demo`: tests that take a moment each, with shared fixtures.

Run it with `pytest -p tach examples/demo` (tach) or `pytest examples/demo` (plain).
"""

import os
import time

import pytest


@pytest.fixture(scope="module")
def dataset():
    # Expensive module-scoped setup: done once, shared by every test of the module.
    time.sleep(0.2)
    return {"rows": list(range(100))}


@pytest.mark.parametrize("n", range(8))
def test_slow_computation(n, dataset):
    time.sleep(0.1)
    assert sum(dataset["rows"][: n + 1]) == n * (n + 1) // 2


def test_mutation_is_isolated(dataset):
    dataset["rows"].clear()  # a bad neighbour: mutates shared state
    assert dataset["rows"] == []


def test_pid(dataset):
    assert os.getpid() > 0
