from __future__ import annotations

import csv
import json

import pytest

from bench.diagnose import ExitInfo, classify, parse_memory
from bench.metrics import STATUSES
from tests.conftest import SHARED_LOGS, bench_cli

MANIFEST = list(csv.DictReader((SHARED_LOGS / "MANIFEST.tsv").open(), delimiter="\t"))


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_every_shared_log_classifies_as_its_manifest_says(row: dict[str, str]) -> None:
    text = (SHARED_LOGS / row["file"]).read_text(errors="replace")
    diag = classify(text, expect_gpu=row["expect_gpu"] == "yes")
    assert diag.status == row["expected_category"], diag.reason
    assert diag.reason and diag.status in STATUSES


def test_manifest_covers_the_logs_on_disk() -> None:
    on_disk = {str(p.relative_to(SHARED_LOGS)) for p in SHARED_LOGS.rglob("*.log")}
    assert on_disk == {r["file"] for r in MANIFEST}


def test_cli_prints_one_json_line_per_file() -> None:
    files = [
        SHARED_LOGS / "shader_compile_failed/koboldcpp-1.61-m1max-q8.log",
        SHARED_LOGS / "partial_offload/cuda-39-of-41.log",
    ]
    proc = bench_cli("classify-log", *map(str, files), "--expect-gpu")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["status"] for x in lines] == ["shader_compile_failed", "partial_offload"]
    assert "ggml-common.h" in lines[0]["reason"]
    assert lines[1]["offloaded"] == [39, 41]
    assert lines[1]["memory"]["model"]["CUDA1"] == int(22730.30 * 2**20)


def test_seed_bug_reason_quotes_the_shader_error_not_the_generic_line() -> None:
    text = (SHARED_LOGS / "shader_compile_failed/llama-cpp-python-m2max-after-offload.log").read_text()
    diag = classify(text, expect_gpu=True)
    assert "program_source" in diag.reason and diag.offloaded == (25, 25) and diag.backend == "Metal"


def test_metal_memory_and_working_set_are_read() -> None:
    mem = parse_memory((SHARED_LOGS / "ok/metal-phi2-localai.log").read_text().splitlines())
    assert mem["kv"] == {"Metal": 160 * 2**20}
    assert mem["compute"]["Metal"] == 105 * 2**20
    assert mem["device_budget_bytes"] == 11453250000


# Written for kinds of failure, not for the shared files: variants worded differently must classify too.
@pytest.mark.parametrize(
    ("log", "expect_gpu", "status"),
    [
        (
            "ggml_vulkan: Device memory allocation of size 123 failed.\nvk::Device::allocateMemory: "
            "ErrorOutOfDeviceMemory",
            True,
            "out_of_memory",
        ),
        (
            "llama_model_load: error loading model: llama_model_loader: failed to load model from x.gguf\n"
            "gguf_init_from_file_impl: failed to read magic",
            False,
            "invalid_gguf",
        ),
        ("gguf_init_from_file: failed to open GGUF file 'm.gguf' (No such file or directory)", False, "file_not_found"),
        (
            "load_tensors: offloaded 0/81 layers to GPU\nload_tensors: CPU_Mapped model buffer size = 9.00 MiB",
            True,
            "cpu_fallback",
        ),
        (
            "load_tensors: offloaded 81/81 layers to GPU\nload_tensors: CUDA0 model buffer size = 37000.00 MiB\n"
            "llama_init_from_model: failed to initialize the context: failed to initialize Metal backend",
            True,
            "metal_init_failed",
        ),
        (
            "load_tensors: offloaded 33/33 layers to GPU\nload_tensors: CUDA0 model buffer size = 1.00 MiB\n"
            "llama_init_from_model: failed to initialize the context",
            True,
            "context_failed",
        ),
        ("OSError: libggml-metal.dylib: cannot open shared object file", True, "build_failed"),
    ],
)
def test_variants_of_each_kind(log: str, expect_gpu: bool, status: str) -> None:
    assert classify(log, expect_gpu=expect_gpu).status == status


def test_exit_information_decides_crash_timeout_and_oom_kill() -> None:
    assert classify("llama_decode: ...", expect_gpu=False, exit_info=ExitInfo(returncode=-6)).reason.startswith(
        "SIGABRT"
    )
    assert classify("x", expect_gpu=False, exit_info=ExitInfo(-9, timed_out=True, timeout_s=3)).status == "timeout"
    assert classify("x", expect_gpu=False, exit_info=ExitInfo(-9)).status == "out_of_memory"
    assert classify("ok line", expect_gpu=False, exit_info=ExitInfo(0)).status == "ok"


def test_fewer_layers_asked_than_the_model_has_is_partial() -> None:
    log = "load_tensors: offloaded 2/33 layers to GPU\nload_tensors: CUDA0 model buffer size = 1.00 MiB"
    assert classify(log, expect_gpu=True, layers_requested=2).status == "partial_offload"
    assert classify(log, expect_gpu=True, layers_requested=99).status == "partial_offload"
    full = log.replace("2/33", "33/33")
    assert classify(full, expect_gpu=True).status == "ok"
