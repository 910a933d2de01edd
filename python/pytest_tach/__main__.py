"""Command line: ``pytest-tach self-test [--json]`` (also ``python -m pytest_tach ...``).

Not ``tach``: that console script is PyPI's unrelated tach's."""

from __future__ import annotations

import argparse
import sys

import pytest_tach


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-tach",
        description="tach runs pytest suites through forked zygotes. Run tests with "
        "`pytest -p tach`; this command inspects the installation.",
    )
    parser.add_argument("--version", action="version", version=f"tach {pytest_tach.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "self-test",
        help="report the interpreter, Go runtime and kernel features tach uses; "
        "exit 1 if something the engine requires is missing",
    )
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "self-test":
        from pytest_tach import selftest

        return selftest.main(as_json=args.json)
    parser.error(f"unknown command {args.command!r}")  # exits 2


def _run() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # `pytest-tach self-test | head`: the reader left; that is not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    _run()
