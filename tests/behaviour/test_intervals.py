"""The rate intervals (docs/intervals.md): right at 0 and at small n, wide enough when answers to one
question are correlated, the same clustering for a change between conditions, and a coverage
study on simulated clustered data (vectorised: every simulated data set in one bootstrap call)."""

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from emi.behaviour.metrics import Rate, interval, rate, relative_change_ci, summarize, wilson


def test_zero_of_356_has_an_upper_end_above_zero():
    r = rate([False] * 356, groups=[i % 8 for i in range(356)])
    assert (r.value, r.lo, r.k, r.n) == (0.0, 0.0, 0, 356)
    assert r.hi == pytest.approx(proportion_confint(0, 356, method="wilson")[1]) and r.hi > 0.01
    assert r.fmt() == "  0.0% [ 0.0,  1.1]"


def test_one_count_is_wilson_and_small_n_is_wide():
    r = rate([True, False, False])
    assert (r.lo, r.hi) == pytest.approx(wilson(1, 3))
    assert r.lo > 0.05 and r.hi > 0.75


def test_questions_that_differ_widen_the_pooled_interval():
    """Same pooled count (60/240), once spread evenly over 8 questions, once all on 2 of them."""
    even = rate([i % 4 == 0 for i in range(240)], groups=[i // 30 for i in range(240)])
    lumped = rate([i < 60 for i in range(240)], groups=[i // 30 for i in range(240)])
    assert even.value == lumped.value == 0.25
    assert (lumped.hi - lumped.lo) > 2 * (even.hi - even.lo)
    assert (even.lo, even.hi) == pytest.approx(wilson(60, 240), abs=0.01)  # no clustering: about Wilson


def test_the_interval_is_seeded():
    flags, ids = [i % 3 == 0 for i in range(90)], [i % 5 for i in range(90)]
    assert rate(flags, seed=1, groups=ids) == rate(flags, seed=1, groups=ids)


def test_relative_change_is_paired_by_question():
    """Ablation halves every question's rate: paired by question the change is exactly -50% in every
    resample, although the questions' rates differ widely."""
    ids = [q for q in range(8) for _ in range(40)]
    before = rate([i % 40 < 4 * (q + 1) for i, q in enumerate(ids)], groups=ids)
    after = rate([i % 40 < 2 * (q + 1) for i, q in enumerate(ids)], groups=ids)
    c = relative_change_ci(before, after)
    assert c == pytest.approx((-0.5, -0.5, -0.5))
    unpaired = relative_change_ci(before, Rate(after.value, after.lo, after.hi, after.k, after.n,
                                               groups=(("other", after.k, after.n),)))
    assert unpaired.hi - unpaired.lo > 0.2


def test_summary_rates_cluster_by_question_id():
    recs = [{"id": f"q{i % 4}", "aligned": 10 if i % 4 == 0 else 90, "coherent": 90} for i in range(200)]
    s = summarize(recs)
    assert s.em.k == 50 and {q for q, _, _ in s.em.groups} == {"q0", "q1", "q2", "q3"}
    lo, hi = wilson(50, 200)
    assert s.em.hi - s.em.lo > 2 * (hi - lo)


def _coverage(n_q: int, m: int, p: float, rho: float, sims: int = 1500, seed: int = 0) -> float:
    """Share of ``sims`` clustered data sets whose interval holds the true rate ``p``: ``n_q``
    questions of ``m`` answers, question rates Beta-distributed with mean ``p`` and intra-question
    correlation ``rho``."""
    rng = np.random.default_rng(seed)
    a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho
    k = rng.binomial(m, rng.beta(a, b, size=(sims, n_q)))
    _, lo, hi = interval(k, np.full_like(k, m), n_boot=1000, seed=seed + 1)
    return float(np.mean((lo <= p) & (p <= hi)))


@pytest.mark.parametrize(("n_q", "m", "p", "rho"), [(8, 50, 0.3, 0.1), (24, 20, 0.2, 0.1)])
def test_nominal_95_percent_coverage_on_clustered_data(n_q, m, p, rho):
    """Within 3 simulation standard errors (about 1.7 points at 1,500 data sets) of 95%, where a
    pooled Wilson interval covers far less (it ignores the clustering)."""
    cov = _coverage(n_q, m, p, rho)
    se = np.sqrt(0.95 * 0.05 / 1500)
    assert abs(cov - 0.95) < 3 * se, cov
    rng = np.random.default_rng(0)
    k = rng.binomial(m, rng.beta(p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho, size=(1500, n_q))).sum(-1)
    lo, hi = wilson(k, n_q * m)
    assert np.mean((lo <= p) & (p <= hi)) < 0.85
