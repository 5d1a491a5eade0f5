"""Stored load logs read again with the current rules: changed statuses are applied and recorded.

A rule change (issue 17: `ok` needs proof, buffers by shape) would otherwise split history in two: old
results judged by old rules, new ones by new rules. Reclassifying keeps one judgement over all of it,
and the `reclassifications` table says which result changed, from what, to what, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.diagnose import Diagnosis, ExitInfo, classify
from bench.metrics import Status
from bench.store.models import Build, Machine, Model, Reclassification, Result, ResultLog, Run
from bench.store.queries import run_or_latest


@dataclass(frozen=True)
class StatusChange:
    result_id: int
    run_id: int
    build: str
    model: str
    old_status: str
    new_status: str
    reason: str


def _expect_gpu(settings: dict[str, Any], machine_has_gpu: bool) -> bool:
    recorded = settings.get("expect_gpu", settings.get("suite", {}).get("expect_gpu", "auto"))
    return machine_has_gpu if recorded in ("auto", None) else bool(recorded)


def _layers_requested(settings: dict[str, Any]) -> int | None:
    n = settings.get("suite", {}).get("n_gpu_layers", "all")
    return None if n == "all" or not isinstance(n, int) or n < 0 else n


def _rejudge(result: Result, log: str, settings: dict[str, Any], machine_has_gpu: bool) -> Diagnosis:
    # the exit status and the runner's clock are facts of the run, not of the rules: they are kept
    exit_info = ExitInfo(result.exit_code, timed_out=result.status == Status.TIMEOUT)
    measured = result.repetitions > 0 or result.pp_ts is not None or result.tg_ts is not None
    return classify(
        log,
        expect_gpu=_expect_gpu(settings, machine_has_gpu),
        layers_requested=_layers_requested(settings),
        exit_info=exit_info,
        layers_total=result.layers_total,
        # samples were stored: the engine read a finished result, wherever the log ends
        proof=f"stored result with {result.repetitions} repetition(s)" if measured else None,
    )


def _kept(old_status: str, new: Diagnosis) -> bool:
    # a build that could not be used logged its build error, not a load: the runner calls such a log
    # build_failed whatever else it says, and so does a re-reading
    return old_status == Status.BUILD_FAILED and new.status in (Status.OK, Status.LOAD_FAILED, Status.LOG_INCOMPLETE)


def reclassify(session: Session, run_id: int | None = None) -> list[StatusChange]:
    """Re-read the stored logs of one run (or of all runs); update and record every status that changes.
    One transaction: a store is never left half reclassified."""
    query = (
        select(Result, ResultLog.text, Run.settings, Machine.gpu, Build.name, Model.name)
        .join(ResultLog, ResultLog.result_id == Result.id)
        .join(Run, Run.id == Result.run_id)
        .join(Machine, Machine.id == Run.machine_id)
        .join(Build, Build.id == Result.build_id)
        .join(Model, Model.id == Result.model_id)
        .order_by(Result.id)
    )
    if run_id is not None:
        query = query.where(Result.run_id == run_or_latest(session, run_id))
    changes: list[StatusChange] = []
    for result, log, settings, gpu, build, model in session.execute(query):
        new = _rejudge(result, log, settings or {}, gpu is not None)
        if new.status == result.status or _kept(result.status, new):
            continue
        session.add(
            Reclassification(
                result_id=result.id,
                run_id=result.run_id,
                old_status=result.status,
                new_status=new.status,
                old_reason=result.reason,
                new_reason=new.reason,
                phase=new.phase,
                line_no=new.line_no,
            )
        )
        changes.append(StatusChange(result.id, result.run_id, build, model, result.status, new.status, new.reason))
        result.status, result.reason = new.status, new.reason
    session.commit()
    return changes


def reclassifications(session: Session, run_id: int | None = None) -> list[Reclassification]:
    """What `reclassify` changed, oldest first."""
    query = select(Reclassification).order_by(Reclassification.id)
    if run_id is not None:
        query = query.where(Reclassification.run_id == run_id)
    return list(session.scalars(query))
