"""The store: migrations are atomic and locked, foreign or damaged databases are refused in one line, read-only
commands create nothing, a model is its name, upserts are race-free. `db_url` tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text

from bench.machine import MachineInfo
from bench.store.db import _alembic_config, head_revisions, known_revisions, open_store, upgrade_store
from bench.store.models import Machine, Model, Result, Run
from bench.store.queries import results_frame, sample_count
from bench.store.records import upsert_machine, upsert_model
from tests.conftest import PYTHON, bench_cli

DATA = Path(__file__).parent / "data"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _import(db: str, build: str, file: Path = DATA / "llama-bench-t2.json") -> subprocess.CompletedProcess[str]:
    return bench_cli("import", str(file), "--format", "llama-bench", "--build", build, "--db", db)


def test_another_applications_sqlite_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    other = tmp_path / "notes.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("create table notes (id integer primary key, body text)")
        con.execute("insert into notes (body) values ('mine')")
    con.close()
    before = _sha(other)
    for args in (("import", str(DATA / "llama-bench-t2.json"), "--build", "x"), ("results",), ("db", "upgrade")):
        line = _one_error_line(bench_cli(*args, "--db", str(other)))
        assert "not a perfgate database" in line and "notes" in line
    assert _sha(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]  # no -wal/-shm either


def test_migration_that_fails_half_way_leaves_the_old_schema_whole(tmp_path: Path) -> None:
    """An index 0002 wants already exists: the migration fails on its fourth step. Everything before it
    (the runs.uuid column, the unique model index) must be rolled back with it."""
    db = tmp_path / "old.sqlite"
    cfg = _alembic_config(f"sqlite:///{db}")
    command.upgrade(cfg, "0001")
    with sqlite3.connect(db) as con:
        con.execute("create index ix_runs_finished_at on runs (finished_at)")
    con.close()
    line = _one_error_line(_import(str(db), "x"))
    assert "ix_runs_finished_at" in line
    with sqlite3.connect(db) as con:
        assert [r[0] for r in con.execute("select version_num from alembic_version")] == ["0001"]
        assert "uuid" not in [r[1] for r in con.execute("pragma table_info(runs)")]
        assert con.execute("select count(*) from sqlite_master where name = 'uq_models_name'").fetchone()[0] == 0
    con.close()


def test_four_processes_opening_a_new_database_at_once_all_get_the_whole_schema(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite"
    script = (
        "import sys\nfrom bench.store.db import open_store\n"
        "with open_store(sys.argv[1]) as s, s.session() as ses:\n"
        "    from sqlalchemy import text\n    ses.execute(text('select count(*) from runs')).scalar()\n"
    )
    procs = [subprocess.Popen([PYTHON, "-c", script, str(db)], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    with sqlite3.connect(db) as con:
        assert {r[0] for r in con.execute("select version_num from alembic_version")} == head_revisions()
    con.close()


def test_a_database_from_a_newer_perfgate_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "newer.sqlite"
    assert _import(str(db), "x").returncode == 0
    with sqlite3.connect(db) as con:
        con.execute("insert into alembic_version values ('9999')")
    con.close()
    before = _sha(db)
    for args in (("results",), ("import", str(DATA / "llama-bench-t2.json"), "--build", "y")):
        line = _one_error_line(bench_cli(*args, "--db", str(db)))
        assert "9999" in line and "newer than this perfgate knows" in line
    assert _sha(db) == before


def test_corrupt_database_is_one_error_line_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    before = _sha(db)
    for args in (
        ("results",),
        ("gate", "--baseline", "a", "--candidate", "b"),
        ("import", str(DATA / "llama-bench-t2.json"), "--build", "x"),
    ):
        line = _one_error_line(bench_cli(*args, "--db", str(db)))
        assert str(db) in line
    assert _sha(db) == before


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle+cx_oracle://h/db", "not a url://"])
def test_unknown_database_scheme_is_a_usage_error(url: str) -> None:
    line = _one_error_line(bench_cli("results", "--db", url))
    assert "--db" in line


@pytest.mark.parametrize(
    "args",
    [
        ("results",),
        ("runs",),
        ("compare", "--baseline", "a", "--candidate", "b"),
        ("gate", "--baseline", "a", "--candidate", "b"),
        ("dashboard", "--out", "SITE"),
    ],
)
def test_read_only_commands_do_not_create_a_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    db = tmp_path / "nowhere" / "perfgate.sqlite"
    args = tuple(str(tmp_path / "site") if a == "SITE" else a for a in args)
    line = _one_error_line(bench_cli(*args, "--db", str(db)))
    assert "no database there yet" in line
    assert not db.parent.exists()


def test_a_full_disk_is_one_error_line(tmp_path: Path) -> None:
    """The kernel refuses to grow any file past 40 kB (RLIMIT_FSIZE): the write-ahead log cannot take the import."""
    db = tmp_path / "full.sqlite"
    with open_store(str(db)):
        pass

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("bench")),
            "import",
            str(DATA / "llama-bench-t2.json"),
            "--build=x",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )
    line = _one_error_line(proc)
    assert str(db) in line and ("disk" in line or "full" in line)
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 0
    con.close()


def test_same_model_from_a_moved_path_is_one_model_and_compare_works(db_url: str, tmp_path: Path) -> None:
    moved = tmp_path / "moved.json"
    rerun = json.loads((DATA / "llama-bench-t2-rerun.json").read_text())
    for test in rerun:
        test["model_filename"] = "/elsewhere/now/" + Path(test["model_filename"]).name
    moved.write_text(json.dumps(rerun))
    assert _import(db_url, "base").returncode == 0
    assert _import(db_url, "cand", moved).returncode == 0
    with open_store(db_url) as store, store.session() as session:
        per_name = session.execute(select(Model.name, func.count()).group_by(Model.name)).all()
        paths = set(session.scalars(select(Model.path)))
    assert per_name and all(n == 1 for _, n in per_name), per_name
    assert all(p.startswith("/tmp/m/") for p in paths)  # where each model was first seen
    proc = bench_cli("compare", "--baseline", "base", "--candidate", "cand", "--db", db_url, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert sorted({r["model"] for r in rows}) == sorted({n for n, _ in per_name})


def test_migration_folds_models_of_one_name_into_one(tmp_path: Path) -> None:
    """A store made before 0002 with one model name under three paths: upgrading folds them into one row,
    except a model one of whose results would then collide with another (same run and build): renamed."""
    db = tmp_path / "old.sqlite"
    command.upgrade(_alembic_config(f"sqlite:///{db}"), "0001")
    with sqlite3.connect(db) as con:
        con.execute("insert into machines values (1, 'f', 'h', 'o', 'a', 'c', null, null, null, '{}')")
        con.execute("insert into builds (id, name, identity_sha, details) values (1,'b','s','{}'), (2,'c','t','{}')")
        paths = [(1, "/a/m"), (2, "/b/m"), (3, "/c/m")]
        con.executemany("insert into models (id, name, path, details) values (?, 'm', ?, '{}')", paths)
        run = (
            "insert into runs (id, machine_id, started_at, status, source, settings) values (?, 1, ?, 'ok', 'x', '{}')"
        )
        con.executemany(run, [(1, "2026-01-01"), (2, "2026-01-02")])
        rows = [(1, 1, 1, 1), (2, 2, 1, 2), (3, 2, 2, 3), (4, 2, 1, 3)]  # result 4 collides with result 2 once folded
        con.executemany(
            "insert into results (id, run_id, build_id, model_id, status, rounds_done, started_at, n_prompt, n_gen,"
            " repetitions, memory) values (?, ?, ?, ?, 'ok', 1, '2026-01-01', 1, 1, 1, '{}')",
            rows,
        )
    con.close()
    with open_store(str(db)) as store, store.session() as session:
        models = dict(session.execute(select(Model.id, Model.name)).all())
        owners = dict(session.execute(select(Result.id, Result.model_id)).all())
        uuids = session.scalars(select(Run.uuid)).all()
    assert models == {1: "m", 3: "m [/c/m]"}
    assert owners == {1: 1, 2: 1, 3: 3, 4: 3}
    assert len(set(uuids)) == 2 and all(len(u) == 36 for u in uuids)


@pytest.mark.parametrize("db_backend", ["sqlite", "postgresql"])
def test_migration_packs_samples_in_their_order_and_back(
    request: pytest.FixtureRequest, tmp_path: Path, db_backend: str
) -> None:
    """0005: a store of one sample a row (0001) becomes one packed series per result and test, each in the order
    of its seq whatever order the rows were written in, across the migration's steps of 10,000 results; the
    downgrade gives the same rows back (SQLite and PostgreSQL)."""
    if db_backend == "postgresql":
        url = request.getfixturevalue("postgres").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    cfg = _alembic_config(url)
    command.upgrade(cfg, "0001")
    ids = [9_999, 10_000, 10_001, 25_000]  # three steps of the migration's batches
    code = {"pp": 1, "tg": 2, "load": 3}
    rows = [
        {"r": r, "t": t, "q": q, "ns": 1_000 * r + 10 * code[t] + q}
        for r in ids
        for t in code
        for q in range(3 if t != "load" else 2)
    ]
    engine = create_engine(url)
    with engine.begin() as con:
        con.execute(
            text(
                "insert into machines (id, fingerprint, hostname, os, arch, cpu, details) "
                "values (1, 'f', 'h', 'o', 'a', 'c', '{}')"
            )
        )
        con.execute(text("insert into builds (id, name, identity_sha, details) values (1, 'b', 's', '{}')"))
        con.execute(
            text("insert into models (id, name, path, details) values (1, 'm', '/m', '{}'), (2, 'n', '/n', '{}')")
        )
        con.execute(
            text(
                "insert into runs (id, machine_id, started_at, status, source, settings) "
                "values (1, 1, '2026-01-01', 'complete', 'perfgate', '{}'), "
                "(2, 1, '2026-01-02', 'complete', 'perfgate', '{}')"
            )
        )
        con.execute(
            text(
                "insert into results (id, run_id, build_id, model_id, status, rounds_done, started_at, n_prompt, "
                "n_gen, repetitions, memory) values (:id, :run, 1, :m, 'ok', 1, '2026-01-01', 1, 1, 3, '{}')"
            ),
            [{"id": r, "run": 1 + n // 2, "m": 1 + n % 2} for n, r in enumerate(ids)],
        )
        for row in rows[::-1]:  # newest seq first: the order rows are stored in is not their order
            con.execute(text("insert into samples (result_id, test, seq, ns) values (:r, :t, :q, :ns)"), row)
    upgrade_store(url)
    with open_store(url) as store, store.session() as session:
        frame = results_frame(session).set_index("result_id")
        assert sample_count(session) == len(rows)
    for r in ids:
        for t in code:
            assert frame.loc[r, f"samples_{t}_ns"] == [x["ns"] for x in rows if x["r"] == r and x["t"] == t]
    command.downgrade(cfg, "0005-1")
    with engine.connect() as con:
        back = con.execute(text("select result_id, test, seq, ns from samples")).all()
    engine.dispose()
    assert sorted(tuple(b) for b in back) == sorted((x["r"], x["t"], x["q"], x["ns"]) for x in rows)


def test_upserts_in_one_session_return_the_same_rows(db_url: str) -> None:
    info = MachineInfo("h", "os", "x86_64", "cpu", None, 1, 1, None)
    with open_store(db_url) as store, store.session() as session:
        first = upsert_machine(session, info).id
        assert upsert_machine(session, info).id == first
        a = upsert_model(session, "m", "/a", 10, 4, {"k": 1})
        b = upsert_model(session, "m", "/b", None, None, {"j": 2})
        session.commit()
        assert a.id == b.id and b.path == "/a" and b.file_bytes == 10 and b.details == {"k": 1, "j": 2}
        assert session.scalar(select(func.count()).select_from(Machine)) == 1


def test_revisions_read_from_the_files_are_alembics() -> None:
    scripts = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    assert head_revisions() == set(scripts.get_heads())
    assert known_revisions() == {r.revision for r in scripts.walk_revisions()}


def test_db_upgrade_is_idempotent_and_reports_the_heads(db_url: str) -> None:
    assert bench_cli("db", "upgrade", "--db", db_url).returncode == 0  # a new SQLite file is made here
    proc = bench_cli("db", "upgrade", "--db", db_url)
    assert proc.returncode == 0, proc.stderr
    assert "already at" in proc.stdout and all(h in proc.stdout for h in head_revisions())
    with open_store(db_url) as store, store.engine.connect() as conn:
        assert set(conn.execute(text("select version_num from alembic_version")).scalars()) == head_revisions()
        assert "uq_runs_uuid" in {i["name"] for i in inspect(conn).get_indexes("runs")}


def test_latest_run_is_the_one_that_finished_last_not_the_highest_id(
    db_url: str, tmp_path: Path, models_dir: Path, write_config: Callable[..., Path]
) -> None:
    """A runner's older run pushed after a newer one gets the higher id; `bench results` still shows the newer."""
    cfg = write_config([{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], repetitions=1)
    local = str(tmp_path / "runner.sqlite")
    assert bench_cli("run", "--config", str(cfg), "--db", local, "--quiet").returncode == 0
    assert bench_cli("run", "--config", str(cfg), "--db", db_url, "--quiet").returncode == 0
    assert bench_cli("push", "--to", db_url, "--db", local).returncode == 0
    with open_store(db_url) as store, store.session() as session:
        (newer, newer_end), (older, older_end) = session.execute(select(Run.id, Run.finished_at).order_by(Run.id))
    assert older > newer and older_end < newer_end
    rows = json.loads(bench_cli("results", "--db", db_url, "--format", "json").stdout)
    assert {r["run_id"] for r in rows} == {newer}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_a_store_with_runs_keys_them_and_keeps_their_times(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'old.sqlite'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres").create_database()
    )
    command.upgrade(_alembic_config(url), "0001")
    with create_engine(url).begin() as conn:
        conn.execute(text("insert into machines values (1, 'f', 'h', 'o', 'a', 'c', null, null, null, '{}')"))
        conn.execute(
            text(
                "insert into runs (id, machine_id, started_at, finished_at, status, source, settings) values "
                "(1, 1, '2026-03-01 10:00:00', '2026-03-01 11:30:00', 'complete', '', '{}'), "
                "(2, 1, '2026-03-02 10:00:00', null, 'running', '', '{}')"
            )
        )
    assert bench_cli("db", "upgrade", "--db", url).returncode == 0
    with open_store(url) as store, store.session() as session:
        rows = session.execute(select(Run.id, Run.uuid, Run.started_at, Run.finished_at).order_by(Run.id)).all()
    assert [(r[2], r[3]) for r in rows] == [
        (datetime(2026, 3, 1, 10), datetime(2026, 3, 1, 11, 30)),
        (datetime(2026, 3, 2, 10), None),
    ]
    assert len({r[1] for r in rows}) == 2 and all(len(r[1]) == 36 for r in rows)
