"""Coverage parity: what coverage.py measures under tach equals what it measures in a
plain pytest run, file by file, line by line, arc by arc and context by context.

The corpus below runs code of the measured package in every place a run has: at
collection (main process), in session, package, module and class fixtures (zygotes),
in xunit setup_module, in tests (fresh and reused processes), in a thread a test
starts, in a subprocess ([run] patch = subprocess), in a parametrized session fixture,
in teardowns, in a module and a package imported only inside tests. Each place calls
a function of its own (PLACES), so losing any one place changes the data.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FREE_THREADED, matrix, run_python

coverage = pytest.importorskip("coverage")
pytest.importorskip("pytest_cov")

#: coverage.py's sys.monitoring core (PEP 669) exists on 3.12+.
HAS_SYSMON = sys.version_info >= (3, 12)


def _tracer_core() -> str:
    """A coverage.py core whose per-test contexts are complete: its C tracer, or the
    Python one where coverage.py has no C extension (free-threaded builds)."""
    try:
        from coverage.tracer import CTracer  # noqa: F401
    except ImportError:
        return "pytrace"
    return "ctrace"


TRACER_CORE = _tracer_core()

MYPKG = '''\
def at_import():
    return "collection"

COLLECTED = at_import()

def in_session_setup():
    return "session setup"

def in_session_teardown():
    return "session teardown"

def in_param(p):
    if p == 1:
        return "one"
    return "other"

def in_package_setup():
    return "package setup"

def in_module_setup():
    return "module setup"

def in_module_teardown():
    return "module teardown"

def in_class_setup():
    return "class setup"

def in_class_teardown():
    return "class teardown"

def in_xunit_setup_module():
    return "setup_module"

def in_test(n):
    if n > 0:
        return "positive"
    return "not positive"

def in_thread(box):
    box.append("thread")

def in_subprocess():
    return "subprocess"

def in_function_teardown():
    return "function teardown"

def never_called():
    return "never"
'''

LAZY = '''\
def in_lazy_module():
    return "lazy"

LOADED = "at import, inside a test"
'''

OTHERPKG = '''\
def in_other_package():
    return "imported only inside a test"
'''

UNUSED = '''\
def never_imported():
    return "unused"
'''

CONFTEST = '''\
import pytest
import mypkg

@pytest.fixture(scope="session")
def session_fixture():
    yield mypkg.in_session_setup()
    mypkg.in_session_teardown()

@pytest.fixture(scope="session", params=[1, 2])
def param(request):
    return mypkg.in_param(request.param)
'''

PKG_CONFTEST = '''\
import pytest
import mypkg

@pytest.fixture(scope="package")
def package_fixture():
    return mypkg.in_package_setup()
'''

TEST_IN_PKG = '''\
import mypkg

def test_in_package(package_fixture, session_fixture):
    assert mypkg.in_test(1) == "positive"

def test_in_package_too(package_fixture):
    assert mypkg.in_test(0) == "not positive"
'''

TEST_PLACES = '''\
import subprocess
import sys
import threading

import pytest
import mypkg

def setup_module(module):
    mypkg.in_xunit_setup_module()

@pytest.fixture(scope="module")
def module_fixture():
    yield mypkg.in_module_setup()
    mypkg.in_module_teardown()

@pytest.fixture
def function_fixture():
    yield
    mypkg.in_function_teardown()

def test_session_and_module(session_fixture, module_fixture):
    assert mypkg.in_test(5) == "positive"

def test_thread():
    box = []
    t = threading.Thread(target=mypkg.in_thread, args=(box,))
    t.start()
    t.join()
    assert box == ["thread"]

def test_subprocess():
    out = subprocess.run([sys.executable, "-c", "import mypkg; print(mypkg.in_subprocess())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "subprocess"

def test_lazy_imports():
    import mypkg.lazy
    import otherpkg
    assert mypkg.lazy.in_lazy_module() == "lazy"
    assert otherpkg.in_other_package()

def test_function_teardown(function_fixture, module_fixture):
    pass

def test_param(param):
    assert param in ("one", "other")

class TestClass:
    @pytest.fixture(scope="class")
    def class_fixture(self):
        yield mypkg.in_class_setup()
        mypkg.in_class_teardown()

    def test_one(self, class_fixture):
        assert mypkg.in_test(-1) == "not positive"

    def test_two(self, class_fixture):
        pass
'''

#: place -> the function of mypkg (or of the lazily imported modules) that runs there
PLACES = {
    "collection (main process)": "at_import",
    "session fixture setup (zygote)": "in_session_setup",
    "session fixture teardown": "in_session_teardown",
    "parametrized session fixture": "in_param",
    "package fixture setup": "in_package_setup",
    "module fixture setup": "in_module_setup",
    "module fixture teardown": "in_module_teardown",
    "class fixture setup": "in_class_setup",
    "class fixture teardown": "in_class_teardown",
    "xunit setup_module": "in_xunit_setup_module",
    "test body": "in_test",
    "thread started by a test": "in_thread",
    "subprocess started by a test": "in_subprocess",
    "function fixture teardown": "in_function_teardown",
}


def _patch_subprocess_supported() -> bool:
    major, minor = (int(x) for x in coverage.__version__.split(".")[:2])
    return (major, minor) >= (7, 10)


def make_project(root: Path, subprocess_patch: bool = True) -> Path:
    files = {
        "mypkg/__init__.py": MYPKG,
        "mypkg/lazy.py": LAZY,
        "otherpkg/__init__.py": OTHERPKG,
        "otherpkg/unused.py": UNUSED,
        "tests/conftest.py": CONFTEST,
        "tests/pkg/__init__.py": "",
        "tests/pkg/conftest.py": PKG_CONFTEST,
        "tests/pkg/test_in_pkg.py": TEST_IN_PKG,
        "tests/test_places.py": TEST_PLACES,
        "pytest.ini": "[pytest]\npythonpath = .\n",
    }
    rc = "[run]\n"
    if subprocess_patch and _patch_subprocess_supported():
        rc += "patch = subprocess\n"
    files[".coveragerc"] = rc
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def body_line(path: Path, func: str) -> int:
    """The line of func's first statement in the file at path."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return node.body[0].lineno
    raise LookupError(func)


