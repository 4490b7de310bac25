"""The fused SGD update: the plain update's weights, in fewer passes, only where it applies."""
import pytest
import torch

from hwutils import fused
from hwutils.data import split_point_cloud
from hwutils.fused import chosen_update, sgd_step_fused_
from hwutils.models import ModelConfig, build_model
from hwutils.optim import sgd_update_
from hwutils.regularizers import project_rows_
from hwutils.training import TrainConfig, fit_members

K = 3


def _tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(K, 12, 7, generator=gen) for _ in range(2)]  # a weight tensor and its momentum


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("momentum", [0.9, torch.tensor([0.9, 0.5, 0.99]).view(K, 1, 1)])
def test_the_fused_step_of_one_tensor_is_the_plain_sequence_up_to_rounding(nesterov, momentum):
    lr = torch.tensor([0.1, 0.0, 0.3]).view(K, 1, 1)               # member 1 frozen
    l2_grad = torch.tensor([2e-3, 0.0, 2e-2]).view(K, 1, 1)
    radius = torch.tensor([3.0, float("inf"), 2.5]).view(K, 1, 1)   # member 1 unconstrained
    plain_w, plain_buf = _tensors()
    fused_w, fused_buf = plain_w.clone(), plain_buf.clone()
    for step in range(5):
        g = torch.randn(K, 12, 7, generator=torch.Generator().manual_seed(10 + step))
        g_plain, g_fused = g.clone(), g.clone()
        g_plain.addcmul_(plain_w, l2_grad)                          # L2Penalty.add_grad_
        sgd_update_(plain_w, g_plain, plain_buf, lr, momentum, nesterov)
        project_rows_(plain_w, radius)                              # MaxNorm.project_
        sgd_step_fused_(fused_w, g_fused, fused_buf, lr, momentum, nesterov, l2_grad, radius)
        torch.testing.assert_close(fused_w, plain_w, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fused_buf, plain_buf, rtol=1e-6, atol=1e-6)
    assert plain_w[0].norm(dim=-1).max().item() == pytest.approx(3.0)  # the projection did bind
    assert plain_w[1].norm(dim=-1).max().item() > 3.0                   # and left the free member free


BASE = TrainConfig(epochs=4, batch_size=16, lr=0.1, momentum=0.9, lr_schedule="constant")
NESTEROV = [BASE.replace(l2=1e-3, seed=0), BASE.replace(max_norm=0.7, lr=0.2, seed=1),
            BASE.replace(kl=0.05, kl_rho=0.1, l2=1e-4, max_norm=1.0, seed=2), BASE.replace(seed=3)]
PLAIN = BASE.replace(nesterov=False)
RECIPE = [PLAIN.replace(lr=0.5, lr_schedule="inverse_t", lr_half_life_steps=10, momentum=0.99, momentum_start=0.5,
                        momentum_ramp_steps=30, max_norm=1.0, max_norm_output=True, seed=0),
          PLAIN.replace(max_norm=0.7, seed=1)]


@pytest.fixture(scope="module")
def noisy():
    return split_point_cloud("moons", n_train=48, n_val=100, n_test=20, noise=0.35, seed=3)


def _train(configs, data, update):
    models = [build_model(ModelConfig(hidden=(32, 32)), 2, 2, seed=100 + c.seed) for c in configs]
    histories = fit_members(models, data.train, data.val, configs, progress=False, update=update)
    return models, histories


@pytest.mark.parametrize("configs", [NESTEROV, RECIPE], ids=["nesterov", "authors' recipe"])
def test_a_stack_trained_with_the_fused_update_gets_the_weights_and_history_of_the_plain_one(configs, noisy,
                                                                                           monkeypatch):
    calls = []
    real = fused.sgd_step_fused_
    monkeypatch.setattr(fused, "sgd_step_fused_", lambda *a: calls.append(1) or real(*a))
    plain_models, plain_hist = _train(configs, noisy, "plain")
    assert not calls                                                # off: the fused function never ran
    fused_models, fused_hist = _train(configs, noisy, "fused")
    assert calls                                                    # on: it did
    for a, b, ha, hb in zip(plain_models, fused_models, plain_hist, fused_hist):
        torch.testing.assert_close(torch.tensor(hb.iter_loss), torch.tensor(ha.iter_loss), rtol=1e-4, atol=1e-5)
        assert hb.best_epoch == ha.best_epoch
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [BASE.replace(l1=1e-3, l2=1e-3), BASE.replace(l1=1e-3, l1_proximal=True),
                                    BASE.replace(optimizer="adam", lr=1e-2, l2=1e-3)], ids=["L1", "proximal L1", "Adam"])
def test_a_step_with_l1_or_adam_takes_the_plain_path_and_trains_exactly_as_it(config, noisy):
    plain_models, plain_hist = _train([config], noisy, "plain")
    fused_models, fused_hist = _train([config], noisy, "fused")
    assert fused_hist[0].iter_loss == plain_hist[0].iter_loss
    assert all(torch.equal(p, q) for p, q in zip(plain_models[0].parameters(), fused_models[0].parameters()))


def test_the_update_is_plain_unless_asked_and_a_bad_choice_is_one_line(monkeypatch):
    monkeypatch.delenv(fused.UPDATE_ENV, raising=False)
    assert chosen_update() == "plain"
    monkeypatch.setenv(fused.UPDATE_ENV, "fused")
    assert chosen_update() == "fused" and chosen_update("plain") == "plain"
    monkeypatch.setenv(fused.UPDATE_ENV, "fast")
    with pytest.raises(ValueError, match=r"HWUTILS_UPDATE='fast': use one of plain, fused, compiled"):
        chosen_update()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("update", ["fused", "compiled"])
def test_on_cuda_the_fused_updates_replayed_as_a_graph_give_the_plain_weights(update, noisy):
    from hwutils.data import Split

    on = lambda s: Split(s.X.cuda(), s.y.cuda())  # noqa: E731
    data = type(noisy)(on(noisy.train), on(noisy.val), on(noisy.test), noisy.spec)
    plain_models, _ = _train(NESTEROV, data, "plain")
    fused_models, _ = _train(NESTEROV, data, update)
    for a, b in zip(plain_models, fused_models):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
