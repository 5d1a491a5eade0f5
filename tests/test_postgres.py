"""Many runners, one PostgreSQL: concurrent runs of different machines, the per-machine run lock, a killed run
resumed, `bench push` from a runner's SQLite file. A real PostgreSQL 15 server (conftest `postgres`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from bench.store.db import open_store, upgrade_store
from bench.store.models import Machine, Result, ResultLog, Run, SampleSeries, unpack_ns
from bench.store.queries import results_frame, sample_count
from tests.conftest import BENCH, bench_cli, fake_python
from tests.pg_server import PgServer

REPS = 2


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    url = postgres.create_database()
    upgrade_store(url)
    return url


@pytest.fixture
def small_config(models_dir: Path, write_config: Callable[..., Path]) -> Path:
    models = [
        {"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")},
        {"name": "f16", "path": str(models_dir / "tiny-F16.gguf")},
    ]
    return write_config(models, repetitions=REPS, n_prompt=32, n_gen=8)


def _env(tmp_path: Path, machine: str) -> dict[str, str]:
    """A runner's identity; its run lock is its machine's (the default path, keyed by machine, in this test's
    folder), not the one lock conftest gives each test."""
    env = {**os.environ, "PERFGATE_MACHINE_ID": machine, "TMPDIR": str(tmp_path)}
    env.pop("PERFGATE_RUN_LOCK", None)
    return env


def _start(cfg: Path, db: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BENCH, "run", "--config", str(cfg), "--db", db, "--quiet", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _count(url: str, what: object) -> int:
    with open_store(url) as store, store.session() as session:
        return int(session.scalar(select(func.count()).select_from(what)) or 0)  # type: ignore[arg-type]


def test_four_runners_into_one_postgres_lose_duplicate_and_mix_nothing(
    pg_url: str, small_config: Path, tmp_path: Path
) -> None:
    procs = {f"runner-{i}": _start(small_config, pg_url, _env(tmp_path, f"runner-{i}")) for i in range(4)}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, err)
    with open_store(pg_url) as store, store.session() as session:
        runs = session.execute(select(Run.id, Machine.details).join(Machine, Run.machine_id == Machine.id)).all()
        frame = results_frame(session)
        # throughput samples (a load's own samples, test "load", come one per fresh-process load)
        series = session.execute(
            select(SampleSeries.result_id, SampleSeries.test, SampleSeries.ns).where(
                SampleSeries.test.in_(("pp", "tg"))
            )
        ).all()
        logs = session.scalar(select(func.count()).select_from(ResultLog))
    assert sorted(d["machine_id"] for _, d in runs) == sorted(procs)  # one run per machine, four machines
    assert len(list(tmp_path.glob("perfgate-run-*.lock"))) == 4  # four machines, four locks: nobody waited
    assert len(frame) == 4 * 2 and set(frame["status"]) == {"ok"}
    per_run = frame.groupby("run_id")
    assert all(sorted(g["model"]) == ["f16", "q4"] for _, g in per_run)
    # each run's results belong to its own machine: nothing mixed between runners
    assert all(g["machine_fingerprint"].nunique() == 1 for _, g in per_run)
    assert frame.groupby("machine_fingerprint")["run_id"].nunique().eq(1).all()
    assert all(len(r) == REPS for r in frame["samples_pp_ns"]) and all(len(r) == REPS for r in frame["samples_tg_ns"])
    # no sample lost or doubled: a series per result and test, each of REPS samples
    assert len(series) == 4 * 2 * 2 and all(len(unpack_ns(ns)) == REPS for _, _, ns in series)
    assert logs == 4 * 2


def _wait_for_holder(lock: Path, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(lock.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"no holder written to {lock}")


def test_two_runs_on_one_machine_are_serialized_by_the_lock(
    pg_url: str, models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The first run's worker holds on until the test says go (then measures for real): a second run is refused
    naming the holder, a third with --wait starts only when the first has finished."""
    go = tmp_path / "go"
    held = fake_python(tmp_path, "held-python", f"while [ ! -e {go} ]; do sleep 0.05; done")
    cfg = write_config(
        [{"name": "f16", "path": str(models_dir / "tiny-F16.gguf")}], [{"name": "local", "python": str(held)}]
    )
    lock = tmp_path / "run.lock"
    env = {**_env(tmp_path, "one-box"), "PERFGATE_RUN_LOCK": str(lock), "PYTHONUNBUFFERED": "1"}
    first = _start(cfg, pg_url, env)
    holder = _wait_for_holder(lock)
    assert holder["pid"] == first.pid
    refused = bench_cli("run", "--config", str(cfg), "--db", pg_url, "--quiet", env=env)
    assert refused.returncode == 2 and refused.stderr.startswith("error: another measuring run holds this machine")
    assert f"pid {first.pid}" in refused.stderr and "--wait" in refused.stderr
    waiter = _start(cfg, pg_url, env, "--wait")
    assert waiter.stdout is not None
    assert waiter.stdout.readline().startswith(f"waiting for the run of pid {first.pid}")
    go.touch()
    assert first.wait(timeout=600) == 0
    _, err = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, err
    with open_store(pg_url) as store, store.session() as session:
        (_, first_end), (second_start, _) = session.execute(
            select(Run.started_at, Run.finished_at).order_by(Run.started_at)
        ).all()
    assert first_end is not None and second_start >= first_end  # one after the other, never side by side
    assert _count(pg_url, Result) == 2


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [
            str(Path(BENCH).with_name("python")),
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom bench.runlock import run_lock\n"
            "with run_lock(Path(sys.argv[1]), wait=False, what='test'):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    from bench.runlock import RunLockedError, run_lock

    with pytest.raises(RunLockedError, match=f"pid {holder.pid} on "), run_lock(lock, wait=False, what="second"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the dead holder's note is still there
    with run_lock(lock, wait=False, what="after") as me:
        assert me.pid == os.getpid() and json.loads(lock.read_text())["pid"] == os.getpid()


def test_kill_9_mid_run_then_resume_loses_nothing_on_postgres(
    pg_url: str, models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    models = [{"name": f"m{i}", "path": str(models_dir / "tiny-F16.gguf")} for i in range(5)]
    cfg = write_config(models, repetitions=6, n_prompt=256, n_gen=32)
    env = _env(tmp_path, "killed-box")
    runner = _start(cfg, pg_url, env)
    deadline = time.monotonic() + 300
    while _count(pg_url, Result) < 2:
        assert time.monotonic() < deadline and runner.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    with open_store(pg_url) as store, store.session() as session:
        before = session.execute(select(Result.id, Result.model_id, Result.pp_ts).order_by(Result.id)).all()
        (run_id, status), *others = session.execute(select(Run.id, Run.status)).all()
    assert not others and status == "running" and 2 <= len(before) < 5
    proc = bench_cli("run", "--config", str(cfg), "--db", pg_url, "--resume", str(run_id), "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    with open_store(pg_url) as store, store.session() as session:
        after = session.execute(select(Result.id, Result.model_id, Result.pp_ts, Result.status).order_by(Result.id))
        after_rows = after.all()
        assert session.scalars(select(Run.status)).all() == ["complete"]
        n_samples = sample_count(session, ("pp", "tg"))
    assert len(after_rows) == 5 and {r[3] for r in after_rows} == {"ok"}
    assert [tuple(r[:3]) for r in after_rows[: len(before)]] == [tuple(r) for r in before]
    assert n_samples == 5 * 2 * 6


def _frame_without_ids(url: str) -> list[dict[str, object]]:
    with open_store(url) as store, store.session() as session:
        frame = results_frame(session).drop(columns=["run_id", "result_id"])
    return sorted(frame.astype(str).to_dict("records"), key=lambda r: (r["build"], r["model"], r["started_at"]))


def test_push_copies_a_runners_runs_once_and_twice_adds_nothing(
    pg_url: str, small_config: Path, tmp_path: Path
) -> None:
    local = str(tmp_path / "runner.sqlite")
    env = _env(tmp_path, "offline-box")
    for _ in range(2):
        assert bench_cli("run", "--config", str(small_config), "--db", local, "--quiet", env=env).returncode == 0
    assert (
        bench_cli(
            "import", str(Path(__file__).parent / "data" / "llama-bench-t2.json"), "--build", "lb", "--db", local
        ).returncode
        == 0
    )
    # a run that never finished (killed, not resumed) stays home
    with open_store(local) as store, store.session() as session:
        machine_id = session.scalars(select(Machine.id)).first()
        session.add(Run(machine_id=machine_id, status="running", settings={}))
        session.commit()

    first = bench_cli("push", "--to", pg_url, "--db", local)
    assert first.returncode == 0, first.stderr
    assert "pushed 3 run(s)" in first.stdout and "0 already there" in first.stdout
    assert "not pushed, still running or killed" in first.stdout
    counts = {t.__name__: _count(pg_url, t) for t in (Run, Result, SampleSeries, ResultLog, Machine)}
    assert counts["Run"] == 3 and all(counts[t.__name__] == _count(local, t) for t in (Result, SampleSeries, ResultLog))
    assert _frame_without_ids(pg_url) == _frame_without_ids(local)

    second = bench_cli("push", "--to", pg_url, "--db", local)
    assert second.returncode == 0 and "pushed 0 run(s)" in second.stdout and "3 already there" in second.stdout
    assert {t.__name__: _count(pg_url, t) for t in (Run, Result, SampleSeries, ResultLog, Machine)} == counts


def test_two_pushes_of_one_file_at_once_copy_each_run_once(pg_url: str, small_config: Path, tmp_path: Path) -> None:
    local = str(tmp_path / "runner.sqlite")
    env = _env(tmp_path, "twin-box")
    for _ in range(3):
        assert bench_cli("run", "--config", str(small_config), "--db", local, "--quiet", env=env).returncode == 0
    pushes = [
        subprocess.Popen([BENCH, "push", "--to", pg_url, "--db", local], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0] for p in pushes]
    assert [p.returncode for p in pushes] == [0, 0, 0], outs
    assert _count(pg_url, Run) == 3 and _count(pg_url, Result) == 3 * 2
    assert _count(pg_url, SampleSeries) == _count(local, SampleSeries) > 0


def test_postgres_timestamps_carry_a_time_zone_whatever_the_session_zone(
    pg_url: str, small_config: Path, tmp_path: Path
) -> None:
    """A runner whose session runs at +05:45 writes the same instants a UTC reader reads back."""
    local = str(tmp_path / "runner.sqlite")
    assert bench_cli("run", "--config", str(small_config), "--db", local, "--quiet").returncode == 0
    kathmandu = pg_url + "?options=-c%20timezone%3DAsia%2FKathmandu"
    assert bench_cli("push", "--to", kathmandu, "--db", local).returncode == 0
    with open_store(pg_url) as store, store.engine.connect() as conn:
        columns = {c["name"]: c["type"] for c in inspect(conn).get_columns("runs")}
    assert getattr(columns["started_at"], "timezone", False) and getattr(columns["finished_at"], "timezone", False)
    with open_store(local) as lite, lite.session() as session:
        expected = session.execute(select(Run.started_at, Run.finished_at)).all()
    for url in (pg_url, kathmandu):
        with open_store(url) as pg, pg.session() as session:
            assert session.execute(select(Run.started_at, Run.finished_at)).all() == expected
