"""The one rule: which results stand for build B on machine M.

For every (machine, build, model name) the result that finished last stands; a result still running
(no finish time) only when nothing finished; equal times go to the later result. compare, gate, bisect
and every page of the site apply this one function, to a frame they read themselves or to the keys
`standing_frame` reads: a resumed older run and a re-imported file can then never give two answers.
"""

from __future__ import annotations

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.errors import NoResults
from bench.store.models import Build, Machine, Model, Result, Run
from bench.store.queries import read_columns

STANDING_KEY = ["machine_fingerprint", "build", "model"]
# what the rule reads: a frame with these columns (results_frame has them all)
RULE_COLUMNS = [*STANDING_KEY, "finished_at", "started_at", "result_id"]


def standing(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` that stand: the newest by finish time per machine × build × model name.

    Keyed by the model's name, not its row: one name imported from two paths is one model."""
    if frame.empty:
        return frame
    order = frame.assign(
        _done=frame["finished_at"].notna(),
        _finished=pd.to_datetime(frame["finished_at"]),
        _started=pd.to_datetime(frame["started_at"]),
    ).sort_values(["_done", "_finished", "_started", "result_id"], na_position="first", kind="stable")
    keep = order.groupby(STANDING_KEY, sort=False, dropna=False).tail(1).index
    return frame.loc[frame.index.isin(keep)]


def standing_frame(
    session: Session, build: str, *, machine_fingerprint: str | None = None, run_id: int | None = None
) -> pd.DataFrame:
    """The standing results of one build (in one run, when given) on one machine: the given machine when
    the build ran there, else the machine of its newest measured result (predictions only when nothing was
    measured). Columns: RULE_COLUMNS, run_id, machine."""
    stmt = (
        select(
            Machine.fingerprint.label("machine_fingerprint"),
            Build.name.label("build"),
            Model.name.label("model"),
            Result.finished_at,
            Result.started_at,
            Result.id.label("result_id"),
            Result.run_id,
            Machine.hostname.label("machine"),
        )
        .join(Build, Result.build_id == Build.id)
        .join(Model, Result.model_id == Model.id)
        .join(Run, Result.run_id == Run.id)
        .join(Machine, Run.machine_id == Machine.id)
        .where(Build.name == build)
    )
    if run_id is not None:
        stmt = stmt.where(Result.run_id == run_id)
    # as plain columns (bench.store.queries.read_columns): a build of 1,000 nightly runs has 25,000 results here
    found = read_columns(session, stmt)
    where = f" in run {run_id}" if run_id is not None else ""
    return standing_on_machine(pd.DataFrame(found, columns=SIDE_COLUMNS), build, machine_fingerprint, where)


# what `standing_on_machine` reads of a build's results (results_frame has them all)
SIDE_COLUMNS = [*RULE_COLUMNS, "run_id", "machine"]


def standing_on_machine(
    results: pd.DataFrame, build: str, machine_fingerprint: str | None = None, where: str = ""
) -> pd.DataFrame:
    """`standing_frame` of a build's results already read (SIDE_COLUMNS of them, every run or one run's)."""
    from bench.store.predictions import PREDICTION_FINGERPRINT

    if results.empty:
        raise NoResults(f"no results for build {build!r}{where}")
    keys = standing(results[SIDE_COLUMNS])
    if machine_fingerprint not in set(keys["machine_fingerprint"]):
        # a measured machine before the one of `bench metal-check --record`'s predictions
        predicted = keys["machine_fingerprint"] == PREDICTION_FINGERPRINT
        chosen = keys[~predicted] if (~predicted).any() else keys
        newest = chosen.assign(_f=pd.to_datetime(chosen["finished_at"])).sort_values(
            ["_f", "result_id"], na_position="first"
        )
        machine_fingerprint = str(newest["machine_fingerprint"].iloc[-1])
    return keys[keys["machine_fingerprint"] == machine_fingerprint].sort_values("result_id")
