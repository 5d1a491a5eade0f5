"""Builds from source, timed: cold build per source, a cache hit, and a ccache rebuild after a one-line change.

    .venv/bin/python benchmarks/build_cache.py [--sdists llama-cpp-python==0.2.57 llama-cpp-python==0.3.36]

Cold builds use a fresh cache folder with ccache disabled (CCACHE_DISABLE=1), so they are truly cold.
The rebuild goal (≤ 25% of the cold build) is measured on a git repository made from the vendored
llama.cpp: commit A built with ccache (filling it), then commit B, which changes one line of one .c file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.builds.cache import ensure_built  # noqa: E402
from bench.builds.compile import ccache  # noqa: E402
from bench.config import load_config  # noqa: E402
from tests.test_builds import copy_vendored  # noqa: E402

CMAKE_ARGS = ["-DGGML_NATIVE=OFF", "-DLLAMA_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
CMAKE_ARGS.append("-DLLAMA_BUILD_SERVER=OFF")


def _config(folder: Path, cache: Path, builds: list[dict[str, object]]) -> Path:
    path = folder / f"bench-{len(list(folder.glob('bench-*.yaml')))}.yaml"
    doc = {
        "models": [{"name": "x", "synth": {"shape": "tiny"}}],
        "builds": builds,
        "suite": {"cmake_args": CMAKE_ARGS, "build_cache": str(cache)},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _timed_build(cfg_path: Path) -> tuple[float, bool]:
    cfg = load_config(cfg_path, check_files=False)
    start = time.monotonic()
    record = ensure_built(cfg, cfg.builds[0])
    return time.monotonic() - start, record.ok


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b"}
    subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, env={**env, "GIT_COMMITTER_EMAIL": "b@b"}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdists", nargs="+", default=["llama-cpp-python==0.2.57", "llama-cpp-python==0.3.36"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="perfgate-buildbench-"))
    print(f"machine: {os.cpu_count()} cores; ccache: {ccache() or 'not installed'}")
    try:
        os.environ["CCACHE_DISABLE"] = "1"
        for spec in args.sdists:
            cache = work / f"cold-{spec}"
            cfg = _config(work, cache, [{"name": "b", "engine": "llama-bench", "source": {"sdist": spec}}])
            cold, ok = _timed_build(cfg)
            hit, _ = _timed_build(cfg)
            print(
                f"{spec:28s} cold build {cold:7.1f} s ({'ok' if ok else 'FAILED'}); cache hit {hit:5.2f} s (goal ≤ 1 s)"
            )
        del os.environ["CCACHE_DISABLE"]
        if not ccache():
            print("ccache not installed: no rebuild figure")
            return
        repo = work / "repo"
        copy_vendored(repo)
        _git(repo, "init", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "A")
        cache = work / "git-cache"
        a = _config(work, cache, [{"name": "a", "engine": "llama-bench", "source": {"git": str(repo), "ref": "HEAD"}}])
        os.environ["CCACHE_DISABLE"] = "1"
        cold, _ = _timed_build(a)
        del os.environ["CCACHE_DISABLE"]
        shutil.rmtree(cache)
        warm, _ = _timed_build(a)  # fills ccache with commit A's objects
        source = repo / "ggml" / "src" / "ggml-alloc.c"
        source.write_text(source.read_text() + "\nint perfgate_bench_change(void) { return 2; }\n")
        _git(repo, "commit", "-qam", "B: one line in ggml-alloc.c")
        b = _config(work, cache, [{"name": "b", "engine": "llama-bench", "source": {"git": str(repo), "ref": "HEAD"}}])
        rebuild, ok = _timed_build(b)
        print(
            f"git repo (llama.cpp of 0.3.36): cold {cold:.1f} s without ccache; first build with ccache {warm:.1f} s; "
            f"one-line change rebuild {rebuild:.1f} s = {rebuild / cold:.0%} of cold (goal ≤ 25%)"
            + ("" if ok else " FAILED")
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
