"""Part 3's study: the search grids, the statistics that say whether a regularizer acts, and the
comparison of methods against noise - on tiny data the tests build."""
import math

import pytest

from hwutils.diagnostics import regularizer_activity, unit_norms
import numpy as np

from hwutils.experiments import Method, RunResult, run_sweep
from hwutils.search import choices_at_edge, edge_decisions, search, search_choices, search_candidates, switched_off
from hwutils.models import ModelConfig
from hwutils.plotting import plot_l1_tradeoff, plot_lr_study
from hwutils.profiles import (LONG_L2, LR_STUDY, MNIST_PROFILES, final_methods, inherit_l2, mnist_methods,
                              mnist_search_grids, mnist_splits)
from hwutils.training import History, TrainConfig

NET = ModelConfig(hidden=(32,))
BASE = TrainConfig(epochs=6, batch_size=32, lr=0.3, momentum=0.9, lr_schedule="constant")


def test_part3_reads_pixel_intensities_in_0_1_as_the_paper(mnist_dir):
    # Standardized inputs (x ≈ 3 times larger) made the same learning rates kill the ReLU units and
    # left max-norm radii meant for [0, 1] pixels unbound; Part 3 trains on [0, 1] pixels.
    data = mnist_splits(MNIST_PROFILES["smoke"], root=mnist_dir, device="cpu")
    assert data.train.X.min().item() == 0.0 and data.train.X.max().item() == 1.0
    assert data.spec["pixels"] == "[0, 1]"  # the splits say what they are: part of every run's key
    standardized = mnist_splits(MNIST_PROFILES["smoke"], root=mnist_dir, device="cpu", pixels="standardized")
    ratio = standardized.train.X.norm(dim=1).mean() / data.train.X.norm(dim=1).mean()
    assert 2.5 < ratio.item() < 3.5


def test_mnist_splits_rejects_an_unknown_input_scaling():
    with pytest.raises(ValueError, match="pixels must be one of"):
        mnist_splits(MNIST_PROFILES["smoke"], pixels="whitened")


def test_the_search_tunes_the_learning_rate_with_each_constant_and_l2_plus_x_inherit_l2():
    profile = MNIST_PROFILES["quick"]
    stage1, stage2 = mnist_search_grids(profile)
    assert set(stage1) == set(LR_STUDY) and all(spec["lr"] == profile.lr_grid for spec in stage1.values())
    assert min(profile.lr_grid) <= 0.01 and max(profile.lr_grid) >= 1.0
    assert set(stage2) == {"L2 + L1 (late)", "L2 + KL-sparsity"}
    methods = mnist_methods(profile)
    tuned_l2 = next(m for m in methods if m.name == "L2").replace(lr=0.03, l2=3e-4)
    inherited = {m.name: m for m in inherit_l2([tuned_l2, *methods[1:]], tuned_l2)}
    assert inherited["L2 + L1 (late)"].train.lr == 0.03 and inherited["L2 + KL-sparsity"].train.l2 == 3e-4
    assert inherited["max-norm"].train.lr == methods[3].train.lr  # not an L2 method: untouched


def test_final_methods_keep_the_chosen_constants_at_the_full_budget_and_add_the_long_l2_control():
    profile = MNIST_PROFILES["quick"]
    chosen = [m.replace(epochs=3, lr=0.07) for m in mnist_methods(profile.search_profile())]
    final = {m.name: m for m in final_methods(profile, chosen)}
    assert final["L2"].train.epochs == profile.epochs and final["L2"].train.lr == 0.07
    assert final["dropout + L2"].train.epochs == profile.dropout_epochs
    assert final[LONG_L2].train == final["L2"].train.replace(epochs=profile.dropout_epochs)


