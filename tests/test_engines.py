"""Engines with real programs: llama-bench of two llama.cpp generations (built by `bench build` from two
llama-cpp-python sdists), two llama-cpp-python releases of different API generations through the worker,
and KoboldCPP from its recorded real outputs (tests/koboldcpp: no KoboldCPP exists in CI)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.engines.kobold import parse_csv_rows
from bench.engines.llama_bench import parse_output
from tests.conftest import PYTHON, bench_cli
from tests.test_builds import build_config

KOBOLD = Path(__file__).parent / "koboldcpp"
SDISTS = {"b-old": "llama-cpp-python==0.2.57", "b-new": "llama-cpp-python==0.3.36"}


def _write(
    tmp_path: Path, models: list[dict[str, Any]], builds: list[dict[str, Any]], cache: Path, **suite: Any
) -> Path:
    return build_config(tmp_path, models, builds, cache, **{"repetitions": 3, **suite})


def _rows(db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "select b.name as build, m.name as model, r.*, b.details as build_details from results r "
            "join builds b on b.id = r.build_id join models m on m.id = r.model_id"
        ).fetchall()
        samples = con.execute("select result_id, test, length(ns) / 8 from sample_series").fetchall()
    counts = {(rid, test): n for rid, test, n in samples}
    out = {}
    for r in rows:
        d = dict(r)
        d["n_pp"], d["n_tg"], d["n_load"] = (counts.get((d["id"], t), 0) for t in ("pp", "tg", "load"))
        d["build_details"] = json.loads(d["build_details"])
        out[(d["build"], d["model"])] = d
    return out


def _run(cfg: Path, db: Path, tmp_path: Path, *extra: str) -> None:
    proc = bench_cli(
        "run", "--config", str(cfg), "--db", str(db), "--quiet", *extra,
        env={"PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")}, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_llama_bench_of_two_llama_cpp_generations_is_stored_compared_and_gated(
    build_cache: Path,
    models_dir: Path,
    broken_models: dict[str, Path],
    gemma3: Path,
    tmp_path: Path,
) -> None:
    models = [
        {"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")},
        {"name": "gemma3", "path": str(gemma3)},
        {"name": "truncated", "path": str(broken_models["truncated"])},
        {"name": "missing", "path": str(tmp_path / "no-such.gguf")},
    ]
    builds = [{"name": n, "engine": "llama-bench", "source": {"sdist": s}} for n, s in SDISTS.items()]
    cfg = _write(tmp_path, models, builds, build_cache, on_missing_model="record")
    db = tmp_path / "lb.sqlite"
    _run(cfg, db, tmp_path)
    rows = _rows(db)
    for build in SDISTS:
        ok = rows[(build, "tiny")]
        assert ok["status"] == "ok", (build, ok["reason"])
        assert ok["n_pp"] == 3 and ok["n_tg"] == 3 and ok["pp_ts"] > 0 and ok["tg_ts"] > 0
        reported = ok["build_details"]["engine_reported"]
        assert reported["build_commit"] and reported["samples"] is True
        assert ok["build_details"]["source"]["kind"] == "sdist"
        # llama-bench's own words about a file it cannot read; the llama.cpp of March 2024 does not check
        # tensor bounds and dies reading past the end (as KoboldCPP 1.60.1 does): a crash, not a diagnosis
        truncated = rows[(build, "truncated")]
        if build == "b-old":
            assert truncated["status"] == "crashed" and truncated["signal"] == "SIGSEGV", truncated["reason"]
        else:
            assert truncated["status"] == "invalid_gguf", truncated["reason"]
        assert rows[(build, "missing")]["status"] == "file_not_found", rows[(build, "missing")]["reason"]
    # a real 2025 model (real tokenizer, K-quants): March 2024's llama.cpp does not know its architecture
    old, new = rows[("b-old", "gemma3")], rows[("b-new", "gemma3")]
    assert old["status"] == "unsupported_architecture" and "gemma3" in old["reason"], old["reason"]
    assert new["status"] == "ok" and new["tg_ts"] > 0 and new["layers_total"] == 19, new["reason"]
    assert rows[("b-old", "tiny")]["build_details"]["options"] != rows[("b-new", "tiny")]["build_details"]["options"]
    compare = bench_cli("compare", "--baseline", "b-old", "--candidate", "b-new", "--db", str(db), "--format", "json")
    assert compare.returncode == 0, compare.stderr
    table = {(r["model"], r["metric"]): r for r in json.loads(compare.stdout)["rows"]}
    assert table[("tiny", "tg_ts")]["n_baseline"] == 3 and table[("tiny", "tg_ts")]["n_candidate"] == 3
    gate = bench_cli("gate", "--baseline", "b-old", "--candidate", "b-new", "--db", str(db), "--config", str(cfg))
    assert gate.returncode in (0, 1, 3), gate.stderr  # a verdict, whatever the two versions' speeds
    assert "b-new" in gate.stdout and "tiny" in gate.stdout
    verdict = json.loads(
        bench_cli("gate", "--baseline", "b-old", "--candidate", "b-new", "--db", str(db), "--format", "json").stdout
    )
    load = next(c for c in verdict["checks"] if c["model"] == "tiny" and c["metric"] == "load_s")
    assert load["outcome"] == "reported"  # llama-bench reports no load time: said, never a reason to block


def test_two_llama_cpp_python_api_generations_measure_the_same_model(
    build_cache: Path,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    builds = [
        {"name": "lcp-0.3.36", "python": PYTHON},
        {"name": "lcp-0.2.90", "source": {"pip": "llama-cpp-python==0.2.90"}},
    ]
    cfg = _write(tmp_path, [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds, build_cache)
    db = tmp_path / "lcp.sqlite"
    _run(cfg, db, tmp_path)
    rows = _rows(db)
    new, old = rows[("lcp-0.3.36", "tiny")], rows[("lcp-0.2.90", "tiny")]
    assert new["status"] == "ok" and old["status"] == "ok", (new["reason"], old["reason"])
    assert new["n_tg"] == 3 and old["n_tg"] == 3 and old["layers_total"] == new["layers_total"] == 5
    assert new["build_details"]["api"]["batch_get_one_args"] == 2
    assert old["build_details"]["api"]["batch_get_one_args"] == 4
    assert old["build_details"]["api"]["kv_clear"] == "llama_kv_cache_clear"
    with sqlite3.connect(db) as con:
        versions = dict(con.execute("select name, llama_cpp_version from builds").fetchall())
    assert versions == {"lcp-0.3.36": "0.3.36", "lcp-0.2.90": "0.2.90"}


# --- KoboldCPP, from its recorded real outputs -------------------------------------------------------

REPLAY = '''\
"""Replays one recorded KoboldCPP v{version} process (tests/koboldcpp): its log, its CSV row, its exit."""
import os, signal, sys
args = sys.argv[1:]
out = args[args.index("--benchmark") + 1] if "--benchmark" in args else None
runs = {runs!r}
counter = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls")
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
case = runs[n % len(runs)]
sys.stdout.write(open(case["log"], encoding="utf-8", errors="replace").read())
sys.stdout.flush()
if case["row"] is not None and out:
    new = not os.path.exists(out)
    with open(out, "a") as fh:
        fh.write((case["header"] + "\\n" if new else "") + case["row"] + "\\n")
if case["exit"] == 139:
    os.kill(os.getpid(), signal.SIGSEGV)
sys.exit(case["exit"])
'''


def _replay(tmp_path: Path, version: str, cases: list[str], csv: str | None) -> Path:
    """A directory that looks like a KoboldCPP checkout whose koboldcpp.py replays recorded processes."""
    manifest = {}
    for line in (KOBOLD / "MANIFEST.tsv").read_text().splitlines()[1:]:
        cells = line.split("\t")
        manifest[cells[2], cells[1]] = int(cells[6])
    header, rows = "", []
    if csv is not None:
        lines = (KOBOLD / csv).read_text().splitlines()
        header, rows = lines[0], lines[1:]
    runs = [
        {
            "log": str(KOBOLD / f"{version}_{case}.log"),
            "exit": manifest[case, version],
            "row": rows[i] if manifest[case, version] == 0 and i < len(rows) else None,
            "header": header,
        }
        for i, case in enumerate(cases)
    ]
    folder = tmp_path / f"kcpp-{version}"
    folder.mkdir()
    (folder / "koboldcpp.py").write_text(REPLAY.format(version=version, runs=runs))
    return folder


@pytest.mark.parametrize("version", ["1.60.1", "1.61"])
def test_koboldcpp_engine_reads_recorded_benchmarks_one_process_per_repetition(
    version: str,
    build_cache: Path,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    folder = _replay(tmp_path, version, ["bench-tiny-r1", "bench-tiny-r2", "bench-tiny-r3"], f"{version}-tiny.csv")
    builds = [{"name": f"kcpp-{version}", "engine": "koboldcpp", "path": str(folder)}]
    cfg = _write(
        tmp_path, [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds, build_cache,
        n_prompt=412, expect_gpu=False,
    )  # fmt: skip
    db = tmp_path / "k.sqlite"
    _run(cfg, db, tmp_path)
    row = _rows(db)[(f"kcpp-{version}", "tiny")]
    assert row["status"] == "ok", row["reason"]
    assert (folder / "calls").read_text() == "3"  # a repetition is a process
    assert row["n_pp"] == row["n_tg"] == row["n_load"] == 3  # and a load: load time has real samples
    assert row["n_prompt"] == 412 and row["n_gen"] == 100
    speeds = [float(r["GenerationSpeed"]) for r in parse_csv_rows((KOBOLD / f"{version}-tiny.csv").read_text())]
    assert row["tg_ts"] == pytest.approx(sum(speeds) / 3, rel=1e-3)
    assert row["build_details"]["engine_reported"]["backend_library"] == "koboldcpp_default.so"


@pytest.mark.parametrize(
    ("case", "status", "expect_gpu"),
    [
        ("missing-model", "file_not_found", False),
        ("garbage-file", "invalid_gguf", False),
        ("arch-llama4", "unsupported_architecture", False),
        ("truncated-gguf", "crashed", False),
        ("usecublas-gpulayers99", "cpu_fallback", True),
        ("noavx2", "build_failed", False),
    ],
)
def test_koboldcpp_failures_are_classified_from_recorded_output(
    case: str,
    status: str,
    expect_gpu: bool,
    build_cache: Path,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    folder = _replay(tmp_path, "1.61", [case], "1.61-fail.csv" if status == "cpu_fallback" else None)
    builds = [{"name": "kcpp", "engine": "koboldcpp", "path": str(folder)}]
    cfg = _write(
        tmp_path, [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds, build_cache,
        n_prompt=412, repetitions=1, expect_gpu=expect_gpu,
    )  # fmt: skip
    db = tmp_path / "k.sqlite"
    _run(cfg, db, tmp_path)
    row = _rows(db)[("kcpp", "tiny")]
    assert row["status"] == status, row["reason"]


def test_koboldcpp_csv_columns_by_name_up_to_the_free_text() -> None:
    rows = parse_csv_rows((KOBOLD / "1.60.1-small.csv").read_text())
    assert len(rows) == 3 and all(float(r["ProcessingSpeed"]) > 0 for r in rows)
    # a later version's layout: Output (raw text, commas and all) before Flags
    later = "Timestamp,Backend,Layers,Model,MaxCtx,GenAmount,ProcessingTime,ProcessingSpeed,GenerationTime,"
    later += "GenerationSpeed,TotalTime,Output,Flags\n"
    later += "t,koboldcpp_default.so,0,tiny,512,100,0.23,1775.86,0.08,1298.70,0.31, a, b, c,NoAVX2=False,Threads=1\n"
    (row,) = parse_csv_rows(later)
    assert row["GenerationSpeed"] == "1298.70" and "Output" not in row


def test_llama_bench_output_json_and_jsonl() -> None:
    data = json.loads((Path(__file__).parent / "data" / "llama-bench-t2.json").read_text())
    assert parse_output(json.dumps(data)) == data
    assert parse_output("\n".join(json.dumps(t) for t in data)) == data
    assert parse_output("") == [] and parse_output("not json") == []


def test_an_engine_that_cannot_run_is_build_failed_and_the_matrix_goes_on(
    build_cache: Path,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    program = fake / "llama-bench"
    program.write_text("#!/bin/sh\necho 'llama-bench: cannot run on this machine' >&2\nexit 1\n")
    program.chmod(0o755)
    builds = [
        {"name": "broken-bench", "engine": "llama-bench", "path": str(fake)},
        {"name": "local", "python": sys.executable},
    ]
    cfg = _write(tmp_path, [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds, build_cache)
    db = tmp_path / "e.sqlite"
    _run(cfg, db, tmp_path)
    rows = _rows(db)
    assert rows[("broken-bench", "tiny")]["status"] == "build_failed"
    assert "cannot run on this machine" in rows[("broken-bench", "tiny")]["reason"]
    assert rows[("local", "tiny")]["status"] == "ok"


def test_one_gguf_through_two_engines_compares_and_is_labelled_cross_engine(
    build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    folder = _replay(tmp_path, "1.61", ["bench-tiny-r1", "bench-tiny-r2"], "1.61-tiny.csv")
    builds = [{"name": "kcpp", "engine": "koboldcpp", "path": str(folder)}, {"name": "worker", "python": PYTHON}]
    cfg = _write(
        tmp_path, [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds, build_cache,
        n_prompt=412, n_gen=100, repetitions=2, expect_gpu=False,
    )  # fmt: skip
    db = tmp_path / "x.sqlite"
    _run(cfg, db, tmp_path)
    proc = bench_cli("compare", "--baseline", "kcpp", "--candidate", "worker", "--db", str(db), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["engines"] == {"baseline": "koboldcpp", "candidate": "llama-cpp-python"}
    gate = bench_cli("gate", "--baseline", "kcpp", "--candidate", "worker", "--db", str(db), "--config", str(cfg))
    assert "cross-engine comparison" in gate.stdout and "through koboldcpp" in gate.stdout
