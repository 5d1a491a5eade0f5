"""Foreign results into the store: llama-bench `-o json|jsonl`, pytest-benchmark JSON, and perfgate's
own `bench results --format json` (how committed GPU results reach a machine without a GPU).

Each file is imported in one transaction: a bad file leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench import machine as machine_mod
from bench.builds import BuildIdentity
from bench.errors import ImportFormatError
from bench.machine import MachineInfo
from bench.metrics import STATUSES, Status
from bench.store.models import Machine, Run, utcnow
from bench.store.queries import INT_FIELDS
from bench.store.records import Figures, Measurement, record_result, upsert_build, upsert_machine, upsert_model

FORMATS = ("llama-bench", "pytest-benchmark", "perfgate")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number perfgate stores")


def _finite(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def _json(text: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to infinity are refused, not stored."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _load_json_or_jsonl(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    except OSError as exc:
        raise ImportFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return _json(text)
    except ValueError as first:
        if not isinstance(first, json.JSONDecodeError):
            raise ImportFormatError(f"{path}: {first}") from first
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_json(line))
            except json.JSONDecodeError as exc:
                if lineno == 1:
                    raise ImportFormatError(f"{path}:{first.lineno}: not JSON or JSONL: {first.msg}") from exc
                raise ImportFormatError(f"{path}:{lineno}: invalid JSONL line: {exc.msg}") from exc
            except ValueError as exc:
                raise ImportFormatError(f"{path}:{lineno}: {exc}") from exc
        return rows


def _samples(value: Any, where: str) -> list[int]:
    """A list of positive integer nanoseconds, or one clear error."""
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ImportFormatError(f"{where}: samples_ns: expected a list of numbers")
    if any(v <= 0 or v > 1e15 for v in value):
        raise ImportFormatError(f"{where}: samples_ns: every sample must be a positive duration in ns")
    return [int(v) for v in value]


def _require(entry: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ImportFormatError(f"{where}: missing field(s) {', '.join(missing)}")


def _machine(session: Session, here: bool, cpu: str, gpu: str | None, host: str) -> Machine:
    if here:
        return upsert_machine(session, machine_mod.collect())
    info = MachineInfo(
        hostname=host,
        os="unknown",
        arch="unknown",
        cpu=cpu,
        gpu=gpu or None,
        host_mem_bytes=None,
        device_budget_bytes=None,
        gpu_kind=None,
    )
    return upsert_machine(session, info)


def import_llama_bench(session: Session, path: Path, build_name: str, *, machine_here: bool = True) -> int:
    data = _load_json_or_jsonl(path)
    if not isinstance(data, list) or not data:
        raise ImportFormatError(f"{path}: expected llama-bench output (a JSON array or JSONL of tests)")
    per_model = _llama_bench_results(data, path)
    first = data[0]
    machine = _machine(session, machine_here, first.get("cpu_info", ""), first.get("gpu_info"), "llama-bench")
    ident = BuildIdentity(
        build_name,
        True,
        llama_cpp_version=f"llama.cpp b{first.get('build_number')}",
        system_info=first.get("backends"),
        lib_path=None,
        lib_sha256=None,
        ggml_sha256=None,
        python=None,
        details={"build_commit": first["build_commit"], "tool": "llama-bench"},
        recorded_sha=_sha16(first["build_commit"] + str(first.get("backends"))),
    )
    build = upsert_build(session, ident, "llama-bench")
    started = _parse_time(first.get("test_time"))
    run = Run(
        machine_id=machine.id,
        source="llama-bench",
        status="complete",
        started_at=started,
        finished_at=started,
        settings={"file": str(path), "builds": [build_name]},
    )
    session.add(run)
    session.flush()
    for name, tests in per_model.items():
        pp, tg = tests.get("pp", {}), tests.get("tg", {})
        any_test = pp or tg
        model = upsert_model(
            session,
            name,
            any_test["model_filename"],
            any_test.get("model_size"),
            None,
            {"model_type": any_test.get("model_type"), "n_params": any_test.get("model_n_params")},
        )
        gpu = any_test.get("n_gpu_layers", 0) != 0 and any_test.get("backends", "CPU") != "CPU"
        m = Measurement(
            Status.OK,
            "imported from llama-bench",
            pp.get("n_prompt", 0),
            tg.get("n_gen", 0),
            samples_pp_ns=pp.get("samples_ns", []),
            samples_tg_ns=tg.get("samples_ns", []),
            figures=Figures(
                backend=any_test.get("backends"),
                model_bytes=any_test.get("model_size"),
                layers_offloaded=None if not gpu else any_test.get("n_gpu_layers"),
            ),
        )
        measured = _parse_time(any_test.get("test_time"))
        record_result(
            session,
            run.id,
            build.id,
            model.id,
            m,
            rounds_total=1,
            started_at=measured,
            finished_at=measured,
            commit=False,
        )
    return run.id


# what a llama-bench test reports (not how it was set up)
_OUTCOME_KEYS = {"n_prompt", "n_gen", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns"}
_OUTCOME_KEYS |= {"samples_ts", "model_filename", "model_type", "model_size", "model_n_params", "build_commit"}


def _llama_bench_results(data: list[Any], path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Result name → {"pp": test, "tg": test}. Every test is kept, keyed by its parameters: a model tested
    at several sizes or settings becomes several results; a combined -pg test is refused."""
    tests: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(data, 1):
        where = f"{path}: test {i}"
        if not isinstance(entry, dict):
            raise ImportFormatError(f"{where}: expected an object")
        _require(entry, ("model_filename", "n_prompt", "n_gen", "samples_ns", "build_commit"), where)
        n_prompt, n_gen = entry["n_prompt"], entry["n_gen"]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (n_prompt, n_gen)):
            raise ImportFormatError(f"{where}: n_prompt and n_gen must be counts of tokens")
        if n_prompt > 0 and n_gen > 0:
            raise ImportFormatError(
                f"{where}: a combined prompt+generation test (pp{n_prompt}+tg{n_gen}) is neither prompt nor "
                "generation speed; measure with -p and -n, not -pg"
            )
        if n_prompt == 0 and n_gen == 0:
            raise ImportFormatError(f"{where}: a test of no tokens")
        entry = {**entry, "samples_ns": _samples(entry["samples_ns"], where)}
        tests.append((Path(str(entry["model_filename"])).stem, entry))
    # a setting that differs between tests of one model names the result it belongs to
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for stem, entry in tests:
        by_model[stem].append(entry)
    named: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for stem, entries in by_model.items():
        setups = [{k: v for k, v in e.items() if k not in _OUTCOME_KEYS} for e in entries]
        varying = sorted({k for s in setups for k in s if any(o.get(k) != s.get(k) for o in setups)})
        for entry, setup in zip(entries, setups, strict=True):
            suffix = ", ".join(f"{k}={setup.get(k)}" for k in varying)
            named[f"{stem} [{suffix}]" if suffix else stem].append(entry)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entries in named.items():
        pp = [e for e in entries if e["n_prompt"] > 0]
        tg = [e for e in entries if e["n_gen"] > 0]
        if len(pp) <= 1 and len(tg) <= 1:
            out[name] = {**({"pp": pp[0]} if pp else {}), **({"tg": tg[0]} if tg else {})}
            continue
        for e in entries:
            kind, n = ("pp", e["n_prompt"]) if e["n_prompt"] > 0 else ("tg", e["n_gen"])
            key = f"{name} {kind}{n}"
            if key in out:
                raise ImportFormatError(f"{path}: two {kind}{n} tests of {name} with the same settings")
            out[key] = {kind: e}
    return out


