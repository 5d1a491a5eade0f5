"""`bench doctor`: real checks of this machine, a real probe load, real databases."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.config import load_config
from bench.doctor import _synth_bytes, check_disk
from bench.synth import SynthSpec, synthesize
from tests.conftest import bench_cli
from tests.pg_server import PgServer

DATA = Path(__file__).parent / "data"


def _doctor(*args: str) -> tuple[int, dict[str, object]]:
    proc = bench_cli("doctor", "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _checks(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in report["checks"]}  # type: ignore[attr-defined, index]


def test_doctor_reports_every_check_and_its_exit_code_follows_the_verdict(
    tmp_path: Path, models_dir: Path, write_config: Callable[..., Path]
) -> None:
    db = tmp_path / "s.sqlite"
    assert bench_cli("import", str(DATA / "llama-bench-t2.json"), "--build", "x", "--db", str(db)).returncode == 0
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}])
    code, report = _doctor("--db", str(db), "--config", str(cfg))
    checks = _checks(report)
    assert {"platform", "gpu", "gpu_probe", "disk", "power", "cpu_governor", "load", "other_processes"} <= set(checks)
    assert {"tool:cmake", "tool:cc", "tool:c++", "tool:make", "tool:git", "database"} <= set(checks)
    # the probe really loaded the tiny model through llama.cpp and read the backend from its log
    assert checks["gpu_probe"]["ok"] is True and "backend" in str(checks["gpu_probe"]["detail"])
    assert checks["database"]["ok"] is True and "newest migration" in str(checks["database"]["detail"])
    assert checks["disk"]["ok"] is True and "0.0 GiB still to write" in str(checks["disk"]["detail"])
    failed = [name for name, c in checks.items() if c["ok"] is False]
    assert report["fit"] is (not failed) and (code == 0) is (not failed)
    assert len(report["reasons"]) == len(failed)  # type: ignore[arg-type]


def test_a_postgres_database_behind_the_newest_migration_makes_the_machine_unfit(postgres: PgServer) -> None:
    url = postgres.create_database()
    code, report = _doctor("--db", url, "--no-probe")
    database = _checks(report)["database"]
    assert code == 1 and database["ok"] is False and "bench db upgrade" in str(database["detail"])
    assert any(r.startswith("database: ") for r in report["reasons"])  # type: ignore[attr-defined]


def test_an_unreachable_database_makes_the_machine_unfit(postgres: PgServer) -> None:
    url = f"postgresql+psycopg://perfgate@127.0.0.1:{postgres.port}/no_such_database"
    code, report = _doctor("--db", url, "--no-probe")
    database = _checks(report)["database"]
    assert code == 1 and database["ok"] is False and "no_such_database" in str(database["detail"])


def test_a_probe_with_an_interpreter_lacking_llama_cpp_is_unfit(tmp_path: Path) -> None:
    bare = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
    code, report = _doctor("--python", bare, "--db", str(tmp_path / "none.sqlite"))
    probe = _checks(report)["gpu_probe"]
    assert code == 1 and probe["ok"] is False and "probe load" in str(probe["detail"])


def test_disk_check_sizes_models_still_to_synthesize(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    synthesize(SynthSpec("small", "Q8_0"), tmp_path / "small.gguf")
    written = (tmp_path / "small.gguf").stat().st_size
    assert abs(_synth_bytes("small", "Q8_0") - written) / written < 0.02  # the estimate is the file, near enough
    cfg = load_config(
        write_config([{"name": "big", "synth": {"shape": "70B", "quant": "F16"}}], models_dir=str(tmp_path / "m")),
        check_files=False,
    )
    check = check_disk(cfg)
    need = _synth_bytes("70B", "F16")
    assert f"{need / 2**30:.1f} GiB still to write" in check.detail
    assert check.ok is (shutil.disk_usage(tmp_path).free >= need)
