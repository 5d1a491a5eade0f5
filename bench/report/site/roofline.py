"""Generation speed against the memory-bandwidth roofline.

Generating one token reads every weight once, so tokens/s × model bytes cannot exceed the device's memory
bandwidth: a result above 100% of that roofline is a measurement error, not a fast build."""

from __future__ import annotations

import re

# peak memory bandwidth in GB/s (vendor figures); the most specific name is matched first
KNOWN_CHIPS_GBS: dict[str, float] = {
    "M1 Ultra": 800,
    "M1 Max": 400,
    "M1 Pro": 200,
    "M1": 68.25,
    "M2 Ultra": 800,
    "M2 Max": 400,
    "M2 Pro": 200,
    "M2": 100,
    "M3 Ultra": 819,
    "M3 Max": 400,
    "M3 Pro": 150,
    "M3": 100,
    "M4 Max": 546,
    "M4 Pro": 273,
    "M4": 120,
    "H200": 4800,
    "H100 PCIe": 2000,
    "H100 NVL": 3900,
    "H100": 3350,
    "A100-SXM4-80GB": 2039,
    "A100 80GB": 1935,
    "A100": 1555,
    "L40S": 864,
    "L4": 300,
    "A10G": 600,
    "A10": 600,
    "T4": 320,
    "V100": 900,
    "RTX 4090": 1008,
    "RTX 4080": 717,
    "RTX 3090": 936,
    "RTX 3080": 760,
}
_PATTERNS = [
    (re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE), gbs)
    for name, gbs in sorted(KNOWN_CHIPS_GBS.items(), key=lambda kv: -len(kv[0]))
]


def known_bandwidth_gbs(device: object) -> float | None:
    """The bandwidth of a device named like 'NVIDIA H100 80GB HBM3' or 'Apple M2 Max', if known (a machine
    without a GPU reads as None, or NaN from a frame)."""
    if not isinstance(device, str) or not device:
        return None
    for pattern, gbs in _PATTERNS:
        if pattern.search(device):
            return gbs
    return None


def machine_bandwidth_gbs(
    configured: dict[str, float], hostname: str, fingerprint: str, gpu: object, cpu: object
) -> float | None:
    """`dashboard.bandwidth_gbs` by hostname, fingerprint or GPU name first, then the table (GPU, then CPU:
    an Apple chip is both)."""
    for key in (hostname, fingerprint, gpu if isinstance(gpu, str) else "", cpu if isinstance(cpu, str) else ""):
        if key in configured:
            return configured[key]
    return known_bandwidth_gbs(gpu) or known_bandwidth_gbs(cpu)
