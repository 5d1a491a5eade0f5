"""KoboldCPP from its git tags: a real KoboldCPP tree (v1.61, exported from a mirror where one is on this machine;
its code is never committed) given to `bench build` as a `git` source and as a `dir` source, with the second seed's
stale leftover (`Makefile.local`) beside its real Makefile."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.builds.cache import plan_build
from bench.builds.source import export
from bench.config import load_config

STALE = "# left behind by an earlier build: compiles ggml.c a second time\nOBJS += ggml.o\n"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True).stdout


def _config(tmp_path: Path, cache: Path, source: dict[str, Any]) -> Path:
    doc = {
        "models": [{"name": "m", "synth": {"shape": "tiny", "quant": "Q4_0"}}],
        "builds": [
            {
                "name": "kcpp-1.61",
                "engine": "koboldcpp",
                "system": "make",
                "make_vars": {"LLAMA_PORTABLE": 1},
                "source": source,
            }
        ],
        "suite": {"build_cache": str(cache)},
    }
    path = tmp_path / f"kobold-{len(list(tmp_path.glob('kobold-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _plan(tmp_path: Path, cache: Path, source: dict[str, Any]) -> Any:
    cfg = load_config(_config(tmp_path, cache, source), check_files=False)
    return plan_build(cfg, cfg.builds[0])


def test_a_stale_makefile_local_is_in_a_dir_builds_identity_and_out_of_a_git_builds_export(
    kobold: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = tmp_path / "koboldcpp"
    subprocess.run(["cp", "-a", f"{kobold('v1.61')}/.", str(repo)], check=True)
    assert "koboldcpp_default" in (repo / "Makefile").read_text()  # the real KoboldCPP Makefile
    _git(repo, "init", "-q", "-b", "concedo")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1.61")
    _git(repo, "tag", "v1.61")
    cache = tmp_path / "cache"
    clean_git = _plan(tmp_path, cache, {"git": str(repo), "ref": "v1.61"})
    clean_dir = _plan(tmp_path, cache, {"dir": str(repo)})
    assert not clean_dir.resolved.dirty and clean_dir.resolved.untracked == ()

    (repo / "Makefile.local").write_text(STALE)
    stale_dir = _plan(tmp_path, cache, {"dir": str(repo)})
    stale_git = _plan(tmp_path, cache, {"git": str(repo), "ref": "v1.61"})
    # a dir source: the leftover is recorded and is part of the identity (another content, another key)
    assert stale_dir.resolved.dirty and stale_dir.resolved.untracked == ("Makefile.local",)
    assert stale_dir.key != clean_dir.key
    (repo / "Makefile.local").write_text(STALE + "OBJS += ggml.o\n")
    assert _plan(tmp_path, cache, {"dir": str(repo)}).key != stale_dir.key
    # a git source: the clean export of the tag has no leftover, and the key does not see it
    assert stale_git.key == clean_git.key and stale_git.resolved.untracked == ()
    tree = export(stale_git.resolved, tmp_path / "export", cache)
    assert (tree / "Makefile").exists() and (tree / "koboldcpp.py").exists()
    assert not (tree / "Makefile.local").exists()
    # ...while a dir source is built as it is, leftover included (which is why its identity holds it)
    assert (export(stale_dir.resolved, tmp_path / "export-dir", cache) / "Makefile.local").read_text().startswith(STALE)
    # the user's tree is as it was: perfgate wrote nothing into it
    assert (repo / "Makefile.local").read_text().count("OBJS") == 2
    assert _git(repo, "status", "--porcelain").splitlines() == ["?? Makefile.local"]
