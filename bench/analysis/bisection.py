"""From a good and a bad ref to the first bad commit: a pure search over an oracle (as asv's `find`).

`search` knows nothing of builds or measurements: it asks `oracle(commit)` for good, bad or skip, memoised,
and narrows the range like `git bisect` (a commit that does not build is skipped, and the nearest untested
commit to the midpoint is tried instead). `BisectOracle` builds a commit with the build cache, measures
it interleaved against the good build (ordinary stored runs, tagged with the bisect), and judges it with
the gate's own rule: the load status, or the pass / fail / inconclusive verdict of one metric, where an
inconclusive verdict measures more rounds until its budget is spent.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bench.builds.cache import cache_root, ensure_built, lookup, plan_build
from bench.config import BuildConfig, Config, ModelConfig, SourceConfig
from bench.errors import ConfigError
from bench.metrics import METRICS, Status


class Mark(StrEnum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    author_date: str


@dataclass(frozen=True)
class Step:
    commit: Commit
    mark: Mark
    evidence: str  # the deciding line: build failure, load status, or the check's message
    run_ids: tuple[int, ...] = ()
    stored: bool = False  # read back from a bisect that was interrupted: neither built nor measured again


@dataclass
class BisectOutcome:
    first_bad: Commit | None
    candidates: list[Commit]  # more than one when skipped commits hide which of them is first
    steps: list[Step] = field(default_factory=list)
    exhausted: bool = False  # --max-steps reached before the range closed

    @property
    def builds(self) -> int:
        return sum(1 for s in self.steps if not s.stored)


def search(commits: list[Commit], oracle: Callable[[Commit], Step], max_steps: int | None = None) -> BisectOutcome:
    """`commits` oldest first, after the good ref up to and including the bad ref (trusted bad)."""
    lo, hi = -1, len(commits) - 1
    marks: dict[int, Mark] = {}
    steps: list[Step] = []
    while hi - lo > 1:
        untested = [i for i in range(lo + 1, hi) if i not in marks]
        if not untested:
            break  # every commit between the last good and the first bad was skipped
        if max_steps is not None and len(steps) >= max_steps:
            return BisectOutcome(None, commits[lo + 1 : hi + 1], steps, exhausted=True)
        middle = (lo + hi) / 2
        pick = min(untested, key=lambda i: (abs(i - middle), -i))
        step = oracle(commits[pick])
        steps.append(step)
        marks[pick] = step.mark
        if step.mark == Mark.GOOD:
            lo = pick
        elif step.mark == Mark.BAD:
            hi = pick
    between = commits[lo + 1 : hi + 1]
    return BisectOutcome(commits[hi] if len(between) == 1 else None, between, steps)


def commit_range(repo: Path, good: str, bad: str) -> tuple[str, list[Commit]]:
    """The good commit's sha, and the commits after it up to `bad`, oldest first (first-parent ancestry)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"{repo}: git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1:]}")
        return proc.stdout

    shas = {}
    for ref, flag in ((good, "--good"), (bad, "--bad")):
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise ConfigError(f"{flag} {ref}: no such commit in {repo}")
        shas[flag] = out.stdout.strip()
    if subprocess.run(
        ["git", "-C", str(repo), "merge-base", "--is-ancestor", shas["--good"], shas["--bad"]]
    ).returncode:
        raise ConfigError(f"--good {good} is not an ancestor of --bad {bad}")
    log = git("log", "--reverse", "--first-parent", "--format=%H%x00%s%x00%aI", f"{shas['--good']}..{shas['--bad']}")
    commits = [Commit(*line.split("\0")) for line in log.splitlines() if line]
    if not commits:
        raise ConfigError(f"--good {good} and --bad {bad} are the same commit: nothing to bisect")
    return shas["--good"], commits


