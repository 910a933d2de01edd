# tach's developer entry points. Everything heavy (virtual envs, the free-threaded
# CPython build, Go's module and build caches) lives outside the repository, under
# $(TACH_CACHE) and Go's own caches, and is reused when present.
#
#   make demo        set up and run tach on the bundled example suite
#   make test        everything CI runs: Go checks, lint, pytest on this CPython, on every
#                    other CPython pyenv has (3.10, 3.12, 3.13 here) and on 3.13t; the
#                    release wheels installed without Go on each of them
#   make lint        ruff on the Python code, mypy --strict on the package (pyproject.toml)
#   make python-ft   build (or reuse) the free-threaded CPython
#   make wheels      the release: sdist + manylinux wheels (x86_64, aarch64), checked -> dist/
#   make dev         editable install into the env of $(PYTHON)
#   make ext         rebuild the Go extension in place (after `make dev`)
#   make bench       synthetic suites: tach vs pytest, xdist, forked, pytest-zygote; memory; coverage's cost -> docs/benchmarks.md
#   make parity      real projects' suites: tach vs plain pytest outcomes -> docs/parity.md
#   make soak        the same, each mode three times: flakes and whose they are -> docs/soak.md

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
GO ?= go
TACH_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tach
PYTEST_ARGS ?=
# The other CPythons the whole suite runs on (pyenv's; one per minor version, the one
# $(PYTHON) is skipped): coverage.py's sys.monitoring core needs 3.12+, and tach
# claims 3.10 to 3.13.
PYENV_ROOT ?= $(HOME)/.pyenv
MORE_PYTHONS ?= $(sort $(wildcard $(PYENV_ROOT)/versions/3.1[0-9].*/bin/python3))
# Never let a `go` command download another toolchain behind our back.
export GOTOOLCHAIN := local
export TACH_CACHE

.PHONY: test go-check lint py-test gauntlet py-test-more py-test-ft wheels wheels-check python-ft demo dev ext bench parity soak clean

test: go-check lint py-test gauntlet py-test-more py-test-ft wheels-check
	@echo "make test: all checks passed"

go-check:
	@unformatted=$$(gofmt -l go); if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files need formatting:"; echo "$$unformatted"; exit 1; fi
	inc=$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	export CGO_CFLAGS="-I$$inc"; \
	$(GO) vet ./... && $(GO) test -race ./...

lint:
	py=$$(build/venv.sh $(PYTHON)); \
	tools=$$(dirname "$$(build/venv.sh $(PYTHON) "" build/lint/requirements.txt)"); \
	$$tools/ruff check python tests bench build examples; \
	$$tools/mypy --python-executable "$$py"

py-test:
	py=$$(build/venv.sh $(PYTHON)); \
	echo "== pytest on $$($$py -c 'import sys; print(sys.version.split()[0])')"; \
	$$py -m pytest tests --ignore=tests/gauntlet $(PYTEST_ARGS)

# The gauntlet in full (every case, every mode, repeated) with both cores kept busy
# beside it: tach must hold under load, not only on an idle machine. The other
# interpreters run a part of it, unloaded, with the rest of the suite.
gauntlet:
	py=$$(build/venv.sh $(PYTHON)); \
	echo "== the gauntlet on $$($$py -c 'import sys; print(sys.version.split()[0])'), under load"; \
	TACH_GAUNTLET=full build/with-load.sh $$py -m pytest tests/gauntlet $(PYTEST_ARGS)

py-test-more:
	@mine=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); seen=" $$mine "; \
	for base in $(MORE_PYTHONS); do \
		v=$$($$base -c 'import sys; print("%d.%d" % sys.version_info[:2])') || continue; \
		case "$$seen" in *" $$v "*) continue;; esac; seen="$$seen$$v "; \
		py=$$(build/venv.sh $$base); \
		echo "== pytest on $$($$py -c 'import sys; print(sys.version.split()[0])')"; \
		$$py -m pytest tests $(PYTEST_ARGS) || exit 1; \
	done; \
	if [ "$$seen" = " $$mine " ]; then echo "py-test-more: no other CPython under $(PYENV_ROOT)/versions"; fi

python-ft:
	@build/python-ft.sh

# The release artifacts (build/release/wheels.py): the sdist and manylinux2014 wheels for
# x86_64 and aarch64 (abi3 for GIL CPython >= 3.10, cp313t), each checked by auditwheel,
# abi3audit, its ELF headers and twine. WHEELS_ARGS passes options, e.g. --arch x86_64.
WHEELS_DIR ?= dist
WHEELS_ARGS ?=
wheels:
	ft=$$(build/python-ft.sh); tools=$$(build/venv.sh $(PYTHON) "" build/release/requirements.txt); \
	$$tools build/release/wheels.py --ft-python $$ft --out $(WHEELS_DIR) $(WHEELS_ARGS)

