import copy

import pytest
import torch
from torch.nn import functional as F

from hwutils.data import split_point_cloud
from hwutils.models import MLP
from hwutils.regularizers import kl_sparsity_penalty, l1_penalty, l2_penalty
from hwutils.training import History, TrainConfig, evaluate, fit


def test_a_short_training_learns_the_two_moons(moons):
    torch.manual_seed(0)
    model = MLP(2, (32, 32), 2)
    config = TrainConfig(epochs=60, batch_size=32, optimizer="adam", lr=0.01, lr_schedule="constant")
    history = fit(model, moons.train, moons.val, config, progress=False)
    _, test_error = evaluate(model, moons.test)
    assert history.val_error[0] > 0.05  # it did have something to learn
    assert history.val_error[-1] < 0.03 and test_error < 0.03
    assert history.train_loss[-1] < 0.1


def test_same_seed_gives_an_identical_history_on_cpu(moons):
    def train(seed):
        torch.manual_seed(123)
        model = MLP(2, (16,), 2, dropout_hidden=0.3)
        return fit(model, moons.train, moons.val, TrainConfig(epochs=3, batch_size=16, seed=seed), progress=False)

    a, b, c = train(0), train(0), train(1)
    for field in ("iter_loss", "train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.iter_loss != c.iter_loss  # the seed drives shuffling and dropout


def test_early_stopping_stops_and_restores_the_best_epochs_weights():
    data = split_point_cloud("moons", n_train=30, n_val=300, n_test=10, noise=0.45, seed=1)
    torch.manual_seed(0)
    model = MLP(2, (256, 256), 2)
    config = TrainConfig(epochs=400, batch_size=30, optimizer="adam", lr=0.01, lr_schedule="constant", patience=10)
    history = fit(model, data.train, data.val, config, progress=False)
    assert history.stopped_early and history.epochs_run < 400
    assert history.epochs_run == history.best_epoch + 10
    best = history.val_loss[history.best_epoch - 1]
    assert best == min(history.val_loss) < history.val_loss[-1]
    val_loss, _ = evaluate(model, data.val)
    assert val_loss == pytest.approx(best, rel=1e-6)


def manual_step(model, batch, lr, l2=0.0, l1=0.0, kl=0.0, rho=0.05):
    """One plain gradient step on data loss + penalties, with autograd through the penalties."""
    logits, hidden = model(batch.X, return_hidden=True)
    objective = F.cross_entropy(logits, batch.y) + l2 * l2_penalty(model) + l1 * l1_penalty(model)
    if kl:
        objective = objective + kl * kl_sparsity_penalty(hidden, rho)
    objective.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("penalty", [{"l2": 0.01}, {"l1": 0.01}, {"kl": 0.1}])
def test_a_fit_step_is_a_gradient_step_on_data_loss_plus_penalty(moons, penalty):
    torch.manual_seed(0)
    model = MLP(2, (8,), 2)
    reference = copy.deepcopy(model)
    config = TrainConfig(epochs=1, batch_size=len(moons.train), lr=0.5, momentum=0.0,
                         lr_schedule="constant", **penalty)
    fit(model, moons.train, moons.val, config, progress=False)
    manual_step(reference, moons.train, lr=0.5, **penalty)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_history_keeps_the_penalty_apart_from_the_data_loss(moons):
    torch.manual_seed(0)
    model = MLP(2, (8,), 2)
    history = fit(model, moons.train, moons.val, TrainConfig(epochs=2, l2=0.1), progress=False)
    assert history.penalty[-1] == pytest.approx(0.1 * l2_penalty(model).item(), rel=1e-5)
    assert len(history.iter_loss) == 2 * history.steps_per_epoch
    assert history.train_loss[0] == pytest.approx(sum(history.iter_loss[:history.steps_per_epoch]) / history.steps_per_epoch)


def test_late_l1_is_off_until_the_last_fraction_of_training(moons):
    torch.manual_seed(0)
    config = TrainConfig(epochs=4, l1=1e-3, l1_last_fraction=0.5)
    history = fit(MLP(2, (8,), 2), moons.train, moons.val, config, progress=False)
    assert history.penalty[:2] == [0.0, 0.0] and all(p > 0 for p in history.penalty[2:])


def test_max_norm_in_fit_keeps_every_hidden_row_inside_the_ball(moons):
    torch.manual_seed(0)
    model = MLP(2, (32, 32), 2)
    fit(model, moons.train, moons.val, TrainConfig(epochs=5, lr=0.5, max_norm=0.6), progress=False)
    norms = torch.cat([layer.weight.norm(dim=1) for layer in model.hidden_layers])
    assert norms.max().item() <= 0.6 + 1e-5
    assert norms.max().item() > 0.59  # the constraint was active


def test_proximal_l1_produces_exact_zeros_that_the_subgradient_does_not(moons):
    def weights_after(proximal):
        torch.manual_seed(0)
        model = MLP(2, (64,), 2)
        config = TrainConfig(epochs=20, lr=0.1, l1=0.03, l1_proximal=proximal)
        fit(model, moons.train, moons.val, config, progress=False)
        return torch.cat([layer.weight.flatten() for layer in model.layers])

    proximal, subgradient = weights_after(True), weights_after(False)
    assert (proximal == 0).float().mean() > 0.3
    assert (subgradient == 0).float().mean() == 0  # it oscillates around zero instead
    assert (subgradient.abs() < 1e-2).float().mean() > 0.3


def test_divergence_is_reported_instead_of_training_on_nan(moons):
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(MLP(2, (8,), 2), moons.train, moons.val, TrainConfig(epochs=3, lr=1e12, lr_schedule="constant"), progress=False)


@pytest.mark.parametrize("bad", [{"optimizer": "rmsprop"}, {"epochs": 0}, {"lr": -1.0}, {"max_norm": 0.0},
                                 {"monitor": "accuracy"}, {"l1_last_fraction": 2.0}, {"kl_rho": 1.0}])
def test_invalid_configs_fail_at_construction_with_the_field_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        TrainConfig(**bad)


def test_history_round_trips_through_a_dict(moons):
    torch.manual_seed(0)
    history = fit(MLP(2, (8,), 2), moons.train, moons.val, TrainConfig(epochs=2), progress=False)
    again = History.from_dict(history.to_dict())
    assert again == history and again.to_frame().shape == (2, 9)
