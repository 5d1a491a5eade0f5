"""What every page shares: the templates, their environment, JSON for the charts, the outcome names."""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bench.analysis.gate import Verdict
from bench.escape import json_text as escaped_json
from bench.escape import visible_value
from bench.metrics import METRICS
from bench.package_data import data_dir
from bench.report import render

TEMPLATES = data_dir("bench._templates", "dashboard/templates")
STATIC = ("style.css", "site.js")


@functools.cache
def code_version(*modules: str) -> str:
    """Templates, the code that fills them and `modules`: a change to any rewrites the pages that use it.
    Read once per process, so an edit during a build cannot mix two versions in one site."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    sources = [*sorted(TEMPLATES.iterdir()), *sorted(here.glob("*.py"))]
    sources += [here.parents[1] / name for name in modules]  # relative to bench/
    for path in sources:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=visible_value,  # a control character in a name is shown, not passed to the browser
    )
    env.filters.update(
        bytes=render.human_bytes,
        ts=render.fmt_ts,
        metric=render.fmt_metric,
        num=lambda v, d=3: "–" if render.missing(v) else f"{v:.{d}f}",
        pct=lambda v: "–" if render.missing(v) else f"{v:.0f}%",
    )
    env.tests["missing"] = render.missing
    env.globals["METRICS"] = METRICS
    return env


def plain(value: Any) -> Any:
    """JSON-ready: NaN and NA → null, numpy scalars → Python, dataclasses and enums → dicts and strings."""
    if is_dataclass(value) and not isinstance(value, type):  # field by field: asdict deep-copies every value first
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    value = render._plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(payload: Any) -> str:
    """Compact JSON for the charts (bench.escape.json_text: ASCII only, so it can sit in a script)."""
    try:  # payloads built of plain values (the histories) go straight through
        return escaped_json(payload, separators=(",", ":"), default=None)
    except (TypeError, ValueError):
        return escaped_json(plain(payload), separators=(",", ":"))


def floats(values: pd.Series) -> list[float | None]:
    return [None if v != v else v for v in pd.to_numeric(values, errors="coerce").astype(float).tolist()]


def data_script(payload_json: str) -> str:
    """The script that hands a page its data (`json_text` of the payload, encoded once for both files)."""
    return f"(window.perfgateData = window.perfgateData || []).push({payload_json});\n"


def verdict_outcome(verdict: Verdict) -> str:
    """pass / fail / inconclusive (a gate without an inconclusive outcome gives pass or fail)."""
    outcome = getattr(verdict, "outcome", None)
    return str(getattr(outcome, "value", outcome)) if outcome is not None else ("pass" if verdict.passed else "fail")


def check_outcome(check: Any) -> str:
    outcome = getattr(check, "outcome", None)
    if outcome is not None:
        return str(getattr(outcome, "value", outcome))
    return "pass" if check.passed else "fail"
