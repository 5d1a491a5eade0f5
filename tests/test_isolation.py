"""Failures of every kind, with real files and real workers, in one matrix that must still complete."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.config import load_config
from bench.runner import run_matrix
from bench.store.db import open_store
from bench.store.queries import result_log, results_frame
from tests.conftest import BENCH, PYTHON, fake_python, processes_matching


def _run(cfg: Path, db_url: str, **kw: object) -> pd.DataFrame:
    with open_store(db_url) as store:
        run_id = run_matrix(store, load_config(cfg), show_progress=False, **kw)  # type: ignore[arg-type]
        with store.session() as s:
            frame = results_frame(s, [run_id])
            frame["log"] = [result_log(s, int(rid)) for rid in frame["result_id"]]
    return frame


def test_bad_models_are_classified_and_the_matrix_goes_on(
    models_dir: Path, broken_models: dict[str, Path], write_config: Callable[..., Path], db_url: str
) -> None:
    models = [
        {"name": "truncated", "path": str(broken_models["truncated"])},
        {"name": "garbage", "path": str(broken_models["garbage"])},
        {"name": "missing", "path": str(models_dir / "does-not-exist.gguf")},
        {"name": "unknown-arch", "path": str(broken_models["unknown_arch"])},
        {"name": "good", "path": str(models_dir / "tiny-Q4_0.gguf")},
    ]
    frame = _run(write_config(models, on_missing_model="record", repetitions=2), db_url).set_index("model")
    assert frame.loc["truncated", "status"] == "invalid_gguf"
    assert "file bounds" in frame.loc["truncated", "reason"]
    assert frame.loc["garbage", "status"] == "invalid_gguf"
    assert frame.loc["missing", "status"] == "file_not_found"
    assert frame.loc["unknown-arch", "status"] == "unsupported_architecture"
    assert "zzzzz" in frame.loc["unknown-arch", "reason"]
    assert frame.loc["good", "status"] == "ok" and len(frame.loc["good", "samples_tg_ns"]) == 2
    assert all(frame["log"].str.len() > 0)


def test_crashing_and_hanging_builds_are_recorded_and_nothing_is_left_behind(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    aborting = fake_python(tmp_path, "python-abort", f"exec {PYTHON} -c 'import os; os.abort()'")
    hanging = fake_python(tmp_path, "python-hang", "sleep 86399 &\nexec sleep 86398")
    builds = [
        {"name": "aborts", "python": str(aborting)},
        {"name": "hangs", "python": str(hanging)},
        {"name": "good", "python": PYTHON},
    ]
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds=builds, timeout_s=3)
    start = time.monotonic()
    frame = _run(cfg, db_url).set_index("build")
    assert time.monotonic() - start < 3 + 30
    assert frame.loc["aborts", "status"] == "crashed"
    assert frame.loc["aborts", "signal"] == "SIGABRT" and frame.loc["aborts", "reason"].startswith("SIGABRT")
    assert frame.loc["hangs", "status"] == "timeout" and "3 s" in frame.loc["hangs", "reason"]
    assert frame.loc["good", "status"] == "ok"
    left = processes_matching(r"sleep 8639[89]")
    assert left == [], f"processes outlived the worker: {left}"


def test_fewer_layers_than_all_is_partial_offload(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], n_gpu_layers=2, repetitions=1)
    row = _run(cfg, db_url).iloc[0]
    assert row["status"] == "partial_offload" and "2/5" in row["reason"]


def test_model_that_does_not_fit_is_skipped_unless_forced(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    cfg = write_config(
        [{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], device_budget_bytes=1_000_000, repetitions=1
    )
    row = _run(cfg, db_url).iloc[0]
    assert row["status"] == "skipped_does_not_fit" and "GiB" in row["reason"]
    assert _run(cfg, db_url, force=True).iloc[0]["status"] == "ok"


def test_gpu_expected_on_a_cpu_only_build_is_cpu_fallback(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], expect_gpu=True, repetitions=1)
    row = _run(cfg, db_url).iloc[0]
    assert row["status"] == "cpu_fallback" and row["backend"] == "CPU"


def test_a_build_without_a_usable_library_is_recorded_as_build_failed(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    empty_lib = tmp_path / "empty-lib"
    empty_lib.mkdir()
    builds = [{"name": "no-lib", "python": PYTHON, "lib": str(empty_lib)}, {"name": "good", "python": PYTHON}]
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds=builds, repetitions=1)
    frame = _run(cfg, db_url).set_index("build")
    assert frame.loc["no-lib", "status"] == "build_failed"
    assert "library" in frame.loc["no-lib", "reason"] and "llama" in frame.loc["no-lib", "reason"]
    assert frame.loc["good", "status"] == "ok"


def test_a_descendant_that_starts_its_own_session_is_killed_with_its_item(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    # setsid: the child leaves the worker's process group, so killing the group alone would miss it
    escaping = fake_python(tmp_path, "python-escape", "setsid sleep 86397 &\nsleep 0.5\nexit 3")
    builds = [{"name": "escapes", "python": str(escaping)}, {"name": "good", "python": PYTHON}]
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds=builds, repetitions=1)
    frame = _run(cfg, db_url).set_index("build")
    assert frame.loc["escapes", "status"] != "ok" and frame.loc["good", "status"] == "ok"
    time.sleep(0.3)
    assert processes_matching(r"sleep 86397") == [], "a setsid descendant outlived its item"


def test_a_killed_run_leaves_no_temporary_files_behind(
    models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    models = [{"name": f"m{i}", "path": str(models_dir / "tiny-F16.gguf")} for i in range(4)]
    cfg = write_config(models, repetitions=20, n_prompt=256, n_gen=64)
    db = tmp_path / "k.sqlite"
    env = {**os.environ, "TMPDIR": str(scratch), "PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")}
    runner = subprocess.Popen([BENCH, "run", "--config", str(cfg), "--db", str(db), "--quiet"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not processes_matching(r"worker\.py measure", f"TMPDIR={scratch}"):
        time.sleep(0.1)
    runner.send_signal(signal.SIGKILL)  # mid-item: a worker is measuring
    runner.wait()
    time.sleep(0.5)
    assert list(scratch.iterdir()) == [], "a killed run left temporary files"
