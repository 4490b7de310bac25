"""The stacked engine: K runs trained together behave as K runs trained alone."""
import pytest
import torch

from hwutils import experiments
from hwutils.data import split_point_cloud
from hwutils.experiments import Method, run, run_key, run_sweep
from hwutils.models import MLP, ModelConfig, StackedMLP, build_model, dropout
from hwutils.training import TrainConfig, fit, fit_members

BASE = TrainConfig(epochs=40, batch_size=16, lr=0.1, momentum=0.9, lr_schedule="constant")
MEMBERS = {  # one of each regularizer, each with its own constant and seed
    "L2": BASE.replace(l2=1e-3, seed=0),
    "late L1": BASE.replace(l1=1e-3, l1_last_fraction=0.5, seed=1),
    "KL": BASE.replace(kl=0.05, kl_rho=0.1, seed=2),
    "max-norm": BASE.replace(max_norm=0.7, lr=0.2, seed=3),
    "early stopping": BASE.replace(patience=3, seed=4),
    "proximal L1": BASE.replace(l1=1e-3, l1_proximal=True, momentum=0.9, seed=5),
}


@pytest.fixture(scope="module")
def noisy():
    """Few noisy points: the nets overfit, so early stopping stops and the penalties matter."""
    return split_point_cloud("moons", n_train=48, n_val=200, n_test=50, noise=0.35, seed=3)


def _model(seed):
    return build_model(ModelConfig(hidden=(32, 32)), 2, 2, seed=100 + seed)


def test_a_stacked_sweep_gives_each_member_the_weights_and_history_of_its_run_alone(noisy):
    together = [_model(c.seed) for c in MEMBERS.values()]
    histories = fit_members(together, noisy.train, noisy.val, list(MEMBERS.values()), names=list(MEMBERS),
                            progress=False)
    for (name, config), model, history in zip(MEMBERS.items(), together, histories):
        alone = _model(config.seed)
        reference = fit(alone, noisy.train, noisy.val, config, progress=False)
        assert history.epochs_run == reference.epochs_run and history.best_epoch == reference.best_epoch, name
        assert history.stopped_early == reference.stopped_early, name
        for field in ("iter_loss", "train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights"):
            torch.testing.assert_close(torch.tensor(getattr(history, field)), torch.tensor(getattr(reference, field)),
                                       rtol=1e-4, atol=1e-5, msg=f"{name}: {field}")
        for p, q in zip(model.parameters(), alone.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    by_name = dict(zip(MEMBERS, histories))
    assert by_name["early stopping"].stopped_early  # the member did stop while the others went on
    assert by_name["L2"].epochs_run == BASE.epochs
    assert by_name["late L1"].penalty[0] == 0 and by_name["late L1"].penalty[-1] > 0


def test_a_stopped_member_gets_its_best_epochs_weights_back(noisy):
    configs = [BASE.replace(patience=3, seed=4), BASE.replace(seed=0)]
    models = [_model(4), _model(0)]
    histories = fit_members(models, noisy.train, noisy.val, configs, progress=False)
    stopped = histories[0]
    assert stopped.stopped_early and stopped.epochs_run == stopped.best_epoch + 3
    loss = torch.nn.functional.cross_entropy(models[0](noisy.val.X), noisy.val.y).item()
    assert loss == pytest.approx(min(stopped.val_loss), rel=1e-5)


def test_dropout_members_draw_independent_masks_with_their_own_keep_rate():
    torch.manual_seed(0)
    net = StackedMLP.from_models([MLP(4, (8,), 2, dropout_input=p, dropout_hidden=p) for p in (0.2, 0.5, 0.5)])
    out = dropout(torch.ones(3, 20_000, 4), net.dropout_input)       # what each member's first layer sees
    kept = (out != 0).float().mean((1, 2))
    assert kept[0].item() == pytest.approx(0.8, abs=0.01) and kept[1].item() == pytest.approx(0.5, abs=0.01)
    assert kept[2].item() == pytest.approx(0.5, abs=0.01)
    assert (out[1] != 0).ne(out[2] != 0).float().mean().item() == pytest.approx(0.5, abs=0.02)  # independent
    torch.testing.assert_close(out.mean((1, 2)), torch.ones(3), atol=0.02, rtol=0)  # E[output] = input
    net.eval()
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(net(x), net(x))  # no dropout in evaluation


def test_a_members_nan_stops_everything_naming_the_member_and_its_learning_rate(noisy):
    configs = [BASE.replace(epochs=3), BASE.replace(epochs=3, lr=1e12, seed=1)]
    with pytest.raises(FloatingPointError, match=r"wild one.*lr=1e\+12"):
        fit_members([_model(0), _model(1)], noisy.train, noisy.val, configs, names=["calm one", "wild one"],
                    progress=False)


def test_with_on_nan_stop_a_diverged_member_is_marked_and_the_others_finish(noisy):
    configs = [BASE.replace(epochs=3), BASE.replace(epochs=3, lr=1e12, seed=1)]
    calm, wild = fit_members([_model(0), _model(1)], noisy.train, noisy.val, configs, on_nan="stop",
                             progress=False)
    assert wild.diverged and wild.epochs_run < 3
    assert not calm.diverged and calm.epochs_run == 3


TINY = Method("tiny", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, batch_size=32))


