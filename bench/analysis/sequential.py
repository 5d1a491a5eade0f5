"""Sampling until sure: an anytime-valid confidence sequence for a change, and the loop that adds rounds.

The gate may look at a comparison, add an ABBA round, and look again, as often as it likes: a fixed-sample
confidence interval would then be wrong far more often than 5% of the time (every look is another chance
to cross the threshold by luck). A *confidence sequence* covers the true value at every look at once:
P(the true change ever leaves the sequence) ≤ alpha, so stopping whenever it has become conclusive is valid.

The first sequence is Lai's (1976) for the mean of Gaussian observations with unknown variance, as restated by
Wang & Ramdas (2023, "Anytime-valid t-tests and confidence sequences for Gaussian means with unknown
variance", arXiv:2310.03722). The observations are paired log ratios d = log(candidate) − log(baseline); with
S = Σ(d − μ) and V = Σ(d − μ)², the scale-invariant mixture (over θ = μ/σ ~ N(0, 1/c))

    M_n(μ) = sqrt(c / (n + c)) · (1 − S² / ((n + c) V)) ^ (−n/2)

is a nonnegative martingale with M_1 = 1 under the true μ, so by Ville's inequality
P(∃n: M_n(μ) ≥ 1/alpha) ≤ alpha. The sequence is {μ: M_n(μ) < 1/alpha}, which solves in closed form
(`halfwidth_factor`). The second is distribution-free, for the median: under the true median m each
paired sample falls below m with probability 1/2, and with k of n below, the beta-binomial mixture
B(a + k, a + n − k) / B(a, a) · 2^n is again a test martingale (Howard & Ramdas 2022, "Sequential estimation
of quantiles with applications to A/B-testing and best-arm identification", Bernoulli 28(3)); the median's
sequence is the order statistics between the largest rejected counts (`sign_interval`). Each runs at alpha/2
and the gate reads their intersection. confseq implements the second, but only as a C++ source package (no
wheel), and has no unknown-variance t-sequence, so both are the few lines below.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist

import numpy as np

# mixture precision c: the sequence is tightest around n ≈ 10–50 paired samples, where the gate decides
LAI_C = 1.0
# Beta(a, a) mixing distribution of the sign sequence's beta-binomial martingale
SIGN_A = 2.0
# fewer paired samples than this can show nothing (both sequences are unbounded there at alpha 0.05);
# said explicitly so that no future tuning lets three samples a side pass a build
MIN_PAIRS = 4
MAX_PAIRS_SEARCHED = 1_000_000


class Outcome(StrEnum):
    """One check's result. `reported` is shown but not gated (a single load time proves nothing)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    REPORTED = "reported"


# the verdict is the worst of its checks
SEVERITY = {Outcome.REPORTED: 0, Outcome.PASS: 0, Outcome.INCONCLUSIVE: 1, Outcome.FAIL: 2}


def worst(outcomes: Sequence[Outcome]) -> Outcome:
    gated = [o for o in outcomes if o is not Outcome.REPORTED]
    return max(gated, key=SEVERITY.__getitem__) if gated else Outcome.INCONCLUSIVE


def halfwidth_factor(n: int, alpha: float, c: float = LAI_C) -> float:
    """k such that the sequence at n is mean ± k · sqrt(SS), SS = Σ(d − mean)²; inf while it is unbounded.

    From M_n(μ) < 1/alpha: with q = (alpha · sqrt(c / (n + c)))^(2/n) and δ = mean − μ,
    n²δ² < (1 − q)(n + c)(SS + nδ²), i.e. δ² < (1 − q)(n + c) SS / (n (n − (1 − q)(n + c)))."""
    if n < 2:
        return math.inf
    q = (alpha * math.sqrt(c / (n + c))) ** (2.0 / n)
    room = n - (1.0 - q) * (n + c)
    if room <= 0:
        return math.inf
    return math.sqrt((1.0 - q) * (n + c) / (n * room))


