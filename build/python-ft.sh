#!/usr/bin/env bash
# Build a free-threaded CPython (--disable-gil) from Debian's source package into a
# cache directory outside the repository, and print the interpreter's path.
#
# Why Debian's source package: it is the only CPython source this workplace can reach
# (PyPI and the Debian archive are the only registries). We use the upstream
# .orig.tarball it ships, unpatched: Debian's patches adapt CPython to Debian's layout
# (multiarch, dist-packages), which a private --prefix install does not want.
#
# Reuse: an existing build is kept when its interpreter starts, reports
# Py_GIL_DISABLED, and imports the stdlib modules pip and our tests need. Anything else
# (absent, half-installed, broken) is rebuilt from scratch.
#
# Usage: build/python-ft.sh [SERIES ...]     (default: 3.14 3.13; first one that builds wins)
# Env:   TACH_CACHE   cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tach)
#        TACH_FT_JOBS make -j value (default: nproc)
set -euo pipefail

cache=${TACH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tach}
jobs=${TACH_FT_JOBS:-$(nproc)}
series_list=("$@")
[ ${#series_list[@]} -gt 0 ] || series_list=(3.14 3.13)

log() { printf 'python-ft: %s\n' "$*" >&2; }

# healthy PREFIX SERIES: the install under PREFIX is a usable free-threaded interpreter.
healthy() {
	local py="$1/bin/python$2t"
	[ -x "$py" ] || return 1
	"$py" -c '
import sys, sysconfig
assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not a free-threaded build"
import ssl, zlib, bz2, lzma, ctypes, sqlite3, ensurepip, venv  # what pip and tests use
' >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1
}

for series in "${series_list[@]}"; do
	prefix="$cache/python-ft/$series"
	if healthy "$prefix" "$series"; then
		echo "$prefix/bin/python${series}t"
		exit 0
	fi
done

# Build dependencies (Debian package names). Installing needs root; without it we
# name what is missing and stop rather than fail halfway through configure.
deps=(build-essential libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev
	libsqlite3-dev libreadline-dev uuid-dev xz-utils dpkg-dev)
missing=()
for d in "${deps[@]}"; do
	dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || missing+=("$d")
done
# Our own deb-src entry for the suites that carry CPython 3.13/3.14 sources (the
# machine's release may be older). Written once; apt ignores duplicate entries.
srcfile=/etc/apt/sources.list.d/tach-python-src.sources
need_update=0
if [ ! -e "$srcfile" ]; then
	[ "$(id -u)" = 0 ] || { log "cannot add a deb-src entry for trixie/sid without root"; exit 1; }
	cat >"$srcfile" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	need_update=1
fi
if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ] || ! apt-cache showsrc python3.13 >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || { log "missing build deps: ${missing[*]:-} (needs root to install)"; exit 1; }
	log "apt-get update"
	apt-get update -qq
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing build deps: ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tach-python-ft.XXXXXX")
trap 'rm -rf "$work"' EXIT

for series in "${series_list[@]}"; do
	pkg="python$series"
	# The source index lists versions the pool no longer (or not yet) holds: try newest first.
	versions=$(apt-cache showsrc "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | uniq)
	[ -n "$versions" ] || { log "$pkg: not in the source index"; continue; }
	for v in $versions; do
		log "$pkg=$v: downloading source"
		rm -rf "$work/dl" && mkdir -p "$work/dl"
		# apt-get verifies the checksums from the signed index.
		if ! (cd "$work/dl" && apt-get source --download-only -qq "$pkg=$v" >/dev/null 2>&1); then
			log "$pkg=$v: not downloadable, trying an older one"
			continue
		fi
		orig=$(ls "$work"/dl/*.orig.tar.* | grep -v '\.asc$' | head -n1)
		rm -rf "$work/src" && mkdir -p "$work/src"
		tar -xf "$orig" -C "$work/src" --strip-components=1
		prefix="$cache/python-ft/$series"
		staging="$prefix.building.$$"
		rm -rf "$staging"
		log "$pkg=$v: configure --disable-gil (log: $work/build.log)"
		start=$(date +%s)
		if ! (cd "$work/src" &&
			./configure --disable-gil --prefix="$prefix" --with-ensurepip=install >"$work/build.log" 2>&1 &&
			make -j"$jobs" >>"$work/build.log" 2>&1 &&
			make install DESTDIR="$staging" >>"$work/build.log" 2>&1); then
			tail -n 40 "$work/build.log" >&2
			log "$pkg=$v: build failed"
			rm -rf "$staging"
			continue 2
		fi
		# Installed with DESTDIR so a half-finished install never looks like a cache hit;
		# moved into place only when complete.
		rm -rf "$prefix"
		mkdir -p "$(dirname "$prefix")"
		mv "$staging$prefix" "$prefix"
		rm -rf "$staging"
		if healthy "$prefix" "$series"; then
			log "$pkg=$v: built in $(($(date +%s) - start)) s into $prefix"
			echo "$prefix/bin/python${series}t"
			exit 0
		fi
		log "$pkg=$v: installed but unhealthy"
	done
done
log "no free-threaded CPython could be built (tried: ${series_list[*]})"
exit 1
