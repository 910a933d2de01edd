"""pytest hooks of tach (activated with ``pytest -p tach``).

The zygote engine is not in this build yet: tests run in-process, exactly as with plain
pytest, and the session header says so.
"""

from __future__ import annotations

import pytest

import tach


def pytest_report_header(config: pytest.Config) -> str:
    return (f"tach {tach.__version__}: the zygote engine is not in this build yet; "
            "tests run in-process as with plain pytest")
