"""Builds from source, for real: llama.cpp trees compiled with CMake (CPU, portable), cached by key.

The build cache lives outside tmp_path ($PERFGATE_TEST_BUILD_CACHE or ~/.cache/perfgate/test-builds)
so a second session reuses it; ccache (when installed) makes the commits of the test repository
cheap after the first one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.builds.cache import ensure_built, list_cache, lookup, plan_build
from bench.builds.compile import classify_build_log
from bench.config import load_config
from tests.conftest import BENCH, REPO, bench_cli

CMAKE_ARGS = [
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]
VENDORED = REPO / ".cache" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
KOBOLD = REPO / "tests" / "koboldcpp"


def copy_vendored(dest: Path) -> Path:
    """The vendored llama.cpp without its .git file and the folders a build never reads (top level only:
    tools/mtmd has a models/ of its own)."""
    skip = {".git", "models", "docs", "media"}
    shutil.copytree(
        VENDORED, dest, ignore=lambda folder, entries: {e for e in entries if e in skip and Path(folder) == VENDORED}
    )
    return dest


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture(scope="session")
def llama_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A git repository made from the vendored llama.cpp, with the seed's stale-file mechanism in one commit."""
    assert (VENDORED / "CMakeLists.txt").exists(), "run `make vendor` first"
    repo = tmp_path_factory.mktemp("llama") / "llama.cpp"
    copy_vendored(repo)
    _git(repo, "init", "-q", "-b", "master")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "tag", "v1")
    commits = {"base": _git(repo, "rev-parse", "HEAD").strip()}
    alloc = repo / "ggml" / "src" / "ggml-alloc.c"
    alloc.write_text(alloc.read_text() + "\nint perfgate_one_line_change(void) { return 1; }\n")
    _git(repo, "commit", "-qam", "one-line change in ggml-alloc.c")
    commits["changed"] = _git(repo, "rev-parse", "HEAD").strip()
    # the seed: a stale copy of a source compiled into the library beside the original
    src = repo / "ggml" / "src"
    shutil.copy(src / "ggml.c", src / "ggml-stale.c")
    cmake = src / "CMakeLists.txt"
    text = cmake.read_text()
    cmake.write_text(text.replace("            ggml.c\n", "            ggml.c\n            ggml-stale.c\n", 1))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "stale leftover compiled twice")
    commits["stale"] = _git(repo, "rev-parse", "HEAD").strip()
    (src / "ggml-stale.c").unlink()
    cmake.write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "remove the stale copy")
    commits["fixed"] = _git(repo, "rev-parse", "HEAD").strip()
    return {"repo": repo, "commits": commits}


def build_config(
    tmp_path: Path, models: list[dict[str, Any]], builds: list[dict[str, Any]], cache: Path, **suite: Any
) -> Path:
    """A config of built builds: small suite, portable CPU builds, the session's build cache."""
    settings = {"n_prompt": 32, "n_gen": 8, "repetitions": 2, "threads": 1, "cmake_args": CMAKE_ARGS}
    doc = {"models": models, "builds": builds, "suite": {**settings, "build_cache": str(cache), **suite}}
    path = tmp_path / "builds.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _config(tmp_path: Path, builds: list[dict[str, Any]], cache: Path, model: Path, **suite: Any) -> Path:
    return build_config(tmp_path, [{"name": "tiny", "path": str(model)}], builds, cache, **suite)


def _run_statuses(cfg: Path, db: Path, tmp_path: Path) -> dict[str, str]:
    """`bench run` of the config into `db`; each build's "status|reason"."""
    env = {"PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")}
    run = bench_cli("run", "--config", str(cfg), "--db", str(db), "--quiet", env=env, timeout=3600)
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(db) as con:
        query = (
            "select b.name, r.status || '|' || coalesce(r.reason, '') from results r join builds b on b.id = r.build_id"
        )
        return dict(con.execute(query).fetchall())


