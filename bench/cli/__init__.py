"""Command line: parse, call one library function, print, return an exit code. Nothing else.

One module per area registers its commands on the shared app."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from bench.cli import analysis, bisect, builds, diagnostics, history, measure, metal, site, store  # noqa: F401  (they register their commands)
from bench.cli.app import app
from bench.errors import PerfgateError


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except PerfgateError as exc:
        sys.stderr.write(f"error: {exc}\n")  # unwrapped: one greppable line per error
        sys.exit(exc.exit_code)


def run() -> NoReturn:
    """The `bench` command and `python -m bench`: main(), its output flushed, then the process ends without the
    interpreter's teardown. Unwinding every module and freeing what a command read (100,000 rows of a dashboard
    or a pooled comparison) cost 0.1–0.2 s after the work was done. Every file, store and worker pool is closed
    by the command's own `with` blocks before main() returns; an error that escapes main() (a traceback) takes
    Python's usual way out, and so does everything under a profiler or tracer (cProfile, coverage, a debugger),
    which writes what it saw after main() returns."""
    try:
        main()
        code = 0
    except SystemExit as exc:  # sys.exit's own meaning: None is 0, a number is the code, anything else is printed
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            sys.stderr.write(f"{exc.code}\n")
            code = 1
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (`bench results | head`): what it read was all it wanted
        code = code or 1
    os._exit(code)
