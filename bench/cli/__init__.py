"""Command line: parse, call one library function, print, return an exit code. Nothing else.

One module per area registers its commands on the shared app."""

from __future__ import annotations

import sys

from bench.cli import analysis, bisect, builds, diagnostics, history, measure, metal, site, store  # noqa: F401  (they register their commands)
from bench.cli.app import app
from bench.errors import PerfgateError


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except PerfgateError as exc:
        sys.stderr.write(f"error: {exc}\n")  # unwrapped: one greppable line per error
        sys.exit(exc.exit_code)