def bisect_id(repo: Path, good: str, bad: str, model: str, metric: str, engine: str, suite: dict[str, Any]) -> str:
    key = json.dumps([str(repo.resolve()), good, bad, model, metric, engine, suite], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class BisectOracle:
    """Builds and measures one commit against the good build; each step is a stored run."""

    def __init__(
        self,
        store: Any,
        config: Config,
        *,
        repo: Path,
        good_sha: str,
        model: ModelConfig,
        metric: str,
        engine: str,
        ident: str,
        budget_s: float,
        memo: dict[str, Step],
    ) -> None:
        self.store, self.config, self.repo, self.model = store, config, repo, model
        self.metric, self.engine, self.ident, self.budget_s, self.memo = metric, engine, ident, budget_s, memo
        self.good = self._build_config(f"bisect-good-{good_sha[:12]}", good_sha)

    def _build_config(self, name: str, sha: str) -> BuildConfig:
        return BuildConfig(name=name, engine=self.engine, source=SourceConfig(git=str(self.repo), ref=sha))  # type: ignore[arg-type]

    def __call__(self, commit: Commit) -> Step:
        if commit.sha in self.memo:
            return self.memo[commit.sha]
        cand = self._build_config(f"bisect-{commit.sha[:12]}", commit.sha)
        config = self.config.model_copy(update={"builds": [cand], "models": [self.model]})
        known = lookup(cache_root(config), plan_build(config, cand).key)
        record = known or ensure_built(config, cand)
        if not record.ok:
            failure = record.failure or {}
            why = f"does not build: {failure.get('kind')}: {failure.get('line')}"
            return Step(commit, Mark.SKIP, why, stored=known is not None)  # a cached failure is not rebuilt
        if self.metric == "load":
            return self._judge_load(commit, config)
        return self._judge_metric(commit, cand)

    def _tag(self, run_id: int, commit: Commit, mark: Mark | None, evidence: str) -> None:
        from bench.store.annotations import tag_run

        with self.store.session() as session:
            tag_run(
                session,
                run_id,
                {"bisect": {"id": self.ident, "commit": commit.sha, "mark": mark, "evidence": evidence}},
            )
            session.commit()

    def _judge_load(self, commit: Commit, config: Config) -> Step:
        from bench.runner import run_matrix
        from bench.store.queries import results_frame

        one = config.model_copy(update={"suite": config.suite.model_copy(update={"repetitions": 1})})
        run_id = run_matrix(self.store, one, show_progress=False)
        with self.store.session() as session:
            row = results_frame(session, [run_id], with_samples=False).iloc[0]
        mark = Mark.GOOD if row["status"] == Status.OK else Mark.BAD
        evidence = f"load {row['status']}: {row['reason']}"
        self._tag(run_id, commit, mark, evidence)
        return Step(commit, mark, evidence, (run_id,))

    def _judge_metric(self, commit: Commit, cand: BuildConfig) -> Step:
        from bench.analysis.compare import compare
        from bench.analysis.gate import evaluate
        from bench.analysis.sampling import abba_round, sample_until_sure
        from bench.analysis.sequential import Outcome
        from bench.errors import NoResults

        runs: list[int] = []
        gate = self.config.gate_settings()

        def add_round(_models: list[str]) -> int:
            run_id = abba_round(self.store, self.config, [self.good, cand], [self.model], f"bench bisect {commit.sha}")
            runs.append(run_id)
            return run_id

        def judge() -> Any:
            if not runs:
                raise NoResults(f"{commit.sha}: not measured yet")
            with self.store.session() as session:
                comparison = compare(
                    session, f"{self.good.name}@{runs[0]}", f"{cand.name}@{runs[0]}", extra_runs=runs[1:]
                )
            return evaluate(comparison, gate, pairs_per_round=2)

        verdict, _looks = sample_until_sure(
            judge, _open(self.metric), add_round, self.budget_s, first_round=[self.model.name]
        )
        checks = [c for c in verdict.checks if c.metric in ("load", self.metric)]
        failed_load = next((c for c in checks if c.metric == "load" and c.outcome == Outcome.FAIL), None)
        check = failed_load or next((c for c in checks if c.metric == self.metric), checks[0])
        mark = {Outcome.PASS: Mark.GOOD, Outcome.FAIL: Mark.BAD}.get(check.outcome, Mark.SKIP)
        evidence = f"{check.metric} {check.outcome}: {check.message}"
        for run_id in runs:
            self._tag(run_id, commit, mark, evidence)
        return Step(commit, mark, evidence, tuple(runs))


def _open(metric: str) -> Callable[[Any], list[str]]:
    """The models whose check of this metric is still inconclusive: only those are measured more."""

    def open_models(verdict: Any) -> list[str]:
        return list(dict.fromkeys(c.model for c in verdict.inconclusive if c.metric == metric and c.n_pairs))

    return open_models


def stored_steps(store: Any, ident: str, commits: list[Commit]) -> dict[str, Step]:
    """The steps a killed bisect already measured: each commit's last tagged verdict."""
    from bench.store.annotations import tagged_runs

    by_sha = {c.sha: c for c in commits}
    memo: dict[str, Step] = {}
    with store.session() as session:
        for run_id, tag in tagged_runs(session, "bisect"):
            if tag.get("id") != ident or tag.get("commit") not in by_sha or tag.get("mark") is None:
                continue
            previous = memo.get(tag["commit"])
            runs = (*previous.run_ids, run_id) if previous else (run_id,)
            memo[tag["commit"]] = Step(by_sha[tag["commit"]], Mark(tag["mark"]), tag.get("evidence", ""), runs, True)
    return memo


def check_metric(metric: str) -> None:
    if metric != "load" and metric not in METRICS:
        raise ConfigError(f"--metric: expected load or one of {', '.join(METRICS)}, got {metric!r}")
