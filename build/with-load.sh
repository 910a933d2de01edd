#!/usr/bin/env bash
# Run a command with every core kept busy beside it, as on a shared CI machine: N
# busy-looping processes (default: one per core) for as long as the command runs.
#
# Usage: build/with-load.sh [-n N] COMMAND [ARG ...]
set -euo pipefail
n=$(nproc)
if [ "${1:-}" = "-n" ]; then n=$2; shift 2; fi
hogs=()
cleanup() { if [ ${#hogs[@]} -gt 0 ]; then kill "${hogs[@]}" 2>/dev/null || true; fi; }
trap cleanup EXIT
for _ in $(seq 1 "$n"); do
	(trap - EXIT; while :; do :; done) &
	hogs+=($!)
done
echo "with-load: $n busy-looping processes beside: $*" >&2
"$@"
