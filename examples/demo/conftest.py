import time

import pytest


@pytest.fixture(scope="session")
def warehouse():
    """An expensive session fixture: tach sets it up once, in a zygote, for every test."""
    time.sleep(0.5)
    return {"stock": {"apples": 3, "pears": 5}}