def test_two_refs_are_two_keys_and_the_same_ref_again_is_a_cache_hit(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    repo = str(llama_repo["repo"])
    builds = [
        {"name": "v1", "engine": "llama-bench", "source": {"git": repo, "ref": "v1"}},
        {"name": "changed", "engine": "llama-bench", "source": {"git": repo, "ref": llama_repo["commits"]["changed"]}},
    ]
    cfg = load_config(_config(tmp_path, builds, build_cache, models_dir / "tiny-Q4_0.gguf"))
    first = {b.name: ensure_built(cfg, b) for b in cfg.builds}
    assert all(r.ok for r in first.values()), {n: r.failure for n, r in first.items()}
    assert first["v1"].key != first["changed"].key
    assert first["v1"].source["commit"] == llama_repo["commits"]["base"]
    assert first["v1"].source["subject"] == "base"
    assert "llama-bench" in first["v1"].artifacts
    cached_before = {r.key for r in list_cache(build_cache)}
    again = ensure_built(cfg, cfg.builds[0])
    # a hit is the same record (made once, at the same time), and the cache did not grow
    assert again.key == first["v1"].key and again.created_at == first["v1"].created_at
    assert {r.key for r in list_cache(build_cache)} == cached_before
    # other cmake args are another build
    other = cfg.builds[0].model_copy(update={"cmake_args": [*CMAKE_ARGS, "-DGGML_OPENMP=OFF"]})
    assert plan_build(cfg, other).key != first["v1"].key
    # the listing shows it
    listed = bench_cli("builds", "--config", str(cfg.source), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    entry = next(e for e in json.loads(listed.stdout) if e["key"] == first["v1"].key)
    assert entry["source"]["ref"] == "v1" and entry["system"] == "cmake" and entry["build_s"] > 0


def test_stale_duplicate_source_fails_to_link_is_recorded_and_the_next_commit_builds(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    repo, commits = str(llama_repo["repo"]), llama_repo["commits"]
    builds = [
        {"name": "stale", "engine": "llama-bench", "source": {"git": repo, "ref": commits["stale"]}},
        {"name": "fixed", "engine": "llama-bench", "source": {"git": repo, "ref": commits["fixed"]}},
    ]
    cfg = _config(tmp_path, builds, build_cache, models_dir / "tiny-Q4_0.gguf")
    db = tmp_path / "b.sqlite"
    rows = _run_statuses(cfg, db, tmp_path)
    with sqlite3.connect(db) as con:
        log = con.execute(
            "select l.text from result_logs l join results r on r.id = l.result_id "
            "join builds b on b.id = r.build_id where b.name = 'stale'"
        ).fetchone()[0]
        details = json.loads(con.execute("select details from builds where name = 'stale'").fetchone()[0])
    status, reason = rows["stale"].split("|", 1)
    assert status == "build_failed" and reason.startswith("duplicate_symbols: "), rows["stale"]
    assert "multiple definition of" in reason
    assert "multiple definition of" in log  # the build log is stored with the result
    assert details["build"]["failure"]["kind"] == "duplicate_symbols"
    assert details["source"]["commit"] == commits["stale"] and details["build"]["system"] == "cmake"
    assert rows["fixed"].split("|")[0] == "ok", rows["fixed"]
    # the gate fails a candidate that does not build
    gate = bench_cli("gate", "--baseline", "fixed", "--candidate", "stale", "--db", str(db), "--config", str(cfg))
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "build_failed" in gate.stdout


def test_dir_source_records_dirty_state_and_untracked_files_without_touching_the_tree(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(llama_repo["repo"], tree, symlinks=True)
    _git(tree, "checkout", "-q", llama_repo["commits"]["fixed"])
    (tree / "stale-notes.txt").write_text("left behind\n")
    before = sorted(p.name for p in tree.iterdir())
    builds = [{"name": "mine", "engine": "llama-bench", "source": {"dir": str(tree)}}]
    cfg = load_config(_config(tmp_path, builds, build_cache, models_dir / "tiny-Q4_0.gguf"))
    plan = plan_build(cfg, cfg.builds[0])
    assert plan.resolved.dirty and plan.resolved.untracked == ("stale-notes.txt",)
    assert plan.resolved.commit == llama_repo["commits"]["fixed"]
    # an untracked file is part of the identity: another content is another key
    (tree / "stale-notes.txt").write_text("changed\n")
    assert plan_build(cfg, cfg.builds[0]).key != plan.key
    assert sorted(p.name for p in tree.iterdir()) == before  # out of tree: nothing written into it


@pytest.mark.parametrize(
    ("build", "expect"),
    [
        ({"name": "x", "engine": "llama-bench", "source": {"git": "REPO", "ref": "no-such-ref"}}, "unknown ref"),
        ({"name": "x", "engine": "llama-bench", "source": {"dir": "/no/such/dir"}}, "no directory"),
        ({"name": "x", "engine": "llama-bench", "source": {"sdist": "llama-cpp-python==0.0.0.404"}}, "no sdist"),
        ({"name": "x", "engine": "llama-bench", "source": {"git": "REPO"}, "system": "ninja"}, "system"),
        ({"name": "x", "engine": "llama-bench", "source": {"git": "REPO"}, "colour": 1}, "unknown key 'colour'"),
        ({"name": "x", "engine": "no-such-engine", "path": "/bin"}, "engine"),
        ({"name": "x", "engine": "llama-bench", "path": "/bin"}, "no llama-bench executable"),
        ({"name": "x", "engine": "koboldcpp", "path": "/tmp"}, "not a KoboldCPP checkout"),
    ],
)
def test_bad_build_input_is_one_error_with_file_line_field_and_writes_nothing(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path, build: dict[str, Any], expect: str
) -> None:
    build = json.loads(json.dumps(build).replace('"REPO"', json.dumps(str(llama_repo["repo"]))))
    cfg = _config(tmp_path, [build], build_cache, models_dir / "tiny-Q4_0.gguf")
    db = tmp_path / "never.sqlite"
    for args in (("build", "--config", str(cfg)), ("run", "--config", str(cfg), "--db", str(db), "--quiet")):
        proc = bench_cli(*args, env={"PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")})
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {cfg}:"), proc.stderr
        assert expect in lines[0] and "Traceback" not in proc.stderr
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from results").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("log", "kind", "needle"),
    [
        ("1.61_build-missing-vocab-hpp.log", "missing_header", "vocab.hpp: No such file"),
    ],
)
def test_recorded_build_logs_classify_by_kind(log: str, kind: str, needle: str) -> None:
    failure = classify_build_log((KOBOLD / log).read_text(errors="replace"), "compile")
    assert failure.kind == kind and needle in failure.line and failure.line_no


def test_a_killed_build_leaves_only_a_temp_folder_that_the_next_build_removes(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    builds = [{"name": "k", "engine": "llama-bench", "source": {"git": str(llama_repo["repo"]), "ref": "v1"}}]
    cfg_path = _config(tmp_path, builds, cache, models_dir / "tiny-Q4_0.gguf")
    proc = subprocess.Popen(
        [BENCH, "build", "--config", str(cfg_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tmp = cache / ".tmp"
    deadline = time.monotonic() + 120
    while not (tmp.exists() and any(tmp.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a cancelled CI job: the runner and its compilers
    proc.wait()
    cfg = load_config(cfg_path)
    key = plan_build(cfg, cfg.builds[0]).key
    assert lookup(cache, key) is None  # nothing half-made under the key
    assert any(tmp.iterdir())
    record = ensure_built(cfg, cfg.builds[0])
    assert record.ok and not any(p.name.startswith(key) for p in tmp.iterdir())


def test_the_worker_runs_on_another_builds_libllama_by_name(
    llama_repo: dict[str, Any], build_cache: Path, models_dir: Path, tmp_path: Path
) -> None:
    """`library_of`: the llama-cpp-python worker on the libllama a `source:` build put in the cache, found by the
    build's name. The cached libllama's RUNPATH names a build tree that is gone: its libggml must still load."""
    repo = str(llama_repo["repo"])
    builds = [
        {"name": "v1", "engine": "llama-bench", "source": {"git": repo, "ref": "v1"}},
        {"name": "v1-worker", "engine": "llama-cpp-python", "library_of": "v1"},
    ]
    cfg = _config(tmp_path, builds, build_cache, models_dir / "tiny-Q4_0.gguf")
    db = tmp_path / "w.sqlite"
    rows = _run_statuses(cfg, db, tmp_path)
    with sqlite3.connect(db) as con:
        details = json.loads(con.execute("select details from builds where name = 'v1-worker'").fetchone()[0])
    assert rows["v1"].startswith("ok|") and rows["v1-worker"].startswith("ok|"), rows
    assert details["library_of"] == "v1" and details["source"]["ref"] == "v1", details


def test_cmake_sources_are_seen_through_a_stable_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's unity build writes absolute source paths into what it compiles: one build after another
    sees its tree under the same path (so ccache hits), two at once under two, and a build that finds every
    slot taken builds from its tree as it is."""
    from bench.builds import cache as build_cache

    cache = tmp_path / "cache"
    trees = [tmp_path / f"tree-{n}" for n in range(3)]
    for n, tree in enumerate(trees):
        tree.mkdir()
        (tree / "CMakeLists.txt").write_text(f"# tree {n}\n")
    seen = []
    for tree in trees[:2]:
        with build_cache._stable_source(cache, tree) as source:
            assert (source / "CMakeLists.txt").read_text() == (tree / "CMakeLists.txt").read_text()
            seen.append(source)
    assert seen[0] == seen[1] != trees[0]
    assert not seen[0].exists()  # released: the link goes with the build
    with build_cache._stable_source(cache, trees[0]) as first, build_cache._stable_source(cache, trees[1]) as second:
        assert first != second and first.resolve() == trees[0].resolve() and second.resolve() == trees[1].resolve()
    monkeypatch.setattr(build_cache, "SOURCE_SLOTS", 1)
    with build_cache._stable_source(cache, trees[0]) as held, build_cache._stable_source(cache, trees[2]) as busy:
        assert held != trees[0] and busy == trees[2]