def test_history_counts_the_hidden_units_at_the_max_norm_cap(moons):
    tight, loose = Method("tight", NET, BASE.replace(max_norm=0.5)), Method("loose", NET, BASE.replace(max_norm=50.0))
    results = {r.method: r for r in run_sweep([tight, loose], moons, results_dir=None, progress=False)}
    norms = unit_norms(results["tight"].model)
    assert results["tight"].history.at_cap[-1] == pytest.approx(float((norms >= 0.99 * 0.5).float().mean()))
    assert results["tight"].history.at_cap[-1] > 0.5 and results["loose"].history.at_cap[-1] == 0
    assert results["tight"].history.max_unit_norm[-1] == pytest.approx(float(norms.max()), rel=1e-5)


def test_regularizer_activity_flags_a_max_norm_that_never_binds_and_an_l1_that_sparsifies(moons):
    methods = [Method("L2", NET, BASE.replace(l2=1e-4)), Method("binding", NET, BASE.replace(max_norm=0.5)),
               Method("never binds", NET, BASE.replace(max_norm=50.0)),
               Method("L2 + L1", NET, BASE.replace(l2=1e-4, l1=3e-3, l1_proximal=True))]
    activity = regularizer_activity(run_sweep(methods, moons, results_dir=None, progress=False))
    active = dict(zip(activity["method"], activity["active"]))
    assert active == {"binding": True, "never binds": False, "L2 + L1": True}


def test_the_search_table_shows_the_l1_trade_off_and_flags_choices_at_the_edge(moons):
    l2 = Method("L2 + L1 (late)", NET, BASE.replace(l2=1e-4, l1_proximal=True))
    grid = {"L2 + L1 (late)": ("l1", (0.0, 1e-3, 1e-2))}
    _, table = search([l2], grid, moons, results_dir=None, progress=False)
    sparsity = table.sort_values("l1")["near_zero_pct"].tolist()
    assert sparsity == sorted(sparsity) and sparsity[-1] > sparsity[0] + 10  # more λ₁, sparser
    assert table["chosen"].sum() == 1
    value = table.loc[table["chosen"], "l1"].iloc[0]
    edges = choices_at_edge(table, grid)
    assert (value in (0.0, 1e-2)) == bool(edges)
    plot_l1_tradeoff(table.assign(val_error_pct=table["val_error_pct"]))


def test_the_search_never_looks_at_the_test_split(moons):
    learner = Method("learner", NET, BASE)
    _, table = search([learner], {"learner": {"lr": (0.03, 0.3), "l2": (0.0, 1e-3)}}, moons, results_dir=None,
                      progress=False)
    assert len(table) == 4 and {"lr", "l2", "dead_pct", "at_cap_peak_pct"} <= set(table.columns)
    results = run_sweep([learner], moons, results_dir=None, progress=False, evaluate_test=False)
    assert math.isnan(results[0].test_error)


def test_the_learning_rate_study_marks_diverged_runs(moons):
    method = Method("max-norm", NET, BASE.replace(max_norm=1.0))
    _, table = search([method], {"max-norm": {"lr": (0.1, 1e12), "max_norm": (1.0,)}}, moons, results_dir=None,
                      progress=False, on_nan="stop")
    assert table.set_index("lr")["diverged"].to_dict() == {0.1: False, 1e12: True}
    plot_lr_study(table, chosen={"max-norm": (0.1, 1.0)})


def test_the_candidates_of_a_grid_share_initial_weights_and_minibatch_order(moons):
    # Same seed: the same initial weights and the same first minibatch, so the same first loss to the
    # bit (a penalty is not part of the data loss); they part only once their constants act.
    learner = Method("learner", NET, BASE)
    a, b = run_sweep(search_candidates([learner], {"learner": ("l2", (0.0, 1e-3))}), moons, results_dir=None,
                     progress=False, evaluate_test=False)
    assert a.history.iter_loss[0] == b.history.iter_loss[0]
    assert a.history.iter_loss[1:] != b.history.iter_loss[1:]
    c, d = run_sweep([learner, learner.variant("learner again")], moons, seeds=(3,), results_dir=None,
                     progress=False, evaluate_test=False)[:2]
    assert c.history.iter_loss == d.history.iter_loss and np.array_equal(c.val_wrong, d.val_wrong)


