"""Paired comparisons of classifiers scored on the same images (hwutils.stats)."""
import ast
import dataclasses
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from hwutils import stats
from hwutils.stats import (equivalent, holm, mcnemar, mcnemar_from_table, pairwise, per_seed_wins,
                           seeds_paired, smallest_resolvable, verdict)


def runs_from_counts(only_a, only_b, both, n, rng=None):
    """Boolean mistakes of two runs on n images with the given discordant and shared counts."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    order = (rng or np.random.default_rng(0)).permutation(n)
    return a[order], b[order]


def test_the_module_imports_only_the_standard_library_numpy_and_pandas():
    tree = ast.parse(Path(stats.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "pandas"}


def test_mcnemar_gives_the_exact_p_of_the_pinned_tables():
    assert mcnemar_from_table([[9945, 25], [15, 15]]).p == pytest.approx(0.15386, abs=5e-6)
    assert mcnemar_from_table([[9959, 11], [1, 29]]).p == pytest.approx(0.0063477, abs=5e-8)


def test_mcnemar_from_mistakes_equals_mcnemar_from_their_table():
    a, b = runs_from_counts(only_a=15, only_b=25, both=15, n=10_000)
    result = mcnemar(a, b)
    assert (result.only_a_wrong, result.only_b_wrong, result.both_wrong, result.n) == (15, 25, 15, 10_000)
    assert result == mcnemar_from_table([[9945, 25], [15, 15]])


def test_mcnemar_p_matches_scipys_exact_binomial_test():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    rng = np.random.default_rng(1)
    for b, c in [(0, 0), (0, 1), (7, 7), (0, 30), *rng.integers(0, 150, size=(40, 2))]:
        expected = binomtest(int(min(b, c)), int(b + c), 0.5).pvalue if b + c else 1.0
        assert mcnemar_from_table([[1000, c], [b, 5]]).p == pytest.approx(expected, rel=1e-9)


def test_mcnemar_interval_is_the_paired_difference_plus_minus_1_96_standard_errors():
    result = mcnemar_from_table([[9945, 25], [15, 15]])  # b = 15, c = 25, n = 10,000
    se_points = 100 * math.sqrt(40 - (15 - 25) ** 2 / 10_000) / 10_000
    assert result.difference == pytest.approx(-0.1)
    assert result.standard_error == pytest.approx(se_points)
    assert (result.low, result.high) == pytest.approx((-0.1 - 1.959964 * se_points,
                                                       -0.1 + 1.959964 * se_points))


def test_mcnemar_with_no_discordant_images_has_p_one_and_a_zero_width_interval():
    result = mcnemar_from_table([[90, 0], [0, 10]])
    assert (result.p, result.difference, result.low, result.high) == (1.0, 0.0, 0.0, 0.0)


def test_seeds_paired_with_one_seed_equals_mcnemar_exactly():
    rng = np.random.default_rng(2)
    for only_a, only_b in [(15, 25), (1, 11), (9, 9), (0, 0), (40, 3)]:
        a, b = runs_from_counts(only_a, only_b, both=20, n=2_000, rng=rng)
        assert seeds_paired(a[None], b[None]) == mcnemar(a, b)


def test_seeds_paired_p_equals_the_brute_force_over_all_sign_flips():
    rng = np.random.default_rng(3)
    seeds, n = 3, 60
    a = rng.random((seeds, n)) < 0.08
    b = rng.random((seeds, n)) < 0.04
    k = a.sum(0).astype(int) - b.sum(0).astype(int)  # = S · d_i
    discordant = np.abs(k[k != 0])
    assert 6 <= discordant.size <= 14  # small enough to enumerate
    extreme = sum(abs(np.dot(signs, discordant)) >= abs(k.sum())
                  for signs in itertools.product((-1, 1), repeat=discordant.size))
    assert seeds_paired(a, b).p == pytest.approx(extreme / 2 ** discordant.size, rel=1e-12)


def test_seeds_paired_interval_uses_the_per_image_mean_difference():
    rng = np.random.default_rng(4)
    a, b = rng.random((4, 500)) < 0.1, rng.random((4, 500)) < 0.05
    d = a.mean(0) - b.mean(0)
    result = seeds_paired(a, b)
    se_points = 100 * math.sqrt((d ** 2).sum() - d.sum() ** 2 / d.size) / d.size
    assert result.difference == pytest.approx(100 * d.mean())
    assert result.difference == pytest.approx(100 * (result.only_a_wrong - result.only_b_wrong) / 500)
    assert (result.low, result.high) == pytest.approx((100 * d.mean() - 1.959964 * se_points,
                                                       100 * d.mean() + 1.959964 * se_points))
    assert 0 < result.p < 0.05


def test_per_seed_wins_counts_the_seeds_where_a_made_fewer_mistakes():
    a = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], bool)  # 1, 2, 0 mistakes
    b = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]], bool)  # 2, 2, 1 mistakes
    assert per_seed_wins(a, b) == 2 and per_seed_wins(b, a) == 0


def test_holm_gives_the_hand_computed_adjusted_p_values_in_input_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_holm_is_monotone_at_least_the_raw_p_and_at_most_one():
    rng = np.random.default_rng(5)
    for _ in range(20):
        raw = rng.random(rng.integers(1, 12)) ** 3
        adjusted = np.array(holm(raw))
        assert np.all(adjusted >= raw) and np.all(adjusted <= 1)
        order = np.argsort(raw, kind="stable")
        assert np.all(np.diff(adjusted[order]) >= 0)


def test_equivalent_only_when_the_90_percent_interval_lies_inside_the_margin():
    close = mcnemar_from_table([[9950, 22], [20, 8]])  # −0.02 points, 90 % half-width ≈ 0.107
    assert equivalent(close, margin_points=0.2)
    assert not equivalent(close, margin_points=0.1)
    shifted = dataclasses.replace(close, difference=0.15)
    assert not equivalent(shifted, margin_points=0.2)
    with pytest.raises(ValueError):
        equivalent(close, margin_points=0)


def test_smallest_resolvable_matches_the_brute_force_over_all_splits():
    n = 10_000
    for discordant in range(0, 45):
        significant = [abs(2 * b - discordant) for b in range(discordant + 1)
                       if mcnemar_from_table([[n - discordant, discordant - b], [b, 0]]).p < 0.05]
        expected = 100 * min(significant) / n if significant else math.inf
        assert smallest_resolvable(discordant, n) == expected, discordant
    assert smallest_resolvable(5, n) == math.inf and smallest_resolvable(6, n) == 100 * 6 / n


def test_pairwise_has_one_row_per_pair_and_holm_over_the_family():
    rng = np.random.default_rng(6)
    wrong = {"dropout": rng.random(3_000) < 0.015, "L2": rng.random(3_000) < 0.02,
             "none": rng.random(3_000) < 0.04}
    table = pairwise(wrong)
    assert list(table.columns) == ["a", "b", "only_a_wrong", "only_b_wrong", "both_wrong",
                                   "difference", "low", "high", "p", "p_holm", "resolved"]
    assert list(zip(table["a"], table["b"])) == [("dropout", "L2"), ("dropout", "none"), ("L2", "none")]
    assert table["p_holm"].tolist() == holm(table["p"])
    assert table["resolved"].tolist() == (table["p_holm"] < 0.05).tolist()
    assert table["p"].iloc[0] == mcnemar(wrong["dropout"], wrong["L2"]).p


def test_pairwise_uses_the_seed_test_for_runs_with_several_seeds():
    rng = np.random.default_rng(7)
    wrong = {"dropout": rng.random((3, 2_000)) < 0.02, "none": rng.random((3, 2_000)) < 0.04}
    row = pairwise(wrong).iloc[0]
    assert row["p"] == seeds_paired(wrong["dropout"], wrong["none"]).p


def test_verdict_names_the_lower_error_run_first_or_says_not_resolved():
    resolved = {"a": "none", "b": "dropout", "difference": 0.8, "low": 0.5, "high": 1.1,
                "p_holm": 0.0123, "resolved": True}
    assert verdict(resolved, 10_000) == "dropout has lower test error than none (Holm-adjusted p = 0.012)"
    unresolved = {"a": "L1", "b": "L2", "difference": 0.095, "low": -0.12, "high": 0.31,
                  "p_holm": 0.4, "resolved": False}
    assert verdict(unresolved, 10_000) == (
        "L1 against L2: not resolved on 10,000 test images (95 % interval of the difference [−0.12, 0.31] points)")
    assert "on 2,000 test points" in verdict(unresolved, 2_000, unit="points")
    assert "5,000 validation images" in verdict(unresolved, 5_000, split="validation")
    assert "tie" not in verdict(unresolved, 10_000) + verdict(resolved, 10_000)
