"""One model through every engine on this machine, side by side, and what the matrix costs around them.

    .venv/bin/python benchmarks/engines_side_by_side.py [--shape small] [--koboldcpp PATH] [--repetitions 5]

Engines: llama-bench built from the llama.cpp vendored in llama-cpp-python 0.3.36 (`bench build`),
perfgate's worker on the installed llama-cpp-python 0.3.36 (the same llama.cpp), and KoboldCPP when a
checkout is given (it is not built here). Prints t/s per engine with the ratio to llama-bench, then the
wall time of `bench run` over all of them against the sum of each engine's own commands run bare
(goal: ≤ 1.15×).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.config import load_config  # noqa: E402
from bench.engines import make_engine  # noqa: E402
from bench.engines.base import ItemSpec  # noqa: E402
from bench.runner import prepare_builds, read_model_facts, run_matrix  # noqa: E402
from bench.store.db import open_store  # noqa: E402
from bench.store.queries import results_frame  # noqa: E402
from bench.synth import SynthSpec, synthesize  # noqa: E402

CMAKE_ARGS = ["-DGGML_NATIVE=OFF", "-DLLAMA_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF"]
CMAKE_ARGS.append("-DLLAMA_BUILD_SERVER=OFF")


def _bare(argv_spec: object) -> float:
    """Run one engine process without perfgate around it (its files in a temp folder), timed."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = argv_spec(lambda name: str(Path(tmp) / name))  # type: ignore[operator]
        for name, content in spec.files.items():
            Path(tmp, name).write_text(content)
        out = open(Path(tmp, spec.stdout_file), "wb") if spec.stdout_file else subprocess.DEVNULL  # noqa: SIM115
        start = time.monotonic()
        subprocess.run(spec.argv, env=spec.env, stdout=out, stderr=subprocess.DEVNULL, check=False)
        took = time.monotonic() - start
        if spec.stdout_file:
            out.close()  # type: ignore[union-attr]
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="small")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--koboldcpp", type=Path, help="a KoboldCPP checkout with its library built")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perfgate-engines-") as tmp:
        work = Path(tmp)
        model = work / f"{args.shape}.gguf"
        synthesize(SynthSpec(args.shape, "Q4_0"), model)
        builds: list[dict[str, object]] = [
            {"name": "llama-bench", "engine": "llama-bench", "source": {"sdist": "llama-cpp-python==0.3.36"}},
            {"name": "llama-cpp-python", "python": sys.executable},
        ]
        if args.koboldcpp:
            builds.append({"name": "koboldcpp", "engine": "koboldcpp", "path": str(args.koboldcpp)})
        cfg_path = work / "engines.yaml"
        suite = {
            "n_prompt": 412,  # KoboldCPP's prompt at context 512; the others measure the same length
            "n_gen": 100,
            "repetitions": args.repetitions,
            "threads": args.threads,
            "expect_gpu": False,
            "cmake_args": CMAKE_ARGS,
        }
        cfg_path.write_text(
            yaml.safe_dump({"models": [{"name": "m", "path": str(model)}], "builds": builds, "suite": suite})
        )
        config = load_config(cfg_path)
        prepare_builds(config)  # build (or find) llama-bench before anything is timed
        facts = read_model_facts(model)
        item = ItemSpec(model, 412, 100, args.repetitions, 1, -1, 2048, 512, args.threads, "auto", 0, facts.n_layer)
        bare = 0.0
        for build in config.builds:
            from bench.builds.cache import ensure_built

            record = ensure_built(config, build) if build.source else None
            for make in make_engine(config, build, record).processes(item):
                bare += _bare(make)
        with open_store(f"sqlite:///{work / 'e.sqlite'}") as store:
            start = time.monotonic()
            run_id = run_matrix(store, config, show_progress=False)
            matrix = time.monotonic() - start
            with store.session() as session:
                frame = results_frame(session, [run_id]).set_index("build")
    ref = frame.loc["llama-bench"]
    print(
        f"model: synthetic {args.shape} Q4_0, pp412 / tg100, {args.repetitions} repetitions, {args.threads} thread(s)"
    )
    print(f"{'engine':18s} {'status':8s} {'pp t/s':>10s} {'ratio':>7s} {'tg t/s':>10s} {'ratio':>7s}")
    for name, row in frame.iterrows():
        print(
            f"{name:18s} {row['status']:8s} {row['pp_ts']:10.1f} {row['pp_ts'] / ref['pp_ts']:7.3f} "
            f"{row['tg_ts']:10.1f} {row['tg_ts'] / ref['tg_ts']:7.3f}"
        )
    print(
        f"matrix wall {matrix:.1f} s; engines' own commands run bare {bare:.1f} s; "
        f"overhead {matrix / bare:.2f}× (goal ≤ 1.15×)"
    )
    print(f"(cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
