from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text

from bench.config import load_config
from bench.metrics import mean_std, tokens_per_s
from bench.runner import run_matrix
from bench.store.db import head_revisions, open_store
from bench.store.queries import results_frame
from tests.conftest import BENCH, PYTHON, bench_cli, processes_matching

CONTRACT = {
    "run_id",
    "build",
    "model",
    "status",
    "load_s",
    "pp_ts",
    "pp_ts_std",
    "tg_ts",
    "tg_ts_std",
    "n_prompt",
    "n_gen",
    "repetitions",
    "samples_pp_ns",
    "samples_tg_ns",
    "layers_offloaded",
    "layers_total",
    "backend",
    "model_bytes",
    "started_at",
    "model_buf_bytes",
    "kv_bytes",
    "compute_bytes",
    "rss_peak_bytes",
    "gpu_used_bytes",
    "device_budget_bytes",
}


def test_real_worker_measures_tiny_models_into_sqlite(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    cfg = write_config(
        [
            {"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")},
            {"name": "f16", "path": str(models_dir / "tiny-F16.gguf")},
        ]
    )
    proc = bench_cli("run", "--config", str(cfg), "--db", db_url)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(bench_cli("results", "--db", db_url, "--format", "json").stdout)
    assert [r["model"] for r in rows] == ["q4", "f16"]
    for r in rows:
        assert r.keys() >= CONTRACT
        assert r["status"] == "ok" and r["backend"] == "CPU"
        assert len(r["samples_pp_ns"]) == len(r["samples_tg_ns"]) == r["repetitions"] == 3
        mean, std = mean_std(tokens_per_s(r["samples_tg_ns"], r["n_gen"]))
        assert r["tg_ts"] == mean and r["tg_ts_std"] == std
        assert r["layers_total"] == 5 and r["model_bytes"] > 1_000_000 and r["kv_bytes"] > 0
        assert r["rss_peak_bytes"] > r["model_bytes"] // 2
    assert rows[0]["pp_ts"] > rows[1]["pp_ts"] * 0.5  # both real numbers of the same order
    csv_out = bench_cli("results", "--db", db_url, "--format", "csv").stdout
    assert csv_out.splitlines()[0].startswith("run_id,build,model,status")


def test_store_is_migrated_by_alembic_and_uses_wal(
    models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    db = tmp_path / "s.sqlite"
    with open_store(str(db)) as store, store.engine.connect() as conn:
        assert set(conn.execute(text("select version_num from alembic_version")).scalars()) == head_revisions()
    con = sqlite3.connect(db)
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    assert {"machines", "builds", "models", "runs", "results", "sample_series", "result_logs"} <= tables


def test_build_identity_is_recorded(models_dir: Path, write_config: Callable[..., Path], db_url: str) -> None:
    cfg = load_config(write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], repetitions=1))
    with open_store(db_url) as store:
        run_matrix(store, cfg, show_progress=False)
        with store.engine.connect() as conn:
            row = conn.execute(text("select llama_cpp_version, system_info, lib_path, lib_sha256 from builds")).one()
    assert row[0] == "0.3.36" and "CPU" in row[1] and row[2].endswith(("libllama.so", "libllama.dylib"))
    assert len(row[3]) == 64


def _wait_for_results(db: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("select count(*) from results").fetchone()[0] >= n:
                        return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} results after {timeout} s")


def test_sigkill_mid_matrix_keeps_finished_results_and_resume_completes(
    models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    models = [{"name": f"m{i}", "path": str(models_dir / "tiny-F16.gguf")} for i in range(6)]
    cfg = write_config(models, repetitions=10, n_prompt=256, n_gen=64)
    db = tmp_path / "kill.sqlite"
    marker = f"PERFGATE_TEST_MARK={tmp_path.name}"
    runner = subprocess.Popen(
        [BENCH, "run", "--config", str(cfg), "--db", str(db), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PERFGATE_TEST_MARK": tmp_path.name},
    )
    _wait_for_results(db, 2)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    with sqlite3.connect(db) as con:
        before = con.execute("select id, model_id, pp_ts from results order by id").fetchall()
        run_id, status = con.execute("select id, status from runs").fetchone()
    assert 2 <= len(before) < 6 and status == "running", (before, status)
    time.sleep(0.5)
    assert processes_matching(r"worker\.py measure", marker) == [], "a worker outlived its runner"

    proc = bench_cli("run", "--config", str(cfg), "--db", str(db), "--resume", str(run_id), "--quiet")
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as con:
        after = con.execute("select id, model_id, pp_ts, status from results order by id").fetchall()
        assert con.execute("select status from runs").fetchone()[0] == "complete"
        assert con.execute("select count(*) from runs").fetchone()[0] == 1
    assert len(after) == 6 and all(r[3] == "ok" for r in after)
    assert [r[:3] for r in after[: len(before)]] == before  # finished work kept, not measured again


def test_results_of_unknown_run_is_a_usage_error(db_url: str) -> None:
    with open_store(db_url):  # an existing, empty store: read-only commands never make one
        pass
    proc = bench_cli("results", "--db", db_url, "--run", "42")
    assert proc.returncode == 2 and "no run 42" in proc.stderr


def test_results_frame_reads_samples_in_order(models_dir: Path, write_config: Callable[..., Path], db_url: str) -> None:
    cfg = load_config(write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], repetitions=4))
    with open_store(db_url) as store:
        run_id = run_matrix(store, cfg, show_progress=False)
        with store.session() as s:
            frame = results_frame(s, [run_id])
    assert len(frame.loc[0, "samples_pp_ns"]) == 4


def test_load_repetitions_load_in_fresh_processes_and_load_time_becomes_gateable(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    from bench.analysis.compare import compare
    from bench.analysis.gate import evaluate
    from bench.analysis.sequential import Outcome

    builds = [{"name": "a", "python": PYTHON}, {"name": "b", "python": PYTHON}]
    model = [{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}]
    cfg = load_config(write_config(model, builds=builds, repetitions=2, load_repetitions=3))
    with open_store(db_url) as store:
        run_id = run_matrix(store, cfg, show_progress=False)
        with store.session() as s:
            frame = results_frame(s, [run_id]).set_index("build")
            loads = frame.loc["a", "samples_load_ns"]
            assert len(loads) == 3 and all(ns > 0 for ns in loads)  # three loads, each its own process
            assert frame.loc["a", "load_s"] == sum(loads) / 3 / 1e9
            verdict = evaluate(compare(s, "a", "b"), cfg.gate_settings())
    load = next(c for c in verdict.checks if c.metric == "load_s")
    # three loads a side pair into three process pairs: below the four the gate needs, reported honestly
    assert load.outcome is Outcome.REPORTED and "3 loads a side" in load.message
