"""`bench metal-check` on real trees: the llama.cpp vendored in llama-cpp-python 0.2.55, 0.2.56, 0.2.57 and 0.3.36
(sdists from PyPI, cached under ~/.cache/perfgate like the build tests'), KoboldCPP v1.60.1 and v1.61 where a
mirror of it is on this machine; and its predictions stored, gated and shown through the real CLI and SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench.builds.metal import Mode, Prediction, Recipe, agreement, check_artifacts, check_tree
from bench.builds.source import fetch_sdist
from tests.conftest import PYTHON, bench_cli

MAKE_METAL = Recipe("make", {"LLAMA_METAL": "1"}, [], ["libllama.so"])
MAKE_EMBED = Recipe("make", {"LLAMA_METAL": "1", "LLAMA_METAL_EMBED_LIBRARY": "1"}, [], ["libllama.so"])


@pytest.fixture(scope="session")
def vendored(build_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """llama-cpp-python==VERSION's vendor/llama.cpp, from its sdist (downloaded once into the test cache)."""
    trees: dict[str, Path] = {}

    def tree(version: str) -> Path:
        if version not in trees:
            sdist = fetch_sdist(f"llama-cpp-python=={version}", build_cache, "test")
            dest = tmp_path_factory.mktemp(f"llama-cpp-python-{version}")
            with tarfile.open(sdist) as tar:
                wanted = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
                tar.extractall(dest, members=wanted, filter="tar")
            trees[version] = next(dest.glob("*/vendor/llama.cpp"))
        return trees[version]

    return tree


def _check(tree: Path, recipe: Recipe) -> Prediction:
    return check_tree(tree, recipe, target="t", source=str(tree))


def _shown(p: Prediction) -> list[str]:
    return [str(e) for e in p.evidence]


@pytest.mark.parametrize("version", ["0.2.55", "0.2.56"])
def test_early_march_2024_shaders_include_no_header_so_the_runtime_compile_loads(
    vendored: Callable[[str], Path], version: str
) -> None:
    tree = vendored(version)
    assert not (tree / "ggml-common.h").exists()
    p = _check(tree, MAKE_METAL)
    # decided from the real code: this ggml-metal.metal includes only <metal_stdlib>, nothing a compile of the
    # source string could miss (as KoboldCPP 1.60.1, which worked)
    assert p.mode is Mode.SOURCE and p.loads
    assert any(e.startswith("ggml-metal.m:") and "newLibraryWithSource" in e for e in _shown(p))
    assert any("Makefile:535: MK_CPPFLAGS += -DGGML_USE_METAL" in e for e in _shown(p))


def test_0_2_57_make_metal_without_embed_predicts_shader_compile_failed(vendored: Callable[[str], Path]) -> None:
    p = _check(vendored("0.2.57"), MAKE_METAL)
    assert p.mode is Mode.SOURCE_UNRESOLVED and p.predicted_status == "shader_compile_failed"
    shown = _shown(p)
    assert 'ggml-metal.metal:3: #include "ggml-common.h" — not found at load time' in shown
    assert any("Makefile:549: ifdef LLAMA_METAL_EMBED_LIBRARY" in e and "not set" in e for e in shown)
    assert any(e.startswith("ggml-metal.m:364:") and "no include path" in e for e in shown)


def test_0_2_57_make_embed_library_inlines_the_header(vendored: Callable[[str], Path]) -> None:
    p = _check(vendored("0.2.57"), MAKE_EMBED)
    assert p.mode is Mode.EMBEDDED and p.loads
    shown = _shown(p)
    assert "Makefile:560: ggml-metal-embed.o: ggml-metal.metal ggml-common.h — inlines ggml-common.h" in shown
    assert any(e.startswith("ggml-metal.m:298: #if GGML_METAL_EMBED_LIBRARY") for e in shown)


def test_0_2_57_make_on_a_mac_turns_metal_on_by_default(vendored: Callable[[str], Path]) -> None:
    p = _check(vendored("0.2.57"), Recipe("make", {}, [], ["libllama.so"]))
    assert p.mode is Mode.SOURCE_UNRESOLVED
    assert any(e.startswith("Makefile:33: LLAMA_METAL := 1") for e in _shown(p))