def clean(root: Path) -> None:
    for p in root.glob(".coverage*"):
        if p.name != ".coveragerc":
            p.unlink()
    for d in ("htmlcov", "annotate"):
        shutil.rmtree(root / d, ignore_errors=True)


def run_in(root: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    env = {"PYTHONPATH": str(root), "PYTHONHASHSEED": "0", **(env or {})}
    return run_python(*args, cwd=root, env=env, timeout=300)


def pytest_run(root: Path, *args: str, tach: tuple[str, ...] | None = None,
               env: dict[str, str] | None = None, cache: bool = False) -> Any:
    """Run pytest in root (plain, or under tach with the given tach options)."""
    clean(root)
    extra = ("-p", "tach", *tach) if tach is not None else ()
    nocache = () if cache else ("-p", "no:cacheprovider")
    return run_in(root, "-m", "pytest", *nocache, *extra, *args, env=env)


def read_data(root: Path, data_file: str = ".coverage") -> dict[str, dict[str, Any]]:
    """Per measured file (relative): lines, arcs, contexts per line, file tracer."""
    from coverage import CoverageData

    data = CoverageData(str(root / data_file))
    data.read()
    out: dict[str, dict[str, Any]] = {}
    for f in data.measured_files():
        entry: dict[str, Any] = {"lines": sorted(data.lines(f) or [])}
        if data.has_arcs():
            entry["arcs"] = sorted(data.arcs(f) or [])
        entry["contexts"] = {n: sorted(c) for n, c in sorted(data.contexts_by_lineno(f).items())}
        entry["tracer"] = data.file_tracer(f)
        out[os.path.relpath(f, root)] = entry
    return out


def diff(plain: dict[str, Any], tached: dict[str, Any], contexts: bool = True) -> list[str]:
    """What differs, readably: a file measured by one run only; lines, arcs or a line's
    contexts that one run has and the other lacks."""
    out = []
    for f in sorted(set(plain) | set(tached)):
        if f not in tached:
            out.append(f"{f}: measured in the plain run only")
            continue
        if f not in plain:
            out.append(f"{f}: measured under tach only")
            continue
        a, b = plain[f], tached[f]
        for key in ("lines", "arcs"):
            sa, sb = set(map(tuple, a.get(key) or [])) if key == "arcs" else set(a.get(key) or []), \
                set(map(tuple, b.get(key) or [])) if key == "arcs" else set(b.get(key) or [])
            if sa - sb:
                out.append(f"{f}: {key} missing under tach: {sorted(sa - sb)}")
            if sb - sa:
                out.append(f"{f}: {key} only under tach: {sorted(sb - sa)}")
        if contexts:
            for n in sorted(set(a["contexts"]) | set(b["contexts"])):
                ca, cb = a["contexts"].get(n, []), b["contexts"].get(n, [])
                if ca != cb:
                    out.append(f"{f}:{n}: contexts plain {ca} tach {cb}")
        if a["tracer"] != b["tracer"]:
            out.append(f"{f}: file tracer plain {a['tracer']!r} tach {b['tracer']!r}")
    return out


COV_ARGS = ("--cov=mypkg", "--cov=otherpkg", "--cov-report=", "tests")

#: tach configurations the corpus runs under (id -> tach options)
TACH_MODES = {
    "test-snapshot": ("--tach-isolate", "test", "--tach-reset", "auto", "--tach-workers", "2"),
    "test-fork": ("--tach-isolate", "test", "--tach-reset", "fork", "--tach-workers", "2"),
    "module": ("--tach-isolate", "module", "--tach-workers", "2"),
    "none": ("--tach-isolate", "none", "--tach-workers", "2"),
    "one-worker": ("--tach-isolate", "test", "--tach-workers", "1"),
    "stress": ("--tach-threads", "2", "--tach-iterations", "2", "--tach-workers", "1"),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("covproject"))


@pytest.fixture(scope="module")
def plain_branch_contexts(project: Path) -> dict[str, Any]:
    r = pytest_run(project, "--cov-branch", "--cov-context=test", *COV_ARGS)
    assert r.returncode == 0, r.stdout + r.stderr
    return read_data(project)


def test_the_corpus_runs_every_place_in_a_plain_run(project: Path, plain_branch_contexts: dict[str, Any]) -> None:
    """The parity tests below mean something only if the plain run reaches every place."""
    lines = plain_branch_contexts["mypkg/__init__.py"]["lines"]
    for place, func in PLACES.items():
        if func == "in_subprocess" and not _patch_subprocess_supported():
            continue
        assert body_line(project / "mypkg/__init__.py", func) in lines, place
    assert "otherpkg/unused.py" in plain_branch_contexts  # reported as never run


#: every mode on 3.11, 3.12 and the free-threaded build; elsewhere two (conftest.matrix)
MODES_HERE = list(TACH_MODES) if FREE_THREADED else matrix(list(TACH_MODES), ["test-snapshot", "none"])


@pytest.mark.parametrize("mode", MODES_HERE)
def test_pytest_cov_data_identical_to_plain(project: Path, plain_branch_contexts: dict[str, Any], mode: str) -> None:
    """--cov-branch --cov-context=test: lines, arcs and per-line test contexts."""
    r = pytest_run(project, "--cov-branch", "--cov-context=test", *COV_ARGS, tach=TACH_MODES[mode])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    # Stress mode runs each body in two threads twice; same lines, same contexts.
    assert (d := diff(plain_branch_contexts, read_data(project))) == [], "\n".join(d)


def test_losing_the_forked_processes_data_is_caught(project: Path) -> None:
    """Without tach's coverage bridge every place but collection is lost, and the
    comparison says which lines: it would catch any single place lost. (Without
    contexts: pytest-cov's context switches make forked processes write data files of
    their own, which saves part of it.)"""
    r = pytest_run(project, "--cov-branch", *COV_ARGS)
    assert r.returncode == 0, r.stdout + r.stderr
    plain = read_data(project)
    r = pytest_run(project, "--cov-branch", *COV_ARGS, tach=("-p", "no:tach-coverage", "--tach-workers", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    lost = diff(plain, read_data(project))
    mypkg = project / "mypkg/__init__.py"
    missing = next((d for d in lost if d.startswith("mypkg/__init__.py: lines missing")), "")
    for place, func in PLACES.items():
        if func in ("at_import", "in_subprocess"):
            continue  # the main process and the subprocess write their own data
        assert str(body_line(mypkg, func)) in re.findall(r"\d+", missing), place


@pytest.mark.parametrize("mode", ["test-snapshot", "none"])
def test_coverage_run_identical_to_plain(project: Path, mode: str) -> None:
    """`coverage run -m pytest -p tach`, then `coverage combine --append` for the
    subprocess's data file, against the same without tach."""
    def measure(*tach: str) -> dict[str, Any]:
        clean(project)
        r = run_in(project, "-m", "coverage", "run", "--branch", "--source=mypkg,otherpkg", "-m", "pytest",
                   "-p", "no:cacheprovider", *tach, "tests")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_in(project, "-m", "coverage", "combine", "--append")
        assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: nothing to combine (old coverage.py)
        return read_data(project)

    plain = measure()
    assert diff(plain, measure("-p", "tach", *TACH_MODES[mode])) == []


def test_coverage_dynamic_context_test_function(project: Path, tmp_path: Path) -> None:
    """coverage.py's own per-test contexts ([run] dynamic_context = test_function),
    under `coverage run`: decided by the tracer from the frames, in every process."""
    rc = tmp_path / "rc"
    rc.write_text("[run]\nbranch = true\ndynamic_context = test_function\nsource = mypkg,otherpkg\n")

    def measure(*tach: str) -> dict[str, Any]:
        clean(project)
        r = run_in(project, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest", "-p", "no:cacheprovider",
                   *tach, "tests")
        assert r.returncode == 0, r.stdout + r.stderr
        return read_data(project)

    plain = measure()
    assert any(len(c) > 1 for c in plain["mypkg/__init__.py"]["contexts"].values())
    for mode in ("test-snapshot", "module"):
        assert (d := diff(plain, measure("-p", "tach", *TACH_MODES[mode]))) == [], mode + ":\n" + "\n".join(d)


def test_coverage_run_parallel_mode_and_combine(project: Path) -> None:
    def measure(*tach: str) -> dict[str, Any]:
        clean(project)
        r = run_in(project, "-m", "coverage", "run", "--parallel-mode", "--source=mypkg,otherpkg", "-m", "pytest",
                   "-p", "no:cacheprovider", *tach, "tests")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_in(project, "-m", "coverage", "combine")
        assert r.returncode == 0, r.stdout + r.stderr
        return read_data(project)

    plain = measure()
    assert diff(plain, measure("-p", "tach", "--tach-workers", "2")) == []


@pytest.mark.skipif(not HAS_SYSMON, reason="coverage.py's sys.monitoring core needs Python 3.12+")
@pytest.mark.parametrize("mode", matrix(["test-snapshot", "test-fork", "module", "none"], ["test-snapshot"]))
def test_sysmon_core_identical_to_plain(project: Path, mode: str) -> None:
    """COVERAGE_CORE=sysmon (PEP 669): its callbacks disable themselves once a line has
    run, and forked processes inherit that; what each process runs first is still
    recorded by it. Lines only: before 3.14 coverage.py measures branches with ctrace."""
    env = {"COVERAGE_CORE": "sysmon"}
    probe = run_in(project, "-c", "import coverage; c = coverage.Coverage(); c.start(); "
                   "print(c._collector.tracer_name()); c.stop()", env=env)
    assert probe.stdout.strip() == "SysMonitor", probe.stdout + probe.stderr
    r = pytest_run(project, *COV_ARGS, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    plain = read_data(project)
    r = pytest_run(project, *COV_ARGS, tach=TACH_MODES[mode], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d := diff(plain, read_data(project), contexts=False)) == [], "\n".join(d)


@pytest.mark.skipif(not HAS_SYSMON, reason="coverage.py's sys.monitoring core needs Python 3.12+")
def test_sysmon_core_gets_complete_test_contexts(project: Path) -> None:
    """On the sysmon core a plain run's --cov-context=test is incomplete (coverage.py
    warns: a line is recorded once, by the first test that runs it). Under tach each
    test's lines are labelled with it: the same as the ctrace core in a plain run."""
    r = pytest_run(project, "--cov-context=test", *COV_ARGS, env={"COVERAGE_CORE": TRACER_CORE})
    assert r.returncode == 0, r.stdout + r.stderr
    complete = read_data(project)
    sysmon = {"COVERAGE_CORE": "sysmon"}
    r = pytest_run(project, "--cov-context=test", *COV_ARGS, env=sysmon)
    assert r.returncode == 0 and "no-sysmon-context" in r.stdout + r.stderr
    assert diff(complete, read_data(project)) != []  # why this test exists
    for mode in ("test-snapshot", "none"):
        r = pytest_run(project, "--cov-context=test", *COV_ARGS, tach=TACH_MODES[mode], env=sysmon)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "no-sysmon-context" not in r.stdout + r.stderr
        assert (d := diff(complete, read_data(project))) == [], mode + ":\n" + "\n".join(d)


def _report_files(root: Path) -> dict[str, str]:
    """The reports pytest-cov wrote, with what legitimately differs between two runs
    (timestamps, versions in headers) taken out."""
    out = {}
    for name in ("coverage.xml", "coverage.json", "coverage.lcov"):
        text = (root / name).read_text()
        if name.endswith(".json"):
            doc = json.loads(text)
            doc.pop("meta", None)
            text = json.dumps(doc, sort_keys=True)
        text = re.sub(r'timestamp="\d+"', "", text)
        out[name] = text
    index = (root / "htmlcov" / "index.html").read_text()
    out["htmlcov totals"] = " ".join(re.findall(r'class="pc_cov">([\d.]+%)<', index))
    for path in sorted((root / "annotate").glob("*,cover")):
        out[f"annotate/{path.name}"] = path.read_text()
    return out


def _term_report(stdout: str) -> str:
    m = re.search(r"^_+ coverage: .*?$(.*?)^(?:=+|Coverage (?:HTML|XML|JSON|LCOV|annotated))", stdout, re.M | re.S)
    return m.group(1).strip() if m else ""


def test_every_report_format_matches(project: Path) -> None:
    args = ("--cov-branch", "--cov=mypkg", "--cov=otherpkg", "--cov-report=term-missing", "--cov-report=html",
            "--cov-report=xml", "--cov-report=json", "--cov-report=lcov", "--cov-report=annotate:annotate",
            "tests")
    plain = pytest_run(project, *args)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    plain_files, plain_term = _report_files(project), _term_report(plain.stdout)
    tached = pytest_run(project, *args, tach=TACH_MODES["test-snapshot"])
    assert tached.returncode == 0, tached.stdout + tached.stderr
    assert plain_term and _term_report(tached.stdout) == plain_term
    assert _report_files(project) == plain_files


def _total(stdout: str) -> float:
    m = re.search(r"^TOTAL\s.*?(\d+(?:\.\d+)?)%\s*$", stdout, re.M)
    assert m, stdout
    return float(m.group(1))


def test_fail_under_gives_the_same_exit_code(project: Path) -> None:
    """A threshold between what the main process alone measures and the real total:
    plain passes it; tach must too (it failed before the bridge)."""
    plain = pytest_run(project, *COV_ARGS[:-2], "--cov-report=term", "tests")
    total = _total(plain.stdout)
    for threshold, code in ((total - 1, 0), (total + 1, 1)):
        args = (*COV_ARGS[:-2], "--cov-report=term", f"--cov-fail-under={threshold:g}", "tests")
        assert pytest_run(project, *args).returncode == code
        tached = pytest_run(project, *args, tach=TACH_MODES["test-snapshot"])
        assert tached.returncode == code, tached.stdout
        assert _total(tached.stdout) == total


def test_append_config_and_no_cov_on_fail(project: Path, tmp_path: Path) -> None:
    # --cov-config: a config file elsewhere; --cov-append: two runs add up.
    rc = tmp_path / "covrc"
    rc.write_text("[run]\nbranch = true\n[report]\nshow_missing = true\n")
    first = ("--cov=mypkg", f"--cov-config={rc}", "--cov-report=", "tests/pkg")
    second = ("--cov=mypkg", f"--cov-config={rc}", "--cov-append", "--cov-report=", "tests/test_places.py::TestClass")

    def both(*tach: str) -> dict[str, Any]:
        clean(project)
        for args in (first, second):
            extra = ("-p", "tach", *tach) if tach else ()
            r = run_in(project, "-m", "pytest", "-p", "no:cacheprovider", *extra, *args)
            assert r.returncode == 0, r.stdout + r.stderr
        return read_data(project)

    plain = both()
    assert "arcs" in plain["mypkg/__init__.py"]
    assert diff(plain, both("--tach-workers", "2")) == []

    # --no-cov-on-fail: a failing test, no report, in both.
    failing = project / "tests" / "test_zfail.py"
    failing.write_text("import mypkg\n\ndef test_fails():\n    assert mypkg.in_test(1) == 'no'\n")
    try:
        for tach in (None, TACH_MODES["none"]):
            r = pytest_run(project, "--cov=mypkg", "--no-cov-on-fail", "--cov-report=term", "tests",
                           tach=tach)
            assert r.returncode == 1
            assert "TOTAL" not in r.stdout
    finally:
        failing.unlink()


@pytest.mark.skipif(FREE_THREADED, reason="ctrace and sysmon are covered; one interpreter suffices")
def test_a_test_that_crashes_keeps_what_earlier_tests_handed_over(tmp_path: Path) -> None:
    """A test process that dies loses only what its own test ran: each test hands over
    when it ends, so the tests before it, in the same reused process, are counted."""
    make_project(tmp_path, subprocess_patch=False)
    (tmp_path / "tests" / "test_crash.py").write_text(
        "import os\nimport mypkg\n\n"
        "def test_a():\n    mypkg.in_thread([])\n\n"
        "def test_b():\n    mypkg.in_function_teardown()\n    os._exit(3)\n")
    r = pytest_run(tmp_path, "--cov=mypkg", "--cov-report=", "tests/test_crash.py",
                   tach=("--tach-isolate", "none", "--tach-workers", "1"))
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout
    lines = read_data(tmp_path)["mypkg/__init__.py"]["lines"]
    mypkg = tmp_path / "mypkg/__init__.py"
    assert body_line(mypkg, "in_thread") in lines
    assert body_line(mypkg, "in_function_teardown") not in lines  # the crashed test's own


# -- tach's own collector (--tach-coverage, sys.monitoring) --------------------------

requires_sysmon = pytest.mark.skipif(not HAS_SYSMON, reason="sys.monitoring needs Python 3.12+")


@pytest.fixture(scope="module")
def lines_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus without coverage.py's subprocess patch: tach's collector measures the
    run's own processes only, as a plain pytest-cov run without it does."""
    return make_project(tmp_path_factory.mktemp("linesproject"), subprocess_patch=False)


@pytest.fixture(scope="module")
def plain_test_contexts(lines_project: Path) -> dict[str, Any]:
    """What pytest-cov's ctrace core records with --cov=. --cov-context=test."""
    r = pytest_run(lines_project, "--cov=.", "--cov-context=test", "--cov-report=", "tests",
                   env={"COVERAGE_CORE": TRACER_CORE})
    assert r.returncode == 0, r.stdout + r.stderr
    data = read_data(lines_project)
    for entry in data.values():
        entry.pop("arcs", None)
    return data


@requires_sysmon
@pytest.mark.parametrize("mode", [*MODES_HERE, "in-process"])
def test_tach_collector_records_what_pytest_cov_contexts_record(
        lines_project: Path, plain_test_contexts: dict[str, Any], mode: str) -> None:
    """--tach-coverage-data: the same lines, and per line the same tests and phases, as
    pytest-cov's --cov-context=test in a plain run (collection under the empty
    context, zygote fixture setup under the first test that needs it)."""
    tach = ("--tach-workers", "0") if mode == "in-process" else TACH_MODES[mode]
    r = pytest_run(lines_project, "--tach-coverage-data=tach.cov", "tests", tach=tach)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d := diff(plain_test_contexts, read_data(lines_project, "tach.cov"))) == [], "\n".join(d)


@requires_sysmon
def test_tach_collector_keeps_each_tests_lines_in_the_cache(lines_project: Path) -> None:
    r = pytest_run(lines_project, "--tach-coverage", "tests/test_places.py", tach=(), cache=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tach coverage: the lines of 9 tests, in " in r.stdout
    doc = json.loads((lines_project / ".pytest_cache" / "d" / "tach-coverage" / "lines.json").read_text())
    files = [f["path"] for f in doc["files"]]
    assert all(f["sha1"] for f in doc["files"])

    def ran(nodeid: str, phase: str, path: str) -> set[int]:
        got = doc["tests"][nodeid][phase].get(str(files.index(path)), [])
        return set(got)

    mypkg = lines_project / "mypkg/__init__.py"
    lazy = "tests/test_places.py::test_lazy_imports"
    assert ran(lazy, "run", "mypkg/lazy.py") == {1, 4, 2}  # a module imported inside the test
    assert body_line(mypkg, "in_test") in ran("tests/test_places.py::TestClass::test_one", "run", "mypkg/__init__.py")
    assert body_line(mypkg, "in_test") not in ran(lazy, "run", "mypkg/__init__.py")
    # each test's own lines, however many tests ran them before in the same process
    assert body_line(mypkg, "in_test") in ran("tests/test_places.py::test_session_and_module", "run",
                                              "mypkg/__init__.py")
    assert body_line(mypkg, "at_import") in set(doc["collection"][str(files.index("mypkg/__init__.py"))])
    shutil.rmtree(lines_project / ".pytest_cache")


@requires_sysmon
def test_tach_collector_beside_pytest_cov(lines_project: Path, plain_test_contexts: dict[str, Any]) -> None:
    """Both at once, on coverage.py's sysmon core too: separate tool ids, each its own
    data, neither counted twice."""
    for core in (TRACER_CORE, "sysmon"):
        r = pytest_run(lines_project, "--cov=.", "--cov-context=test", "--cov-report=", "--tach-coverage-data=tach.cov",
                       "tests", tach=TACH_MODES["test-snapshot"], env={"COVERAGE_CORE": core})
        assert r.returncode == 0, r.stdout + r.stderr
        theirs = read_data(lines_project)
        for entry in theirs.values():
            entry.pop("arcs", None)
        assert (d := diff(plain_test_contexts, theirs)) == [], core + ":\n" + "\n".join(d)
        assert (d := diff(plain_test_contexts, read_data(lines_project, "tach.cov"))) == [], core + ":\n" + "\n".join(d)
    r = pytest_run(lines_project, "--cov=.", "--tach-coverage-data=.coverage", "tests", tach=())
    assert r.returncode == 4 and "writes that file in this run" in r.stderr


@pytest.mark.skipif(HAS_SYSMON, reason="what 3.10 and 3.11 say")
def test_tach_collector_needs_312(lines_project: Path) -> None:
    r = pytest_run(lines_project, "--tach-coverage", "tests", tach=())
    assert r.returncode == 4
    assert "--tach-coverage: needs CPython 3.12+ (sys.monitoring)" in r.stderr
    assert "Traceback" not in r.stderr


GARBAGE_PKG = '''\
def suspended():
    try:
        yield "started"
    finally:
        finalized()

def finalized():
    return "collected"

def suspended_long():
    try:
        yield "started"
    finally:
        finalized_old()

def finalized_old():
    return "collected in the oldest generation"
'''

GARBAGE_TESTS = '''\
import gc
import gcpkg

class Holder:
    pass

def test_leaves_a_generator_in_a_reference_cycle():
    h = Holder()
    h.me = h
    h.gen = gcpkg.suspended()
    assert next(h.gen) == "started"

def test_leaves_an_old_generator_in_a_reference_cycle():
    h = Holder()
    h.me = h
    h.gen = gcpkg.suspended_long()
    assert next(h.gen) == "started"
    gc.collect(1)  # alive: moved to the oldest generation, which a young collection skips
    del h

def test_zz_a_later_collection():
    gc.collect()  # in a plain run: the generators above are closed here
'''


@pytest.mark.parametrize("mode", ["test-snapshot", "test-fork", "none"])
def test_garbage_a_test_leaves_is_finalized_and_measured(tmp_path: Path, mode: str) -> None:
    """A generator a test leaves suspended in a reference cycle is closed by a later
    garbage collection in a plain run, and coverage.py records its finally clause and
    exit arc. A tach test process ends (or is restored) after its test, before any
    later collection: it collects first (also what reached the oldest generation)."""
    (tmp_path / "gcpkg").mkdir()
    (tmp_path / "gcpkg/__init__.py").write_text(GARBAGE_PKG)
    (tmp_path / "test_gc.py").write_text(GARBAGE_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\npythonpath = .\n")
    args = ("--cov=gcpkg", "--cov-branch", "--cov-report=", "test_gc.py")
    r = pytest_run(tmp_path, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    plain = read_data(tmp_path)
    for body in ("finalized", "finalized_old"):
        assert body_line(tmp_path / "gcpkg/__init__.py", body) in plain["gcpkg/__init__.py"]["lines"]
    r = pytest_run(tmp_path, *args, tach=TACH_MODES[mode])
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d := diff(plain, read_data(tmp_path), contexts=False)) == [], "\n".join(d)


class _Disposition:
    def __init__(self, trace: bool) -> None:
        self.trace = trace


def test_files_decided_in_a_zygote_are_only_the_unmeasured_ones(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The zygote decides, once for all the processes it forks, whether coverage.py
    measures each imported module's file, by that module's namespace; it keeps only the
    files not measured (deciding to measure a source package's file has a side effect
    that belongs to the process running it) and leaves files two modules share open."""
    from pytest_tach import covbridge

    def module(name: str, filename: str) -> Any:
        mod = type(sys)(name)
        mod.__file__ = filename
        return mod

    for name, filename in [("warm_skipped", "/lib/skipped.py"), ("warm_measured", "/src/pkg/m.py"),
                           ("warm_matched", "/lib/pkg2/__init__.py"), ("warm_twin_a", "/lib/twin.py"),
                           ("warm_twin_b", "/lib/twin.py"), ("warm_cached", "/lib/cached.py")]:
        monkeypatch.setitem(sys.modules, name, module(name, filename))

    class Lazy:  # as Django's settings before configure(): any lookup raises
        def __getattr__(self, attr: str) -> Any:
            raise RuntimeError(f"looked up {attr}")

        @property  # type: ignore[misc]
        def __class__(self) -> Any:
            raise RuntimeError("looked up __class__")

    class LazyModule(type(sys)):  # type: ignore[misc]  # as importlib's LazyLoader's
        def __getattribute__(self, attr: str) -> Any:
            raise RuntimeError(f"loaded for {attr}")

    sys.modules["warm_skipped"].settings = Lazy()
    monkeypatch.setitem(sys.modules, "warm_lazy", LazyModule("warm_lazy"))
    unmatched = ["pkg2"]
    asked: list[tuple[str, Any]] = []

    def decide(filename: str, frame: Any) -> _Disposition:
        asked.append((filename, frame.f_globals["__name__"]))
        if filename == "/lib/pkg2/__init__.py":
            unmatched.remove("pkg2")  # what coverage.py does when a source package matches
        return _Disposition(trace=filename.startswith("/src/"))

    cached = _Disposition(trace=False)
    collector = type("Collector", (), {})()
    collector.should_trace_cache = {"/lib/cached.py": cached}
    collector.should_trace = decide
    cov = type("Cov", (), {})()
    cov._collector = collector
    cov._inorout = type("InOrOut", (), {"source_pkgs_unmatched": unmatched})()

    ours = {name for name in sys.modules if name.startswith("warm_")}
    done = covbridge._warm(cov, set(sys.modules) - ours)  # decided already: all but ours
    cache = collector.should_trace_cache
    assert set(cache) == {"/lib/skipped.py", "/lib/cached.py"}
    assert cache["/lib/cached.py"] is cached
    assert ("/lib/skipped.py", "warm_skipped") in asked and ("/src/pkg/m.py", "warm_measured") in asked
    assert not any(f in ("/lib/twin.py", "/lib/cached.py") for f, _ in asked)
    assert unmatched == ["pkg2"]
    assert ours <= done
    asked.clear()
    covbridge._warm(cov, done)  # a zygote forked below: nothing decided twice
    assert asked == []
