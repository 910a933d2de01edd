"""tach's command-line options and ini keys, and their validation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

ISOLATE_MODES = ("test", "module", "none")


@dataclass(frozen=True)
class Settings:
    workers: int  # 0: run in-process like plain pytest
    isolate: str
    timeout: float  # seconds; 0: no deadline
    report: bool
    serial_fixtures: tuple[str, ...] = ()


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tach", "tach: isolated, parallel, crash-proof test processes")
    group.addoption(
        "--tach-workers", dest="tach_workers", metavar="N|auto", default=None,
        help="how many test processes run at once; 'auto' (default): the CPUs this "
        "process may use; 0: run in-process like plain pytest. ini: tach_workers",
    )
    group.addoption(
        "--tach-isolate", dest="tach_isolate", metavar="MODE", default=None,
        help="test (default): every test in its own forked process; module: one process "
        "per module; none: long-lived workers. ini: tach_isolate",
    )
    group.addoption(
        "--tach-timeout", dest="tach_timeout", metavar="SECONDS", default=None,
        help="per-test deadline; on expiry the test's threads' stacks are dumped, its "
        "process is killed and the test fails. @pytest.mark.timeout(N) is honoured "
        "when pytest-timeout is not installed. ini: tach_timeout",
    )
    group.addoption(
        "--tach-report", dest="tach_report", action="store_true", default=False,
        help="show the slowest and the most memory-hungry tests (wall, CPU, max RSS)",
    )
    parser.addini("tach_workers", "default for --tach-workers", default="auto")
    parser.addini("tach_isolate", "default for --tach-isolate", default="test")
    parser.addini("tach_timeout", "default for --tach-timeout (seconds)", default="0")
    parser.addini("tach_serial_fixtures", "fixtures whose zygote runs its tests one at a "
                  "time (e.g. ones holding a connection the tests would share)", type="linelist",
                  default=[])


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(value: str, source: str) -> int:
    v = value.strip().lower()
    if v == "auto":
        return _usable_cpus()
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise pytest.UsageError(
            f"{source}: expected a non-negative integer or 'auto', got {value!r}")
    return n


def parse_isolate(value: str, source: str) -> str:
    v = value.strip().lower()
    if v not in ISOLATE_MODES:
        raise pytest.UsageError(
            f"{source}: expected one of {', '.join(ISOLATE_MODES)}, got {value!r}")
    return v


def parse_timeout(value: str, source: str) -> float:
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not t >= 0 or t == float("inf"):
        raise pytest.UsageError(
            f"{source}: expected a number of seconds >= 0 (0: no deadline), got {value!r}")
    return t


def settings(config: pytest.Config) -> Settings:
    """Validated settings: the option when given, else the ini key."""

    def pick(opt: str, ini: str) -> tuple[str, str]:
        v = config.getoption(opt)
        if v is not None:
            return str(v), f"--{opt.replace('_', '-')}"
        return str(config.getini(ini)), f"ini option {ini}"

    return Settings(
        workers=parse_workers(*pick("tach_workers", "tach_workers")),
        isolate=parse_isolate(*pick("tach_isolate", "tach_isolate")),
        timeout=parse_timeout(*pick("tach_timeout", "tach_timeout")),
        report=bool(config.getoption("tach_report")),
        serial_fixtures=tuple(config.getini("tach_serial_fixtures")),
    )