def test_every_run_keeps_which_validation_and_test_images_it_got_wrong(moons):
    result, = run_sweep([Method("m", NET, BASE)], moons, results_dir=None, progress=False)
    assert result.val_wrong.dtype == bool and result.val_wrong.shape == (len(moons.val),)
    assert result.val_wrong.mean() == pytest.approx(result.val_error)
    assert result.test_wrong.mean() == pytest.approx(result.test_error)
    searched, = run_sweep([Method("m", NET, BASE)], moons, results_dir=None, progress=False, evaluate_test=False)
    assert searched.test_wrong is None and searched.val_wrong is not None


def test_a_search_holds_each_method_with_its_regularizer_switched_off_as_its_reference():
    l2 = Method("L2", NET, BASE.replace(l2=1e-4))
    off = switched_off(l2, "l2", "no regularizer")
    assert off.train.l2 == 0.0 and off.name == "no regularizer"
    capped = Method("max-norm", NET, BASE.replace(max_norm=2.0, max_norm_output=True))
    assert switched_off(capped, "max_norm", "no regularizer").train == off.train  # one run serves both
    late = Method("L2 + L1", NET, BASE.replace(l2=1e-4, l1=1e-3, l1_last_fraction=0.25))
    assert switched_off(late, "l1", "L2").train == l2.train
    grid = {"L2": {"lr": (0.1, 0.3), "l2": (1e-5, 1e-4)}}
    candidates = search_candidates([l2], grid, {"L2": [off.replace(lr=lr) for lr in (0.1, 0.3)]})
    assert len(candidates) == 6 and [c.name for c in candidates[:2]] == ["no regularizer"] * 2


def test_warm_up_keeps_the_units_alive_that_learning_rate_0_3_kills_in_the_first_steps(mnist_dir):
    # Momentum SGD at full rate from random weights pushes many ReLU units below zero for every image
    # within the first epoch, for good; Part 3 ramps the rate up over its first epoch instead.
    from hwutils.data import Splits
    from hwutils.diagnostics import dead_fraction
    from hwutils.profiles import WARMUP_EPOCHS

    profile = MNIST_PROFILES["quick"]
    full = mnist_splits(profile, root=mnist_dir, device="cpu")
    data = Splits(full.train.subset(10_000), full.val.subset(2_000), full.test.subset(100))
    l2 = next(m for m in mnist_methods(profile) if m.name == "L2").replace(lr=0.3, epochs=2)
    assert l2.train.warmup_epochs == WARMUP_EPOCHS >= 1
    dead = {}
    for w in (0.0, WARMUP_EPOCHS):
        runs = run_sweep([l2.replace(warmup_epochs=w)], data, seeds=(0, 1, 2, 3), results_dir=None, progress=False,
                         evaluate_test=False)
        dead[w] = sorted(dead_fraction(r.model, data.train.X[:5000]) for r in runs)
    assert dead[0.0][2] > 0.10          # without warm-up, most seeds lose over a tenth of their units
    assert max(dead[WARMUP_EPOCHS]) < 0.02


def test_the_learning_rate_warms_up_linearly_then_follows_its_schedule():
    from hwutils.training import _lr_factor

    config = TrainConfig(epochs=10, lr_schedule="constant", warmup_epochs=2)
    factors = [_lr_factor(config, s, 10 * 5, 5) for s in range(50)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)]) and set(factors[10:]) == {1.0}
    cosine = TrainConfig(epochs=10, warmup_epochs=1)
    assert _lr_factor(cosine, 30, 50, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 50)))
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=2)


def _candidate(value, wrong, val_loss, lr=0.1, field="l2", index=0):
    """A searched run of "m" with ``lr`` and ``field`` = ``value``, the validation images it gets
    wrong (a boolean array) and its validation loss."""
    wrong = np.asarray(wrong, dtype=bool)
    history = History(val_loss=[2.0, val_loss], val_error=[0.5, wrong.mean()])
    return RunResult("m", 0, f"{lr}-{value}", history, float(wrong.mean()), math.nan,
                     {"train": {"lr": lr, field: value, "patience": None}}, measurements={"dead_pct": 0.0},
                     val_wrong=wrong)


