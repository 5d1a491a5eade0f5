"""Change points on real nightly history: the tiny model measured by the real worker, night after night.

One store holds NIGHTS runs of three build lines, each worker pinned to core 0. `ref` and `steady` are the
same build every night; `nightly` crashes on loading one night, and from night SLOW_FROM on runs at nice 5
on its core beside a busy loop at nice 0: scheduler weights (335 against 1024) leave it a quarter to a
third of what it had, however many other tasks share the core, a real 3-4× slowdown.

This machine is shared: within minutes a line's own figures drift by ±50 % with what others run (measured:
`steady` tg 0.61 → 1.49 of its median in one history). A series relative to `ref`, measured in the same
runs (`--reference ref`), cancels that; `steady` against it is the A/A line. Each night interleaves its
builds (`bench run --interleave`: 5 rounds of one process per build), so what the machine does within a night
hits every build alike. The steady/ref ratio's night-to-night spread, measured on four histories with one
process per build: 6.9-9.0 % (pp), 3.8-13.1 % (tg), 7.5-21.5 % (load); on three interleaved: 2.0-2.4, 1.8-2.7
and 3.1-4.9 %. The nearest a series came to a false change was at 4.5 of the 5.0 × ln(n) penalty the detector
uses with one process per build (the A/A test failed about one suite in ten), 2.75 interleaved. One interleaved
history still failed it in CI: a 4.7 % tg step of the A/A line, made of three slow repetitions in `steady`'s early
nights and two in `ref`'s late ones, while a run's point was the mean of its repetitions (PELT found it up to a
penalty of 5.15). A run's point is now the mean of its middle values (bench.analysis.changes.run_point): the
same results show that step only below a penalty of 1.5. The A/A line is held to no status change and no shift
of a tenth (`A_A_BAND_PCT`): one history in ten measured here still showed a false one of a few percent.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.metrics import METRICS
from bench.store.db import upgrade_store
from bench.store.models import pack_ns, unpack_ns
from tests.conftest import PYTHON, bench_cli, fake_python
from tests.pg_server import PgServer

NIGHTS = 14
CRASH_AT = 3  # the night `nightly` fails to load
SLOW_FROM = 8  # the first slowed night
REF = ["--reference", "ref"]


@dataclass(frozen=True)
class History:
    db: str
    run_ids: list[int]  # in night order


def _night(tmp: Path, model: Path, night: int, builds: dict[str, Path]) -> None:
    cfg = tmp / f"night-{night}.yaml"
    doc = {
        "models": [{"name": "q4", "path": str(model)}],
        "builds": [{"name": name, "python": str(python)} for name, python in builds.items()],
        "suite": {"n_prompt": 128, "n_gen": 32, "repetitions": 5, "threads": 1},
    }
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def history(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> History:
    tmp = tmp_path_factory.mktemp("history")
    db = f"sqlite:///{tmp / 'history.sqlite'}"
    lock = str(tmp / "perfgate-run.lock")  # its own lock, as every test's run (conftest.private_run_lock)
    pinned = fake_python(tmp, "python-pinned", f'exec taskset -c 0 {PYTHON} "$@"')
    busy = "taskset -c 0 sh -c 'while :; do :; done' &\n"
    contended = fake_python(tmp, "python-contended", f'{busy}exec nice -n 5 taskset -c 0 {PYTHON} "$@"')
    aborting = fake_python(tmp, "python-abort", f"exec {PYTHON} -c 'import os; os.abort()'")
    for night in range(NIGHTS):
        nightly = aborting if night == CRASH_AT else contended if night >= SLOW_FROM else pinned
        _night(tmp, models_dir / "tiny-Q4_0.gguf", night, {"steady": pinned, "ref": pinned, "nightly": nightly})
        proc = bench_cli(
            "run",
            "--config",
            str(tmp / f"night-{night}.yaml"),
            "--db",
            db,
            "--quiet",
            "--interleave",  # the three builds alternate, one process each per repetition: drift hits all alike
            env={"PERFGATE_RUN_LOCK": lock},
        )
        assert proc.returncode == 0, proc.stderr
    return History(db, _run_ids(db))


def _run_ids(db: str) -> list[int]:
    return sorted(r["run_id"] for r in json.loads(bench_cli("runs", "--db", db, "--format", "json").stdout))


def _changes(db: str, *args: str) -> list[dict[str, Any]]:
    proc = bench_cli("changes", "--db", db, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_real_slowdown_is_one_change_point_at_the_night_it_starts(history: History) -> None:
    shifts = [c for c in _changes(history.db, *REF) if c["build"] == "nightly" and c["kind"] == "shift"]
    assert {c["metric"] for c in shifts} >= {"pp_ts", "tg_ts"}
    for metric in ("pp_ts", "tg_ts"):
        (change,) = [c for c in shifts if c["metric"] == metric]
        # the night before the busy loops and the first night with them, skipping nothing in between
        assert (change["run_before"], change["run_after"]) == (
            history.run_ids[SLOW_FROM - 1],
            history.run_ids[SLOW_FROM],
        )
        assert change["shift_pct"] < -40 and change["value_after"] < change["value_before"] / 1.6
        assert change["reference"] == "ref" and 0.6 < change["value_before"] < 1.6  # ratios to a twin build
        assert change["regression"] is True
        assert change["build_before"].startswith("nightly#") and change["commit_before"] is None
    # whatever else moved (load time under contention) moved on that night, nowhere else
    assert {c["run_after"] for c in shifts} == {history.run_ids[SLOW_FROM]}


# what an A/A line may show on this machine: false shifts measured on its 14-night histories reach 4.7 % (tg,
# CI's, when a run's point was its mean) and 4.0 % (tg, a local one, with the middle mean), against the ±50 %
# its lines' own figures drift and the -75 % of the slowdown beside it
A_A_BAND_PCT = 10.0


def _beyond_band(changes: list[dict[str, Any]], build: str) -> list[tuple[Any, ...]]:
    """A line's status changes, and its shifts as large as A_A_BAND_PCT (what, when, how much: on a failure,
    where this shared machine's noise went). The detector reports shifts from 1 %, made for a GPU's 0.3 % noise,
    with a penalty calibrated on independent nights; this VM's noise comes in bursts that last minutes, and a
    twin's ratio wanders by a few percent over a history (a 1.26 % pp step came within a penalty of 3.05 of the
    5.0 used, a 4.0 % tg step beyond it, in one of ten histories measured here)."""
    return [
        (c["metric"], c["kind"], c["run_before"], c["run_after"], c["shift_pct"])
        for c in changes
        if c["build"] == build and (c["kind"] == "status" or abs(c["shift_pct"]) >= A_A_BAND_PCT)
    ]


def test_a_a_line_of_the_same_length_has_no_status_change_nor_shift_of_a_tenth(history: History) -> None:
    assert _beyond_band(_changes(history.db, *REF), "steady") == []


def test_one_slow_repetition_a_night_makes_no_shift(history: History, tmp_path: Path) -> None:
    """A shared machine's hiccup: in each of `steady`'s first four nights its slowest repetition of five takes five
    times as long. The mean of those nights drops (a change point of the mean, 12.6–22.2 % on six histories), their
    middle values do not move. (Making another repetition slow instead would make two slow ones where a night
    already had one: on one history in five, a tenth of a night's points moved then.)"""
    db_file = tmp_path / "hiccups.sqlite"
    db_file.write_bytes(Path(history.db.removeprefix("sqlite:///")).read_bytes())
    first = history.run_ids[:4]
    with sqlite3.connect(db_file) as conn:
        rows = conn.execute(
            "SELECT s.result_id, s.test, s.ns FROM sample_series s JOIN results r ON r.id = s.result_id"
            " JOIN builds b ON b.id = r.build_id WHERE b.name = 'steady' AND s.test IN ('pp', 'tg')"
            f" AND r.run_id IN ({', '.join(map(str, first))})"
        ).fetchall()
        assert len(rows) == 2 * len(first)
        for result_id, test, packed in rows:
            ns = unpack_ns(packed)
            assert len(ns) == 5
            ns[ns.index(max(ns))] *= 5
            conn.execute(
                "UPDATE sample_series SET ns = ? WHERE result_id = ? AND test = ?", (pack_ns(ns), result_id, test)
            )
    assert _beyond_band(_changes(str(db_file), *REF), "steady") == []
    # the real slowdown beside it is still found
    nightly = {c["metric"] for c in _changes(str(db_file), *REF) if c["build"] == "nightly" and c["kind"] == "shift"}
    assert nightly >= {"pp_ts", "tg_ts"}


@pytest.mark.parametrize("reference", [[], REF], ids=["own figures", "against ref"])
def test_load_failure_in_the_middle_is_reported_both_ways(history: History, reference: list[str]) -> None:
    status = [c for c in _changes(history.db, *reference) if c["kind"] == "status"]
    got = sorted((c["run_before"], c["run_after"], c["status_before"], c["status_after"]) for c in status)
    r = history.run_ids
    assert got == [(r[CRASH_AT - 1], r[CRASH_AT], "ok", "crashed"), (r[CRASH_AT], r[CRASH_AT + 1], "crashed", "ok")]
    assert [c["regression"] for c in sorted(status, key=lambda c: c["run_after"])] == [True, False]
    assert all(c["build"] == "nightly" and c["metric"] == "status" and c["shift_pct"] is None for c in status)


def test_changes_are_stored_once_and_new_ones_listed_once(history: History, tmp_path: Path) -> None:
    db_file = tmp_path / "copy.sqlite"
    db_file.write_bytes(Path(history.db.removeprefix("sqlite:///")).read_bytes())
    db = str(db_file)
    first = _changes(db, *REF)
    assert _changes(db, *REF) == first  # detection again: the same rows, the same ids
    own = _changes(db)  # the lines' own figures: stored beside them, not over them
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT COUNT(*) FROM change_points").fetchone()[0] == len(first) + len(own)
    new = _changes(db, *REF, "--new")
    assert sorted(c["id"] for c in new) == sorted(c["id"] for c in first)
    assert all(c["first_reported_at"] is None for c in new)
    assert _changes(db, *REF, "--new") == []
    assert all(c["first_reported_at"] is not None for c in _changes(db, *REF))
    assert "no new change points" in bench_cli("changes", "--db", db, *REF, "--new").stdout
    assert sorted(c["id"] for c in _changes(db, "--new")) == sorted(c["id"] for c in own)


def test_metric_filter_keeps_that_metrics_shifts_and_every_status_change(history: History) -> None:
    rows = _changes(history.db, *REF, "--metric", "tg_ts", "--model", "q4")
    assert {(c["kind"], c["metric"]) for c in rows} == {("shift", "tg_ts"), ("status", "status")}
    table = bench_cli("changes", "--db", history.db, *REF, "--metric", "tg_ts").stdout
    assert "REGRESSION" in table and "ok → crashed" in table and "crashed → ok" in table and "of ref" in table


def test_commit_range_comes_from_the_builds_git_commit(history: History, tmp_path: Path) -> None:
    db_file = tmp_path / "commits.sqlite"
    db_file.write_bytes(Path(history.db.removeprefix("sqlite:///")).read_bytes())
    commit = "0123456789abcdef0123456789abcdef01234567"
    with sqlite3.connect(db_file) as conn:  # as `bench build` records a build made from git
        conn.execute(
            "UPDATE builds SET details = json_set(details, '$.source', json(?)) WHERE name = 'nightly'",
            (json.dumps({"kind": "git", "commit": commit}),),
        )
    found = _changes(str(db_file), *REF, "--metric", "tg_ts")
    (change,) = [c for c in found if c["kind"] == "shift" and c["build"] == "nightly"]
    assert (change["commit_before"], change["commit_after"]) == (commit, commit)
    assert change["build_after"] == f"nightly@{commit[:12]}"
    table = bench_cli("changes", "--db", str(db_file), *REF, "--metric", "tg_ts").stdout
    assert f"{commit[:12]}..{commit[:12]}" in table


def test_postgresql_store_finds_the_same_change_points(history: History, postgres: PgServer) -> None:
    url = postgres.create_database()
    upgrade_store(url)
    assert bench_cli("push", "--db", history.db, "--to", url).returncode == 0

    def found(db: str) -> list[tuple[Any, ...]]:
        night = {run: i for i, run in enumerate(_run_ids(db))}
        return sorted(
            (
                c["build"],
                c["metric"],
                c["kind"],
                night[c["run_after"]],
                round(c["shift_pct"] or 0, 9),
                c["status_after"],
            )
            for c in _changes(db, *REF)
        )

    assert found(url) == found(history.db) != []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "tokens"], "error: --metric: expected one of " + ", ".join(METRICS)),
        (["--model", "no-such-model"], "error: no model 'no-such-model' in the store"),
        (["--machine", "no-such-host"], "error: no machine 'no-such-host' in the store"),
        (["--format", "csv"], "error: --format: expected one of table, json"),
        (["--reference", "no-such-build"], "error: --reference: no results of build 'no-such-build' in the store"),
    ],
)
def test_bad_arguments_are_one_error_line(history: History, args: list[str], message: str) -> None:
    proc = bench_cli("changes", "--db", history.db, *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1


def test_missing_store_is_an_error_and_stays_missing(tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite"
    proc = bench_cli("changes", "--db", str(missing))
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {missing}: no database there yet")
    assert not missing.exists()
