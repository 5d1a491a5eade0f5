"""The command line's start-up: `--help`, `--version` and `classify-log` import nothing heavy."""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
from pathlib import Path

import pytest

from bench import __version__
from tests.conftest import REPO

LOG = REPO / "tests" / "logs" / "context_failed" / "lmstudio-context-init.log"
# what only the commands that read the store, judge or draw need
HEAVY = ("pandas", "sqlalchemy", "alembic", "plotly", "scipy", "numpy", "jinja2", "matplotlib", "gguf", "yaml")
HEAVY_BENCH = (
    "bench.store",
    "bench.report.site",
    "bench.config",
    "bench.report.render",
    "bench.analysis.compare",
    "bench.analysis.gate",
)


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -m bench ARGS` in a fresh interpreter; the modules it imported, from -X importtime."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    } - {"package"}  # the header line: "import time: self [us] | cumulative | imported package"
    assert "bench.cli" in modules, proc.stderr[-2000:]  # the parse saw the real entry point
    return proc, modules


def heavy_in(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY_BENCH)}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("compare", "--help"), ("gate", "--help"), ("classify-log", str(LOG))],
    ids=["help", "version", "compare-help", "gate-help", "classify-log"],
)
def test_start_up_imports_no_heavy_library(args: tuple[str, ...]) -> None:
    proc, modules = imported_by(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert heavy_in(modules) == set()


def test_help_does_not_import_rich_or_pydantic() -> None:
    # rich's help panels cost ~0.1 s a call (rich_markup_mode=None); pydantic is Typer's for running a command
    proc, modules = imported_by("--help")
    assert "Commands:" in proc.stdout and "classify-log" in proc.stdout
    assert {m for m in modules if m.split(".")[0] in ("rich", "pydantic")} == set()


def test_version_prints_the_package_version() -> None:
    proc, _ = imported_by("--version")
    assert (proc.returncode, proc.stdout) == (0, f"perfgate {__version__}\n")


def test_a_command_that_needs_a_heavy_library_still_gets_it() -> None:
    """The lazy imports moved, they did not vanish: a store command imports the store and answers."""
    proc, modules = imported_by("runs", "--db", "sqlite:////nonexistent/dir/x.sqlite")
    assert "bench.store.db" in modules and "sqlalchemy" in modules
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors


def test_reading_a_config_imports_neither_numpy_nor_gguf() -> None:
    """A config names synthetic shapes and quants (bench.shapes); checking them needs no GGUF writer."""
    code = "import sys, bench.config; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'gguf'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _small_store(tmp_path: Path) -> str:
    """A store of 2 nights × 2 builds × 3 models (benchmarks.dashboard_scale's fill, in a process of its own)."""
    db = f"sqlite:///{tmp_path / 's.sqlite'}"
    code = "from benchmarks.dashboard_scale import fill; import sys; fill(sys.argv[1], 2, 2, 3)"
    subprocess.run([sys.executable, "-c", code, db], cwd=REPO, check=True, timeout=120)
    return db


def test_the_process_ends_with_mains_exit_code_and_all_its_output(tmp_path: Path) -> None:
    """bench.cli.run ends the process without the interpreter's teardown: what was printed still arrives whole
    through a pipe, and each way out keeps its code (0, a usage error's 2, a config error's 2 with one line)."""
    db = _small_store(tmp_path)

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    listed = bench("results", "--all", "--format", "json", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2 * 2 * 3  # the whole document, flushed before the process ended
    usage = bench("compare", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr
    refused = bench("compare", "--baseline", "build-0", "--candidate", "build-0", "--db", db)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    # under a profiler the process ends Python's usual way, so the profile is written after main() returns
    profile = tmp_path / "results.prof"
    profiled = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bench", "results", "--all", "--db", db],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert profiled.returncode == 0, profiled.stderr
    assert pstats.Stats(str(profile)).total_calls > 0


def test_machine_readable_output_does_not_import_rich(tmp_path: Path) -> None:
    # rich draws the terminal's tables only (13 ms of every read command that imported it)
    db = _small_store(tmp_path)
    compare = ("compare", "--baseline", "build-0", "--candidate", "build-1")
    for args in (("results", "--format", "json"), (*compare, "--format", "json")):
        proc, modules = imported_by(*args, "--db", db)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert not {m for m in modules if m.split(".")[0] == "rich"}, args
    proc, modules = imported_by("results", "--db", db)  # the table does
    assert proc.returncode == 0 and "rich.table" in modules
