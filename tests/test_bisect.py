"""`bench bisect` on a real llama.cpp history made here: a commit that really slows decoding (a busy wait in
the CPU backend's graph compute), a commit that does not build, and a commit that rejects the model's
architecture. Builds come from the build cache (ccache makes each commit after the first cheap)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.analysis.bisection import Commit, Mark, Step, search
from tests.conftest import bench_cli
from tests.test_builds import build_config, copy_vendored

SPIN = (
    "    { volatile unsigned long perfgate_spin = 0;  /* test: a real slowdown per graph */\n"
    "      for (unsigned long i = 0; i < 3000000UL; i++) perfgate_spin += i; }\n"
)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_history(tmp_path_factory.mktemp("bisect") / "llama.cpp")


def make_history(repo: Path) -> dict[str, Any]:
    """The test history (also what benchmarks/bisect_bench.py bisects): 7 commits after `good`, one that does
    not compile, one with a real busy wait in graph compute; then 4 more, one renaming the architecture."""
    copy_vendored(repo)
    _git(repo, "init", "-q", "-b", "master")
    shas = {"good": _commit(repo, "base")}
    readme = repo / "README.md"
    alloc = repo / "ggml" / "src" / "ggml-alloc.c"
    compute = repo / "ggml" / "src" / "ggml-cpu" / "ggml-cpu.c"
    arch = repo / "src" / "llama-arch.cpp"
    for i in (1, 2, 3):
        readme.write_text(readme.read_text() + f"\nnote {i}\n")
        shas[f"c{i}"] = _commit(repo, f"docs: note {i}")
    alloc.write_text(alloc.read_text() + "\nint perfgate_broken(void) { return }\n")
    shas["broken"] = _commit(repo, "a change that does not compile")
    alloc.write_text(alloc.read_text().replace("\nint perfgate_broken(void) { return }\n", "\n"))
    shas["fix"] = _commit(repo, "fix the build")
    text = compute.read_text()
    head = "enum ggml_status ggml_graph_compute(struct ggml_cgraph * cgraph, struct ggml_cplan * cplan) {\n"
    assert head in text
    compute.write_text(text.replace(head, head + SPIN, 1))
    shas["slow"] = _commit(repo, "ggml-cpu: busy wait in graph compute")
    readme.write_text(readme.read_text() + "\nnote 7\n")
    shas["bad"] = _commit(repo, "docs: note 7")
    # a second range, for load: a commit that no longer knows the llama architecture
    readme.write_text(readme.read_text() + "\nnote 8\n")
    shas["c8"] = _commit(repo, "docs: note 8")
    arch.write_text(
        re.sub(r'\{ LLM_ARCH_LLAMA,(\s+)"llama"', r'{ LLM_ARCH_LLAMA,\1"llama-renamed"', arch.read_text(), count=1)
    )
    shas["noload"] = _commit(repo, "llama-arch: rename the llama architecture")
    for i in (10, 11):
        readme.write_text(readme.read_text() + f"\nnote {i}\n")
        shas[f"c{i}"] = _commit(repo, f"docs: note {i}")
    return {"repo": repo, "shas": shas}


def _config(tmp_path: Path, model: Path, cache: Path) -> Path:
    # a 2× slowdown must fail and a docs-only commit pass on a busy 2-core machine: a wide threshold
    models = [{"name": "tiny", "path": str(model), "thresholds": {"tg_ts": -20, "pp_ts": -20}}]
    builds = [{"name": "unused", "python": sys.executable}]
    return build_config(tmp_path, models, builds, cache, n_gen=16, repetitions=3)


def test_bisect_names_the_slowing_commit_and_skips_the_one_that_does_not_build(
    history: dict[str, Any], models_dir: Path, build_cache: Path, tmp_path: Path
) -> None:
    repo, shas = history["repo"], history["shas"]
    cfg = _config(tmp_path, models_dir / "tiny-Q4_0.gguf", build_cache)
    db = tmp_path / "b.sqlite"
    env = {"PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")}
    args = ["bisect", "--repo", str(repo), "--good", shas["good"], "--bad", shas["bad"], "--model", "tiny"]
    args += ["--metric", "tg_ts", "--config", str(cfg), "--db", str(db), "--budget-s", "120"]
    proc = bench_cli(*args, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"first bad commit: {shas['slow']} ggml-cpu: busy wait in graph compute" in proc.stdout
    tried = re.findall(r"^  ([0-9a-f]{12}) (good|bad |skip)", proc.stdout, re.M)
    assert (shas["broken"][:12], "skip") in tried
    # 7 commits after good: ⌈log2 7⌉ = 3 builds, plus the one skipped
    assert len(tried) <= 3 + sum(1 for _, mark in tried if mark == "skip")
    # steps are stored runs: resumed, nothing is built or measured again
    again = bench_cli(*args, "--resume", env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"first bad commit: {shas['slow']}" in again.stdout
    assert "0 commit(s) built and measured" in again.stdout


def test_bisect_finds_the_commit_that_breaks_loading(
    history: dict[str, Any], models_dir: Path, build_cache: Path, tmp_path: Path
) -> None:
    repo, shas = history["repo"], history["shas"]
    cfg = _config(tmp_path, models_dir / "tiny-Q4_0.gguf", build_cache)
    proc = bench_cli(
        "bisect", "--repo", str(repo), "--good", shas["bad"], "--bad", shas["c11"], "--model", "tiny",
        "--metric", "load", "--config", str(cfg), "--db", str(tmp_path / "l.sqlite"),
        env={"PERFGATE_RUN_LOCK": str(tmp_path / "run.lock")}, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"first bad commit: {shas['noload']} llama-arch: rename the llama architecture" in proc.stdout
    assert "unsupported_architecture" in proc.stdout or "load_failed" in proc.stdout


def test_search_is_a_bisection_over_an_oracle_with_skips() -> None:
    commits = [Commit(f"{i:040x}", f"c{i}", "") for i in range(1, 16)]
    first_bad, broken = 11, {7, 8}
    asked: list[int] = []

    def oracle(c: Commit) -> Step:
        i = int(c.sha, 16)
        asked.append(i)
        mark = Mark.SKIP if i in broken else (Mark.BAD if i >= first_bad else Mark.GOOD)
        return Step(c, mark, "")

    outcome = search(commits, oracle)
    assert outcome.first_bad is not None and outcome.first_bad.subject == "c11"
    assert len(asked) <= 4 + len(broken & set(asked))
    # skipped commits right before the first bad one: the answer is a range, not a guess
    outcome = search(commits, lambda c: Step(c, Mark.SKIP if int(c.sha, 16) in (9, 10) else oracle(c).mark, ""))
    assert outcome.first_bad is None and [c.subject for c in outcome.candidates] == ["c7", "c8", "c9", "c10", "c11"]
    assert search(commits, oracle, max_steps=1).exhausted


def test_bisect_bad_input_is_one_error(
    history: dict[str, Any], models_dir: Path, build_cache: Path, tmp_path: Path
) -> None:
    repo, shas = history["repo"], history["shas"]
    cfg = _config(tmp_path, models_dir / "tiny-Q4_0.gguf", build_cache)
    cases = [
        (["--good", "no-such-ref", "--bad", shas["bad"], "--model", "tiny"], "--good no-such-ref"),
        (["--good", shas["bad"], "--bad", shas["good"], "--model", "tiny"], "not an ancestor"),
        (["--good", shas["good"], "--bad", shas["bad"], "--model", "nope"], "no model named 'nope'"),
        (["--good", shas["good"], "--bad", shas["bad"], "--model", "tiny", "--metric", "speed"], "--metric"),
    ]
    for extra, expect in cases:
        proc = bench_cli(
            "bisect", "--repo", str(repo), *extra, "--config", str(cfg), "--db", str(tmp_path / "x.sqlite")
        )
        assert proc.returncode == 2 and expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
