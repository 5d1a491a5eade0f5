"""The sequential method: its confidence sequences hold under optional stopping, its closed forms match the
martingales they come from, and its decisions go the right way for either metric direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln

from bench.analysis.sampling import sample_until_sure
from bench.analysis.sequential import (
    MIN_PAIRS,
    Outcome,
    decide,
    evidence,
    halfwidth_factor,
    sign_interval,
    worst,
)


def _lai_log_martingale(diffs: np.ndarray, mu: float, c: float = 1.0) -> float:
    x = diffs - mu
    n, s, v = len(x), float(np.sum(x)), float(np.sum(x**2))
    return 0.5 * math.log(c / (n + c)) - n / 2 * math.log(1 - s * s / ((n + c) * v))


def test_lai_halfwidth_is_where_the_mixture_martingale_reaches_one_over_alpha() -> None:
    rng = np.random.default_rng(1)
    for n in (6, 11, 40):
        diffs = rng.normal(0.01, 0.03, n)
        mean, ss = float(np.mean(diffs)), float(np.sum((diffs - np.mean(diffs)) ** 2))
        edge = mean + halfwidth_factor(n, 0.05) * math.sqrt(ss)
        assert _lai_log_martingale(diffs, edge) == pytest.approx(math.log(20), rel=1e-6)
        assert _lai_log_martingale(diffs, mean + 0.9 * (edge - mean)) < math.log(20)


def test_sign_interval_holds_exactly_the_medians_the_beta_binomial_martingale_keeps() -> None:
    rng = np.random.default_rng(2)
    diffs = rng.standard_t(2, 60) * 0.02
    low, high = sign_interval(diffs, 0.05)
    for mu in np.linspace(-0.1, 0.1, 401):
        k = int(np.sum(diffs < mu))
        n = len(diffs)
        log_m = betaln(2 + k, 2 + n - k) - betaln(2, 2) + n * math.log(2)
        kept = log_m < math.log(20)
        if kept:  # every median the martingale keeps lies in the interval
            assert low <= mu <= high


def test_confidence_sequence_covers_the_truth_at_every_look_where_a_t_interval_does_not() -> None:
    """Optional stopping: look after every pair, stop at the first exclusion. The sequence keeps the error
    below alpha; the fixed-sample t-interval, looked at as often, does not (which is why the gate needs it)."""
    rng = np.random.default_rng(3)
    sequences, looks = 300, 60
    ours = naive = 0
    for _ in range(sequences):
        # heavy-ish tails: a shared machine's contention bursts
        diffs = rng.standard_t(4, looks) * 0.02
        ours_hit = naive_hit = False
        for n in range(MIN_PAIRS, looks + 1):
            ev = evidence(diffs[:n], 0.05)
            ours_hit |= not (ev.low <= 0.0 <= ev.high)
            x = diffs[:n]
            half = stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / math.sqrt(n)
            naive_hit |= abs(float(np.mean(x))) > half
        ours += ours_hit
        naive += naive_hit
    assert ours / sequences <= 0.05
    assert naive / sequences > 0.15


def test_three_pairs_never_decide_however_large_the_change() -> None:
    halved = np.log(np.array([0.5, 0.51, 0.49]))
    assert decide(halved, -5.0, True, 0.05).outcome is Outcome.INCONCLUSIVE
    assert math.isinf(evidence(halved, 0.05).halfwidth)


@pytest.mark.parametrize(
    ("ratio", "higher_is_better", "threshold", "expected"),
    [
        (1.00, True, -5.0, Outcome.PASS),  # t/s unchanged
        (0.80, True, -5.0, Outcome.FAIL),  # t/s down 20%
        (0.95, True, -5.0, Outcome.INCONCLUSIVE),  # right on the threshold
        (1.00, False, 25.0, Outcome.PASS),  # load time unchanged
        (1.60, False, 25.0, Outcome.FAIL),  # load time up 60%
        (0.60, False, 25.0, Outcome.PASS),  # faster loading is never a regression
    ],
)
def test_decisions_follow_the_metric_direction(
    ratio: float, higher_is_better: bool, threshold: float, expected: Outcome
) -> None:
    rng = np.random.default_rng(4)
    diffs = math.log(ratio) + rng.normal(0, 0.01, 30)
    assert decide(diffs, threshold, higher_is_better, 0.05).outcome is expected


def test_inconclusive_says_how_many_pairs_would_settle_it_and_they_do() -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.03, 2000)
    first = decide(noise[:8], -3.0, True, 0.05)
    assert first.outcome is Outcome.INCONCLUSIVE and first.pairs_needed is not None
    later = decide(noise[: 8 + 2 * first.pairs_needed], -3.0, True, 0.05)
    assert later.outcome is Outcome.PASS


def test_minimum_detectable_change_shrinks_as_pairs_accumulate() -> None:
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 0.02, 200)
    mdes = [decide(noise[:n], -3.0, True, 0.05).mde_pct for n in (10, 40, 200)]
    assert all(m is not None for m in mdes)
    assert mdes[0] < mdes[1] < mdes[2] < -3.0  # more negative = a bigger drop needed to be shown


def test_verdict_is_the_worst_gated_check() -> None:
    assert worst([Outcome.PASS, Outcome.REPORTED]) is Outcome.PASS
    assert worst([Outcome.PASS, Outcome.INCONCLUSIVE]) is Outcome.INCONCLUSIVE
    assert worst([Outcome.INCONCLUSIVE, Outcome.FAIL, Outcome.PASS]) is Outcome.FAIL
    assert worst([Outcome.REPORTED]) is Outcome.INCONCLUSIVE  # nothing gated is not a pass


def test_sampling_loop_adds_rounds_only_while_open_and_within_budget() -> None:
    clock_s = [0.0]
    rounds: list[list[str]] = []
    state = {"open": ["m1", "m2"]}

    def add_round(models: list[str]) -> int:
        rounds.append(models)
        clock_s[0] += 10.0
        state["open"] = state["open"][1:]  # one model settles per round
        return len(rounds)

    verdict, looks = sample_until_sure(lambda: list(state["open"]), lambda v: v, add_round, 100.0, lambda: clock_s[0])
    assert verdict == [] and rounds == [["m1", "m2"], ["m2"]] and [look.run_id for look in looks] == [1, 2]

    state["open"] = ["m1", "m2", "m3", "m4"]
    rounds.clear()
    clock_s[0] = 0.0
    verdict, looks = sample_until_sure(lambda: list(state["open"]), lambda v: v, add_round, 15.0, lambda: clock_s[0])
    # after one 10 s round, another like it would pass the 15 s budget: stop, still open
    assert len(looks) == 1 and verdict == ["m2", "m3", "m4"]