def test_a_run_trained_together_is_the_same_cached_run_as_one_trained_alone(moons, tmp_path, monkeypatch):
    methods = [TINY, TINY.variant("tiny + L2", l2=1e-3), TINY.variant("tiny + max-norm", max_norm=1.0)]
    batched = run_sweep(methods, moons, seeds=(0, 1), results_dir=tmp_path, together=True, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 6

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a run that was cached by a batched sweep")

    monkeypatch.setattr(experiments, "fit_members", no_training)
    alone = run(methods[1], moons, seed=1, results_dir=tmp_path, together=False, progress=False)
    twin = next(r for r in batched if r.method == "tiny + L2" and r.seed == 1)
    assert alone.key == twin.key == run_key(methods[1], {}, 1)
    assert alone.history == twin.history and alone.test_error == twin.test_error


def test_runs_that_cannot_share_a_step_are_trained_in_separate_groups(moons, monkeypatch):
    sizes = []
    real = experiments.fit_members
    monkeypatch.setattr(experiments, "fit_members", lambda models, *a, **k: sizes.append(len(models)) or real(models, *a, **k))
    longer = TINY.variant("tiny, longer", epochs=3)
    wider = Method("wide", ModelConfig(hidden=(16,)), TINY.train)
    run_sweep([TINY, longer, wider, TINY.variant("tiny + L2", l2=1e-3)], moons, seeds=(0,), results_dir=None,
              together=True, progress=False)
    assert sorted(sizes) == [1, 1, 2]


def test_a_learning_rate_given_as_a_numpy_scalar_trains_exactly_as_a_python_float(noisy):
    # A search hands back its choice from a pandas index (numpy.float64); the run must not change.
    import numpy as np

    histories = [fit(_model(0), noisy.train, noisy.val, BASE.replace(epochs=3, lr=lr), progress=False)
                 for lr in (0.1, np.float64(0.1))]
    assert histories[0].iter_loss == histories[1].iter_loss


def test_the_search_hands_back_plain_python_numbers(moons):
    from hwutils.experiments import search

    chosen, _ = search([TINY], {"tiny": {"lr": (0.01, 0.1), "l2": (0.0, 1e-3)}}, moons, results_dir=None,
                       progress=False)
    assert type(chosen[0].train.lr) is float and type(chosen[0].train.l2) is float


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_runs_trained_together_come_back_on_the_device_and_the_search_reads_them(moons):
    from hwutils.data import Split, Splits
    from hwutils.experiments import search

    on = lambda s: Split(s.X.cuda(), s.y.cuda())
    data = Splits(on(moons.train), on(moons.val), on(moons.test))
    results = run_sweep([TINY, TINY.variant("tiny L2", l2=1e-3)], data, results_dir=None, progress=False,
                        together=True)
    assert all(next(r.model.parameters()).is_cuda for r in results)
    chosen, table = search([TINY], {"tiny": {"lr": (0.01, 0.1)}}, data, results_dir=None, progress=False)
    assert table["dead_pct"].notna().all()


def test_a_training_field_added_later_keeps_old_cache_keys_at_its_neutral_value_and_changes_them_otherwise():
    import dataclasses, hashlib, json

    from hwutils.experiments import CACHE_VERSION

    plain = dataclasses.asdict(TINY.train)
    del plain["warmup_epochs"]  # the key as it was computed before warm-up existed
    before = hashlib.sha256(json.dumps({"model": dataclasses.asdict(TINY.model), "train": plain, "data": {},
                                        "seed": 0, "cache_version": CACHE_VERSION}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    assert run_key(TINY, {}, 0) == before
    assert run_key(TINY.replace(warmup_epochs=1), {}, 0) != before
