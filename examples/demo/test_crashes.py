"""Tests that would take a plain pytest run down with them. Under tach each fails on its
own, with the reason and a traceback, and the run goes on."""

import ctypes
import time

import pytest


def test_segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


@pytest.mark.timeout(2)
def test_hangs():
    time.sleep(3600)  # tach dumps every thread's stack at 2 s and kills the process


def test_still_runs_after_the_crashes():
    assert True
