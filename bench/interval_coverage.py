"""Coverage of emi's rate intervals on simulated clustered answers (docs/intervals.md).

    python bench/interval_coverage.py

Each row: Q questions of m answers, question rates ~ Beta(mean p, intra-question correlation rho),
2,000 simulated data sets; the share whose 95% interval holds p, for the pooled Wilson interval
(answers taken as independent), a plain percentile bootstrap over questions, and emi's interval.
"""

import numpy as np

from emi.behaviour.metrics import interval, wilson

CASES = [(8, 50, 0.30, 0.01), (8, 50, 0.30, 0.05), (8, 50, 0.30, 0.20), (8, 50, 0.05, 0.05),
         (8, 50, 0.01, 0.02), (24, 20, 0.20, 0.10), (48, 10, 0.10, 0.10)]


def main(sims: int = 2000) -> None:
    print("  Q    m     p    rho   Wilson  question bootstrap  emi")
    for q, m, p, rho in CASES:
        rng = np.random.default_rng(0)
        a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho
        k = rng.binomial(m, rng.beta(a, b, size=(sims, q)))
        n = np.full_like(k, m)
        cover = lambda lo, hi, p=p: np.mean((lo <= p) & (p <= hi))  # noqa: E731
        wl, wh = wilson(k.sum(-1), n.sum(-1))
        idx = np.random.default_rng(1).integers(0, q, size=(1000, q))
        boots = k[:, idx].sum(-1) / n[:, idx].sum(-1)
        pl, ph = np.quantile(boots, 0.025, axis=-1), np.quantile(boots, 0.975, axis=-1)
        _, lo, hi = interval(k, n, n_boot=1000, seed=1)
        print(f"{q:3d} {m:4d} {p:5.2f} {rho:6.2f}   {cover(wl, wh):.3f}   {cover(pl, ph):.3f}"
              f"               {cover(lo, hi):.3f}")


if __name__ == "__main__":
    main()
