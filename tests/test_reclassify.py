"""`bench reclassify` on a store whose results were classified by an older rule set."""

from __future__ import annotations

from sqlalchemy import select

from bench.builds import BuildIdentity
from bench.machine import MachineInfo
from bench.store.db import Store
from bench.store.models import Reclassification, Result
from bench.store.reclassify import reclassifications, reclassify
from bench.store.records import (
    Figures,
    Measurement,
    record_result,
    start_run,
    upsert_build,
    upsert_machine,
    upsert_model,
)
from tests.conftest import REPO, bench_cli

LOGS = REPO / "tests" / "logs"

# (corpus log, what the rules before issue 17 stored, exit status, what the current rules say); the old
# statuses are what that classifier really gave these logs (tests/logs/README.md, generalisation check)
OLD_RESULTS = [
    ("file_not_found/koboldcpp-1.61_missing-model.log", "load_failed", 2, "file_not_found"),
    ("build_failed/koboldcpp-macos-duplicate-symbol.log", "ok", 1, "build_failed"),
    ("out_of_memory/koboldcpp-1.61_oom-ctx262144-ulimit4G.log", "load_failed", 3, "out_of_memory"),
    ("ok/worker-cuda-h100-7b.log", "ok", 0, "ok"),
]


def _store_with_old_results(db_url: str, *, gpu: str | None, runs: int = 1) -> list[int]:
    store = Store(db_url)
    run_ids = []
    with store.session() as session:
        machine = upsert_machine(session, MachineInfo("ci-1", "Linux", "x86_64", "cpu", gpu, 1, 1, None))
        build = upsert_build(session, BuildIdentity("b1", ok=True, llama_cpp_version="0.3.36", lib_sha256="x"))
        for _ in range(runs):
            run = start_run(session, machine, {"suite": {"n_gpu_layers": "all"}, "expect_gpu": gpu is not None})
            run_ids.append(run.id)
            for i, (log, old, exit_code, _new) in enumerate(OLD_RESULTS):
                model = upsert_model(session, f"m{i}", f"/models/m{i}.gguf", 1, 32, {})
                m = Measurement(
                    old,
                    "judged by the rules before issue 17",
                    512,
                    128,
                    samples_pp_ns=[1_000_000] * 3 if old == "ok" else [],
                    samples_tg_ns=[2_000_000] * 3 if old == "ok" else [],
                    log=(LOGS / log).read_text(),
                    figures=Figures(exit_code=exit_code),
                )
                record_result(session, run.id, build.id, model.id, m)
    store.close()
    return run_ids


def _statuses(db_url: str) -> dict[int, str]:
    store = Store(db_url)
    with store.session() as session:
        out = {r.id: r.status for r in session.scalars(select(Result).order_by(Result.id))}
    store.close()
    return out


def test_reclassify_applies_and_records_what_the_current_rules_say(db_url: str) -> None:
    [run_id] = _store_with_old_results(db_url, gpu="NVIDIA H100 80GB HBM3")
    store = Store(db_url)
    with store.session() as session:
        changes = reclassify(session, run_id=run_id)
    assert [(c.old_status, c.new_status) for c in changes] == [
        (old, new) for _, old, _, new in OLD_RESULTS if old != new
    ]
    with store.session() as session:
        rows = reclassifications(session, run_id)
        assert [(r.old_status, r.new_status) for r in rows] == [(c.old_status, c.new_status) for c in changes]
        missing = next(r for r in rows if r.new_status == "file_not_found")
        assert (
            missing.phase == "model file"
            and missing.line_no == 6
            and "Cannot find text model file" in (missing.new_reason)
        )
        assert missing.old_reason == "judged by the rules before issue 17"
        results = {r.id: r for r in session.scalars(select(Result))}
        assert results[missing.result_id].status == "file_not_found"
        assert results[missing.result_id].reason == missing.new_reason
    store.close()
    # the rules have not changed since: nothing more to do, nothing recorded twice
    with Store(db_url).session() as session:
        assert reclassify(session) == []
        assert session.scalar(select(Reclassification.id).order_by(Reclassification.id.desc())) == len(changes)


def test_reclassify_run_touches_only_that_run_and_the_cli_reports_it(db_url: str) -> None:
    _first, second = _store_with_old_results(db_url, gpu=None, runs=2)
    proc = bench_cli("reclassify", "--run", str(second), "--db", db_url)
    assert proc.returncode == 0, proc.stderr
    assert "load_failed → file_not_found" in proc.stdout and "ok → build_failed" in proc.stdout
    assert "3 result(s) changed" in proc.stdout
    statuses = _statuses(db_url)
    per_run = len(OLD_RESULTS)
    assert [statuses[i] for i in sorted(statuses)[:per_run]] == [old for _, old, _, _ in OLD_RESULTS]
    assert [statuses[i] for i in sorted(statuses)[per_run:]] == [new for _, _, _, new in OLD_RESULTS]
    proc = bench_cli("reclassify", "--db", db_url)
    assert proc.returncode == 0 and "3 result(s) changed" in proc.stdout  # the first run, now


def test_a_cpu_run_of_a_gpu_expected_machine_is_reread_as_cpu_fallback(db_url: str) -> None:
    # the same ok log means cpu_fallback where the run expected a GPU: the run's own setting decides
    store = Store(db_url)
    with store.session() as session:
        machine = upsert_machine(session, MachineInfo("gpu-1", "Linux", "x86_64", "cpu", "H100", 1, 1, "cuda"))
        build = upsert_build(session, BuildIdentity("cpu-only", ok=True, llama_cpp_version="0.3.36", lib_sha256="y"))
        model = upsert_model(session, "7B", "/models/7B.gguf", 1, 32, {})
        run = start_run(session, machine, {"suite": {"n_gpu_layers": "all"}, "expect_gpu": True})
        log = (LOGS / "cpu_fallback/worker-cpu-only-lib-on-h100-7b.log").read_text()
        record_result(session, run.id, build.id, model.id, Measurement("ok", "old", 512, 128, [1], [1], log=log))
        [change] = reclassify(session, run.id)
    store.close()
    assert (change.old_status, change.new_status) == ("ok", "cpu_fallback")


def test_unknown_run_is_one_error_line(db_url: str) -> None:
    _store_with_old_results(db_url, gpu=None)
    proc = bench_cli("reclassify", "--run", "999", "--db", db_url)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_a_build_failure_stays_one_when_its_log_names_no_load(db_url: str) -> None:
    # the runner stores the build's own error log for an unusable build; read as a load log it proves
    # nothing, and that must not turn a build failure into load_failed
    store = Store(db_url)
    with store.session() as session:
        machine = upsert_machine(session, MachineInfo("ci-2", "Linux", "x86_64", "cpu", None, 1, 1, None))
        build = upsert_build(session, BuildIdentity("broken", ok=False, error_log="configure: no compiler"))
        model = upsert_model(session, "tiny", "/models/tiny.gguf", 1, 2, {})
        run = start_run(session, machine, {"suite": {"n_gpu_layers": "all"}})
        log = "cmake -B build\nconfigure: no compiler found\n"
        record_result(
            session, run.id, build.id, model.id, Measurement("build_failed", "no compiler", 512, 128, log=log)
        )
        assert reclassify(session, run.id) == []
        assert session.scalars(select(Result.status)).all() == ["build_failed"]
    store.close()
