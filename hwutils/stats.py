"""Paired comparisons of classifiers scored on the same images.

Two networks scored on the same test images make correlated errors, so their error rates are
compared image by image (McNemar; Dietterich 1998), never as two independent proportions. Only the
images one run gets wrong and the other right carry information. Several seeds per method are
averaged per image and tested by the exact sign-flip test over images. A family of comparisons is
adjusted by Holm; "the same" is claimed only by an equivalence test against a margin fixed in advance.

Only the standard library, numpy and pandas: the headless runner's image has no scipy.
Differences, intervals and standard errors are in percentage points of error (A minus B).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pandas as pd

__all__ = ["PairedComparison", "mcnemar", "mcnemar_from_table", "seeds_paired", "per_seed_wins",
           "holm", "equivalent", "smallest_resolvable", "pairwise", "verdict"]

_Z95 = NormalDist().inv_cdf(0.975)  # 1.959964


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on the same n images: discordant counts, difference in points, exact p."""

    only_a_wrong: float  # images A got wrong and B right (averaged over seed pairings with seeds)
    only_b_wrong: float
    both_wrong: float
    n: int
    difference: float  # error(A) − error(B), percentage points
    standard_error: float  # of the difference, points
    low: float  # 95 % interval of the difference, points
    high: float
    p: float  # exact two-sided p of "A and B have the same error"


def _as_wrong(wrong, ndim: int) -> np.ndarray:
    wrong = np.asarray(wrong)
    if wrong.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d array of per-image mistakes, got shape {wrong.shape}")
    if wrong.dtype != bool and not np.isin(wrong, (0, 1)).all():
        raise ValueError("per-image mistakes must be boolean (or 0/1)")
    return wrong.astype(bool)


def _exact_mcnemar_p(b: int, c: int) -> float:
    """min(1, 2·P(X ≤ min(b, c))) for X ~ Binomial(b + c, 1/2), with integers until the last step."""
    trials = b + c
    tail = sum(math.comb(trials, j) for j in range(min(b, c) + 1))
    return float(Fraction(min(2 * tail, 2 ** trials), 2 ** trials))


def _comparison(only_a, only_b, both, n, sum_k, sum_k2, scale, p) -> PairedComparison:
    # d_i = k_i / scale per image; se = sqrt(Σd² − (Σd)²/n) / n, the McNemar variance when scale = 1.
    difference = 100 * sum_k / (scale * n)
    se = 100 * math.sqrt(max(0.0, sum_k2 - sum_k ** 2 / n)) / (scale * n)
    return PairedComparison(only_a, only_b, both, n, difference, se,
                            difference - _Z95 * se, difference + _Z95 * se, p)


def mcnemar(wrong_a, wrong_b) -> PairedComparison:
    """Exact McNemar test and paired 95 % interval of two runs' boolean per-image mistakes ``[n]``."""
    a, b = _as_wrong(wrong_a, 1), _as_wrong(wrong_b, 1)
    if a.shape != b.shape:
        raise ValueError(f"the runs were scored on different images: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return _comparison(only_a, only_b, int((a & b).sum()), a.size, only_a - only_b, only_a + only_b,
                       1, _exact_mcnemar_p(only_a, only_b))


def mcnemar_from_table(table) -> PairedComparison:
    """:func:`mcnemar` from ``[[both right, A right & B wrong], [A wrong & B right, both wrong]]``."""
    (both_right, only_b), (only_a, both) = [[int(x) for x in row] for row in table]
    n = both_right + only_a + only_b + both
    return _comparison(only_a, only_b, both, n, only_a - only_b, only_a + only_b, 1,
                       _exact_mcnemar_p(only_a, only_b))


def _sign_flip_p(k: np.ndarray) -> float:
    """P(|T| ≥ |Σk|) when each nonzero k_i keeps or flips its sign with probability 1/2."""
    t_obs = int(k.sum())
    magnitudes = [int(v) for v in np.abs(k[k != 0])]
    total = sum(magnitudes)
    # U = Σ of the magnitudes drawn with a plus sign, T = 2U − total; counts[u] = ways to get U = u.
    counts = np.zeros(total + 1, dtype=object)
    counts[0], top = 1, 0
    for v in magnitudes:
        counts[v:top + v + 1] = counts[v:top + v + 1] + counts[:top + 1]
        top += v
    extreme = np.abs(2 * np.arange(total + 1) - total) >= abs(t_obs)
    return float(Fraction(int(sum(counts[extreme])), 2 ** len(magnitudes)))


