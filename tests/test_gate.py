"""compare / gate / import on real stored runs: real workers, real llama-bench output, real pytest-benchmark."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, bench_cli, fake_python

DATA = Path(__file__).with_name("data")
COMPARE_SCRIPT = (
    REPO / ".cache" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "scripts" / ("compare-llama-bench.py")
)


def _interleaved(
    write_config: Callable[..., Path], models_dir: Path, db: str, builds: list[dict[str, str]], rounds: int = 6
) -> None:
    cfg = write_config(
        [{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}],
        builds=builds,
        repetitions=rounds,
        n_prompt=128,
        n_gen=32,
    )
    proc = bench_cli("run", "--config", str(cfg), "--db", db, "--interleave", "--quiet")
    assert proc.returncode == 0, proc.stderr


def _gate(db: str, tmp_path: Path, baseline: str = "A", candidate: str = "B") -> tuple[int, str, ET.Element]:
    junit = tmp_path / "gate.xml"
    summary = tmp_path / "summary.md"
    summary.unlink(missing_ok=True)
    config = ["--config", str(tmp_path / "models.yaml")] if (tmp_path / "models.yaml").exists() else []
    proc = bench_cli(
        "gate",
        "--baseline",
        baseline,
        "--candidate",
        candidate,
        "--db",
        db,
        "--junit",
        str(junit),
        *config,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert summary.read_text() == proc.stdout  # the step summary gets the same markdown
    return proc.returncode, proc.stdout, ET.parse(junit).getroot()


def test_a_a_interleaved_passes(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    _interleaved(write_config, models_dir, db_url, [{"name": "A", "python": PYTHON}, {"name": "B", "python": PYTHON}])
    code, summary, junit = _gate(db_url, tmp_path)
    assert code == 0, summary
    assert summary.startswith("## perfgate: PASS")
    names = {case.get("name") for case in junit.iter("testcase")}
    assert {"load", "pp_ts", "tg_ts"} <= names and junit.get("failures") == "0"


def test_candidate_that_no_longer_loads_fails_with_model_and_reason(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    aborting = fake_python(tmp_path, "python-abort", f"exec {PYTHON} -c 'import os; os.abort()'")
    _interleaved(
        write_config,
        models_dir,
        db_url,
        [{"name": "A", "python": PYTHON}, {"name": "B", "python": str(aborting)}],
        rounds=2,
    )
    code, summary, junit = _gate(db_url, tmp_path)
    assert code == 1
    assert "**q4** `load`: loaded ok on the baseline; candidate is crashed: SIGABRT" in summary
    failed = [c for c in junit.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("perfgate.q4", "load")]


def test_real_cpu_contention_slowdown_fails_on_throughput(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    # the candidate's worker shares its one core with a busy loop: a real, large slowdown
    contended = fake_python(
        tmp_path, "python-contended", f"taskset -c 0 sh -c 'while :; do :; done' &\nexec taskset -c 0 {PYTHON} \"$@\""
    )
    pinned = fake_python(tmp_path, "python-pinned", f'exec taskset -c 0 {PYTHON} "$@"')
    _interleaved(
        write_config,
        models_dir,
        db_url,
        [{"name": "A", "python": str(pinned)}, {"name": "B", "python": str(contended)}],
    )
    code, summary, _ = _gate(db_url, tmp_path)
    assert code == 1
    assert "**q4** `tg_ts`: REGRESSION" in summary and "**q4** `pp_ts`: REGRESSION" in summary


def test_noisy_but_not_slower_candidate_passes(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    # bursts of load on the workers' core hit whichever build is running: noise, not a slowdown
    hog = subprocess.Popen(
        ["taskset", "-c", "0", "sh", "-c", "while :; do timeout 0.05 sh -c 'while :; do :; done'; sleep 0.4; done"],
        start_new_session=True,
    )
    try:
        pinned = fake_python(tmp_path, "python-pinned", f'exec taskset -c 0 {PYTHON} "$@"')
        _interleaved(
            write_config,
            models_dir,
            db_url,
            [{"name": "A", "python": str(pinned)}, {"name": "B", "python": str(pinned)}],
            rounds=8,
        )
    finally:
        os.killpg(hog.pid, signal.SIGKILL)
        hog.wait()
    code, summary, _ = _gate(db_url, tmp_path)
    assert code == 0, summary


def test_slower_build_imported_from_llama_bench_fails(tmp_path: Path) -> None:
    db = str(tmp_path / "lb.sqlite")
    for build, f in (("two-threads", "llama-bench-t2.json"), ("one-thread", "llama-bench-t1.jsonl")):
        assert (
            bench_cli("import", str(DATA / f), "--format", "llama-bench", "--build", build, "--db", db).returncode == 0
        )
    code, summary, _ = _gate(db, tmp_path, "two-threads", "one-thread")
    assert code == 1
    assert "**tiny-Q4_0** `tg_ts`: REGRESSION" in summary and "**tiny-F16** `pp_ts`: REGRESSION" in summary
    code_back, _, _ = _gate(db, tmp_path, "one-thread", "two-threads")
    assert code_back == 0  # faster is never a regression


def _script_speedups(files: list[Path], baseline: str, compare: str) -> dict[tuple[str, str], float]:
    proc = subprocess.run(
        [
            sys.executable,
            str(COMPARE_SCRIPT),
            *[arg for f in files for arg in ("-i", str(f))],
            "-t",
            "llama-bench",
            "-b",
            baseline,
            "-c",
            compare,
            "-o",
            "tsv",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=files[-1].parent,  # outside any git checkout: the script then names builds by commit alone
        env={**os.environ, "GIT_PYTHON_REFRESH": "quiet"},
    )
    lines = [ln.split("\t") for ln in proc.stdout.strip().splitlines()]
    header = [h.strip() for h in lines[0]]
    out = {}
    for row in lines[1:]:
        rec = dict(zip(header, (c.strip() for c in row), strict=True))
        test = "pp_ts" if rec["Test"].startswith("pp") else "tg_ts"
        out[(rec["Model"], test)] = float(rec["Speedup"])
    return out


def test_comparison_agrees_with_vendored_compare_llama_bench(tmp_path: Path) -> None:
    assert COMPARE_SCRIPT.exists(), "run `make vendor` first: the sdist's scripts/compare-llama-bench.py"
    base = DATA / "llama-bench-t2.json"
    cand = tmp_path / "llama-bench-rerun.json"
    # two runs of one binary with the same settings; the script tells builds apart by commit only
    tests = json.loads((DATA / "llama-bench-t2-rerun.json").read_text())
    for t in tests:
        t["build_commit"] = "0000001"
    cand.write_text(json.dumps(tests))
    commit = json.loads(base.read_text())[0]["build_commit"]
    theirs = _script_speedups([base, cand], commit, "0000001")

    db = str(tmp_path / "agree.sqlite")
    bench_cli("import", str(base), "--build", "t2", "--db", db)
    bench_cli("import", str(cand), "--build", "rerun", "--db", db)
    ours = json.loads(
        bench_cli("compare", "--baseline", "t2", "--candidate", "rerun", "--db", db, "--format", "json").stdout
    )["rows"]
    model_type = {t["model_filename"].split("/")[-1].removesuffix(".gguf"): t["model_type"] for t in tests}
    checked = 0
    for row in ours:
        key = (model_type[row["model"]], row["metric"])
        if key in theirs:
            assert row["ratio"] == pytest.approx(theirs[key], abs=0.005)
            checked += 1
    assert checked == 4


def test_cross_machine_comparison_is_refused_unless_allowed(
    models_dir: Path, write_config: Callable[..., Path], db_url: str
) -> None:
    cfg = write_config([{"name": "tiny-Q4_0", "path": str(models_dir / "tiny-Q4_0.gguf")}], repetitions=2)
    assert bench_cli("run", "--config", str(cfg), "--db", db_url, "--quiet").returncode == 0
    assert (
        bench_cli(
            "import", str(DATA / "llama-bench-t2.json"), "--build", "elsewhere", "--machine-from-file", "--db", db_url
        ).returncode
        == 0
    )
    refused = bench_cli("compare", "--baseline", "elsewhere", "--candidate", "local", "--db", db_url)
    assert refused.returncode == 2 and "--allow-cross-machine" in refused.stderr
    allowed = bench_cli(
        "compare",
        "--baseline",
        "elsewhere",
        "--candidate",
        "local",
        "--db",
        db_url,
        "--allow-cross-machine",
        "--format",
        "markdown",
    )
    assert allowed.returncode == 0 and "CROSS-MACHINE" in allowed.stdout and "| tiny-Q4_0 | tg_ts |" in allowed.stdout


def test_pytest_benchmark_json_imports_as_a_run(tmp_path: Path) -> None:
    bench_file = tmp_path / "test_tok.py"
    bench_file.write_text(
        "def test_tg(benchmark):\n"
        "    benchmark.extra_info.update(model='toy', test='tg', n_tokens=64)\n"
        "    benchmark.pedantic(lambda: sum(range(20000)), rounds=7, iterations=1)\n"
    )
    out = tmp_path / "pb.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(bench_file),
            f"--benchmark-json={out}",
            "--benchmark-save-data",
            "--benchmark-enable",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    db = str(tmp_path / "pb.sqlite")
    proc = bench_cli("import", str(out), "--format", "pytest-benchmark", "--build", "toy-build", "--db", db)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(bench_cli("results", "--db", db, "--format", "json").stdout)
    assert [(r["model"], r["build"], r["n_gen"], len(r["samples_tg_ns"])) for r in rows] == [
        ("toy", "toy-build", 64, 7)
    ]


def test_bad_import_is_a_usage_error_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bad.sqlite"
    assert bench_cli("import", str(DATA / "llama-bench-t2.json"), "--build", "ok", "--db", str(db)).returncode == 0
    broken = tmp_path / "broken.jsonl"
    good_line = (DATA / "llama-bench-t1.jsonl").read_text().splitlines()[0]
    broken.write_text(good_line + "\n" + json.dumps({"model_filename": "x.gguf", "n_prompt": 1}) + "\n")
    proc = bench_cli("import", str(broken), "--build", "bad", "--db", str(db))
    assert proc.returncode == 2 and "test 2: missing field(s)" in proc.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 1
        assert con.execute("select count(*) from builds where name = 'bad'").fetchone()[0] == 0


def test_per_model_thresholds_from_models_yaml_apply(tmp_path: Path) -> None:
    db = str(tmp_path / "lb.sqlite")
    for build, f in (("two-threads", "llama-bench-t2.json"), ("one-thread", "llama-bench-t1.jsonl")):
        bench_cli("import", str(DATA / f), "--format", "llama-bench", "--build", build, "--db", db)
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        "  - {name: tiny-Q4_0, path: x.gguf, thresholds: {pp_ts: -60, tg_ts: -60}}\n"
        "  - {name: tiny-F16, path: y.gguf}\n"
        f"builds: [{{name: b, python: {PYTHON}}}]\n"
        "gate: {thresholds: {pp_ts: -5, tg_ts: -3}}\n"
    )
    code, summary, _ = _gate(db, tmp_path, "two-threads", "one-thread")
    assert code == 1
    assert "tiny-Q4_0" not in summary.split("### Failures")[1].split("| model |")[0]
    assert "**tiny-F16** `tg_ts`: REGRESSION" in summary


def test_a_model_the_candidate_did_not_measure_fails_the_gate(tmp_path: Path) -> None:
    db = str(tmp_path / "lb.sqlite")
    bench_cli("import", str(DATA / "llama-bench-t2.json"), "--build", "base", "--db", db)
    only_q4 = [t for t in json.loads((DATA / "llama-bench-t2-rerun.json").read_text()) if "Q4_0" in t["model_filename"]]
    subset = tmp_path / "q4-only.json"
    subset.write_text(json.dumps(only_q4))
    bench_cli("import", str(subset), "--build", "cand", "--db", db)
    code, summary, _ = _gate(db, tmp_path, "base", "cand")
    assert code == 1
    assert "**tiny-F16** `load`: loaded ok on the baseline; candidate is missing: not measured for the candidate" in (
        summary
    )
