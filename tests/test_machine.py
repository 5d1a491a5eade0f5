"""A Mac's GPU working-set limit, low-power mode and thermal state, parsed from real `sysctl` and `pmset` output
pasted in public issues (no Mac here: each sample names where it was pasted), and the runner's fit check held
to the working-set limit rather than to unified memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.config import load_config
from bench.engines import make_engine
from bench.machine import (
    MachineInfo,
    estimate_working_set,
    parse_low_power_mode,
    parse_thermal,
    parse_wired_limit_mb,
    working_set_limit,
)
from bench.metrics import Status
from bench.runner import Item, ModelFacts, PreparedBuild, _measure_item, device_budget

GIB = 2**30

MAC = Path(__file__).with_name("data") / "mac"  # each file's source: tests/data/mac/SOURCES.md
SYSCTL_SET_26000 = (MAC / "sysctl-set-26000-llmfit-570.txt").read_text()
# the same line as `sysctl iogpu.wired_limit_mb` reads it back before anyone set it (0: macOS's default)
SYSCTL_DEFAULT = "iogpu.wired_limit_mb: 0\n"
PMSET_G_MONTEREY = (MAC / "pmset-g-aldente-603.txt").read_text()
PMSET_THERM_APPLE_SILICON = (MAC / "pmset-therm-m1pro-stats-749.txt").read_text()
PMSET_THERMLOG_FULL = (MAC / "pmset-thermlog-full-menumeters-158.txt").read_text()
PMSET_THERMLOG_THROTTLED = (MAC / "pmset-thermlog-throttled-menumeters-158.txt").read_text()


def test_a_wired_limit_set_by_hand_overrides_the_default_working_set() -> None:
    assert parse_wired_limit_mb(SYSCTL_SET_26000) == 26000
    assert working_set_limit(32 * GIB, 26000) == (26000 * 2**20, "iogpu.wired_limit_mb")
    assert parse_wired_limit_mb(SYSCTL_DEFAULT) == 0
    assert parse_wired_limit_mb("0") == 0  # sysctl -n
    assert parse_wired_limit_mb("") is None  # no such sysctl (an Intel Mac, Linux)
    limit, source = working_set_limit(32 * GIB, 0)
    assert source == "estimate" and limit == estimate_working_set(32 * GIB)


def test_the_default_working_set_estimate_matches_what_metal_reported() -> None:
    # llama.cpp#2011, M1 Max 32 GB: "recommendedMaxWorkingSetSize = 21845.34 MB" (MiB, as ggml printed it then);
    # mlx-lm on a 16 GB M1 Mac mini: "the maximum recommended size of 10922 MB"
    assert abs(estimate_working_set(32 * GIB) / 2**20 - 21845.34) < 0.02  # type: ignore[operator]
    assert int(estimate_working_set(16 * GIB) / 2**20) == 10922  # type: ignore[operator]
    assert estimate_working_set(None) is None


def test_low_power_mode_is_read_from_pmset_g() -> None:
    assert parse_low_power_mode(PMSET_G_MONTEREY) is False
    # macOS 14- lists the setting as `powermode` (0 automatic, 1 low power, 2 high power): the line
    # jordibruin/cooldown#4 and jacklandrin/OnlySwitch#168 report in place of lowpowermode
    assert parse_low_power_mode(" powermode            1\n") is True
    assert parse_low_power_mode(" powermode            2\n") is False
    assert parse_low_power_mode(PMSET_THERM_APPLE_SILICON) is None


def test_thermal_state_is_read_from_pmset_therm() -> None:
    quiet = parse_thermal(PMSET_THERM_APPLE_SILICON)
    assert not quiet.throttled and quiet.summary == "no thermal pressure recorded"
    full = parse_thermal(PMSET_THERMLOG_FULL)
    assert not full.throttled and full.cpu_speed_limit == 100
    hot = parse_thermal(PMSET_THERMLOG_THROTTLED)
    assert hot.throttled and hot.summary == "CPU_Speed_Limit 28"


def _mac(limit_mb: int) -> MachineInfo:
    limit, source = working_set_limit(32 * GIB, limit_mb)
    return MachineInfo(
        hostname="studio",
        os="macOS-14.4-arm64",
        arch="arm64",
        cpu="Apple M1 Max",
        gpu="Apple M1 Max GPU (Metal)",
        host_mem_bytes=32 * GIB,
        device_budget_bytes=limit,
        gpu_kind="metal",
        gpu_working_set_bytes=limit,
        gpu_working_set_source=source,
    )


def test_fit_check_on_a_mac_holds_a_model_to_the_working_set_not_to_unified_memory(
    write_config: Callable[..., Path], models_dir: Path
) -> None:
    cfg = load_config(write_config([{"name": "big", "path": str(models_dir / "tiny-Q4_0.gguf")}]))
    mac = _mac(26000)
    budget, label = device_budget(cfg, mac)
    assert budget == 26000 * 2**20 and label == "the GPU working-set limit (iogpu.wired_limit_mb)"
    # 27 GiB of weights: less than the 32 GiB of unified memory, more than the GPU may wire
    facts = ModelFacts(models_dir / "tiny-Q4_0.gguf", 27 * GIB, 32, 4096, 1024, 32000, "llama")
    build = cfg.builds[0]
    prepared = PreparedBuild(make_engine(cfg, build).identify(), make_engine(cfg, build), None)
    m = _measure_item(
        cfg,
        Item(build, cfg.models[0], 0, 1),
        facts,
        prepared,
        gpu_expected=True,
        budget=budget,
        budget_label=label,
        force=False,
    )
    assert m.status == Status.SKIPPED_DOES_NOT_FIT
    assert "the GPU working-set limit (iogpu.wired_limit_mb) is 25.4 GiB" in m.reason
    override = cfg.model_copy(update={"suite": cfg.suite.model_copy(update={"device_budget_bytes": 40 * GIB})})
    assert device_budget(override, mac) == (40 * GIB, "suite.device_budget_bytes")