def seeds_paired(wrong_a, wrong_b) -> PairedComparison:
    """Two methods with several seeds (``[S, n]`` each): exact sign-flip test of the per-image mean error."""
    a, b = _as_wrong(wrong_a, 2), _as_wrong(wrong_b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the runs were scored on different images: {a.shape} vs {b.shape}")
    seeds_a, seeds_b = a.shape[0], b.shape[0]
    scale = math.lcm(seeds_a, seeds_b)  # k_i = scale · d_i is an integer
    k = a.sum(0).astype(np.int64) * (scale // seeds_a) - b.sum(0).astype(np.int64) * (scale // seeds_b)
    mean_a, mean_b = a.mean(0), b.mean(0)
    # Counts averaged over every pairing of an A seed with a B seed: the McNemar counts when S = 1.
    return _comparison(float((mean_a * (1 - mean_b)).sum()), float((mean_b * (1 - mean_a)).sum()),
                       float((mean_a * mean_b).sum()), a.shape[1], int(k.sum()), int((k * k).sum()),
                       scale, _sign_flip_p(k))


def per_seed_wins(wrong_a, wrong_b) -> int:
    """How many seeds s had fewer mistakes in A's run s than in B's run s (a description, not a test)."""
    a, b = _as_wrong(wrong_a, 2), _as_wrong(wrong_b, 2)
    if a.shape != b.shape:
        raise ValueError(f"expected the same seeds and images: {a.shape} vs {b.shape}")
    return int((a.sum(1) < b.sum(1)).sum())


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (inputs finite, in [0, 1])."""
    pvalues = [float(p) for p in pvalues]
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=pvalues.__getitem__)):
        running = max(running, min(1.0, pvalues[i] * (m - rank)))
        adjusted[i] = running
    return adjusted


def equivalent(paired: PairedComparison, margin_points: float, alpha: float = 0.05) -> bool:
    """TOST: True when the (1 − 2α) interval of the difference lies strictly inside ±margin_points."""
    if margin_points <= 0:
        raise ValueError("the equivalence margin must be positive (and stated before the test)")
    half_width = NormalDist().inv_cdf(1 - alpha) * paired.standard_error
    return -margin_points < paired.difference - half_width and paired.difference + half_width < margin_points


def smallest_resolvable(discordant: int, n: int, alpha: float = 0.05) -> float:
    """Smallest |difference| (points) an exact McNemar test with b + c = discordant out of n can resolve."""
    for smaller in range(discordant // 2, -1, -1):  # p falls as the split grows more lopsided
        if _exact_mcnemar_p(smaller, discordant - smaller) < alpha:
            return 100 * (discordant - 2 * smaller) / n
    return math.inf


_COLUMNS = ["a", "b", "only_a_wrong", "only_b_wrong", "both_wrong", "difference", "low", "high", "p",
            "p_holm", "resolved"]


def pairwise(wrong: dict, alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of named runs (``[n]`` one seed, ``[S, n]`` several), Holm-adjusted over the family."""
    rows = []
    for name_a, name_b in itertools.combinations(wrong, 2):
        a, b = np.asarray(wrong[name_a]), np.asarray(wrong[name_b])
        if a.ndim == 1 and b.ndim == 1:
            result = mcnemar(a, b)
        else:
            result = seeds_paired(np.atleast_2d(a), np.atleast_2d(b))
        rows.append({"a": name_a, "b": name_b, "only_a_wrong": result.only_a_wrong,
                     "only_b_wrong": result.only_b_wrong, "both_wrong": result.both_wrong,
                     "difference": result.difference, "low": result.low, "high": result.high,
                     "p": result.p})
    table = pd.DataFrame(rows, columns=_COLUMNS[:-2])
    table["p_holm"] = holm(table["p"])
    table["resolved"] = table["p_holm"] < alpha
    return table


def _points(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if float(text) == 0 else text.replace("-", "−")


def verdict(row, n_images: int, split: str = "test", unit: str = "images") -> str:
    """One :func:`pairwise` row in words; ``split`` names the data ("test", "validation"), ``unit``
    what it holds ("images", "points")."""
    if row["resolved"]:
        lower, higher = (row["a"], row["b"]) if row["difference"] < 0 else (row["b"], row["a"])
        p = "< 0.001" if row["p_holm"] < 0.001 else f"= {row['p_holm']:.2g}"
        return f"{lower} has lower {split} error than {higher} (Holm-adjusted p {p})"
    return (f"{row['a']} against {row['b']}: not resolved on {n_images:,} {split} {unit} "
            f"(95 % interval of the difference [{_points(row['low'])}, {_points(row['high'])}] points)")
