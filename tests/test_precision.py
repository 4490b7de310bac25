"""The precision of the matrix products: a run's field, its key, and what it changes in training."""
import dataclasses

import pytest
import torch

from hwutils import experiments, precision
from hwutils.data import split_point_cloud
from hwutils.experiments import Method, run_key
from hwutils.models import MLP, ModelConfig, StackedMLP, build_model
from hwutils.study import Study
from hwutils.training import TrainConfig, fit, fit_members

BASE = TrainConfig(epochs=3, batch_size=16, lr=0.1, momentum=0.9, lr_schedule="constant", l2=1e-3)


@pytest.fixture(scope="module")
def moons():
    return split_point_cloud("moons", n_train=160, n_val=100, n_test=20, noise=0.2, seed=0)


def _model():
    return build_model(ModelConfig(hidden=(32, 32)), 2, 2, seed=1)


def test_bf16_products_train_close_to_but_not_exactly_as_fp32_and_keep_float32_weights(moons):
    exact, bf16 = _model(), _model()
    h32 = fit(exact, moons.train, moons.val, BASE, progress=False)
    h16 = fit(bf16, moons.train, moons.val, BASE.replace(precision="bf16"), progress=False)
    assert h16.iter_loss != h32.iter_loss                       # the products did change ...
    torch.testing.assert_close(torch.tensor(h16.iter_loss), torch.tensor(h32.iter_loss), rtol=0.05, atol=0.01)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())   # ... and the master weights did not
    assert h16.val_error[-1] == pytest.approx(h32.val_error[-1], abs=0.05)


def test_fp32_on_the_cpu_trains_exactly_as_the_default():
    data = split_point_cloud("moons", n_train=64, n_val=32, n_test=8, noise=0.2, seed=1)
    default = fit(_model(), data.train, data.val, BASE.replace(epochs=2), progress=False)
    fp32 = fit(_model(), data.train, data.val, BASE.replace(epochs=2, precision="fp32"), progress=False)
    assert default.iter_loss == fp32.iter_loss


def test_a_model_in_eval_mode_uses_float32_products_whatever_it_trains_with():
    torch.manual_seed(0)
    net = StackedMLP.from_models([MLP(6, (16,), 3) for _ in range(2)])
    x = torch.randn(2, 5, 6)
    net.eval()
    reference = net(x)
    net.product_dtype = torch.bfloat16
    torch.testing.assert_close(net(x), reference, rtol=0, atol=0)
    net.train()
    trained = net(x)
    assert trained.dtype == torch.float32 and not torch.equal(trained, reference)


def test_a_runs_key_changes_with_its_precision_only_away_from_the_neutral_value():
    method = Method("tiny", ModelConfig(hidden=(8,)), TrainConfig(epochs=2, batch_size=32))
    before = run_key(method, {}, 0)
    assert run_key(method.replace(precision=None), {}, 0) == before
    keys = {p: run_key(method.replace(precision=p), {}, 0) for p in precision.PRECISIONS}
    assert before not in keys.values() and len(set(keys.values())) == len(keys)


def test_a_study_at_the_devices_default_precision_plans_the_runs_it_always_planned():
    spec = {"name": "mnist"}
    keys = lambda study: [run_key(m, spec, s) for stage in study.plan()[:2] for _, m, s in stage.jobs()]  # noqa
    default = keys(Study("smoke", results_dir=None))
    assert keys(Study("smoke", results_dir=None, precision="fp32")) == default  # fp32 is the CPU's default
    bf16 = Study("smoke", results_dir=None, precision="bf16")
    assert bf16.precision == "bf16" and not set(keys(bf16)) & set(default)
    assert all(m.train.precision == "bf16" for m in bf16.recipe_methods)


def test_tf32_is_refused_on_the_cpu_in_one_line(moons):
    with pytest.raises(ValueError, match="'tf32' is a CUDA mode.*use 'fp32' or 'bf16'"):
        Study("smoke", results_dir=None, device="cpu", precision="tf32")
    with pytest.raises(ValueError, match="'tf32' is a CUDA mode"):
        fit(_model(), moons.train, moons.val, BASE.replace(precision="tf32"), progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        BASE.replace(precision="fp16")


def test_runs_at_two_precisions_never_share_a_step(moons, monkeypatch):
    with pytest.raises(ValueError, match="must share the precision"):
        fit_members([_model(), _model()], moons.train, moons.val, [BASE, BASE.replace(precision="bf16")],
                    progress=False)
    sizes = []
    real = experiments.fit_members
    monkeypatch.setattr(experiments, "fit_members", lambda models, *a, **k: sizes.append(len(models)) or real(models, *a, **k))
    tiny = Method("tiny", ModelConfig(hidden=(8,)), TrainConfig(epochs=1, batch_size=32))
    experiments.run_sweep([tiny, dataclasses.replace(tiny, name="tiny bf16", train=tiny.train.replace(precision="bf16"))],
                          moons, results_dir=None, together=True, progress=False)
    assert sizes == [1, 1]


def test_the_runner_takes_the_precision_and_refuses_others_before_any_work(capsys):
    from hwutils.runner import _parser, _study_kwargs

    args = _parser().parse_args(["train", "--profile", "smoke", "--precision", "bf16"])
    assert _study_kwargs(args)["precision"] == "bf16"
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_the_settings_table_names_the_products_the_runs_train_with(mnist_dir, monkeypatch):
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(mnist_dir))
    assert Study("smoke", results_dir=None, device="cpu").device_description.endswith("(FP32 matrix products)")
    bf16 = Study("smoke", results_dir=None, device="cpu", precision="bf16").device_description
    assert bf16.endswith("(bf16 matrix products, FP32 weights)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_default_is_tf32_while_training_and_the_setting_comes_back_after():
    torch.set_float32_matmul_precision("highest")
    with precision.matmul_precision(None, "cuda") as inside:
        assert inside == "tf32" and torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == "highest"
    Study("smoke", results_dir=None)  # a study on CUDA sets its runs' products for what it evaluates too
    assert torch.get_float32_matmul_precision() == "high"
    Study("smoke", results_dir=None, precision="fp32")
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_each_precision_trains_close_to_fp32_with_the_replayed_step(moons):
    from hwutils.data import Split

    on = lambda s: Split(s.X.cuda(), s.y.cuda())  # noqa: E731
    losses = {p: fit(_model(), on(moons.train), on(moons.val), BASE.replace(precision=p), progress=False).iter_loss
              for p in precision.PRECISIONS}
    for p in ("tf32", "bf16"):
        torch.testing.assert_close(torch.tensor(losses[p]), torch.tensor(losses["fp32"]), rtol=0.05, atol=0.01)
