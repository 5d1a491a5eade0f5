"""The release verdict: every model that loaded before still loads ok, and no metric regressed
beyond its threshold with statistical significance."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare import Comparison
from bench.config import GateConfig
from bench.metrics import METRICS
from bench.render import missing


@dataclass(frozen=True)
class Check:
    model: str
    metric: str  # a METRICS key, or "load" for the load status
    passed: bool
    message: str
    ratio: float | None = None
    change_pct: float | None = None
    threshold_pct: float | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _nan(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def evaluate(comparison: Comparison, gate: GateConfig | None = None) -> Verdict:
    """Judge a comparison. Thresholds are percent changes: negative for t/s, positive for costs."""
    gate = gate or GateConfig()
    table = comparison.table
    checks: list[Check] = []
    for model, rows in table.groupby("model", sort=False):
        first = rows.iloc[0]
        base_status, cand_status = first["baseline_status"], first["candidate_status"]
        if base_status == "ok" and cand_status != "ok":
            reason = first["candidate_reason"]
            if missing(reason) or not reason:
                reason = "not measured for the candidate"
            checks.append(
                Check(str(model), "load", False, f"loaded ok on the baseline; candidate is {cand_status}: {reason}")
            )
            continue
        if base_status != "ok":
            checks.append(
                Check(
                    str(model),
                    "load",
                    True,
                    f"baseline status {base_status}: nothing to hold the candidate to (candidate {cand_status})",
                )
            )
            continue
        checks.append(Check(str(model), "load", True, "ok on both"))
        limits = gate.limits(str(model))
        for row in rows.itertuples():
            metric = str(row.metric)
            threshold = limits.get(metric)
            if threshold is None:
                continue
            checks.append(_judge(str(model), metric, row, threshold, gate.alpha))
    return Verdict(comparison, checks)


def _judge(model: str, metric: str, row: Any, threshold: float, alpha: float) -> Check:
    p_value = row.p_value
    sampled = not _nan(p_value)
    # sampled metrics are judged on the median ratio: one disturbed repetition must not move the verdict
    ratio = row.median_ratio if sampled else row.ratio
    if _nan(ratio):
        return Check(model, metric, True, "no data on one side", threshold_pct=threshold)
    change = (ratio - 1.0) * 100.0
    beyond = METRICS[metric].worse(change, threshold)
    # single values: memory is near-exact, so the threshold alone decides; one load time proves nothing
    significant = p_value < alpha if sampled else metric != "load_s"
    if sampled:
        ci = f", 95% CI [{row.ci_low:.3f}, {row.ci_high:.3f}]" if not _nan(row.ci_low) else ""
        detail = f"median {change:+.1f}% (mean ratio {row.ratio:.3f}{ci}, Mann-Whitney p={p_value:.3g})"
    else:
        detail = f"{change:+.1f}% (ratio {ratio:.3f}, single value)"
    msg = f"{detail}; threshold {threshold:+g}%"
    failed = beyond and significant
    if beyond and not significant:
        msg += ": beyond threshold but not significant" if sampled else ": beyond threshold, one sample: not gated"
    return Check(
        model,
        metric,
        not failed,
        ("REGRESSION " if failed else "") + msg,
        ratio,
        change,
        threshold,
        p_value if sampled else None,
    )


def markdown(verdict: Verdict) -> str:
    cmp = verdict.comparison
    head = "PASS" if verdict.passed else "FAIL"
    lines = [
        f"## perfgate: {head} — {cmp.candidate.label} vs {cmp.baseline.label}",
        "",
    ]
    if cmp.cross_machine:
        lines += [f"> **cross-machine comparison**: {cmp.baseline.machine} vs {cmp.candidate.machine}", ""]
    if verdict.failures:
        lines += ["### Failures", ""] + [f"- **{c.model}** `{c.metric}`: {_md(c.message)}" for c in verdict.failures]
        lines.append("")
    lines += ["| model | check | result | detail |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {_md(c.model)} | {c.metric} | {'pass' if c.passed else '**FAIL**'} | {_md(c.message)} |"
        for c in verdict.checks
    ]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def junit(verdict: Verdict, path: Path) -> None:
    suite = ET.Element(
        "testsuite", name="perfgate", tests=str(len(verdict.checks)), failures=str(len(verdict.failures))
    )
    for c in verdict.checks:
        case = ET.SubElement(suite, "testcase", classname=f"perfgate.{c.model}", name=c.metric)
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def write_step_summary(text: str) -> Path | None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Path(target)
