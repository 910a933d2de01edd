"""tach's command-line options and ini keys, and their validation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

ISOLATE_MODES = ("test", "module", "none")
#: pytest-xdist's session fixtures whose value is the worker's
PER_PROCESS_FIXTURES = ("worker_id", "testrun_uid")
RESET_MODES = ("auto", "snapshot", "fork")


@dataclass(frozen=True)
class Settings:
    workers: int  # 0: run in-process like plain pytest
    isolate: str
    timeout: float  # seconds; 0: no deadline
    report: bool
    serial_fixtures: tuple[str, ...] = ()
    per_process_fixtures: tuple[str, ...] = ()
    threads: int = 1
    iterations: int = 1
    skip_thread_unsafe: bool = False
    require_gil_disabled: bool = False
    reset: str = "auto"
    stall_report: float = 60.0  # seconds without progress before saying what the run waits for

    @property
    def stress(self) -> bool:
        """Stress mode: test bodies run in several threads or several times."""
        return self.threads > 1 or self.iterations > 1


#: dest -> (flag, default) of each command-line option, for refusing them in a run that
#: did not turn tach on (the options exist in every run: the plugin is an entry point)
CLI_OPTIONS: dict[str, tuple[str, object]] = {}


def _add(group: pytest.OptionGroup, flag: str, *, dest: str, default: object, **kw: object) -> None:
    CLI_OPTIONS[dest] = (flag, default)
    group.addoption(flag, dest=dest, default=default, **kw)


def addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tach", "tach (turned on with -p tach): isolated, parallel, "
                            "crash-proof test processes")
    _add(
        group, "--tach-workers", dest="tach_workers", metavar="N|auto", default=None,
        help="how many test processes run at once; 'auto' (default): the CPUs this "
        "process may use; 0: run in-process like plain pytest. ini: tach_workers",
    )
    _add(
        group, "--tach-isolate", dest="tach_isolate", metavar="MODE", default=None,
        help="test (default): every test in its own forked process; module: one process "
        "per module; none: long-lived workers. ini: tach_isolate",
    )
    _add(
        group, "--tach-reset", dest="tach_reset", metavar="HOW", default=None,
        help="how --tach-isolate test gives each test a fresh process: snapshot: reuse "
        "one, restoring its memory and kernel state to the moment it was forked "
        "(Linux 6.7+; falls back to a fork for a test that leaves threads or child "
        "processes behind); fork: fork anew for every test; auto (default): snapshot "
        "where the kernel allows it. ini: tach_reset",
    )
    _add(
        group, "--tach-timeout", dest="tach_timeout", metavar="SECONDS", default=None,
        help="per-test deadline; on expiry the test's threads' stacks are dumped, its "
        "process is killed and the test fails. @pytest.mark.timeout(N) is honoured "
        "when pytest-timeout is not installed. ini: tach_timeout",
    )
    _add(
        group, "--tach-report", dest="tach_report", action="store_true", default=False,
        help="show the slowest and the most memory-hungry tests (wall, CPU, max RSS)",
    )
    _add(
        group, "--tach-coverage", dest="tach_coverage", action="store_true", default=False,
        help="record, for every test, the lines of the project's own files it ran "
        "(sys.monitoring, CPython 3.12+), into pytest's cache dir (tach-coverage/lines.json)",
    )
    _add(
        group, "--tach-coverage-data", dest="tach_coverage_data", metavar="PATH", default=None,
        help="with --tach-coverage: also write them as a coverage.py data file with "
        "per-test contexts (nodeid|setup, |run, |teardown), for coverage report/html",
    )
    _add(
        group, "--tach-threads", dest="tach_threads", metavar="N|auto", default=None,
        help="free-threading stress mode: run each test's body in N threads at once "
        "(default 1: off); markers parallel_threads_limit(n), force_parallel_threads(n), "
        "thread_unsafe adjust it per test. ini: tach_threads",
    )
    _add(
        group, "--tach-iterations", dest="tach_iterations", metavar="M", default=None,
        help="call each test's body M times in every thread (default 1); marker "
        "iterations(n). ini: tach_iterations",
    )
    _add(
        group, "--tach-skip-thread-unsafe", dest="tach_skip_thread_unsafe", action="store_true",
        default=False, help="skip tests found thread-unsafe instead of running them in one thread",
    )
    _add(
        group, "--tach-require-gil-disabled", dest="tach_require_gil_disabled", action="store_true",
        default=False, help="on a free-threaded build, fail the run (exit 1) if an import "
        "re-enables the GIL; without it the summary warns",
    )
    parser.addini("tach_workers", "default for --tach-workers", default="auto")
    parser.addini("tach_threads", "default for --tach-threads", default="1")
    parser.addini("tach_iterations", "default for --tach-iterations", default="1")
    # pytest-run-parallel's ini keys, read the same way; it registers them itself when
    # installed (registering twice is an error).
    if not _installed("pytest-run-parallel"):
        parser.addini("thread_unsafe_fixtures", "fixtures that make a test run single-threaded "
                      "in tach's stress mode", type="linelist", default=[])
        parser.addini("thread_unsafe_functions", "functions (module.name) whose use makes a "
                      "test run single-threaded in tach's stress mode", type="linelist", default=[])
    parser.addini("tach_isolate", "default for --tach-isolate", default="test")
    parser.addini("tach_reset", "default for --tach-reset", default="auto")
    parser.addini("tach_timeout", "default for --tach-timeout (seconds)", default="0")
    parser.addini("tach_stall_report", "when no test process has said anything for this many "
                  "seconds, say what the run is waiting for (again after twice as long); 0: never",
                  default="60")
    parser.addini("tach_per_process_fixtures", "higher-scoped fixtures (and those that need "
                  "them) to set up in each test process rather than once in a zygote, as each "
                  "pytest-xdist worker sets up its own", type="linelist",
                  default=list(PER_PROCESS_FIXTURES))
    parser.addini("tach_serial_fixtures", "fixtures whose zygote runs its tests one at a "
                  "time (e.g. ones holding a connection the tests would share)", type="linelist",
                  default=[])


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_int_or_auto(value: object, source: str, minimum: int) -> int:
    """An integer >= minimum, or 'auto': the CPUs this process may use."""
    v = str(value).strip().lower()
    if v == "auto":
        return _usable_cpus()
    try:
        n = int(v)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise pytest.UsageError(f"{source}: expected a {kind} integer or 'auto', got {value!r}")
    return n


def parse_choice(value: str, source: str, choices: tuple[str, ...]) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise pytest.UsageError(f"{source}: expected one of {', '.join(choices)}, got {value!r}")
    return v


def parse_timeout(value: str, source: str, zero: str = "no deadline") -> float:
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if not t >= 0 or t == float("inf"):
        raise pytest.UsageError(
            f"{source}: expected a number of seconds >= 0 (0: {zero}), got {value!r}")
    return t


def settings(config: pytest.Config) -> Settings:
    """Validated settings: the option when given, else the ini key."""

    def pick(opt: str, ini: str) -> tuple[str, str]:
        v = config.getoption(opt)
        if v is not None:
            return str(v), f"--{opt.replace('_', '-')}"
        return str(config.getini(ini)), f"ini option {ini}"

    workers_value, workers_source = pick("tach_workers", "tach_workers")
    threads = parse_int_or_auto(*pick("tach_threads", "tach_threads"), minimum=1)
    workers = parse_int_or_auto(workers_value, workers_source, minimum=0)
    if workers_value.strip().lower() == "auto" and threads > 1 and workers > 0:
        # Stress threads need cores of their own to race: with 8 threads per test on
        # 2 CPUs, two tests at once halve each one's real parallelism (measured: the
        # unlocked-counter race was caught in 7 of 10 trials instead of 10).
        workers = max(1, workers // threads)
    return Settings(
        workers=workers,
        isolate=parse_choice(*pick("tach_isolate", "tach_isolate"), ISOLATE_MODES),
        timeout=parse_timeout(*pick("tach_timeout", "tach_timeout")),
        report=bool(config.getoption("tach_report")),
        serial_fixtures=tuple(config.getini("tach_serial_fixtures")),
        per_process_fixtures=tuple(config.getini("tach_per_process_fixtures")),
        threads=threads,
        iterations=parse_int_or_auto(*pick("tach_iterations", "tach_iterations"), minimum=1),
        skip_thread_unsafe=bool(config.getoption("tach_skip_thread_unsafe")),
        require_gil_disabled=bool(config.getoption("tach_require_gil_disabled")),
        reset=parse_choice(*pick("tach_reset", "tach_reset"), RESET_MODES),
        stall_report=parse_timeout(str(config.getini("tach_stall_report")),
                                   "ini option tach_stall_report", zero="never"),
    )