def _mistakes(n, *wrong_at):
    out = np.zeros(n, dtype=bool)
    out[list(wrong_at)] = True
    return out


def test_the_search_breaks_equal_errors_by_the_validation_loss_and_only_identical_runs_by_the_smallest():
    method = Method("m", NET, BASE)
    grid = {"m": {"lr": (0.1,), "l2": (1e-5, 1e-4, 1e-3)}}
    three, four = _mistakes(100, 1, 2, 3), _mistakes(100, 1, 2, 3, 4)
    loss_decides = [_candidate(1e-5, three, 0.110), _candidate(1e-4, _mistakes(100, 5, 6, 7), 0.100),
                    _candidate(1e-3, four, 0.090)]
    (chosen,), _ = search_choices([method], grid, loss_decides)
    assert chosen.train.l2 == 1e-4  # the same error as 1e-5, a lower loss; 1e-3's loss is lower, its error not
    identical = [_candidate(1e-5, three, 0.1), _candidate(1e-4, three, 0.1), _candidate(1e-3, four, 0.1)]
    (chosen,), _ = search_choices([method], grid, identical)
    assert chosen.train.l2 == 1e-5


def test_a_grid_is_extended_where_its_edge_beats_its_neighbour_on_the_paired_test_or_is_the_same_run():
    method, grid = Method("m", NET, BASE), {"m": {"lr": (0.1,), "l2": (1e-5, 1e-4)}}
    n, shared = 5_000, list(range(100))  # both runs get these 100 images wrong
    # 20 images wrong only in the neighbour, none only in the edge: exact McNemar p = 2 / 2**20
    beyond = _mistakes(n, *shared), _mistakes(n, *shared, *range(1000, 1020))
    # 3 against 1: the same error rates an unpaired test would compare, but nothing the pairs resolve
    within = _mistakes(n, *shared, 4000), _mistakes(n, *shared, 1000, 1001, 1002)
    for name, (edge, neighbour), extend in (("beyond", beyond, True), ("within", within, False)):
        results = [_candidate(1e-5, edge, 0.1), _candidate(1e-4, neighbour, 0.2)]
        (chosen,), table = search_choices([method], grid, results)
        (decision,) = edge_decisions(table, grid, choices_at_edge(table, grid), results)
        assert (decision["value"], decision["side"], decision["neighbour"]) == (1e-5, "smallest", 1e-4), name
        assert decision["extend"] is extend and not decision["same"], name
    assert decision["p"] == pytest.approx(0.625) and decision["difference"] == pytest.approx(-100 * 2 / n)
    same = [_candidate(1e-5, beyond[0], 0.1), _candidate(1e-4, beyond[0], 0.1)]  # a constant that did not act
    _, table = search_choices([method], grid, same)
    (decision,) = edge_decisions(table, grid, choices_at_edge(table, grid), same)
    assert decision["same"] and decision["extend"]


def test_the_chosen_l2_trains_with_the_l1_constants_so_their_first_epochs_train_once():
    from hwutils.study import Study

    study = Study("quick", results_dir=None, progress=False)
    _, stage2 = mnist_search_grids(study.sizes)
    methods = study.constant_methods(study._methods(study.small))
    batch, = study.constant_stage(methods, stage2).batches
    names = [m.name for m, _ in batch.jobs()]  # L2: the final run, and L2 + L1's and L2 + KL's reference
    assert names.count("L2") == 1 and names.count("L2 + L1 (late)") == len(stage2["L2 + L1 (late)"][1])
    per_epoch = math.ceil(50_000 / study.sizes.batch_size)
    steps = dict(zip(names, study._batch_steps(batch, batch.jobs())))
    l1_epochs = study.sizes.epochs - round(0.75 * study.sizes.epochs)  # L1 acts in the last quarter only
    assert steps["L2"] == study.sizes.epochs * per_epoch and steps["L2 + L1 (late)"] == l1_epochs * per_epoch
    assert steps["L2 + KL-sparsity"] == study.sizes.epochs * per_epoch