def _sha16(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _parse_time(text: str | None) -> datetime:
    if not text:
        return utcnow()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return utcnow()


def import_pytest_benchmark(session: Session, path: Path, build_name: str, *, machine_here: bool = True) -> int:
    """pytest-benchmark JSON. `extra_info` {"model", "test": pp|tg, "n_tokens"} maps a benchmark onto a
    model's pp/tg; without it each benchmark is a model and calls/s its tg figure. Needs --benchmark-save-data
    (stats.data) for the samples."""
    data = _load_json_or_jsonl(path)
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ImportFormatError(f"{path}: expected pytest-benchmark JSON with a 'benchmarks' list")
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", "") if isinstance(mi.get("cpu"), dict) else str(mi.get("cpu", ""))
    machine = _machine(session, machine_here, cpu, None, mi.get("node", "pytest-benchmark"))
    commit = data.get("commit_info", {}).get("id") or "unknown"
    ident = BuildIdentity(
        build_name, True, details={"commit": commit, "tool": "pytest-benchmark"}, recorded_sha=_sha16(commit)
    )
    build = upsert_build(session, ident, "pytest-benchmark")
    run = Run(
        machine_id=machine.id,
        source="pytest-benchmark",
        status="complete",
        started_at=_parse_time(data.get("datetime")),
        settings={"file": str(path), "builds": [build_name]},
    )
    session.add(run)
    session.flush()
    per_model: dict[str, dict[str, tuple[list[int], int]]] = defaultdict(dict)
    for i, bm in enumerate(data["benchmarks"], 1):
        _require(bm, ("name", "stats"), f"{path}: benchmark {i}")
        seconds = bm["stats"].get("data")
        if not seconds:
            raise ImportFormatError(
                f"{path}: benchmark {bm['name']!r} has no stats.data (run pytest with --benchmark-save-data)"
            )
        extra = bm.get("extra_info") or {}
        test = extra.get("test", "tg")
        if test not in ("pp", "tg"):
            raise ImportFormatError(f"{path}: benchmark {bm['name']!r}: extra_info.test must be pp or tg")
        per_model[extra.get("model", bm["name"])][test] = (
            [int(s * 1e9) for s in seconds],
            int(extra.get("n_tokens", 1)),
        )
    for name, tests in per_model.items():
        model = upsert_model(session, name, f"pytest-benchmark:{name}", None, None, {})
        pp, tg = tests.get("pp", ([], 0)), tests.get("tg", ([], 0))
        m = Measurement(
            Status.OK, "imported from pytest-benchmark", pp[1], tg[1], samples_pp_ns=pp[0], samples_tg_ns=tg[0]
        )
        when = _parse_time(data.get("datetime"))
        record_result(
            session, run.id, build.id, model.id, m, rounds_total=1, started_at=when, finished_at=when, commit=False
        )
    return run.id


def import_perfgate(session: Session, path: Path) -> list[int]:
    """perfgate's own results JSON, with its machines, builds and runs as they were recorded."""
    rows = _load_json_or_jsonl(path)
    if not isinstance(rows, list):
        raise ImportFormatError(f"{path}: expected the output of `bench results --format json`")
    runs: dict[tuple[str, int], Run] = {}
    skipped: set[tuple[str, int]] = set()
    for i, r in enumerate(rows, 1):
        where = f"{path}: result {i}"
        if not isinstance(r, dict):
            raise ImportFormatError(f"{where}: expected an object")
        _require(r, ("run_id", "build", "model", "status", "n_prompt", "n_gen", "machine_fingerprint"), where)
        if r["status"] not in STATUSES:
            raise ImportFormatError(f"{where}: status: {r['status']!r} is not a perfgate status")
        for name in ("run_id", "n_prompt", "n_gen"):
            if not isinstance(r[name], int) or isinstance(r[name], bool) or r[name] < 0:
                raise ImportFormatError(f"{where}: {name}: expected a count, got {r[name]!r}")
        key = (r["machine_fingerprint"], r["run_id"])
        if key not in runs:
            machine = session.query(Machine).filter_by(fingerprint=r["machine_fingerprint"]).one_or_none()
            if machine is None:
                machine = Machine(
                    fingerprint=r["machine_fingerprint"],
                    hostname=r.get("machine") or "imported",
                    os="imported",
                    arch="imported",
                    cpu=r.get("cpu") or "imported",
                    gpu=r.get("gpu"),
                    host_mem_bytes=None,
                    device_budget_bytes=r.get("device_budget_bytes"),
                    details={"imported_from": str(path)},
                )
                session.add(machine)
                session.flush()
            import_key = hashlib.sha256(f"{key}|{r.get('started_at')}|{r['build']}|{r['model']}".encode()).hexdigest()
            if import_key in {
                run.settings.get("import_key")
                for run in session.scalars(select(Run).where(Run.machine_id == machine.id))
            }:
                skipped.add(key)  # imported before: importing a file twice must not double its runs
            run = Run(
                machine_id=machine.id,
                source=r.get("source") or "perfgate",
                status="complete",
                started_at=_parse_time(r.get("started_at")),
                settings={"file": str(path), "original_run_id": r["run_id"], "builds": [], "import_key": import_key},
            )
            if key not in skipped:
                session.add(run)
                session.flush()
            runs[key] = run
        if key in skipped:
            continue
        run = runs[key]
        if r["build"] not in run.settings["builds"]:
            run.settings = {**run.settings, "builds": [*run.settings["builds"], r["build"]]}
        ident = BuildIdentity(
            r["build"],
            True,
            llama_cpp_version=r.get("build_version"),
            system_info=r.get("build_system_info"),
            lib_path=r.get("build_lib_path"),
            lib_sha256=r.get("build_lib_sha256"),
            details={"imported_from": str(path)},
            recorded_sha=r.get("build_sha") or r["build"],
        )
        build = upsert_build(session, ident, "perfgate-import")
        model = upsert_model(session, r["model"], r.get("model_path") or r["model"], r.get("model_bytes"), None, {})
        fields: dict[str, Any] = {k: r.get(k) for k in ("load_s", "backend", "signal")}
        # JSON writers may have turned integers into floats (33.0): the store's columns are integers
        for k in INT_FIELDS:
            value = r.get(k)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ImportFormatError(f"{where}: {k}: expected a number, got {value!r}")
            fields[k] = None if value is None else int(value)
        if fields.get("load_s") is not None and not isinstance(fields["load_s"], int | float):
            raise ImportFormatError(f"{where}: load_s: expected a number, got {fields['load_s']!r}")
        m = Measurement(
            r["status"],
            r.get("reason") or "",
            r["n_prompt"],
            r["n_gen"],
            samples_pp_ns=_samples(r.get("samples_pp_ns") or [], where),
            samples_tg_ns=_samples(r.get("samples_tg_ns") or [], where),
            samples_load_ns=_samples(r.get("samples_load_ns") or [], where),
            log=r.get("log") or "",
            figures=Figures(**fields),
            memory=r.get("memory") or {},
        )
        record_result(
            session,
            run.id,
            build.id,
            model.id,
            m,
            rounds_total=1,
            commit=False,
            started_at=_parse_time(r.get("started_at")),
            finished_at=_parse_time(r.get("finished_at") or r.get("started_at")),
        )
    return sorted(run.id for key, run in runs.items() if key not in skipped)


def import_file(
    session: Session, path: Path, fmt: str, build_name: str | None, *, machine_here: bool = True
) -> list[int]:
    if not path.exists():
        raise ImportFormatError(f"{path}: no such file")
    if fmt not in FORMATS:
        raise ImportFormatError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    try:
        if fmt == "perfgate":
            ids = import_perfgate(session, path)
        else:
            if not build_name:
                raise ImportFormatError(f"--build: name the build that produced {path}")
            importer = import_llama_bench if fmt == "llama-bench" else import_pytest_benchmark
            ids = [importer(session, path, build_name, machine_here=machine_here)]
        session.commit()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        session.rollback()
        raise ImportFormatError(f"{path}: not valid {fmt} output: {exc!r}") from exc
    except BaseException:
        session.rollback()
        raise
    return ids
