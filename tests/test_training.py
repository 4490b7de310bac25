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


# --------------------------------------------------------------------------- the authors' recipe
#: Srivastava et al.'s deepnet recipe for MNIST: ε₀ = 1 decayed as 1/(1 + t/10⁴), momentum 0.5 → 0.99
#: over the first 10⁵ steps, plain (not Nesterov) momentum.
RECIPE = TrainConfig(epochs=1, lr=1.0, lr_schedule="inverse_t", lr_half_life_steps=10_000, momentum=0.99,
                     momentum_start=0.5, momentum_ramp_steps=100_000, nesterov=False)


@pytest.mark.parametrize("step, lr, momentum", [(0, 1.0, 0.5), (50_000, 1 / 6, 0.745), (100_000, 1 / 11, 0.99),
                                                 (1_000_000, 1 / 101, 0.99)])
def test_the_inverse_t_rate_and_the_momentum_ramp_follow_the_authors_schedule(step, lr, momentum):
    from hwutils.training import _lr_factor, momentum_at

    assert RECIPE.lr * _lr_factor(RECIPE, step, 1_000_000, 500) == pytest.approx(lr, rel=1e-12)
    assert momentum_at(RECIPE, step) == pytest.approx(momentum, rel=1e-12)


def test_the_largest_effective_step_of_the_recipe_is_where_the_momentum_ramp_ends():
    from hwutils.training import largest_effective_step

    # ε/(1-m) grows while m ramps up faster than ε decays, and only falls once m stops at 0.99
    step_size, at = largest_effective_step(RECIPE.replace(epochs=2_000), steps_per_epoch=500)
    assert at == 100_000 and step_size == pytest.approx((1 / 11) / (1 - 0.99))


def _plain_momentum_by_torch(model, data, config, steps_per_epoch):
    """The same run with torch.optim.SGD (no Nesterov, no dampening), its lr and momentum set per step."""
    from hwutils.training import _lr_factor, momentum_at

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=False)
    shuffle = torch.Generator().manual_seed(config.seed)
    total = config.epochs * steps_per_epoch
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=shuffle)
        for b in range(steps_per_epoch):
            t = epoch * steps_per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(config, t, total, steps_per_epoch)
                group["momentum"] = momentum_at(config, t)
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(data.X[idx]), data.y[idx]).backward()
            optimizer.step()


def test_plain_momentum_with_the_recipes_schedules_is_torchs_sgd_step_for_step(moons):
    config = RECIPE.replace(epochs=3, batch_size=20, lr=0.5, lr_half_life_steps=10, momentum_ramp_steps=25)
    torch.manual_seed(0)
    model = MLP(2, (16,), 2)
    reference = copy.deepcopy(model)
    history = fit(model, moons.train, moons.val, config, progress=False)
    _plain_momentum_by_torch(reference, moons.train, config, history.steps_per_epoch)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_max_norm_output_holds_the_output_layer_to_the_radius_after_a_step(moons):
    def output_norms(include_output):
        torch.manual_seed(0)
        model = MLP(2, (32,), 2)
        assert model.layers[-1].weight.norm(dim=1).max() < 1.0  # inside the ball before the step
        config = TrainConfig(epochs=1, batch_size=len(moons.train), lr=20.0, lr_schedule="constant",
                             max_norm=1.0, max_norm_output=include_output)
        fit(model, moons.train, moons.val, config, progress=False)  # one step
        return model.layers[-1].weight.norm(dim=1), model.layers[0].weight.norm(dim=1)

    (held, hidden), (free, _) = output_norms(True), output_norms(False)
    assert free.min() > 1.2                          # the step pushes the output rows past the radius
    torch.testing.assert_close(held, torch.ones_like(held))  # and with the flag they sit on it
    assert hidden.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("bad, named", [
    ({"lr_schedule": "inverse_t"}, "lr_half_life_steps"), ({"lr_half_life_steps": 100.0}, "lr_half_life_steps"),
    ({"lr_schedule": "inverse_t", "lr_half_life_steps": 0.0}, "lr_half_life_steps"),
    ({"momentum_start": 0.5}, "momentum_start"), ({"momentum_ramp_steps": 10}, "momentum_start"),
    ({"momentum_start": 1.0, "momentum_ramp_steps": 10}, "momentum_start"),
    ({"momentum_start": 0.5, "momentum_ramp_steps": 10, "optimizer": "adam"}, "momentum ramp"),
    ({"max_norm_output": True}, "max_norm_output")])
def test_a_half_set_recipe_field_fails_at_construction_naming_what_to_set(bad, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**bad)


def test_a_dead_units_momentum_never_becomes_denormal_and_sweeping_it_leaves_the_weights_as_they_were(
        moons, monkeypatch):
    """Momentum 0.9 without a penalty: units that die keep a momentum that decays into the float32
    denormals (13x slower to compute with on x86) and stays there. The sweep every SWEEP_EVERY steps
    sets it to 0 first; the trained weights agree bit for bit with those of training without it."""
    from hwutils import training

    optimizers = []

    class Kept(training.MemberOptimizer):  # the optimizer kept, to look at its momentum after training
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(training, "MemberOptimizer", Kept)
    config = TrainConfig(epochs=60, batch_size=10, lr=1.0, momentum=0.9, lr_schedule="constant")
    trained = {}
    for every in (training.SWEEP_EVERY, 10**9):  # as trained, and never swept
        monkeypatch.setattr(training, "SWEEP_EVERY", every)
        torch.manual_seed(0)
        model = MLP(2, (16,), 2)
        fit(model, moons.train, moons.val, config, progress=False)
        denormal = sum(((a != 0) & (a.abs() < torch.finfo(torch.float32).tiny)).sum().item()
                       for a, _ in optimizers[-1].state)
        trained[every] = (model.state_dict(), denormal)
    (swept, none), (kept, some) = trained.values()
    assert none == 0 and some > 0  # without the sweep the denormals are there
    assert all(torch.equal(swept[name], kept[name]) for name in swept)


def test_the_progress_bar_redraws_at_its_own_pace_not_at_every_epoch(moons, capsys):
    # In a Jupyter kernel every redraw is a message: one per epoch made Part 2's runs 1.7x as long.
    epochs = 300
    fit(MLP(2, (8,), 2), moons.train, moons.val, TrainConfig(epochs=epochs, batch_size=256), progress=True)
    redraws = capsys.readouterr().err.count("\r")
    assert 0 < redraws < epochs / 3
