import math

import pytest
import torch
from torch import nn

from hwutils.regularizers import (L1Schedule, kl_sparsity_penalty, l1_penalty, l2_penalty, max_norm_,
                                  soft_threshold_, weights)


def tiny_model():
    """Two linear layers with hand-set weights and biases (biases must be ignored)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[0].bias.fill_(100.0)
        model[2].weight.copy_(torch.tensor([[-3.0, 4.0]]))
        model[2].bias.fill_(-100.0)
    return model


def test_l1_penalty_sums_absolute_weights_and_ignores_biases():
    assert l1_penalty(tiny_model()).item() == pytest.approx(1 + 2 + 0.5 + 0 + 3 + 4)


def test_l2_penalty_sums_squared_weights_without_a_half_and_ignores_biases():
    assert l2_penalty(tiny_model()).item() == pytest.approx(1 + 4 + 0.25 + 0 + 9 + 16)


def test_l2_penalty_gradient_is_two_w():
    model = tiny_model()
    l2_penalty(model).backward()
    torch.testing.assert_close(model[0].weight.grad, 2 * model[0].weight.detach())
    assert model[0].bias.grad is None


def test_kl_sparsity_matches_the_bernoulli_kl_of_the_mean_tanh_activation():
    h = torch.tensor([[0.0, 0.2], [0.4, 3.0]])
    rho = 0.1
    expected = 0.0
    for j in range(2):
        q = (math.tanh(h[0, j]) + math.tanh(h[1, j])) / 2
        expected += rho * math.log(rho / q) + (1 - rho) * math.log((1 - rho) / (1 - q))
    assert kl_sparsity_penalty(h, rho).item() == pytest.approx(expected, rel=1e-5)
    assert kl_sparsity_penalty([h, h], rho).item() == pytest.approx(2 * expected, rel=1e-5)


def test_kl_sparsity_is_zero_at_the_target_and_finite_for_dead_and_saturated_units():
    rho = 0.05
    at_target = torch.full((4, 3), math.atanh(rho))
    assert kl_sparsity_penalty(at_target, rho).item() == pytest.approx(0.0, abs=1e-6)
    extreme = torch.tensor([[0.0, 1e4], [0.0, 1e4]], requires_grad=True)
    value = kl_sparsity_penalty(extreme, rho)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(extreme.grad).all()


def test_kl_sparsity_pushes_active_units_down():
    h = torch.full((8, 2), 2.0, requires_grad=True)
    kl_sparsity_penalty(h, 0.05).backward()
    assert (h.grad > 0).all()  # gradient descent lowers the activations


def test_max_norm_projects_long_rows_onto_the_ball_and_leaves_rows_inside_unchanged():
    layer_in, layer_out = nn.Linear(3, 2), nn.Linear(2, 2)
    model = nn.Sequential(layer_in, nn.ReLU(), layer_out)
    with torch.no_grad():
        layer_in.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.2, 0.2]]))  # norms 5 and 0.3
        layer_out.weight.fill_(10.0)
    inside = layer_in.weight[1].clone()
    max_norm_(model, 2.0)
    norms = layer_in.weight.norm(dim=1)
    assert norms[0].item() == pytest.approx(2.0)
    torch.testing.assert_close(layer_in.weight[0], torch.tensor([1.2, 1.6, 0.0]))  # direction kept
    assert torch.equal(layer_in.weight[1], inside)
    assert (layer_out.weight == 10.0).all()  # the output layer is not a hidden unit
    max_norm_(model, 2.0, include_output=True)
    assert (layer_out.weight.norm(dim=1) <= 2.0 + 1e-6).all()
    with pytest.raises(ValueError, match="radius"):
        max_norm_(model, 0.0)


def test_soft_threshold_shrinks_towards_zero_and_zeroes_small_weights():
    model = tiny_model()
    soft_threshold_(model, 0.75)
    torch.testing.assert_close(model[0].weight, torch.tensor([[0.25, -1.25], [0.0, 0.0]]))
    assert (model[0].bias == 100.0).all()


def test_l1_schedule_switches_on_for_the_last_fraction_of_epochs():
    schedule = L1Schedule(coef=1e-4, last_fraction=0.25)
    assert [schedule.coef_at(e, 8) for e in range(8)] == [0.0] * 6 + [1e-4] * 2
    assert L1Schedule(coef=1.0, last_fraction=1.0).coef_at(0, 10) == 1.0
    with pytest.raises(ValueError, match="last_fraction"):
        L1Schedule(coef=1.0, last_fraction=1.5)


def test_weights_lists_every_linear_weight_but_no_bias():
    assert len(weights(tiny_model())) == 2