# The same artifacts (kept under $(TACH_CACHE)/wheels while their inputs do not change),
# installed from the x86_64 wheels with no Go on PATH into fresh venvs of every CPython
# here, 3.13t included, and the aarch64 abi3 wheel run by Debian's arm64 CPython under
# qemu-user (build/release/emulated.py, kept in $(TACH_CACHE)/aarch64): tests/wheels.
wheels-check:
	ft=$$(build/python-ft.sh); tools=$$(build/venv.sh $(PYTHON) "" build/release/requirements.txt); \
	out=$(TACH_CACHE)/wheels/last; rm -rf $$out; \
	$$tools build/release/wheels.py --ft-python $$ft --out $$out --cache $(TACH_CACHE)/wheels; \
	emulated=$$($$tools build/release/emulated.py $(TACH_CACHE)/aarch64); \
	py=$$(build/venv.sh $(PYTHON)); \
	echo "== the wheels in fresh venvs of every CPython here, and the aarch64 one under qemu-user"; \
	TACH_WHEELS=$$out TACH_WHEEL_PYTHONS="$(PYTHON) $(MORE_PYTHONS) $$ft" TACH_EMULATED=$$emulated \
		$$py -m pytest tests/wheels $(PYTEST_ARGS)

py-test-ft:
	ft=$$(build/python-ft.sh); py=$$(build/venv.sh $$ft); \
	echo "== pytest on $$($$py -c 'import sys; print(sys.version.split()[0])') (free-threaded)"; \
	$$py -m pytest tests $(PYTEST_ARGS)

# The demo suite fails two tests on purpose (a segfault and a hang); the target checks
# that exactly that happened and everything else passed. -p no:timeout: the hang shows
# tach's own deadline (the env has pytest-timeout, for its parity cases); -p no:django:
# pytest-django's autouse fixture uses monkeypatch, which makes every test thread-unsafe.
demo:
	@py=$$(build/venv.sh $(PYTHON)); \
	$$py -m pytest_tach self-test; \
	echo; echo "== pytest -p tach examples/demo (2 workers; a segfault and a hang, contained)"; \
	out=$$(mktemp); rc=0; \
	$$py -m pytest -p tach --tach-workers 2 -p no:cacheprovider -p no:timeout -rf examples/demo $(PYTEST_ARGS) | tee $$out || rc=$$?; \
	if [ $$rc -ne 1 ] || ! grep -q "crashed while running 'examples/demo/test_crashes.py::test_segfault'" $$out \
		|| ! grep -q "Timeout (>2s) in 'examples/demo/test_crashes.py::test_hangs'" $$out \
		|| ! grep -q "2 failed, 11 passed" $$out; then \
		rm -f $$out; echo "make demo: unexpected result (exit $$rc)"; exit 1; fi; \
	rm -f $$out; echo; echo "make demo: as expected: 11 passed, the segfault and the hang contained"; \
	echo; echo "== pytest -p tach --tach-threads 4 --tach-iterations 10 examples/threads (stress mode finds a race)"; \
	out=$$(mktemp); rc=0; \
	$$py -m pytest -p tach --tach-threads 4 --tach-iterations 10 -p no:cacheprovider -p no:django -v examples/threads $(PYTEST_ARGS) | tee $$out || rc=$$?; \
	if [ $$rc -ne 1 ] || ! grep -q "the config was built" $$out || ! grep -q "1 failed, 1 passed" $$out; then \
		rm -f $$out; echo "make demo: unexpected result (exit $$rc)"; exit 1; fi; \
	rm -f $$out; echo; echo "make demo: as expected: the unlocked cache race was found, the locked version passed"

# Not part of `make test`: they download comparison tools and real projects and take
# long (tests/test_bench.py runs a small offline slice of both on every `make test`).
# BENCH_ARGS / PARITY_ARGS pass options through, e.g. PARITY_ARGS="--project attrs".
BENCH_ARGS ?=
PARITY_ARGS ?=
bench:
	py=$$(build/venv.sh $(PYTHON) "" bench/requirements.txt); \
	$$py bench/engine.py --out docs/benchmarks.md $(BENCH_ARGS); \
	$$py bench/memory.py --append docs/benchmarks.md; \
	$$py bench/ceiling.py --append docs/benchmarks.md; \
	$$py bench/coverage.py --append docs/benchmarks.md; \
	$$py bench/faults.py --append docs/benchmarks.md; \
	py312=$$(ls $(PYENV_ROOT)/versions/3.12.*/bin/python3 2>/dev/null | head -1); \
	if [ -n "$$py312" ]; then \
		COVERAGE_CORE=sysmon $$(build/venv.sh $$py312 "" bench/requirements.txt) bench/coverage.py --append docs/benchmarks.md; \
	else echo "bench: no CPython 3.12 under $(PYENV_ROOT): the sys.monitoring rows are left out"; fi; \
	ft=$$(build/python-ft.sh); ftpy=$$(build/venv.sh $$ft "" bench/requirements-ft.txt); \
	$$ftpy bench/threads.py --append docs/benchmarks.md

parity:
	$(PYTHON) bench/parity.py --out docs/parity.md $(PARITY_ARGS)

# The soak: every mode three times in a row; a test whose outcome changes is a flake.
soak:
	$(PYTHON) bench/parity.py --repeat 3 --no-coverage --out docs/soak.md $(PARITY_ARGS)

dev:
	$(PYTHON) -m pip install -e .

ext:
	$(PYTHON) -c 'import sys; sys.path.insert(0, "build"); import tach_build as b; b.build_extension(b.PKG_SRC)'

clean:
	rm -f python/pytest_tach/_core*.so python/pytest_tach/_core*.h python/pytest_tach/_reset*.so
	find . -name __pycache__ -prune -exec rm -rf {} +