def sign_rank_bound(n: int, alpha: float, a: float = SIGN_A) -> int:
    """The fewest of n paired samples that may lie below the true median: fewer (or as many above) would make
    the beta-binomial mixture martingale B(a + k, a + n − k) / B(a, a) · 2^n reach 1/alpha. 0 while nothing
    can be excluded.

    log B(a + k, a + n − k) for k = 0…n/2 from its first term and the ratio of neighbours
    B(a + k + 1, a + n − k − 1) / B(a + k, a + n − k) = (a + k) / (a + n − k − 1): one cumulative sum, no
    per-term log-gamma (and no scipy import, whose 0.9 s every gate would pay)."""
    k = np.arange(0, n // 2 + 1)
    first = _betaln(a, a + n) - _betaln(a, a) + n * math.log(2.0)
    steps = np.log((a + k[:-1]) / (a + n - k[:-1] - 1.0))
    log_m = first + np.concatenate(([0.0], np.cumsum(steps)))
    kept = np.flatnonzero(log_m < math.log(1.0 / alpha))
    return int(kept[0]) if len(kept) else n // 2


def _betaln(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _betaln(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


@functools.cache
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (scipy.special.stdtrit's value, without scipy's import): bisection on the t
    distribution's upper tail, ½·I_{df/(df+t²)}(df/2, ½)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: p {p} outside (0, 1) or df {df} not positive")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail = 1.0 - p

    def upper(t: float) -> float:
        return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))

    low, high = 0.0, 1.0
    while upper(high) > tail:
        low, high = high, high * 2.0
    while high - low > 1e-13 * high:
        mid = (low + high) / 2.0
        low, high = (mid, high) if upper(mid) > tail else (low, mid)
    return (low + high) / 2.0


def first_bounded(alpha: float) -> int:
    """The fewest paired samples at which the gate's sequences can bound a change at all."""
    return next(n for n in range(MIN_PAIRS, 1000) if math.isfinite(halfwidth_factor(n, alpha / 2)))


@dataclass(frozen=True)
class Evidence:
    """What paired log ratios say about a change, in log units (exp() gives ratios)."""

    n: int
    estimate: float  # the median paired log ratio
    sd: float  # per paired sample
    robust_sd: float  # IQR / 1.349: the spread of the bulk, blind to contention bursts
    low: float
    high: float

    @property
    def halfwidth(self) -> float:
        return (self.high - self.low) / 2.0


def lai_interval(diffs: np.ndarray, alpha: float) -> tuple[float, float]:
    n = len(diffs)
    mean = float(np.mean(diffs))
    ss = float(np.sum((diffs - mean) ** 2))
    half = halfwidth_factor(n, alpha) * math.sqrt(ss)
    return mean - half, mean + half


def sign_interval(diffs: np.ndarray, alpha: float) -> tuple[float, float]:
    """Anytime-valid bounds for the median (Howard & Ramdas 2022's beta-binomial quantile sequence at p = 1/2)."""
    n = len(diffs)
    k = sign_rank_bound(n, alpha)
    if k == 0:
        return -math.inf, math.inf
    ordered = np.sort(diffs)
    return float(ordered[k - 1]), float(ordered[n - k])


def evidence(diffs: np.ndarray, alpha: float) -> Evidence:
    """Two anytime-valid sequences, each at alpha/2, intersected (a union bound keeps the total at alpha):
    Lai's t-sequence is tight on few clean samples; the sign sequence for the median is distribution-free and
    shrugs off the contention bursts of a shared machine. With exchangeable noise (the same build twice, or
    two builds disturbed alike) the paired differences are symmetric, so mean and median are the one change."""
    n = len(diffs)
    if n == 0:
        return Evidence(0, math.nan, math.nan, math.nan, -math.inf, math.inf)
    estimate = float(np.median(diffs))
    sd = float(np.std(diffs, ddof=1)) if n > 1 else math.nan
    q75, q25 = np.percentile(diffs, [75, 25])
    robust_sd = float(q75 - q25) / 1.349
    if n < MIN_PAIRS:
        return Evidence(n, estimate, sd, robust_sd, -math.inf, math.inf)
    if sd == 0.0:  # the same ratio every time (a value the build reports exactly)
        return Evidence(n, estimate, sd, robust_sd, estimate, estimate)
    lai, sign = lai_interval(diffs, alpha / 2), sign_interval(diffs, alpha / 2)
    low, high = max(lai[0], sign[0]), min(lai[1], sign[1])
    if low > high:  # the two disagree: the symmetry assumption fails here, so claim only what both allow
        low, high = min(lai[0], sign[0]), max(lai[1], sign[1])
    return Evidence(n, estimate, sd, robust_sd, low, high)


def predicted_halfwidth(n: int, sd: float, robust_sd: float, alpha: float) -> float:
    """The half-width to expect at n pairs with this spread: the tighter of the two sequences."""
    lai = halfwidth_factor(n, alpha / 2) * sd * math.sqrt(n - 1)
    k = sign_rank_bound(n, alpha / 2)
    sign = robust_sd * NormalDist().inv_cdf(1.0 - k / n) if k else math.inf
    return min(lai, sign)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    evidence: Evidence
    bound: float  # the threshold as a log ratio
    # the smallest change in the bad direction, percent, that these samples would have shown as beyond the
    # threshold (their minimum detectable regression); None while the sequence is unbounded
    mde_pct: float | None
    # paired samples still to add for the sequence to clear the threshold at this noise and this estimate
    pairs_needed: int | None


def decide(diffs: np.ndarray, threshold_pct: float, higher_is_better: bool, alpha: float) -> Decision:
    """pass: the whole sequence lies on the good side of the threshold; fail: wholly beyond it; else neither."""
    ev = evidence(diffs, alpha)
    bound = math.log1p(threshold_pct / 100.0)
    # orient so that "bad" is always "below the bound"
    sign = 1.0 if higher_is_better else -1.0
    low, high = (ev.low, ev.high) if higher_is_better else (-ev.high, -ev.low)
    b = sign * bound
    if low > b:
        outcome = Outcome.PASS
    elif high < b:
        outcome = Outcome.FAIL
    else:
        outcome = Outcome.INCONCLUSIVE
    mde = None if math.isinf(ev.halfwidth) else (math.exp(sign * (b - ev.halfwidth)) - 1.0) * 100.0
    needed = None
    if outcome is Outcome.INCONCLUSIVE and ev.n >= 2 and not math.isnan(ev.sd):
        needed = pairs_needed(ev, abs(sign * ev.estimate - b), alpha)
    return Decision(outcome, ev, bound, mde, needed)


def pairs_needed(ev: Evidence, gap: float, alpha: float) -> int | None:
    """More paired samples until the sequence's half-width, at this sd, drops below `gap` (the distance
    from the estimate to the threshold); None when no feasible number does (the estimate sits on it)."""
    if ev.sd == 0.0:
        return max(MIN_PAIRS - ev.n, 0)
    n = max(ev.n + 1, MIN_PAIRS)
    while n <= MAX_PAIRS_SEARCHED:
        if predicted_halfwidth(n, ev.sd, ev.robust_sd, alpha) < gap:
            return n - ev.n
        n = n + 1 if n < 64 else int(n * 1.05)
    return None


# -- the sampling loop -------------------------------------------------------------------------------
