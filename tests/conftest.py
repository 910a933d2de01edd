"""Shared helpers for tach's own test suite.

These tests run against the *installed* tach (make test installs it into a venv per
interpreter), never against python/ on sys.path, so that they test what users get.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: tests/wheels checks the release artifacts; `make wheels-check` builds them first and
#: names them in TACH_WHEELS.
collect_ignore = [] if os.environ.get("TACH_WHEELS") else ["wheels"]

REPO_ROOT = Path(__file__).resolve().parent.parent
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
#: The file suffix of tach's extensions built for this interpreter: the limited API's on
#: GIL builds, this version's own on free-threaded ones (docs/building.md).
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") if FREE_THREADED else ".abi3.so"

#: The interpreters that run every mode of the slow matrices (coverage parity, plugin
#: state): 3.11 (coverage.py's ctrace core) and 3.12 (its sysmon core); the others run
#: a part, so that `make test` on five interpreters stays well inside CI's time.
FULL_MATRIX = sys.version_info[:2] in ((3, 11), (3, 12))


def matrix(every: list[str], part: list[str]) -> list[str]:
    """Parameters for a slow matrix: every one on FULL_MATRIX interpreters, else part."""
    return every if FULL_MATRIX else part


#: plugins installed for their own parity cases that change every other pytest run: a
#: test that needs one is marked (marker -> plugin); the others run with -p no:<plugin>.
#: pytest-django gives every test an autouse fixture that uses monkeypatch, which stress
#: mode (like pytest-run-parallel) counts as thread-unsafe; pytest-xdist starts a thread
#: at startup (on free-threaded 3.13 that immortalizes the heap) and leaves sockets open.
OPTIONAL_PLUGINS = {"with_django": "django", "with_xdist": "xdist"}


def pytest_configure(config: pytest.Config) -> None:
    for marker, plugin in OPTIONAL_PLUGINS.items():
        config.addinivalue_line("markers", f"{marker}: the pytest runs this test starts load {plugin}")


@pytest.fixture(autouse=True)
def _without_optional_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    off = [f"-p no:{plugin}" for marker, plugin in OPTIONAL_PLUGINS.items()
           if request.node.get_closest_marker(marker) is None]
    if not off:
        return
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when set up
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join([os.environ.get("PYTEST_ADDOPTS", ""), *off]).strip())


requires_free_threading = pytest.mark.skipif(
    not FREE_THREADED, reason="needs a free-threaded CPython build (make test runs one)"
)


def run_python(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run this interpreter in a subprocess (a fresh process: a clean GIL state)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHON_GIL", None)  # tests must see the interpreter's default
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)


def installed_env(*drop: str) -> dict[str, str]:
    """This environment for a run of an installed tach: nothing that points into the
    checkout or changes how pytest and the interpreter start (and whatever `drop` names)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHON_GIL", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", *drop)}


def outcomes_by_test(junit_xml: os.PathLike[str] | str) -> dict[str, str]:
    """Per-test outcome from a junitxml file: passed, failed, error, skipped.

    A test with an error in teardown after a pass appears twice in junitxml (pytest
    records both); "error" wins, as in the terminal summary.
    """
    import xml.etree.ElementTree as ET

    out: dict[str, str] = {}
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
            kinds[0] if kinds else "", "passed")
        if "error" in kinds:
            outcome = "error"
        if out.get(name) == "error":
            continue
        out[name] = outcome
    return out


def run_both(pytester: pytest.Pytester, *args: str,
             tach_args: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Run the suite in pytester's dir under plain pytest and under tach; return the
    per-test outcomes of each."""
    plain = pytester.path / "plain.xml"
    tached = pytester.path / "tach.xml"
    # A run that hangs fails the test rather than the whole suite's CI job.
    pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--junitxml={plain}", *args, timeout=600)
    pytester.runpytest_subprocess("-p", "tach", "-p", "no:cacheprovider", f"--junitxml={tached}",
                                  *tach_args, *args, timeout=600)
    return outcomes_by_test(plain), outcomes_by_test(tached)


#: A conftest whose session, module and class fixtures say when they are set up and torn
#: down (in the tests' output): the engine's scope tests read it.
SCOPES = """
    import os, pytest
    LOG = os.path.join(os.path.dirname(__file__), "log.txt")
    def log(s):
        with open(LOG, "a") as f:
            f.write(s + "\\n")

    @pytest.fixture(scope="session")
    def sess():
        log("session-setup")
        yield [1, 2, 3]
        log("session-teardown")
"""