def test_0_2_57_cmake_builds_default_metallib_only_when_its_target_is_built(vendored: Callable[[str], Path]) -> None:
    tree = vendored("0.2.57")
    # perfgate builds `--target llama`: the ALL target that compiles default.metallib is not made
    narrow = _check(tree, Recipe("cmake", {}, [], ["llama"]))
    assert narrow.mode is Mode.SOURCE_UNRESOLVED
    assert any("CMakeLists.txt:263: add_custom_target(ggml-metal ALL" in e and "not built" in e for e in _shown(narrow))
    assert _check(tree, Recipe("cmake", {}, [], [])).mode is Mode.METALLIB
    embed = _check(tree, Recipe("cmake", {}, ["-DLLAMA_METAL_EMBED_LIBRARY=ON"], ["llama"]))
    assert embed.mode is Mode.EMBEDDED
    assert any(e.startswith("CMakeLists.txt:114: option(LLAMA_METAL_EMBED_LIBRARY") for e in _shown(narrow))


def test_0_3_36_cmake_embeds_by_default_and_reads_the_2024_spelling(vendored: Callable[[str], Path]) -> None:
    tree = vendored("0.3.36")
    p = _check(tree, Recipe("cmake", {}, [], ["llama"]))
    assert p.mode is Mode.EMBEDDED
    shown = _shown(p)
    assert any(e.startswith("ggml/CMakeLists.txt:241: option(GGML_METAL_EMBED_LIBRARY") for e in shown)
    assert any(e.startswith("ggml/src/ggml-metal/CMakeLists.txt:") and "ggml-common.h" in e for e in shown)
    old = _check(tree, Recipe("cmake", {}, ["-DLLAMA_METAL_EMBED_LIBRARY=ON"], ["llama"]))
    assert any("llama_option_depr" in e or "→ GGML_METAL_EMBED_LIBRARY" in e for e in _shown(old))
    off = _check(tree, Recipe("cmake", {}, ["-DGGML_METAL_EMBED_LIBRARY=OFF"], ["llama"]))
    # the kernels are looked for in kernels/ beside the library; the build cache keeps .metal files flat
    assert off.mode is Mode.MISSING and off.predicted_status == "metal_init_failed"
    assert _check(tree, Recipe("cmake", {}, ["-DGGML_METAL=OFF"], ["llama"])).mode is Mode.NO_METAL
    assert _check(tree, MAKE_METAL).mode is Mode.NO_METAL  # the Makefile of 2025 only says "use CMake"


def test_koboldcpp_1_60_1_loads_and_1_61_fails_with_gpulayers(kobold: Callable[[str], Path]) -> None:
    good = _check(kobold("v1.60.1"), MAKE_METAL)
    assert good.mode is Mode.SOURCE and not (kobold("v1.60.1") / "ggml-common.h").exists()
    bad = _check(kobold("v1.61"), MAKE_EMBED)
    assert bad.mode is Mode.SOURCE_UNRESOLVED
    shown = _shown(bad)
    assert 'ggml-metal.metal:4: #include "ggml-common.h" — not found at load time' in shown
    # 1.61's Makefile has no embed switch: asking for one changes nothing
    assert "recipe: LLAMA_METAL_EMBED_LIBRARY=1 — no line of this Makefile reads it" in shown


def test_a_metal_source_copied_without_its_header_is_unresolved_and_beside_it_still_is(
    vendored: Callable[[str], Path], tmp_path: Path
) -> None:
    tree = vendored("0.2.57")
    release = tmp_path / "bin"
    release.mkdir()
    (release / "ggml-metal.metal").write_bytes((tree / "ggml-metal.metal").read_bytes())
    alone = check_artifacts(release, target="bin", source=str(release))
    assert alone is not None and alone.mode is Mode.SOURCE_UNRESOLVED
    (release / "ggml-common.h").write_bytes((tree / "ggml-common.h").read_bytes())
    beside = check_artifacts(release, target="bin", source=str(release))
    # the loader of 2024 compiles the file's text with no include path (llama.cpp#5977)
    assert beside is not None and beside.mode is Mode.SOURCE_UNRESOLVED
    assert any("beside it, but not found" in str(e) for e in beside.evidence)
    self_contained = tmp_path / "older"
    self_contained.mkdir()
    (self_contained / "ggml-metal.metal").write_bytes((vendored("0.2.56") / "ggml-metal.metal").read_bytes())
    older = check_artifacts(self_contained, target="older", source=str(self_contained))
    assert older is not None and older.mode is Mode.SOURCE
    assert check_artifacts(tmp_path / "older", target="x", source="x") is not None
    empty = tmp_path / "cpu-only"
    empty.mkdir()
    (empty / "README").write_text("no Metal here")
    assert check_artifacts(empty, target="x", source="x") is None


