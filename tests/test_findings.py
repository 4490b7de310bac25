"""Part 3's tables and sentences read plain results: here made by hand, without MNIST or training."""
import numpy as np
import pytest

from hwutils import findings
from hwutils.experiments import RunResult
from hwutils.profiles import LONG_L2, MNIST_PROFILES, TABLE9_TEST_ERROR
from hwutils.study import StudyResults
from hwutils.training import History

N = 10_000  # test images


def _run(method: str, seed: int, wrong_at) -> RunResult:
    wrong = np.zeros(N, dtype=bool)
    wrong[list(wrong_at)] = True
    history = History(val_loss=[0.1], val_error=[wrong.mean()], epoch_seconds=[1.0], best_epoch=1)
    return RunResult(method, seed, f"{method}-{seed}", history, float(wrong.mean()), float(wrong.mean()),
                     {"train": {}}, val_wrong=wrong, test_wrong=wrong)


def _results(wrong_by_method: dict) -> StudyResults:
    names = [*TABLE9_TEST_ERROR, LONG_L2]
    final = [_run(name, 0, wrong_by_method.get(name, range(40))) for name in names]
    return StudyResults(profile="quick", sizes=MNIST_PROFILES["quick"], small=MNIST_PROFILES["quick"], probes=[],
                        lr_search=None, constant_search=None, momentum_probe=None, final=final, recipe=[],
                        chosen=[], method_names=names, recipe_methods=[], high_lr=0.3, device="CPU",
                        images={"train": 50_000, "val": N, "test": N, "search train": 10_000, "search val": N})


def test_methods_are_compared_paired_on_the_images_and_corrected_by_holm():
    # L2 gets 40 images wrong; dropout + max-norm 10 of them: 30 against 0 images wrong in one only.
    # max-norm gets 40 others wrong: the same error rate as L2, and nothing the pairs resolve.
    results = _results({"dropout + max-norm": range(10), "max-norm": range(1000, 1040)})
    table = findings.paired_table(results).set_index(["a", "b"])
    assert len(table) == 15  # the six Table 9 methods, every pair once
    row = table.loc[("L2", "dropout + max-norm")]
    assert (row["only_a_wrong"], row["only_b_wrong"], row["both_wrong"]) == (30, 0, 10)
    assert row["p"] == pytest.approx(2 * 0.5 ** 30) and row["p_holm"] >= row["p"] and row["resolved"]
    same_rate = table.loc[("L2", "max-norm")]
    assert same_rate["difference"] == 0 and not same_rate["resolved"] and same_rate["only_a_wrong"] == 40


def test_the_ranking_names_what_is_resolved_and_never_calls_a_difference_a_tie():
    results = _results({"dropout + max-norm": range(10), "dropout + L2": range(38)})
    text = findings.ranking_text(results)
    assert "dropout + max-norm has lower test error than" in text and "Holm-adjusted p" in text
    assert "tie" not in text.lower() and "≈" not in text
    orderings = findings.orderings_table(results).set_index(["A", "B"])
    assert orderings.loc[("dropout + max-norm", "L2"), "verdict"] == "resolved, as in the paper"
    assert orderings.loc[("dropout + L2", "L2"), "verdict"] == "not resolved"
    assert orderings.loc[("L2 + L1 (late)", "L2"), "smallest resolvable"] == "none"  # the same images wrong


def test_table9_is_compared_as_gaps_to_l2_that_a_constant_offset_would_not_change():
    # Every method 0.3 points worse than the paper, with the paper's gaps: the gaps all agree.
    base = int(N * 0.0162) + 30
    wrong = {name: range(base - round(N * (TABLE9_TEST_ERROR["L2"] - e) / 100))
             for name, e in TABLE9_TEST_ERROR.items()}
    rows = findings.table9_rows(_results(wrong))
    assert (rows["this run (%)"] - rows["Table 9 (%)"]).min() > 0.25
    assert set(rows.drop(index="L2")["Table 9's gap inside"]) == {"yes"}
