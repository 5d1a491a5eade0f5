"""Benchmark (not a test): build the dashboard for a store of 100,000 results and report time and weight.

The store is filled in bulk through the real schema (Alembic-migrated SQLite): 1 machine, 4 builds,
25 models, 1,000 nightly runs = 100,000 results with 5+5 samples each, statuses and load-log excerpts
taken from a real measured run (the tiny model's CPU log, cut to its decisive lines).

    .venv/bin/python benchmarks/dashboard_scale.py [--runs 1000] [--builds 4] [--models 25]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import collect
from bench.report.dashboard import build_site
from bench.store.db import open_store
from bench.store.models import Build, Model, Result, ResultLog, Run, SampleSeries, pack_ns
from bench.store.records import upsert_machine

LOG_OK = (
    "load_tensors:   CPU_Mapped model buffer size =    10.23 MiB\n"
    "llama_kv_cache:        CPU KV buffer size =     2.00 MiB\n"
    "sched_reserve:        CPU compute buffer size =    64.00 MiB\n"
)
LOG_FAIL = "llama_model_load: error loading model: tensor 'token_embd.weight' data is not within the file bounds\n"


def fill(db: str, runs: int, builds: int, models: int, first_night: int = 0) -> int:
    """`runs` nightly runs from night `first_night` on; returns the number of results stored in all."""
    rng = np.random.default_rng(first_night)
    with open_store(db) as store, store.session() as session:
        machine = upsert_machine(session, collect())
        session.commit()
        if first_night == 0:
            build_ids = [
                session.execute(
                    insert(Build).values(name=f"build-{b}", identity_sha=f"sha{b}", details={})
                ).inserted_primary_key[0]
                for b in range(builds)
            ]
            model_ids = [
                session.execute(
                    insert(Model).values(
                        name=f"model-{m:02d}", path=f"/models/{m}.gguf", file_bytes=int(1e9 * (m + 1)), details={}
                    )
                ).inserted_primary_key[0]
                for m in range(models)
            ]
        else:
            build_ids = list(session.scalars(select(Build.id).order_by(Build.id)))
            model_ids = list(session.scalars(select(Model.id).order_by(Model.id)))
        start = datetime(2024, 1, 1)
        result_id = session.scalar(select(func.max(Result.id))) or 0
        for r in range(first_night, first_night + runs):
            run_id = session.execute(
                insert(Run).values(
                    machine_id=machine.id,
                    started_at=start + timedelta(days=r),
                    status="complete",
                    source="perfgate",
                    settings={"builds": [f"build-{b}" for b in range(builds)]},
                )
            ).inserted_primary_key[0]
            results, samples, logs = [], [], []
            for b, build_id in enumerate(build_ids):
                for m, model_id in enumerate(model_ids):
                    result_id += 1
                    ok = rng.random() > 0.01
                    pp = (2000.0 / (m + 1)) * (1 + 0.02 * b) * rng.normal(1, 0.01, 5)
                    tg = (100.0 / (m + 1)) * (1 + 0.01 * b) * rng.normal(1, 0.005, 5)
                    results.append(
                        {
                            "id": result_id,
                            "run_id": run_id,
                            "build_id": build_id,
                            "model_id": model_id,
                            "status": "ok" if ok else "invalid_gguf",
                            "reason": None if ok else LOG_FAIL,
                            "rounds_done": 1,
                            "started_at": start + timedelta(days=r),
                            "n_prompt": 512,
                            "n_gen": 128,
                            "repetitions": 5,
                            "load_s": float(rng.normal(1 + m, 0.05)),
                            "pp_ts": float(pp.mean()) if ok else None,
                            "pp_ts_std": float(pp.std()) if ok else None,
                            "tg_ts": float(tg.mean()) if ok else None,
                            "tg_ts_std": float(tg.std()) if ok else None,
                            "layers_offloaded": 33,
                            "layers_total": 33,
                            "backend": "CPU",
                            "model_bytes": int(1e9 * (m + 1)),
                            "rss_peak_bytes": int(1.1e9 * (m + 1)),
                            "memory": {},
                        }
                    )
                    if ok:
                        samples += [
                            {"result_id": result_id, "test": "pp", "ns": pack_ns([int(512e9 / v) for v in pp])},
                            {"result_id": result_id, "test": "tg", "ns": pack_ns([int(128e9 / v) for v in tg])},
                        ]
                    logs.append({"result_id": result_id, "text": LOG_OK if ok else LOG_FAIL})
            session.execute(insert(Result), results)
            session.execute(insert(SampleSeries), samples)
            session.execute(insert(ResultLog), logs)
        session.commit()
        return result_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--builds", type=int, default=4)
    parser.add_argument("--models", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dash-scale-") as tmp:
        db = f"sqlite:///{tmp}/scale.sqlite"
        t0 = time.perf_counter()
        n = fill(db, args.runs, args.builds, args.models)
        print(f"store: {n} results in {time.perf_counter() - t0:.1f} s")
        with open_store(db) as store:
            report = build_site(store, Path(tmp) / "site")
        pages = sorted((p.stat().st_size, p.relative_to(report.out)) for p in report.out.rglob("*.html"))
        index = (report.out / "index.html").stat().st_size
        print(
            f"full build: {report.pages} pages, {report.written} files, {report.bytes_total / 1e6:.1f} MB in "
            f"{report.seconds:.1f} s (goal ≤ 10 s); comparisons (bench.analysis.compare + bench.analysis.gate): "
            f"{report.compare_s:.1f} CPU-s"
        )
        print(
            f"index.html {index / 1e3:.1f} kB; largest page {pages[-1][1]} {pages[-1][0] / 1e3:.1f} kB; "
            f"median page {pages[len(pages) // 2][0] / 1e3:.1f} kB"
        )
        fill(db, 1, args.builds, args.models, first_night=args.runs)
        with open_store(db) as store:
            added = build_site(store, Path(tmp) / "site")
        print(
            f"one run added: {added.written} files rewritten in {added.seconds:.1f} s (goal ≤ 2 s); comparisons: "
            f"{added.compare_s:.1f} CPU-s"
        )


if __name__ == "__main__":
    main()
