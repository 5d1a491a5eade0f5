"""The GitHub Actions workflow (actionlint, its shape) and the job script it calls, run end to end on Linux CPU
with real builds, a real worker, the runner's SQLite file and a real central PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.config import load_config
from bench.store.db import upgrade_store
from tests.conftest import BENCH, PYTHON, REPO, bench_cli
from tests.pg_server import PgServer

WORKFLOW = REPO / ".github" / "workflows" / "perf.yml"
JOB = REPO / "ci" / "perf-job.sh"


def _workflow() -> dict[Any, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text()))


def test_actionlint_passes_on_the_workflows() -> None:
    actionlint = Path(sys.executable).with_name("actionlint")
    assert actionlint.exists(), "actionlint is not installed: `make actionlint`"
    proc = subprocess.run([str(actionlint)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_runs_nightly_on_tags_on_dispatch_and_on_perf_labelled_prs() -> None:
    doc = _workflow()
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"][0]["cron"] and on["push"]["tags"]
    assert {"baseline_ref", "candidate_ref"} <= set(on["workflow_dispatch"]["inputs"])
    assert "pull_request" in on and "'perf'" in doc["jobs"]["measure"]["if"]
    measure = doc["jobs"]["measure"]
    runners = measure["strategy"]["matrix"]["include"]
    assert runners[0]["labels"] == ["self-hosted", "macOS", "ARM64"] and len(runners) >= 3
    assert "matrix.runner" in measure["concurrency"]["group"] and measure["concurrency"]["cancel-in-progress"] is False
    steps = " ".join(s.get("run", "") for s in measure["steps"])
    for stage in ("make install", "perf-job.sh doctor", "perf-job.sh build", "perf-job.sh run", "perf-job.sh gate"):
        assert stage in steps
    assert "secrets.PERFGATE_DB_URL" in measure["env"]["PERFGATE_CENTRAL_DB"]
    for runner in runners:  # every runner's config is a valid perfgate config
        assert load_config(REPO / runner["config"], check_files=False).builds
    seed = doc["jobs"]["seed-metal"]
    assert seed["runs-on"] == ["self-hosted", "macOS", "ARM64"]
    seed_cfg = load_config(REPO / seed["env"]["PERFGATE_CONFIG"], check_files=False)
    make_vars = {b.name: b.make_vars for b in seed_cfg.builds}
    assert make_vars == {
        "metal-runtime-source": {"LLAMA_METAL": 1},
        "metal-embedded": {"LLAMA_METAL": 1, "LLAMA_METAL_EMBED_LIBRARY": 1},
    }
    assert all(b.source is not None and b.source.sdist == "llama-cpp-python==0.2.57" for b in seed_cfg.builds)
    assert any(s.get("env", {}).get("PERFGATE_EXPECT_GATE") == "fail" for s in seed["steps"])
    # the prediction before the real load, and the real load held to it
    seed_runs = [s.get("run", "") for s in seed["steps"]]
    check_at = next(i for i, r in enumerate(seed_runs) if "perf-job.sh metal-check" in r)
    run_at = next(i for i, r in enumerate(seed_runs) if "perf-job.sh run" in r)
    verify_at = next(i for i, r in enumerate(seed_runs) if "perf-job.sh metal-verify" in r)
    assert check_at < run_at < verify_at
    assert doc["jobs"]["pages"]["permissions"] == {"pages": "write", "id-token": "write"}


@pytest.fixture
def job(
    tmp_path: Path, models_dir: Path, write_config: Callable[..., Path], postgres: PgServer
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ci/perf-job.sh as a workflow step would, with a central database, a runner file and an artifacts
    folder in tmp_path. Two prebuilt builds (`bench build` has nothing to do): the candidate's library is
    not a library, which is a real build failure."""
    broken_lib = tmp_path / "broken-lib"
    broken_lib.mkdir()
    (broken_lib / "libllama.so").write_bytes(b"not an ELF file\n" * 64)
    central = postgres.create_database()
    upgrade_store(central)

    def run(*stages: str, candidate_broken: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        candidate: dict[str, str] = {"name": "candidate", "python": PYTHON}
        if candidate_broken:
            candidate["lib"] = str(broken_lib)
        cfg = write_config(
            [{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}],
            [{"name": "baseline", "python": PYTHON}, candidate],
            repetitions=4,
            n_prompt=32,
            n_gen=8,
        )
        settings = {
            "BENCH": BENCH,
            "PERFGATE_CONFIG": str(cfg),
            "PERFGATE_LOCAL_DB": str(tmp_path / "runner.sqlite"),
            "PERFGATE_CENTRAL_DB": central,
            "PERFGATE_OUT": str(tmp_path / "out"),
            "PERFGATE_DOCTOR": "warn",  # a shared test machine is rarely idle; the doctor's own tests judge it
            "PERFGATE_RUN_ARGS": "--interleave --rounds 2",
            "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
            "TMPDIR": str(tmp_path),
            **env,
        }
        return subprocess.run(
            ["bash", str(JOB), *stages],
            cwd=tmp_path,
            env={**os.environ, **settings},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    run.central = central  # type: ignore[attr-defined]
    return run


def test_job_script_measures_pushes_gates_and_publishes_end_to_end(
    job: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    proc = job()
    out = tmp_path / "out"
    log = proc.stdout + proc.stderr
    stages = [line.split(": ", 1)[1].split()[0] for line in proc.stdout.splitlines() if line.startswith("== perfgate")]
    assert stages == ["doctor", "build", "run", "push", "gate", "dashboard"], log
    # the job's exit code is the gate's, asked again here of the same store
    gate = bench_cli(
        "gate", "--baseline", "baseline", "--candidate", "candidate", "--db", str(tmp_path / "runner.sqlite")
    )
    assert proc.returncode == gate.returncode and gate.returncode in (0, 1, 3), log
    assert json.loads((out / "doctor.json").read_text())["checks"]
    assert ET.parse(out / "junit.xml").getroot().tag in ("testsuites", "testsuite")
    summary = (out / "gate.md").read_text()
    assert summary and summary in (tmp_path / "step-summary.md").read_text()
    assert (out / "site" / "index.html").exists()
    central = job.central  # type: ignore[attr-defined]
    runs = json.loads(bench_cli("runs", "--db", central, "--format", "json").stdout)
    assert len(runs) == 1 and runs[0]["results"] == 2  # pushed: baseline and candidate × one model

    again = job("run", "push")
    assert again.returncode == 0, again.stderr
    assert len(json.loads(bench_cli("runs", "--db", central, "--format", "json").stdout)) == 2


def test_job_fails_on_a_regression_and_a_seed_job_expecting_it_passes(
    job: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    proc = job(candidate_broken=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failures = ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("failure")
    assert any("build_failed" in (f.get("message", "") + (f.text or "")) for f in failures)
    assert (tmp_path / "out" / "site" / "index.html").exists()  # the dashboard is built after a failed gate too
    expected = job("gate", candidate_broken=True, PERFGATE_EXPECT_GATE="fail")
    assert expected.returncode == 0 and "the gate failed, as this job expects" in expected.stdout


def test_an_unfit_runner_stops_the_job_before_measuring(
    job: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, postgres: PgServer
) -> None:
    behind = postgres.create_database()  # never upgraded: `bench doctor` finds it behind
    proc = job(PERFGATE_DOCTOR="enforce", PERFGATE_CENTRAL_DB=behind)
    assert proc.returncode == 2
    assert "error: this runner is not fit to measure" in proc.stderr and "bench db upgrade" in proc.stderr
    assert not (tmp_path / "runner.sqlite").exists()  # nothing measured


def test_an_unreachable_central_database_keeps_the_runs_local(
    job: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, postgres: PgServer
) -> None:
    gone = f"postgresql+psycopg://perfgate@127.0.0.1:{postgres.port}/gone"
    proc = job("run", "push", "dashboard", PERFGATE_CENTRAL_DB=gone)
    assert proc.returncode == 0, proc.stderr
    assert "::warning::push to the central database failed" in proc.stdout
    runs = json.loads(bench_cli("runs", "--db", str(tmp_path / "runner.sqlite"), "--format", "json").stdout)
    assert len(runs) == 1 and (tmp_path / "out" / "site" / "index.html").exists()
