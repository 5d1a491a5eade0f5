"""Predicted load statuses: what `bench metal-check --record` stores, and the reads the gate and
`--verify` make of them.

A prediction is about a Mac that has not loaded the build yet, not about the machine that made it: its
results go under a machine of their own (PREDICTION_MACHINE, host "metal-check"), in runs whose source is
PREDICTED_SOURCE. So a prediction never stands in for a real result of any machine (bench.store.standing
picks a measured machine first), the dashboard shows it as that machine's, marked predicted, and the gate
reads it beside the measured sides: a candidate predicted to fail where the baseline is not fails the gate.
Predictions that load are stored too (status ok, no figures): a recipe that was fixed replaces its old
predicted failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.builds import BuildIdentity
from bench.machine import MachineInfo
from bench.store.models import Build, Machine, Model, Result, Run
from bench.store.records import (
    Measurement,
    finish_run,
    record_result,
    start_run,
    upsert_build,
    upsert_machine,
    upsert_model,
)
from bench.store.standing import RULE_COLUMNS, standing

PREDICTED_SOURCE = "metal-check"
PREDICTION_MACHINE = MachineInfo(
    hostname="metal-check",
    os="macOS (predicted by bench metal-check)",
    arch="arm64",
    cpu="Apple silicon (predicted)",
    gpu="Apple GPU (Metal), predicted",
    host_mem_bytes=None,
    device_budget_bytes=None,
    gpu_kind="metal",
    machine_id="perfgate-metal-check",
)
PREDICTION_FINGERPRINT = PREDICTION_MACHINE.fingerprint


@dataclass(frozen=True)
class PredictedBuild:
    """One build's prediction, ready to store: its identity and the measurement each model gets."""

    identity: BuildIdentity
    status: str
    reason: str
    log: str


@dataclass(frozen=True)
class StoredStatus:
    status: str
    reason: str
    run_id: int


def record_predictions(
    session: Session,
    builds: list[PredictedBuild],
    models: list[tuple[str, str]],
    settings: dict[str, Any],
    *,
    n_prompt: int,
    n_gen: int,
) -> int:
    """One run of the prediction machine: every build × model (name, path) with its predicted status."""
    machine = upsert_machine(session, PREDICTION_MACHINE)
    run = start_run(session, machine, {**settings, "predicted": True}, source=PREDICTED_SOURCE)
    for build in builds:
        build_id = upsert_build(session, build.identity, source=PREDICTED_SOURCE).id
        for name, path in models:
            model_id = upsert_model(session, name, path, None, None, {}).id
            m = Measurement(build.status, build.reason, n_prompt, n_gen, log=build.log)
            record_result(session, run.id, build_id, model_id, m)
    finish_run(session, run)
    return run.id


def _statuses(session: Session, build: str, machine_fingerprint: str) -> dict[str, StoredStatus]:
    """The standing status of each model of `build` on one machine."""
    rows = session.execute(
        select(
            Machine.fingerprint,
            Build.name,
            Model.name,
            Result.finished_at,
            Result.started_at,
            Result.id,
            Result.status,
            Result.reason,
            Result.run_id,
        )
        .join(Build, Result.build_id == Build.id)
        .join(Model, Result.model_id == Model.id)
        .join(Run, Result.run_id == Run.id)
        .join(Machine, Run.machine_id == Machine.id)
        .where(Build.name == build, Machine.fingerprint == machine_fingerprint)
    ).all()
    if not rows:
        return {}
    frame = standing(pd.DataFrame([tuple(r) for r in rows], columns=[*RULE_COLUMNS, "status", "reason", "run_id"]))
    return {
        str(r["model"]): StoredStatus(str(r["status"]), str(r["reason"] or ""), int(r["run_id"]))
        for r in frame.to_dict("records")
    }


def predicted_statuses(session: Session, build: str) -> dict[str, StoredStatus]:
    """The standing prediction per model of a build (empty when it was never predicted)."""
    return _statuses(session, build, PREDICTION_FINGERPRINT)


def measured_statuses(session: Session, build: str, machine_fingerprint: str) -> dict[str, StoredStatus]:
    """The standing measured status per model of a build on one machine (empty when it never ran there)."""
    return _statuses(session, build, machine_fingerprint)
