"""Installing pytest-tach changes no pytest run; `-p tach` turns it on, every documented way.

tach is loaded through entry points in every run of the environment (python/pytest_tach/
activation.py), so each way of asking for it, and of not asking, is a separate case.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import pytest_tach

SUITE = """
    import os

    def test_where(request):
        forwarder = request.config.pluginmanager.get_plugin("tach-forwarder")
        print("UNDER-TACH", forwarder is not None, "OTHER-PROCESS", os.getpid() != int(os.environ["MAIN_PID"]))

    def test_other():
        pass
"""

HEADER = f"tach {pytest_tach.__version__}: *"


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Callable[..., pytest.RunResult]:
    pytester.makepyfile(test_where=SUITE)
    pytester.makeconftest("import os\nos.environ.setdefault('MAIN_PID', str(os.getpid()))\n")

    def run(*args: str, env: dict[str, str] | None = None) -> pytest.RunResult:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        return pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)

    return run


def test_a_plain_run_is_unaffected(run: Callable[..., pytest.RunResult]) -> None:
    """The plugin is loaded (an entry point) and does nothing: no header, no engine."""
    r = run()
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*UNDER-TACH False OTHER-PROCESS False*"])
    r.stdout.no_fnmatch_line(HEADER)


@pytest.mark.parametrize("how", ["command line", "PYTEST_ADDOPTS", "ini addopts", "autoload off",
                                 "the package's own name"])
def test_each_way_of_asking_turns_it_on(pytester: pytest.Pytester, run: Callable[..., pytest.RunResult],
                                        how: str) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if how == "command line":
        args = ["-p", "tach"]
    elif how == "PYTEST_ADDOPTS":
        env["PYTEST_ADDOPTS"] = f"{os.environ.get('PYTEST_ADDOPTS', '')} -p tach".strip()
    elif how == "ini addopts":
        pytester.makeini("[pytest]\naddopts = -p tach --tach-workers 2\n")
    elif how == "autoload off":
        # Many CI setups disable autoloading: -p still loads a plugin from its entry point.
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args = ["-p", "tach"]
    else:
        args = ["-p", "pytest_tach"]
    r = run(*args, env=env)
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines([HEADER, "*UNDER-TACH True OTHER-PROCESS True*"])


def test_autoload_off_without_asking_loads_nothing(run: Callable[..., pytest.RunResult]) -> None:
    r = run(env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*UNDER-TACH False OTHER-PROCESS False*"])


def test_no_tach_keeps_it_from_loading(run: Callable[..., pytest.RunResult]) -> None:
    # pytest blocks pytest_tach too for -p no:tach: tach's options do not exist then
    r = run("-p", "no:tach", "--tach-workers", "2")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*unrecognized arguments: --tach-workers*"])
    # and it wins over -p tach, wherever each comes from
    r = run("-p", "tach", "-p", "no:tach")
    r.assert_outcomes(passed=2)
    r.stdout.fnmatch_lines(["*UNDER-TACH False OTHER-PROCESS False*"])


def test_a_tach_option_without_asking_is_a_usage_error(run: Callable[..., pytest.RunResult]) -> None:
    """Silently running without tach would not be what `--tach-workers 4` meant."""
    r = run("--tach-isolate", "none", "--tach-report")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["ERROR: --tach-isolate, --tach-report: tach is not turned on in this run; add -p tach*"])
    assert "Traceback" not in r.stderr.str()
