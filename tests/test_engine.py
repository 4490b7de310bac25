"""The stacked engine: K runs trained together behave as K runs trained alone."""
import pytest
import torch

from hwutils import experiments
from hwutils.data import split_point_cloud
from hwutils.experiments import Method, run, run_key, run_sweep
from hwutils.search import search
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


def _model(seed, init="torch"):
    return build_model(ModelConfig(hidden=(32, 32), init=init), 2, 2, seed=100 + seed)


def _train_together_and_alone(members: dict, data, inits=None):
    """Train ``members`` (name → config) as one stack, then each alone from the same initial
    weights; check that every member's weights and History are those of its run alone."""
    inits = inits or {}
    together = [_model(c.seed, inits.get(name, "torch")) for name, c in members.items()]
    histories = fit_members(together, data.train, data.val, list(members.values()), names=list(members),
                            progress=False)
    for (name, config), model, history in zip(members.items(), together, histories):
        alone = _model(config.seed, inits.get(name, "torch"))
        reference = fit(alone, data.train, data.val, config, progress=False)
        assert history.epochs_run == reference.epochs_run and history.best_epoch == reference.best_epoch, name
        assert history.stopped_early == reference.stopped_early, name
        for field in ("iter_loss", "train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights",
                      "max_unit_norm", "at_cap"):
            torch.testing.assert_close(torch.tensor(getattr(history, field)), torch.tensor(getattr(reference, field)),
                                       rtol=1e-4, atol=1e-5, msg=f"{name}: {field}")
        for p, q in zip(model.parameters(), alone.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    return dict(zip(members, together)), dict(zip(members, histories))


def test_a_stacked_sweep_gives_each_member_the_weights_and_history_of_its_run_alone(noisy):
    _, by_name = _train_together_and_alone(MEMBERS, noisy)
    assert by_name["early stopping"].stopped_early  # the member did stop while the others went on
    assert by_name["L2"].epochs_run == BASE.epochs
    assert by_name["late L1"].penalty[0] == 0 and by_name["late L1"].penalty[-1] > 0


#: Members with plain momentum (they share a step only with each other): the authors' recipe -
#: inverse-t learning rate, a per-step momentum ramp, max-norm on the output layer too - with its
#: time constants and radius shrunk to this short run, the paper's B.1 variant, and two without it.
PLAIN = BASE.replace(nesterov=False, epochs=15)
RECIPE = PLAIN.replace(lr=0.5, lr_schedule="inverse_t", lr_half_life_steps=10, momentum=0.99, momentum_start=0.5,
                       momentum_ramp_steps=30, max_norm=1.0, max_norm_output=True)
PLAIN_MEMBERS = {
    "authors' recipe": RECIPE.replace(seed=0),
    "paper's B.1": RECIPE.replace(momentum=0.95, max_norm=0.7, seed=1),
    "plain momentum": PLAIN.replace(seed=2),
    "max-norm, hidden layers only": PLAIN.replace(max_norm=0.7, seed=3),
}


def test_members_with_the_authors_recipe_train_in_a_stack_as_they_do_alone(noisy):
    inits = {"authors' recipe": "normal_fan_in", "paper's B.1": "normal_fan_in"}
    models, histories = _train_together_and_alone(PLAIN_MEMBERS, noisy, inits)
    output_norms = {name: m.layers[-1].weight.norm(dim=1).max().item() for name, m in models.items()}
    assert output_norms["authors' recipe"] == pytest.approx(1.0)   # held to its radius ...
    assert output_norms["paper's B.1"] == pytest.approx(0.7)
    assert output_norms["max-norm, hidden layers only"] > 0.7       # ... which binds: free, it goes past
    assert histories["authors' recipe"].lr[-1] < 0.5 * PLAIN_MEMBERS["authors' recipe"].lr  # it decayed


#: L2 and L2 with L1 switched on for the last quarter, one seed: the same run for 30 of 40 epochs.
FORKS = {"L2": BASE.replace(l2=1e-3), "L2 + L1 1e-3": BASE.replace(l2=1e-3, l1=1e-3, l1_last_fraction=0.25),
         "L2 + L1 1e-2": BASE.replace(l2=1e-3, l1=1e-2, l1_last_fraction=0.25)}


def _counting_steps(monkeypatch) -> list[int]:
    """The number of members of every training step from now on."""
    from hwutils import training

    members, real = [], training.train_step
    monkeypatch.setattr(training, "train_step", lambda net, *a, **k: members.append(net.members) or real(net, *a, **k))
    return members


def test_runs_that_are_the_same_run_until_l1_switches_on_train_those_epochs_once(noisy, monkeypatch):
    members = {**FORKS, "KL, another seed": BASE.replace(kl=0.05, kl_rho=0.1, seed=2)}
    per_step = _counting_steps(monkeypatch)
    models, histories = _train_together_and_alone(members, noisy, {})
    steps = histories["L2"].steps_per_epoch
    together = per_step[:len(per_step) - sum(BASE.epochs * steps for _ in members)]  # the steps alone come after
    assert together == [2] * (30 * steps) + [4] * (10 * steps)  # two lanes (L2 and its forks, KL), then all four
    first = histories["L2"].iter_loss[:30 * steps]
    assert histories["L2 + L1 1e-3"].iter_loss[:30 * steps] == first == histories["L2 + L1 1e-2"].iter_loss[:30 * steps]
    fork, l2 = histories["L2 + L1 1e-2"].penalty, histories["L2"].penalty
    assert fork[:30] == l2[:30] and fork[30] > 2 * l2[30]  # the L1 term from epoch 31 on
    assert not torch.equal(models["L2"].layers[0].weight, models["L2 + L1 1e-2"].layers[0].weight)


def test_forks_whose_lane_stops_early_before_the_split_end_where_it_stopped(noisy):
    early = {name: config.replace(patience=3) for name, config in FORKS.items()}
    _, histories = _train_together_and_alone(early, noisy)
    assert all(h.stopped_early and h.epochs_run < 30 for h in histories.values())


def test_runs_share_no_epochs_with_dropout_other_initial_weights_or_l1_from_the_start(noisy):
    from hwutils.training import _shared_prefix, shared_prefix_epochs

    late = FORKS["L2 + L1 1e-3"]
    assert shared_prefix_epochs(late) == 30 and shared_prefix_epochs(FORKS["L2"]) == 40
    assert shared_prefix_epochs(late, dropout=True) == 0 and shared_prefix_epochs(BASE.replace(l1=1e-3)) == 0
    configs = [FORKS["L2"], late]
    assert _shared_prefix([_model(0), _model(0)], configs).lane == (0, 0)
    assert _shared_prefix([_model(0), _model(1)], configs) is None                      # other initial weights
    assert _shared_prefix([_model(0), _model(0)], [FORKS["L2"], BASE.replace(l2=1e-3, l1=1e-3)]) is None
    dropped = [build_model(ModelConfig(hidden=(32, 32), dropout_hidden=0.5), 2, 2, seed=100) for _ in range(2)]
    assert _shared_prefix(dropped, configs) is None


def test_a_sweep_trains_l2_with_its_late_l1_forks_even_where_it_trains_runs_one_by_one(noisy, monkeypatch):
    from hwutils.experiments import sweep_epochs

    sizes = []
    real = experiments.fit_members
    monkeypatch.setattr(experiments, "fit_members", lambda models, *a, **k: sizes.append(len(models)) or real(models, *a, **k))
    methods = [Method(name, ModelConfig(hidden=(32, 32)), config) for name, config in FORKS.items()]
    methods.append(Method("KL", ModelConfig(hidden=(32, 32)), BASE.replace(kl=0.05)))
    run_sweep(methods, noisy, seeds=(0, 1), results_dir=None, together=False, progress=False)
    assert sorted(sizes) == [1, 1, 3, 3]  # per seed: L2 with its two forks, KL alone
    jobs = [(m, s) for m in methods for s in (0, 1)]
    assert sweep_epochs(jobs) == [40, 40, 10, 10, 10, 10, 40, 40]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_replayed_step_follows_the_momentum_ramp_and_the_learning_rate_as_eager_steps_do(noisy):
    from hwutils.data import Split

    on = lambda s: Split(s.X.cuda(), s.y.cuda())
    configs = list(PLAIN_MEMBERS.values())
    runs = {}
    for graph in (True, False):
        models = [_model(c.seed, "normal_fan_in") for c in configs]
        histories = fit_members(models, on(noisy.train), on(noisy.val), configs, progress=False, cuda_graph=graph)
        runs[graph] = (models, histories)
    for (a, ha), (b, hb) in zip(zip(*runs[True]), zip(*runs[False])):
        torch.testing.assert_close(torch.tensor(ha.iter_loss), torch.tensor(hb.iter_loss), rtol=1e-4, atol=1e-5)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


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
    assert alone.key == twin.key == run_key(methods[1], moons.spec, 1)
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
    from hwutils.search import search

    chosen, _ = search([TINY], {"tiny": {"lr": (0.01, 0.1), "l2": (0.0, 1e-3)}}, moons, results_dir=None,
                       progress=False)
    assert type(chosen[0].train.lr) is float and type(chosen[0].train.l2) is float


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_runs_trained_together_come_back_on_the_device_and_the_search_reads_them(moons):
    from hwutils.data import Split, Splits
    from hwutils.search import search

    on = lambda s: Split(s.X.cuda(), s.y.cuda())
    data = Splits(on(moons.train), on(moons.val), on(moons.test))
    results = run_sweep([TINY, TINY.variant("tiny L2", l2=1e-3)], data, results_dir=None, progress=False,
                        together=True)
    assert all(next(r.model.parameters()).is_cuda for r in results)
    chosen, table = search([TINY], {"tiny": {"lr": (0.01, 0.1)}}, data, results_dir=None, progress=False)
    assert table["dead_pct"].notna().all()


def test_a_field_added_later_keeps_old_cache_keys_at_its_neutral_value_and_changes_them_otherwise():
    import dataclasses, hashlib, json

    from hwutils.experiments import CACHE_VERSION

    old_train = {"epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "lr_schedule", "l2", "l1",
                 "l1_last_fraction", "l1_proximal", "kl", "kl_rho", "max_norm", "patience", "monitor", "seed"}
    old_model = {"hidden", "dropout_input", "dropout_hidden"}
    method = TINY.replace(max_norm=2.0)
    pick = lambda config, names: {k: v for k, v in dataclasses.asdict(config).items() if k in names}
    # the key as it was computed before any of these fields existed
    before = hashlib.sha256(json.dumps({"model": pick(method.model, old_model), "train": pick(method.train, old_train),
                                        "data": {}, "seed": 0, "cache_version": CACHE_VERSION}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    assert run_key(method, {}, 0) == before
    changed = [method.replace(warmup_epochs=1), method.replace(max_norm_output=True),
               method.replace(lr_schedule="inverse_t", lr_half_life_steps=10.0),
               method.replace(momentum_start=0.5, momentum_ramp_steps=10),
               dataclasses.replace(method, model=dataclasses.replace(method.model, init="normal_fan_in")),
               dataclasses.replace(method, model=dataclasses.replace(method.model, dropout_scaling="test_time"))]
    keys = [run_key(m, {}, 0) for m in changed]
    assert before not in keys and len(set(keys)) == len(keys)
