"""Benchmark (not a test): the store at scale, SQLite and PostgreSQL side by side.

A runner's SQLite file holds 1,000 nightly runs × 4 builds × 25 models = 100,000 results with 5+5 samples
each (1,000,000 sample rows), filled in bulk through the real schema (benchmarks/dashboard_scale.py).

- ingestion: those 100,000 results pushed into a fresh store of each backend by `bench push`'s code
  (bench.store.transfer.copy_runs: one transaction per run), and the runner's own write path
  (record_result: one committed transaction per result, as `bench run` writes) timed on 1,000 results;
- compare: the real `bench compare` console script over each store of 1,000,000 sample rows (wall time,
  process start included; goal ≤ 2 s), and the compare() call inside it: two runs (BUILD@RUN), and two
  builds (BUILD: compare pools every run of the same build identity, here all 1,000).

The PostgreSQL server is a throwaway one (tests/pg_server.py: fsync off), so its commit costs are below a
durable server's; SQLite runs with its defaults (WAL).

    .venv/bin/python benchmarks/store_scale.py [--runs 1000] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.analysis.compare import compare
from bench.machine import collect
from bench.store.db import open_store, upgrade_store
from bench.store.models import Build, Model, Result
from bench.store.queries import sample_count
from bench.store.records import Figures, Measurement, record_result, start_run, upsert_machine
from bench.store.transfer import copy_runs
from benchmarks.dashboard_scale import fill
from tests.pg_server import pg_server

BENCH = str(Path(sys.executable).with_name("bench"))
WRITE_PATH_RESULTS = 1000


def _counts(url: str) -> tuple[int, int]:
    with open_store(url) as store, store.session() as session:
        results = session.scalar(select(func.count()).select_from(Result)) or 0
        samples = sample_count(session)
    return int(results), int(samples)


def time_push(local: str, central: str) -> float:
    with open_store(local) as src, open_store(central) as dst:
        t0 = time.perf_counter()
        report = copy_runs(src, dst)
        seconds = time.perf_counter() - t0
    assert not report.already and report.results > 0
    return seconds


def time_write_path(url: str, n: int) -> float:
    """`n` results through record_result, one commit each: 5+5 samples, 25 models per run."""
    with open_store(url) as store, store.session() as session:
        machine = upsert_machine(session, collect())
        build_id = session.scalars(select(Build.id).order_by(Build.id)).first()
        model_ids = list(session.scalars(select(Model.id).order_by(Model.id)))
        assert build_id is not None and model_ids
        t0 = time.perf_counter()
        run = start_run(session, machine, {"benchmark": "write path"})
        for i in range(n):
            if i and i % len(model_ids) == 0:
                run = start_run(session, machine, {"benchmark": "write path"})
            m = Measurement(
                "ok",
                "",
                512,
                128,
                samples_pp_ns=[250_000_000 + k for k in range(5)],
                samples_tg_ns=[1_200_000_000 + k for k in range(5)],
                log="load_tensors: CPU model buffer size = 10.23 MiB\n",
                figures=Figures(load_s=1.0),
            )
            record_result(session, run.id, build_id, model_ids[i % len(model_ids)], m)
        return time.perf_counter() - t0


def time_compare(url: str, baseline: str, candidate: str, repeats: int = 3) -> tuple[float, float, int]:
    """(median wall s of `bench compare`, median s of compare() in process, rows compared). One repeat when
    the first takes over 10 s."""
    walls: list[float] = []
    while len(walls) < repeats and (not walls or walls[0] < 10):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [BENCH, "compare", "--baseline", baseline, "--candidate", candidate, "--db", url, "--format", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"bench compare failed: {proc.stderr.strip()}")
    inside: list[float] = []
    with open_store(url) as store:
        while len(inside) < len(walls):
            with store.session() as session:
                t0 = time.perf_counter()
                result = compare(session, baseline, candidate)
                inside.append(time.perf_counter() - t0)
    return statistics.median(walls), statistics.median(inside), len(result.table)


def last_run(url: str) -> int:
    with open_store(url) as store, store.session() as session:
        return int(session.scalar(select(func.max(Result.run_id))) or 0)


@contextlib.contextmanager
def backends(tmp: Path, postgres: bool) -> Iterator[dict[str, str]]:
    urls = {"sqlite": f"sqlite:///{tmp}/central.sqlite"}
    if not postgres:
        yield urls
        return
    with pg_server() as server:
        urls["postgresql"] = server.create_database()
        upgrade_store(urls["postgresql"])
        yield urls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="nightly runs of 4 builds × 25 models")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="store-scale-") as tmp:
        local = f"sqlite:///{tmp}/runner.sqlite"
        t0 = time.perf_counter()
        fill(local, args.runs, 4, 25)
        results, samples = _counts(local)
        print(f"runner file: {results:,} results, {samples:,} samples (bulk fill {time.perf_counter() - t0:.1f} s)")
        with backends(Path(tmp), not args.skip_postgres) as urls:
            for backend, url in urls.items():
                push_s = time_push(local, url)
                assert _counts(url) == (results, samples)
                print(f"{backend:>10}: ingest {results:,} results by push: {push_s:.1f} s ({results / push_s:,.0f}/s)")
                run = last_run(url)  # the newest nightly run (before the write path adds its own)
                write_s = time_write_path(url, WRITE_PATH_RESULTS)
                per_ms = 1000 * write_s / WRITE_PATH_RESULTS
                print(
                    f"{backend:>10}: runner write path (record_result, a commit each): {per_ms:.1f} ms/result "
                    f"→ {results:,} results in {results * per_ms / 1000:.0f} s"
                )
                _, stored = _counts(url)
                # BUILD@RUN: one nightly run each side; BUILD: compare pools every run of the build identity
                for base, cand in ((f"build-0@{run}", f"build-1@{run}"), ("build-0", "build-1")):
                    wall, inside, rows = time_compare(url, base, cand)
                    print(
                        f"{backend:>10}: bench compare {cand} vs {base} over {stored:,} sample rows: {wall:.2f} s "
                        f"wall (goal ≤ 2 s; compare() itself {inside:.2f} s, {rows} rows)"
                    )


if __name__ == "__main__":
    main()
