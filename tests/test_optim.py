"""Specification of hwutils.optim: the second-moment algebra behind Adam's bias correction, and Adam itself."""
import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hwutils.data import make_point_cloud
from hwutils.optim import (Adam, bias_correction, expected_second_moment_ratio,
                           monte_carlo_second_moment, recursive_second_moment, trajectory_deviation,
                           uncorrected_step_ratio, unrolled_second_moment, update_sizes)

BETA2S = [0.0, 0.5, 0.9, 0.999]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The problems here are tiny: extra threads only add overhead (and contend on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def moons64():
    """Two moons (n=200, noise 0.2) as float64 tensors (labels as floats for the logistic loss)."""
    X, y = make_point_cloud("moons", n=200, noise=0.2, seed=0)
    return torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)


def logistic_regression(moons64):
    X, y = moons64
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).double()
    return model, lambda m: F.binary_cross_entropy_with_logits(m(X).squeeze(1), y)


def tiny_mlp(moons64):
    X, y = moons64
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    return model, lambda m: F.binary_cross_entropy_with_logits(m(X).squeeze(1), y)


# --------------------------------------------------------------------------- moment algebra
def test_bias_correction_is_one_minus_beta_to_the_t():
    assert bias_correction(0.9, 1) == pytest.approx(0.1)
    assert bias_correction(0.999, 2) == pytest.approx(1 - 0.999 ** 2)
    assert bias_correction(0.5, 0) == 0
    t = np.arange(1, 6)
    np.testing.assert_allclose(bias_correction(0.9, t), 1 - 0.9 ** t)


@pytest.mark.parametrize("beta2", BETA2S)
@pytest.mark.parametrize("shape", [(1,), (50,), (200, 3), (30, 2, 4)])
def test_unrolled_second_moment_equals_recursion_to_float_precision(beta2, shape):
    grads = np.random.default_rng(len(shape)).standard_t(3, size=shape)
    unrolled, recursive = unrolled_second_moment(grads, beta2), recursive_second_moment(grads, beta2)
    assert unrolled.shape == recursive.shape == shape
    np.testing.assert_allclose(unrolled, recursive, rtol=1e-12, atol=0)


def test_first_second_moment_is_one_minus_beta2_times_g_squared():
    grads = np.array([[2.0, -3.0]])
    np.testing.assert_allclose(recursive_second_moment(grads, 0.9)[0], 0.1 * grads[0] ** 2)


@pytest.mark.parametrize("beta2", BETA2S)
def test_constant_gradient_second_moment_is_biased_by_exactly_one_minus_beta2_to_the_t(beta2):
    T = 40
    v = recursive_second_moment(np.full((T, 1), 3.0), beta2)[:, 0]
    np.testing.assert_allclose(v, bias_correction(beta2, np.arange(1, T + 1)) * 9.0, rtol=1e-12)


def test_expected_ratio_for_stationary_gradients_is_the_bias_correction():
    t = np.arange(1, 101)
    np.testing.assert_allclose(expected_second_moment_ratio(0.99, np.full(100, 2.5)),
                               bias_correction(0.99, t), rtol=1e-12)


def test_expected_ratio_for_shrinking_gradients_exceeds_the_bias_correction():
    t = np.arange(1, 101)
    shrinking = expected_second_moment_ratio(0.99, 0.95 ** t)
    assert np.all(shrinking[1:] > bias_correction(0.99, t[1:]))


def test_monte_carlo_mean_of_v_over_V_agrees_with_one_minus_beta2_to_the_t():
    T, t = 50, np.arange(1, 51)
    mean, se = monte_carlo_second_moment([0.9, 0.999], np.full(T, 2.0), 4000, np.random.default_rng(0))
    assert mean.shape == se.shape == (2, T)
    for row, beta2 in enumerate([0.9, 0.999]):
        assert np.max(np.abs(mean[row] - bias_correction(beta2, t)) / se[row]) < 5
        assert np.max(np.abs(mean[row] - bias_correction(beta2, t + 1)) / se[row]) > 10  # the t+1 slip