def test_a_load_that_never_reached_metal_neither_confirms_nor_refutes(vendored: Callable[[str], Path]) -> None:
    failing = _check(vendored("0.2.57"), MAKE_METAL)
    loading = _check(vendored("0.2.57"), MAKE_EMBED)
    assert agreement(failing, "shader_compile_failed") == "agree"
    assert agreement(failing, "ok") == "disagree"
    assert agreement(loading, "shader_compile_failed") == "disagree"
    assert agreement(loading, "partial_offload") == "agree"
    assert agreement(failing, "skipped_does_not_fit") == "unjudged"


# -- the CLI, the store, the gate and the dashboard --------------------------------------------------------


def _seed_config(tmp_path: Path, build_cache: Path, models_dir: Path) -> Path:
    doc = {
        "models": [{"name": "tiny", "path": str(models_dir / "tiny-Q4_0.gguf")}],
        "builds": [
            {
                "name": "embedded",
                "source": {"sdist": "llama-cpp-python==0.2.57"},
                "system": "make",
                "make_vars": {"LLAMA_METAL": 1, "LLAMA_METAL_EMBED_LIBRARY": 1},
            },
            {
                "name": "runtime-source",
                "source": {"sdist": "llama-cpp-python==0.2.57"},
                "system": "make",
                "make_vars": {"LLAMA_METAL": 1},
            },
        ],
        "suite": {"n_prompt": 16, "n_gen": 4, "repetitions": 2, "threads": 1, "build_cache": str(build_cache)},
    }
    path = tmp_path / "seed.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_cli_predicts_each_build_with_exit_code_and_json(tmp_path: Path, build_cache: Path, models_dir: Path) -> None:
    cfg = _seed_config(tmp_path, build_cache, models_dir)
    both = bench_cli("metal-check", "--config", str(cfg), "--format", "json")
    assert both.returncode == 1, both.stderr
    found = {p["build"]: p for p in json.loads(both.stdout)["predictions"]}
    assert found["embedded"]["mode"] == "embedded" and found["embedded"]["loads"] is True
    assert found["runtime-source"]["predicted_status"] == "shader_compile_failed"
    assert found["runtime-source"]["evidence"][-1]["text"] == '#include "ggml-common.h"'
    assert bench_cli("metal-check", "embedded", "--config", str(cfg)).returncode == 0
    text = bench_cli("metal-check", "runtime-source", "--config", str(cfg))
    assert text.returncode == 1
    assert "runtime-source: source_unresolved — predicted shader_compile_failed" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-build"], "no-such-build: not a build of the config"),
        (["--system", "ninja", "."], "--system: expected make or cmake"),
        (["--make-var", "LLAMA_METAL", "."], "--make-var: expected NAME=VALUE"),
        (["--format", "yaml", "."], "--format: expected one of text, json"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(
    tmp_path: Path, build_cache: Path, models_dir: Path, args: list[str], message: str
) -> None:
    cfg = _seed_config(tmp_path, build_cache, models_dir)
    proc = bench_cli("metal-check", "--config", str(cfg), *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_config_problem_names_its_file_line_and_field(tmp_path: Path, build_cache: Path, models_dir: Path) -> None:
    cfg = _seed_config(tmp_path, build_cache, models_dir)
    doc = yaml.safe_load(cfg.read_text())
    doc["builds"][1]["source"] = {"pip": "llama-cpp-python==0.2.57"}
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = bench_cli("metal-check", "runtime-source", "--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {cfg}:") and "builds[1].source.pip" in proc.stderr


def test_recorded_prediction_is_stored_gated_and_shown_as_predicted(
    tmp_path: Path, build_cache: Path, models_dir: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'perfgate.sqlite'}"
    cfg = _seed_config(tmp_path, build_cache, models_dir)
    recorded = bench_cli("metal-check", "--config", str(cfg), "--record", "--db", db)
    assert recorded.returncode == 1, recorded.stderr
    assert "(machine metal-check, predicted)" in recorded.stdout
    rows = json.loads(bench_cli("results", "--all", "--format", "json", "--db", db).stdout)
    stored = {r["build"]: r for r in rows}
    assert stored["runtime-source"]["status"] == "shader_compile_failed"
    assert stored["runtime-source"]["reason"].startswith("predicted by bench metal-check:")
    assert 'ggml-metal.metal:3: #include "ggml-common.h"' in stored["runtime-source"]["reason"]
    assert stored["embedded"]["status"] == "ok"
    assert {r["machine"] for r in rows} == {"metal-check"} and {r["source"] for r in rows} == {"metal-check"}

    # nothing measured yet: the predictions are the sides, and the predicted failure fails the gate
    only = bench_cli("gate", "--baseline", "embedded", "--candidate", "runtime-source", "--db", db)
    assert only.returncode == 1, only.stderr
    assert "shader_compile_failed" in only.stdout and "predicted by bench metal-check" in only.stdout

    # measured here (Linux CPU, the same build names through this interpreter): the measurement is compared,
    # and the prediction for a Mac still fails the candidate
    measured = tmp_path / "measured.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["builds"] = [{"name": "embedded", "python": PYTHON}, {"name": "runtime-source", "python": PYTHON}]
    measured.write_text(yaml.safe_dump(doc, sort_keys=False))
    run = bench_cli("run", "--config", str(measured), "--db", db, "--quiet", "--wait")
    assert run.returncode == 0, run.stderr
    gate = bench_cli("gate", "--baseline", "embedded", "--candidate", "runtime-source", "--db", db, "--format", "json")
    verdict = json.loads(gate.stdout)
    assert gate.returncode == 1 and verdict["verdict"] == "fail"
    predicted = [c for c in verdict["checks"] if c["metric"] == "predicted"]
    assert [c["outcome"] for c in predicted] == ["fail"]
    assert "the baseline is predicted ok" in predicted[0]["message"]
    assert {c["outcome"] for c in verdict["checks"] if c["metric"] == "load"} == {"pass"}  # measured: both load here
    # the reverse pair carries no predicted failure of its candidate
    reverse = bench_cli(
        "gate", "--baseline", "runtime-source", "--candidate", "embedded", "--db", db, "--format", "json"
    )
    assert not [c for c in json.loads(reverse.stdout)["checks"] if c["metric"] == "predicted"]

    # --verify on a machine without Metal judges nothing
    checked = bench_cli("metal-check", "runtime-source", "--config", str(cfg), "--verify", "--db", db)
    assert checked.returncode == 0, checked.stderr
    assert "unjudged: runtime-source × tiny: predicted shader_compile_failed, measured ok" in checked.stdout

    site = tmp_path / "site"
    assert bench_cli("dashboard", "--db", db, "--out", str(site)).returncode == 0
    predicted_run = next(r["run_id"] for r in rows)
    page = (site / "run" / f"{predicted_run}.html").read_text()
    assert "Predicted by" in page and '<span class="offload">predicted</span>' in page


def test_job_script_predicts_before_the_run_and_verify_without_a_measurement_is_an_error(
    tmp_path: Path, build_cache: Path, models_dir: Path
) -> None:
    cfg = _seed_config(tmp_path, build_cache, models_dir)
    env = {
        **os.environ,
        "BENCH": str(Path(PYTHON).with_name("bench")),
        "PERFGATE_CONFIG": str(cfg),
        "PERFGATE_LOCAL_DB": str(tmp_path / "runner.sqlite"),
        "PERFGATE_OUT": str(tmp_path / "out"),
    }
    job = str(Path(__file__).resolve().parents[1] / "ci" / "perf-job.sh")
    check = subprocess.run(["bash", job, "metal-check"], env=env, capture_output=True, text=True, timeout=600)
    # a predicted failure is what the seed job expects of one build: the stage passes and keeps the prediction
    assert check.returncode == 0, check.stderr
    kept = (tmp_path / "out" / "metal-check.txt").read_text()
    assert "runtime-source: source_unresolved — predicted shader_compile_failed" in kept
    assert "embedded: embedded — loads" in kept
    verify = subprocess.run(["bash", job, "metal-verify"], env=env, capture_output=True, text=True, timeout=600)
    assert verify.returncode == 2
    assert verify.stderr.startswith("error: ") and "no database there yet" in verify.stderr  # nothing measured yet


def test_a_source_folder_is_read_with_the_recipe_given_on_the_command_line(vendored: Callable[[str], Path]) -> None:
    tree = str(vendored("0.2.57"))
    # the tree's own ggml-metal.metal is no build: the recipe decides
    embed = bench_cli("metal-check", tree, "--system", "make", "--make-var", "LLAMA_METAL=1",
                      "--make-var", "LLAMA_METAL_EMBED_LIBRARY=1")  # fmt: skip
    assert embed.returncode == 0 and ": embedded — loads" in embed.stdout, embed.stdout + embed.stderr
    plain = bench_cli("metal-check", tree, "--system", "make", "--make-var", "LLAMA_METAL=1", "--format", "json")
    assert plain.returncode == 1
    assert json.loads(plain.stdout)["predictions"][0]["mode"] == "source_unresolved"
    cmake = bench_cli("metal-check", tree, "--cmake-arg=-DLLAMA_METAL_EMBED_LIBRARY=ON")
    assert cmake.returncode == 0 and ": embedded — loads" in cmake.stdout
