"""Importing foreign results: every llama-bench test kept by its parameters, hostile files refused whole."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from bench.builds.cache import ensure_built
from bench.config import load_config
from bench.engines.paths import LIBRARY_PATH
from tests.conftest import bench_cli
from tests.test_builds import CMAKE_ARGS

DATA = Path(__file__).parent / "data"


def _llama_bench(build_cache: Path, tmp_path_factory: pytest.TempPathFactory, sdist: str) -> Path:
    """The llama-bench of the llama.cpp vendored in a llama-cpp-python sdist, built by `bench build`."""
    cfg = tmp_path_factory.mktemp("lb") / "b.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "x", "synth": {"shape": "tiny"}}],
                "builds": [{"name": "b", "engine": "llama-bench", "source": {"sdist": sdist}}],
                "suite": {"cmake_args": CMAKE_ARGS, "build_cache": str(build_cache)},
            }
        )
    )
    config = load_config(cfg, check_files=False)
    record = ensure_built(config, config.builds[0])
    assert record.ok, record.failure
    return record.bin_dir / "llama-bench"


@pytest.fixture(scope="module")
def llama_bench(build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _llama_bench(build_cache, tmp_path_factory, "llama-cpp-python==0.2.57")


@pytest.fixture(scope="module")
def llama_bench_new(build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-bench new enough to have -pg (the one vendored in 0.3.36)."""
    return _llama_bench(build_cache, tmp_path_factory, "llama-cpp-python==0.3.36")


def _bench(binary: Path, model: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(binary), "-m", str(model), "-t", "1", "-r", "2", "-o", "json", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, LIBRARY_PATH: str(binary.parent)},  # a cached build keeps its libraries beside it
    )
    return proc.stdout


def _results(db: Path) -> dict[str, tuple[int, int, float | None, float | None, int, int]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select m.name, r.n_prompt, r.n_gen, r.pp_ts, r.tg_ts, "
            "(select coalesce(sum(length(s.ns)), 0) / 8 from sample_series s "
            " where s.result_id = r.id and s.test = 'pp'), "
            "(select coalesce(sum(length(s.ns)), 0) / 8 from sample_series s "
            " where s.result_id = r.id and s.test = 'tg') "
            "from results r join models m on m.id = r.model_id"
        ).fetchall()
    return {name: tuple(rest) for name, *rest in rows}  # type: ignore[misc]


def test_several_prompt_sizes_are_kept_each_under_its_own_parameters(
    llama_bench: Path, models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sizes.json"
    out.write_text(_bench(llama_bench, models_dir / "tiny-Q4_0.gguf", "-p", "16,64", "-n", "8"))
    tests = json.loads(out.read_text())
    db = tmp_path / "i.sqlite"
    proc = bench_cli("import", str(out), "--format", "llama-bench", "--build", "b2430", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    results = _results(db)
    assert set(results) == {"tiny-Q4_0 pp16", "tiny-Q4_0 pp64", "tiny-Q4_0 tg8"}
    for t in tests:
        kind, n = ("pp", t["n_prompt"]) if t["n_prompt"] else ("tg", t["n_gen"])
        stored = results[f"tiny-Q4_0 {kind}{n}"]
        speed = stored[2] if kind == "pp" else stored[3]
        assert speed == pytest.approx(t["avg_ts"], rel=1e-3)  # each test's own speed, not the last one's


def test_a_combined_prompt_generation_test_is_refused_and_nothing_is_stored(
    llama_bench_new: Path, models_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pg.json"
    out.write_text(_bench(llama_bench_new, models_dir / "tiny-Q4_0.gguf", "-p", "16", "-n", "8", "-pg", "16,8"))
    db = tmp_path / "i.sqlite"
    proc = bench_cli("import", str(out), "--format", "llama-bench", "--build", "b", "--db", str(db))
    assert proc.returncode == 2 and "combined prompt+generation" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from results").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda text: text.replace('"avg_ts": ', '"avg_ts": Infinity, "x": ', 1), "Infinity"),
        (lambda text: text.replace('"samples_ns": [ ', '"samples_ns": [ 1e400, ', 1), "out of range"),
        (lambda text: text.replace('"samples_ns": [ ', '"samples_ns": [ null, ', 1), "samples_ns"),
        (lambda text: text.replace('"n_prompt": 64', '"n_prompt": "many"', 1), "n_prompt"),
    ],
)
def test_hostile_values_in_an_import_are_one_error_and_change_nothing(
    mutate: object, expect: str, tmp_path: Path
) -> None:
    text = (DATA / "llama-bench-t2.json").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(mutate(text))  # type: ignore[operator]
    assert bad.read_text() != text
    db = tmp_path / "i.sqlite"
    ok = bench_cli("import", str(DATA / "llama-bench-t1.jsonl"), "--build", "good", "--db", str(db))
    assert ok.returncode == 0, ok.stderr
    before = _results(db)
    proc = bench_cli("import", str(bad), "--format", "llama-bench", "--build", "b", "--db", str(db))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _results(db) == before


def test_a_binary_file_is_refused_as_an_import(tmp_path: Path) -> None:
    blob = tmp_path / "blob.json"
    blob.write_bytes(bytes(range(256)) * 10)
    for fmt in ("llama-bench", "perfgate", "pytest-benchmark"):
        proc = bench_cli("import", str(blob), "--format", fmt, "--build", "b", "--db", str(tmp_path / "x.sqlite"))
        assert proc.returncode == 2 and "not a text file" in proc.stderr and "Traceback" not in proc.stderr
