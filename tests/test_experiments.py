import dataclasses
import pytest
import torch

from hwutils import experiments
from hwutils.experiments import Method, run, run_sweep, summarize
from hwutils.search import search
from hwutils.profiles import MNIST_PROFILES, TABLE9_TEST_ERROR, check_profile, mnist_methods
from hwutils.models import ModelConfig
from hwutils.training import TrainConfig

TINY = Method("tiny", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, batch_size=32))


def test_a_cached_run_is_loaded_not_retrained(moons, tmp_path, monkeypatch):
    first = run(TINY, moons, seed=0, results_dir=tmp_path, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached run")

    monkeypatch.setattr(experiments, "fit_members", no_training)
    again = run(TINY, moons, seed=0, results_dir=tmp_path, progress=False)
    assert again.history == first.history and again.test_error == first.test_error
    x = moons.test.X[:5]
    torch.testing.assert_close(again.model(x), first.model(x))


def test_a_changed_parameter_or_force_retrains(moons, tmp_path, monkeypatch):
    run(TINY, moons, seed=0, results_dir=tmp_path, progress=False)
    calls = []
    real_fit = experiments.fit_members
    monkeypatch.setattr(experiments, "fit_members", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    run(TINY.replace(lr=0.01), moons, seed=0, results_dir=tmp_path, progress=False)
    run(TINY, moons, seed=1, results_dir=tmp_path, progress=False)
    other_data = dataclasses.replace(moons, spec={**moons.spec, "noise": 0.2})  # what other data says
    run(TINY, other_data, seed=0, results_dir=tmp_path, progress=False)
    run(TINY, moons, seed=0, results_dir=tmp_path, progress=False, force=True)
    run(TINY, moons, seed=0, results_dir=tmp_path, progress=False)
    assert len(calls) == 4


def test_sweep_summary_reports_mean_and_std_over_seeds(moons):
    results = run_sweep([TINY, TINY.variant("tiny + L2", l2=1e-3)], moons, seeds=(0, 1), results_dir=None, progress=False)
    assert len(results) == 4
    summary = summarize(results)
    assert summary[("seeds", "n")].tolist() == [2, 2]
    assert set(summary.columns.get_level_values(1)) >= {"mean", "std"}


def test_unknown_profile_names_fail_with_the_list_of_valid_ones():
    assert check_profile("quick") == "quick"
    with pytest.raises(ValueError, match="smoke, quick, full, paper"):
        check_profile("fast")


def test_the_six_mnist_methods_are_the_rows_of_table_9():
    methods = mnist_methods(MNIST_PROFILES["quick"])
    assert [m.name for m in methods] == list(TABLE9_TEST_ERROR)
    by_name = {m.name: m for m in methods}
    assert by_name["dropout + max-norm"].model.dropout_hidden == 0.5
    assert by_name["dropout + max-norm"].train.max_norm and not by_name["dropout + max-norm"].train.l2
    assert by_name["L2 + L1 (late)"].train.l1_last_fraction < 1
    assert by_name["L2 + KL-sparsity"].train.kl > 0
    assert by_name["L2"].model.dropout_input == 0 and by_name["dropout + L2"].model.dropout_input == 0.2


def test_search_keeps_the_value_with_the_lowest_validation_error(moons):
    learner = Method("learner", ModelConfig(hidden=(16,)), TrainConfig(epochs=20, batch_size=32, lr=0.1))
    untouched = Method("untouched", ModelConfig(hidden=(8,)), TrainConfig(epochs=1))
    chosen, table = search([learner, untouched], {"learner": ("l2", (0.0, 5.0))}, moons, seeds=(0, 1),
                           results_dir=None, progress=False)
    assert chosen[0].train.l2 == 0.0 and chosen[1] == untouched
    assert set(table["value"]) == {0.0, 5.0} and len(table) == 4
    crushed = table[table["value"] == 5.0]["val_error_pct"].mean()
    assert crushed > table[table["value"] == 0.0]["val_error_pct"].mean()


def test_the_authors_recipe_rows_are_trained_exactly_as_configured():
    from hwutils.profiles import AUTHORS_RECIPE, PAPER_B1, authors_recipe_methods

    recipe, b1 = authors_recipe_methods(MNIST_PROFILES["quick"])
    assert (recipe.name, b1.name) == (AUTHORS_RECIPE, PAPER_B1)
    t, m = recipe.train, recipe.model
    assert (t.batch_size, t.lr, t.lr_schedule, t.optimizer, t.nesterov) == (100, 1.0, "inverse_t", "sgd", False)
    assert (t.momentum_start, t.momentum, t.max_norm, t.max_norm_output) == (0.5, 0.99, 3.0, True)
    assert (t.warmup_epochs, t.l2, t.l1, t.kl, t.patience) == (0, 0, 0, 0, None)  # no warm-up, penalty, stopping
    assert (m.hidden, m.dropout_input, m.dropout_hidden) == (MNIST_PROFILES["quick"].hidden, 0.2, 0.5)
    assert (m.init, m.dropout_scaling) == ("normal_fan_in", "test_time")
    assert (b1.train.momentum, b1.train.max_norm) == (0.95, 2.0)
    assert b1.train.replace(momentum=0.99, max_norm=3.0) == t and b1.model == m  # nothing else differs


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_the_recipes_schedule_keeps_its_shape_when_shrunk_to_a_profiles_budget(profile):
    from hwutils.profiles import authors_recipe_methods, recipe_steps, recipe_time_scale
    from hwutils.training import _lr_factor, momentum_at

    p = MNIST_PROFILES[profile]
    config = authors_recipe_methods(p)[0].train
    steps, per_epoch = recipe_steps(p), 500  # 50,000 images at batch 100
    assert steps == p.dropout_epochs * per_epoch == config.epochs * per_epoch
    assert recipe_time_scale(p) == steps / 1_000_000
    # as in the authors' million steps: the momentum ramp ends at 10 % of training and the learning
    # rate has halved at 1 %, fallen to 1/101 of its start at the end
    assert config.momentum_ramp_steps == 0.1 * steps and config.lr_half_life_steps == 0.01 * steps
    assert momentum_at(config, steps // 20) == pytest.approx(0.745)
    assert _lr_factor(config, steps // 100, steps, per_epoch) == pytest.approx(0.5)
    assert _lr_factor(config, steps, steps, per_epoch) == pytest.approx(1 / 101)


def test_the_paper_profile_runs_the_authors_recipe_for_its_million_steps_unscaled():
    from hwutils.profiles import authors_recipe_methods, recipe_time_scale

    config = authors_recipe_methods(MNIST_PROFILES["paper"])[0].train
    assert recipe_time_scale(MNIST_PROFILES["paper"]) == 1.0
    assert (config.lr_half_life_steps, config.momentum_ramp_steps) == (10_000, 100_000)


def test_the_point_cloud_set_up_table_reads_the_data_and_the_methods_it_describes(moons):
    from hwutils.profiles import POINT_CLOUD_PROFILES, point_cloud_methods, point_cloud_settings

    sizes = POINT_CLOUD_PROFILES["smoke"]
    methods = point_cloud_methods((16, 16), sizes.epochs, patience=7, lr=0.05, batch_size=10)
    settings = point_cloud_settings(moons, methods, sizes)
    assert settings["points: training / validation / test"] == "200 / 200 / 200"
    assert settings["network"].startswith("2-16-16-2 ") and "moons" in settings["data"]
    assert "patience 7" in settings["early stopping"] and "learning rate 0.05" in settings["optimizer"]
    assert settings["λ₁ searched (L1)"] == "0.0001, 0.001"


def test_part2_compares_methods_on_seeds_that_the_stacked_lambda_search_did_not_train():
    # A search run trained stacked has no wall time of its own, and its validation error chose λ.
    from hwutils.profiles import POINT_CLOUD_PROFILES, point_cloud_profile

    for sizes in POINT_CLOUD_PROFILES.values():
        assert not set(sizes.seeds) & set(sizes.sweep_seeds)
    with pytest.raises(ValueError, match=r"seeds must not include the λ search's seeds \[100, 101, 102\] \(here 101\)"):
        point_cloud_profile("quick", seeds=[0, 101])
