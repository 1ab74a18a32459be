"""The verdict rules of the claims — the tolerance policy in one place (SPEC §4).

Policy (every claim): the prediction and the tolerance are fixed in the claim module before
its measurement runs; a tolerance, rule or design changed after a result was seen is
disclosed where the result is shown (the check's text or the claim's notes). A verdict is
PASS or FAIL only when the measurement's uncertainty cannot change it, else INCONCLUSIVE:

* :func:`at_most` / :func:`band` / :func:`near` — equivalence within a tolerance: PASS when
  the whole ±k·se interval lies inside, FAIL when it lies wholly outside;
* :func:`direction` — a predicted sign: PASS/FAIL when the mean is beyond k·se on the
  predicted/opposite side;
* :func:`z_test` — agreement with an exact point prediction: FAIL beyond z·se, INCONCLUSIVE
  when se is too large for the test to have power;
* :func:`interval` — a ratio with a confidence interval [lo, hi] (e.g. from a fit);
* :func:`bonferroni_z` — the |z| threshold of a family of m tests at one family-wise level.

k = 2 (±2 se, ≈ 95 % two-sided for a normal estimate) unless a claim states otherwise; with
several comparisons in one check, the check's verdict is the worst of them
(:func:`sgdlab.experiments.base.worst_verdict`). Non-finite inputs are INCONCLUSIVE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["K", "at_most", "band", "bonferroni_z", "direction", "interval", "mean_se", "near",
           "paired", "z_test"]

#: half-width of the uncertainty interval, in standard errors
K = 2.0


def _finite(*xs: float | None) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def at_most(x: float, se: float, limit: float, k: float = K) -> str:
    """x ≤ limit: PASS when x + k·se ≤ limit, FAIL when x − k·se > limit, else INCONCLUSIVE."""
    if not _finite(x, se, limit):
        return "INCONCLUSIVE"
    if x + k * se <= limit:
        return "PASS"
    if x - k * se > limit:
        return "FAIL"
    return "INCONCLUSIVE"


def band(dev: float, se: float, tol: float, k: float = K) -> str:
    """|dev| ≤ tol for a deviation dev from a prediction, with its se (see :func:`at_most`)."""
    return at_most(abs(dev), se, tol, k) if _finite(dev) else "INCONCLUSIVE"


def near(x: float, se: float, target: float, tol: float, k: float = K) -> str:
    """|x − target| ≤ tol (see :func:`band`)."""
    return band(x - target, se, tol, k) if _finite(x, target) else "INCONCLUSIVE"


def direction(mean: float, se: float | None, sign: int, k: float = K) -> str:
    """A difference predicted to have ``sign`` (+1 or −1): PASS when sign·mean > k·se, FAIL
    when sign·mean < −k·se, else INCONCLUSIVE (also when se is unknown); an infinite mean (a
    run that diverged) decides by its sign."""
    if mean is not None and math.isinf(mean):
        return "PASS" if np.sign(mean) == sign else "FAIL"
    if not _finite(mean, se):
        return "INCONCLUSIVE"
    z = sign * mean
    if z > k * se:
        return "PASS"
    if z < -k * se:
        return "FAIL"
    return "INCONCLUSIVE"


def z_test(measured: float, predicted: float, se: float, z: float = 3.0,
           se_rel_max: float = math.inf) -> str:
    """An exact point prediction: FAIL when |measured − predicted| > z·se; INCONCLUSIVE when
    se > se_rel_max·|predicted| (the test could not tell a real deviation from noise); else
    PASS."""
    if not _finite(measured, predicted, se):
        return "INCONCLUSIVE"
    if abs(measured - predicted) > z * se:
        return "FAIL"
    if se > se_rel_max * abs(predicted):
        return "INCONCLUSIVE"
    return "PASS"


def interval(estimate: float, lo: float, hi: float, target: float, tol: float) -> str:
    """An estimate with a confidence interval [lo, hi]: INCONCLUSIVE when the interval reaches
    further than tol from the estimate (too wide to judge), else PASS when |estimate −
    target| ≤ tol, FAIL otherwise."""
    if not _finite(estimate, lo, hi, target):
        return "INCONCLUSIVE"
    if max(estimate - lo, hi - estimate) > tol:
        return "INCONCLUSIVE"
    return "PASS" if abs(estimate - target) <= tol else "FAIL"


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and its standard error sd/√n (ddof 1); nan when there are no values, se nan
    with fewer than two or any non-finite value."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    m = float(a.mean())
    if a.size < 2 or not np.all(np.isfinite(a)):
        return m, math.nan
    return m, float(a.std(ddof=1) / math.sqrt(a.size))


def paired(a: Iterable[float], b: Iterable[float]) -> tuple[float, float]:
    """Mean and se (:func:`mean_se`) of the paired differences b_s − a_s over seeds s (the two
    sequences in the same seed order, equal lengths)."""
    return mean_se(y - x for x, y in zip(a, b, strict=True))


def bonferroni_z(m: int, alpha: float = 0.0027) -> float:
    """z* = Φ⁻¹(1 − α/(2m)): |z| ≤ z* for all of m two-sided tests keeps the family-wise
    false-alarm rate ≤ α (Bonferroni); the default α = 0.0027 is the single-test 3σ level, so
    z*(1) ≈ 3.0 (m < 1 counts as one test)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / (2 * max(1, m)))
