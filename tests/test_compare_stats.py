"""compare's and the gate's statistics without scipy at run time (its import costs more than a whole `bench
compare`) are held here to scipy's own functions: the same p-values, intervals and sign bounds."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln

from bench.analysis import compare as cmp
from bench.analysis.compare import mann_whitney_p, ratio_ci
from bench.analysis.sequential import predicted_halfwidth, sign_rank_bound, t_quantile
from tests.conftest import PYTHON


def _samples(rng: np.random.Generator, n1: int, n2: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = rng.normal(100, 5, n1), rng.normal(100 + rng.normal(0, 5), 5, n2)
    if kind == 1:  # some ties
        a, b = np.round(a), np.round(b)
    elif kind == 2:  # many ties
        a, b = np.round(a / 4), np.round(b / 4)
    return a, b


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["distinct", "some ties", "many ties"])
def test_mann_whitney_is_scipys(kind: int) -> None:
    """Exact (small, no ties) and normal with tie and continuity corrections, as scipy's method "auto"."""
    rng = np.random.default_rng(kind)
    sizes = [(int(x), int(y)) for x, y in rng.integers(2, 14, (400, 2))] + [(3, 40), (5, 900), (8, 9), (9, 9)]
    for n1, n2 in sizes:
        base, cand = _samples(rng, n1, n2, kind)
        if np.ptp(np.concatenate([base, cand])) == 0:
            continue
        want = stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue
        assert mann_whitney_p(base, cand) == pytest.approx(want, rel=1e-9, abs=1e-12), (n1, n2, kind)


def test_mann_whitney_edges() -> None:
    assert math.isnan(mann_whitney_p(np.array([1.0]), np.array([1.0, 2.0])))
    assert mann_whitney_p(np.array([3.0, 3.0]), np.array([3.0, 3.0, 3.0])) == 1.0
    # wholly separated samples of 5: the smallest exact two-sided p, 2 / C(10, 5)
    assert mann_whitney_p(np.arange(5.0), np.arange(5.0) + 10) == pytest.approx(2 / math.comb(10, 5))


@pytest.mark.parametrize("sizes", [(2, 2), (5, 5), (5, 17), (30, 30), (300, 200)])
def test_bootstrap_is_scipys(sizes: tuple[int, int]) -> None:
    """The same percentile bootstrap as scipy.stats.bootstrap with the same generator: the same interval."""
    rng = np.random.default_rng(sum(sizes))
    base, cand = rng.normal(100, 5, sizes[0]), rng.normal(103, 5, sizes[1])
    want = stats.bootstrap(
        (cand, base),
        lambda c, b, axis: np.mean(c, axis=axis) / np.mean(b, axis=axis),
        n_resamples=cmp.BOOTSTRAP_RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        paired=False,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert ratio_ci(base, cand) == pytest.approx((want.low, want.high), rel=1e-12)


def test_large_pools_take_the_normal_interval_the_bootstrap_converges_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past BOOTSTRAP_MAX_DRAWS the delta-method interval stands in: within the bootstrap's own Monte Carlo
    error of the bootstrap's interval on the same samples (skewed ones included)."""
    rng = np.random.default_rng(7)
    base, cand = rng.gamma(4.0, 25.0, 2500), rng.gamma(4.0, 26.0, 2000)
    assert cmp.BOOTSTRAP_RESAMPLES * (len(base) + len(cand)) > cmp.BOOTSTRAP_MAX_DRAWS
    normal = ratio_ci(base, cand)
    monkeypatch.setattr(cmp, "BOOTSTRAP_MAX_DRAWS", math.inf)
    boot = ratio_ci(base, cand)
    width = boot[1] - boot[0]
    assert normal != boot
    assert abs(normal[0] - boot[0]) < 0.05 * width and abs(normal[1] - boot[1]) < 0.05 * width


def test_sign_bound_is_the_beta_binomial_one() -> None:
    """The cumulative-ratio log B(·,·) gives the bound scipy's betaln gives, up to a million pairs."""

    def reference(n: int, alpha: float, a: float = 2.0) -> int:
        k = np.arange(0, n // 2 + 1)
        log_m = betaln(a + k, a + n - k) - betaln(a, a) + n * math.log(2.0)
        kept = np.flatnonzero(log_m < math.log(1.0 / alpha))
        return int(kept[0]) if len(kept) else n // 2

    for n in [*range(1, 300), 1000, 4321, 100_000, 1_000_000]:
        for alpha in (0.2, 0.05, 0.025, 0.005):
            assert sign_rank_bound(n, alpha) == reference(n, alpha), (n, alpha)
    # the sign sequence's half-width (an infinite sd rules the other one out) through the normal quantile
    k = sign_rank_bound(100, 0.025)
    assert predicted_halfwidth(100, math.inf, 2.0, 0.05) == pytest.approx(2.0 * stats.norm.ppf(1.0 - k / 100))


def test_t_quantile_is_scipys() -> None:
    """The dashboard's error bars: Student's t quantile as scipy.special.stdtrit gives it, in both tails, from
    one degree of freedom (a Cauchy) to a million (the normal)."""
    from scipy.special import stdtrit

    for df in (1, 1.5, 2, 3, 4, 5, 9, 29, 99, 1000, 1e6):
        for p in (0.5, 0.6, 0.9, 0.975, 0.995, 0.999999, 0.025, 1e-6):
            assert t_quantile(p, df) == pytest.approx(stdtrit(df, p), rel=1e-8, abs=1e-12), (p, df)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # closed form at df 1
    for bad in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(*bad)


def test_compare_gate_and_dashboard_import_no_scipy() -> None:
    """What `bench compare`, `bench gate` and `bench dashboard` import to judge and draw: no scipy (0.9 s of
    scipy.stats, 0.25 s of scipy.special)."""
    code = (
        "import sys, bench.analysis.compare, bench.analysis.gate, bench.analysis.sampling, bench.report.render,"
        " bench.report.dashboard;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    )
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dashboard_error_bars_are_the_t_interval() -> None:
    """A result's 95% error bar from its stored std and repetitions: t(0.975, n−1)·std/√n, none for one
    repetition or none recorded."""
    import pandas as pd

    from bench.report.site.data import ci95

    frame = pd.DataFrame({"tg_ts_std": [2.0, 2.0, 0.5, 1.0, None], "repetitions": [5, 30, 2, 1, None]})
    got = ci95(frame, "tg_ts").tolist()
    for value, (std, n) in zip(got[:3], [(2.0, 5), (2.0, 30), (0.5, 2)], strict=True):
        assert value == pytest.approx(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n), rel=1e-9)
    assert math.isnan(got[3]) and math.isnan(got[4])
