#!/usr/bin/env bash
# Create (or refresh) a virtual env for one interpreter with tach's test requirements
# and tach itself installed from this checkout, then print the env's python.
#
# Usage: build/venv.sh PYTHON [VENV_DIR [REQUIREMENTS]]
# REQUIREMENTS defaults to build/requirements-test.txt. VENV_DIR ("" for the default) is
# $TACH_CACHE/venv/<interpreter id>, outside the repository, or with other requirements
# $TACH_CACHE/venv/<interpreter id>-<directory of REQUIREMENTS>, e.g. cpython3.11-bench.
# The env is reused while it works and its requirements stamp matches; tach itself is
# reinstalled every time (it is what is being tested).
set -euo pipefail
py=$1
cache=${TACH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tach}
id=$("$py" -c 'import sys, sysconfig; v = sys.version_info; print(f"{sys.implementation.name}{v[0]}.{v[1]}" + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))')
root=$(cd "$(dirname "$0")/.." && pwd)
reqs=${3:-$root/build/requirements-test.txt}
if [ -n "${3:-}" ]; then id="$id-$(basename "$(dirname "$reqs")")"; fi
venv=${2:-$cache/venv/$id}
stamp="$venv/.tach-requirements.sha256"
want=$( (cat "$reqs"; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)

if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
	rm -rf "$venv"
	mkdir -p "$(dirname "$venv")"
	"$py" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	"$venv/bin/python" -m pip install -q --upgrade pip >&2
	"$venv/bin/python" -m pip install -q -r "$reqs" >&2
	echo "$want" >"$stamp"
fi
# The distribution was called tach before it became pytest-tach: an env made then still
# has that one (PyPI's unrelated tach is never in these envs).
if compgen -G "$venv/lib/python*/site-packages/tach-*.dist-info" >/dev/null; then
	"$venv/bin/python" -m pip uninstall -q -y tach >&2
fi
# --no-build-isolation: the backend needs nothing but the interpreter (tomli on 3.10,
# which the requirements file carries), and isolation would cost a fresh env per run.
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall "$root" >&2
echo "$venv/bin/python"
