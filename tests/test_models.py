import pytest
import torch

from hwutils.models import MLP, ModelConfig, build_model, dropout


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
