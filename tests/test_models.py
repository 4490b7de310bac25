import dataclasses
import math

import pytest
import torch

from hwutils.models import MLP, ModelConfig, StackedMLP, build_model, dropout


def test_forward_returns_logits_not_probabilities():
    torch.manual_seed(0)
    out = MLP(4, (16,), 3)(torch.randn(32, 4) * 10)
    assert out.shape == (32, 3)
    assert (out < 0).any()  # logits can be negative; probabilities cannot
    assert not torch.allclose(out.sum(1), torch.ones(32))


def test_return_hidden_gives_each_hidden_layers_relu_activations():
    model = MLP(5, (7, 6), 2)
    logits, hidden = model(torch.randn(4, 5), return_hidden=True)
    assert [h.shape for h in hidden] == [(4, 7), (4, 6)]
    assert all((h >= 0).all() for h in hidden)
    torch.testing.assert_close(logits, model.layers[-1](hidden[-1]))


def test_dropout_is_off_in_eval_mode_and_on_in_train_mode():
    model = MLP(10, (50,), 2, dropout_input=0.2, dropout_hidden=0.5)
    x = torch.randn(8, 10)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_drops_a_fraction_p_and_preserves_the_mean(p):
    torch.manual_seed(0)
    out = dropout(torch.ones(1000, 1000), p)
    assert abs((out == 0).float().mean().item() - p) < 0.002
    assert abs(out.mean().item() - 1.0) < 0.003
    assert torch.equal(dropout(torch.ones(3, 3), p, training=False), torch.ones(3, 3))


def test_dropout_is_reproducible_under_a_seed():
    torch.manual_seed(1)
    a = dropout(torch.ones(50, 50), 0.5)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(torch.ones(50, 50), 0.5))


def test_invalid_dropout_probability_is_rejected():
    with pytest.raises(ValueError, match="dropout_hidden"):
        MLP(2, (4,), 2, dropout_hidden=1.0)


def test_build_model_with_a_seed_is_reproducible():
    a = build_model(ModelConfig(hidden=(8,)), 3, 2, seed=5)
    b = build_model(ModelConfig(hidden=(8,)), 3, 2, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_default_init_is_nn_linears_own_and_draws_what_it_always_drew():
    torch.manual_seed(3)
    plain = MLP(784, (800, 800), 10)
    built = build_model(ModelConfig(hidden=(800, 800)), 784, 10, seed=3)
    assert ModelConfig().init == "torch"
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), built.parameters()))


def test_normal_fan_in_init_has_sigma_one_over_root_fan_in_per_layer_and_zero_biases():
    model = build_model(ModelConfig(hidden=(1024, 1024, 2048), init="normal_fan_in"), 784, 10, seed=0)
    for layer in model.layers:
        w = layer.weight
        sigma = 1 / math.sqrt(layer.in_features)
        # the sample sd of n Gaussian draws is within ~1/sqrt(2n) of sigma (relative): allow 5 of those
        assert abs(w.std().item() / sigma - 1) < 5 / math.sqrt(2 * w.numel()), layer
        assert abs(w.mean().item()) < 5 * sigma / math.sqrt(w.numel()), layer
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_test_time_dropout_scaling_is_inverted_dropout_with_each_dropped_layers_output_times_keep():
    config = ModelConfig(hidden=(16, 16), dropout_input=0.2, dropout_hidden=0.5)
    inverted = build_model(config, 6, 3, seed=0)
    paper = build_model(dataclasses.replace(config, dropout_scaling="test_time"), 6, 3, seed=0)
    x = torch.rand(64, 6)
    paper.eval()
    with torch.no_grad():  # the same function when each weight matrix is scaled by its input's keep
        for layer, keep in zip(inverted.layers, (0.8, 0.5, 0.5)):
            layer.weight.mul_(keep)
    inverted.eval()
    torch.testing.assert_close(paper(x), inverted(x))
    paper.train()  # while training, the paper's keeps the kept inputs as they are (no 1/keep)
    torch.manual_seed(1)
    _, hidden = paper(x, return_hidden=True)
    torch.manual_seed(1)
    kept = (dropout(torch.ones_like(x), 0.2) != 0).float()  # the same draw of the mask
    first = paper.layers[0]
    torch.testing.assert_close(hidden[0], torch.relu((kept * x) @ first.weight.T + first.bias))


def test_a_stack_gives_each_member_its_own_dropout_scaling():
    config = ModelConfig(hidden=(8,), dropout_input=0.2, dropout_hidden=0.5)
    models = [build_model(dataclasses.replace(config, dropout_scaling=s), 4, 2, seed=k)
              for k, s in enumerate(("inverted", "test_time", "inverted"))]
    net = StackedMLP.from_models(models).eval()
    x = torch.randn(5, 4)
    for k, model in enumerate(models):
        torch.testing.assert_close(net(x)[k], model.eval()(x))


@pytest.mark.parametrize("bad", [{"init": "xavier"}, {"dropout_scaling": "none"}])
def test_an_unknown_init_or_dropout_scaling_fails_naming_the_choices(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelConfig(**bad)