# --------------------------------------------------------------------------- Adam
# The MLP is run only with the default betas: with beta2 = 0.99 its full-batch Adam trajectory enters an
# oscillating phase that amplifies round-off (1e-16) exponentially, so any two implementations that differ
# in the last bit (sqrt(v/bc2) here vs sqrt(v)/sqrt(bc2) in torch) part ways, whereas torch's own
# for-loop and foreach paths, being bitwise identical, do not.
@pytest.mark.parametrize("problem, kwargs", [
    (logistic_regression, dict(lr=0.01)),
    (logistic_regression, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    (tiny_mlp, dict(lr=0.01)),
])
def test_adam_matches_torch_adam_for_1000_steps(moons64, problem, kwargs):
    model, loss_fn = problem(moons64)
    deviation = trajectory_deviation(model, loss_fn, 1000, **kwargs)
    assert deviation.shape == (1000,)
    assert deviation.max() < 1e-6


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_update_is_torchs_sgd_with_momentum_and_no_dampening(moons64, nesterov):
    from hwutils.optim import sgd_update_

    model, loss_fn = tiny_mlp(moons64)
    ref = copy.deepcopy(model)
    optimizer = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9, nesterov=nesterov)
    buffers = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(50):
        grads = torch.autograd.grad(loss_fn(model), list(model.parameters()))
        for p, g, buf in zip(model.parameters(), grads, buffers):
            sgd_update_(p, g.clone(), buf, 0.3, 0.9, nesterov)
        optimizer.zero_grad()
        loss_fn(ref).backward()
        optimizer.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_adam_actually_trains(moons64):
    model, loss_fn = logistic_regression(moons64)
    before = loss_fn(model).item()
    opt = Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    assert loss_fn(model).item() < 0.8 * before


def test_with_bias_correction_the_first_step_is_lr_per_coordinate(moons64):
    model, loss_fn = logistic_regression(moons64)
    before = [p.detach().clone() for p in model.parameters()]
    opt = Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss_fn(model).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g in zip(model.parameters(), before, grads):      # Δθ = -lr · g / (|g| + eps) ≈ -lr · sign(g)
        np.testing.assert_allclose((p - p0).detach(), -1e-3 * torch.sign(g), rtol=1e-4)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.9), (0.99, 0.999)])
def test_without_bias_correction_the_first_step_is_scaled_by_one_minus_beta1_over_sqrt_one_minus_beta2(moons64, betas):
    model, loss_fn = logistic_regression(moons64)
    corrected = update_sizes(model, loss_fn, 1, lr=1e-3, betas=betas)[0]
    uncorrected = update_sizes(model, loss_fn, 1, lr=1e-3, betas=betas, bias_correction=False)[0]
    expected = (1 - betas[0]) / np.sqrt(1 - betas[1])
    assert uncorrected / corrected == pytest.approx(expected, rel=1e-4)
    assert uncorrected_step_ratio(*betas, 1) == pytest.approx(expected)


def test_with_default_betas_uncorrected_early_steps_are_several_times_too_large(moons64):
    """Kingma & Ba, sec. 3: with beta2 close to 1 and no correction, the initial steps are much larger."""
    model, loss_fn = logistic_regression(moons64)
    corrected = update_sizes(model, loss_fn, 50, lr=1e-3)
    uncorrected = update_sizes(model, loss_fn, 50, lr=1e-3, bias_correction=False)
    assert np.all(uncorrected > 3 * corrected)
    # while the gradient is still nearly constant, the excess is (1 - beta1^t) / sqrt(1 - beta2^t)
    np.testing.assert_allclose(uncorrected[:10] / corrected[:10],
                               uncorrected_step_ratio(0.9, 0.999, np.arange(1, 11)), rtol=0.01)


def test_step_with_closure_returns_the_loss_and_skips_parameters_without_grad(moons64):
    model, loss_fn = logistic_regression(moons64)
    frozen = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Adam([*model.parameters(), frozen])

    def closure():
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(loss_fn(model).item(), rel=0.01)
    assert torch.equal(frozen, torch.ones(3, dtype=torch.float64))
    assert opt.state[model.weight]["step"] == 1 and frozen not in opt.state


@pytest.mark.parametrize("kwargs", [dict(lr=-1e-3), dict(lr=float("nan")), dict(betas=(1.0, 0.999)),
                                    dict(betas=(0.9, -0.1)), dict(betas=(0.9,)), dict(eps=-1e-8),
                                    dict(bias_correction="no")])
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        Adam([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("call", [lambda: unrolled_second_moment(np.ones(3), 1.0),
                                  lambda: recursive_second_moment(np.ones(3), -0.5),
                                  lambda: recursive_second_moment(np.empty(0), 0.9),
                                  lambda: monte_carlo_second_moment([0.9], np.ones(3), 1, np.random.default_rng())])
def test_invalid_helper_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
