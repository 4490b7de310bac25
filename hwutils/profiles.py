"""Named profiles and methods of the three parts: sizes of each experiment, the six Table 9
methods, the point-cloud methods, and the search grids. The generic run / sweep / search / cache
machinery is in :mod:`hwutils.experiments`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .data import Splits
from .experiments import Method
from .models import ModelConfig
from .training import TrainConfig

__all__ = [
    "PROFILES", "check_profile",
    "AdamProfile", "ADAM_PROFILES", "adam_profile",
    "MnistProfile", "MNIST_PROFILES", "MNIST_CONSTANTS", "CONSTANT_LABELS", "WARMUP_EPOCHS", "LR_STUDY", "mnist_search_grids",
    "mnist_profile",
    "mnist_methods", "inherit_l2", "final_methods", "LONG_L2",
    "AUTHORS_RECIPE", "PAPER_B1", "AUTHORS_STEPS", "recipe_steps", "recipe_time_scale", "authors_recipe_methods",
    "mnist_splits", "TABLE9_TEST_ERROR", "DIAGNOSIS_LR_FROM", "WARMUP_PROBE", "PROBE_MOMENTUM",
    "PointCloudProfile", "POINT_CLOUD_PROFILES", "point_cloud_profile", "point_cloud_methods", "point_cloud_settings",
]

#: Test error (%) of Table 9 in Srivastava et al., "Dropout", JMLR 15 (2014).
TABLE9_TEST_ERROR = {
    "L2": 1.62, "L2 + L1 (late)": 1.60, "L2 + KL-sparsity": 1.55,
    "max-norm": 1.35, "dropout + L2": 1.25, "dropout + max-norm": 1.05,
}
PROFILES = ("smoke", "quick", "full", "paper")


def check_profile(profile: str) -> str:
    """``profile`` if it is a known profile name, else a one-line ``ValueError``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    return profile


# --------------------------------------------------------------------------- Part 1: Adam
@dataclass(frozen=True)
class AdamProfile:
    """Size of Part 1's Monte-Carlo experiments: runs, steps per run, and steps of the Adam check."""

    n_runs: int
    T: int
    adam_steps: int


ADAM_PROFILES = {"smoke": AdamProfile(n_runs=2_000, T=200, adam_steps=1_000)}
ADAM_PROFILES |= dict.fromkeys(("quick", "full", "paper"), AdamProfile(n_runs=20_000, T=3_000, adam_steps=2_000))


def adam_profile(name: str, **overrides) -> AdamProfile:
    """The named Part 1 profile with some fields replaced (``None`` values are ignored)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(ADAM_PROFILES[check_profile(name)], **changes)


# --------------------------------------------------------------------------- Part 3: MNIST
@dataclass(frozen=True)
class MnistProfile:
    """Size of the MNIST study: network, epochs, seeds, data, and the validation search.

    ``epochs`` is the budget of the methods without dropout, ``dropout_epochs`` that of the two
    dropout methods: dropout trains a different thinned network at every step and needs several
    times more epochs to converge (Srivastava et al. 2014, sec. 7.2), while the others stop
    improving on validation long before (see the curves in the notebook).

    The search (learning rate together with each method's constant, on the validation split) runs
    on ``search_train`` training and ``search_val`` validation images for ``search_epochs``
    (``search_dropout_epochs`` with dropout) - smaller than the final runs where the budget asks
    for it; ``lr_grid`` is the learning rates tried, which also make the learning-rate study.
    """

    hidden: tuple[int, ...]
    epochs: int
    dropout_epochs: int
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    train_subset: int | None = None  # None: all 50,000 training images
    val_subset: int | None = None
    test_subset: int | None = None
    search_train: int | None = None  # None: the same training images as the final runs
    search_val: int | None = None
    search_epochs: int | None = None  # None: the final runs' epochs
    search_dropout_epochs: int | None = None
    search_seeds: tuple[int, ...] = (0,)
    lr_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    paper_b1: bool = True  # train the authors' recipe with the paper's B.1 values too (see authors_recipe_methods)
    control_seeds: tuple[int, ...] | None = None  # seeds of the control LONG_L2 (None: the profile's seeds)
    recipe_seeds: tuple[int, ...] | None = None   # seeds of the authors'-recipe rows (None: the profile's seeds)

    def search_profile(self) -> "MnistProfile":
        """The profile the search trains with: its data subset and epochs."""
        return dataclasses.replace(
            self, train_subset=self.search_train or self.train_subset, val_subset=self.search_val or self.val_subset,
            epochs=self.search_epochs or self.epochs,
            dropout_epochs=self.search_dropout_epochs or self.dropout_epochs, seeds=self.search_seeds)


MNIST_PROFILES = {
    # Seconds: proves the notebook runs end to end (CI).
    "smoke": MnistProfile(hidden=(64, 64), epochs=2, dropout_epochs=2, train_subset=2000, val_subset=1000,
                          test_subset=1000, search_train=1000, lr_grid=(0.03, 0.3)),
    # The default of `make report`, on 2 CPU cores, sized for about 30 minutes for the whole report (the
    # README gives the times measured). Final runs: 20 epochs without dropout, 50 with, and the control
    # "L2, dropout's epochs"; the learning-rate search on 10,000 training images, scored on all 10,000
    # validation images, for 6 epochs (10 with dropout), every grid with its regularizer switched off as
    # its reference; the L1 and KL constants at the final budget; the authors' recipe for 50 epochs at
    # batch 100 (its B.1 variant is left to the larger profiles). What one seed cannot tell: the paired
    # tests compare these six trained networks on the same 10,000 test images, so a resolved difference is
    # one between these networks; whether it holds between the methods - over initial weights and
    # minibatch orders - needs several seeds (`seeds: [0, 1, 2]` in a PARAMS_FILE: the final stage, most
    # of Part 3's time, then trains three times over, and the paired tests average each image over them).
    "quick": MnistProfile(hidden=(800, 800), epochs=20, dropout_epochs=50, search_train=10_000,
                          search_epochs=6, search_dropout_epochs=10, paper_b1=False),
    # A workstation or a small GPU: wider net, longer training, three seeds, the search on all data
    # for half the epochs.
    "full": MnistProfile(hidden=(1024, 1024), epochs=40, dropout_epochs=200, seeds=(0, 1, 2),
                         search_epochs=20, search_dropout_epochs=100),
    # The Table 9 network, batch 100 and the paper's budget for dropout (2,000 epochs x 500 steps:
    # a million updates; the control and the authors' recipe too), three seeds; the search on all
    # data at a twentieth of that. A run-step is 2.2 GFLOP of products and at least 124 MB moved
    # (hwutils.roofline). Sizing (not yet run end to end): Study("paper").estimate_steps() is 17.81
    # million run-steps, 17.51 million once a search's chosen runs are counted once as final runs
    # (the estimate's count), 15.3 of them in the final stage (15 runs of a million steps: the control,
    # the two dropout methods and the two recipe variants, 3 seeds each); grid extensions may add up
    # to 46 runs and 1.5 million. At the H100 figure (`make bench`, FP32 products, 18 runs stacked:
    # 0.166 ms per step per run) that is 48 min (53 with every extension); at issue 19's target
    # (0.045 ms, 1.5x an H200's memory floor) 13.1 min (14.3): over the 8 minutes of one H200 window
    # even at the target. What fits, at 0.045 ms: dropout_epochs=1000 (half a million updates for the
    # dropout methods, the control and the recipe, whose time constants follow) 10.0 million, 7.5 min
    # (8.6 with every extension); that and paper_b1=False (no B.1 variant: -3.0 million) 8.5 million,
    # 6.4 min (7.5). paper_b1=False alone is 14.5 million (10.9 min); the search's dropout runs at 50
    # epochs save only 0.6 million. The cost of half the updates is not measured (on the quick profile
    # 50 instead of 80 epochs cost the dropout methods 0.05-0.12 points). The cache keeps whole runs,
    # and the control and the two dropout methods train as one stacked group (9 runs x 1 million
    # steps: 6.8 min at 0.045 ms, 25 min at 0.166), which must fit in one 10-minute GPU command.
    # Chosen: the million updates stay for the six Table 9 methods, the search stays whole, and three
    # seeds stay for every Table 9 row; the control and the authors' recipe run one seed each and the
    # B.1 variant is left out (-2, -2 and -3 million): about 10.5 million run-steps, 7.9 min at 0.045 ms
    # (9 with every extension). What it costs: the control and the recipe are compared with the
    # three-seed means within one seed's noise (the report uses the binomial standard error there).
    "paper": MnistProfile(hidden=(1024, 1024, 2048), epochs=100, dropout_epochs=2000, batch_size=100,
                          seeds=(0, 1, 2), search_epochs=20, search_dropout_epochs=100, paper_b1=False,
                          control_seeds=(0,), recipe_seeds=(0,)),
}

#: Epochs of linear learning-rate warm-up of every Part 3 method. Without it, the first steps at
#: learning rate 0.3 (momentum 0.9) leave up to about a third of the hidden units dead for good (a
#: test in tests/test_study.py pins it), and how many die varies from seed to seed.
WARMUP_EPOCHS = 1

#: The learning rates of the input-scaling diagnosis: the first two of the grid at or above this.
DIAGNOSIS_LR_FROM = 0.1
#: The warm-up probe: L2 at this learning rate for this many epochs, these seeds.
WARMUP_PROBE = {"lr": 0.3, "epochs": 2, "seeds": (0, 1, 2, 3)}
#: The momentum probe: dropout + max-norm at a rate that kills units at momentum 0.9, with this momentum.
PROBE_MOMENTUM = 0.5

#: Each method's own constant, searched on the validation split together with the learning rate
#: (L2 + L1 and L2 + KL inherit L2's chosen learning rate and λ₂ and search their own constant, at
#: the final budget: how strongly L1 and KL act depends on how many steps they act for, so a value
#: chosen on a short search run does not transfer). The max-norm radii are ones that bind in this
#: set-up (both leave units at the cap; c = 3.5 left none at learning rate 0.1 with dropout).
MNIST_CONSTANTS = {
    "L2": ("l2", (1e-5, 1e-4)),
    "max-norm": ("max_norm", (1.5, 2.5)),
    "dropout + L2": ("l2", (1e-5, 1e-4)),
    "dropout + max-norm": ("max_norm", (1.5, 2.5)),
    "L2 + L1 (late)": ("l1", (1e-5, 3e-5, 1e-4)),
    "L2 + KL-sparsity": ("kl", (1e-4, 1e-3)),
}
#: How each searched training field is written in tables, figures and prose.
CONSTANT_LABELS = {"l2": "λ₂", "l1": "λ₁", "kl": "β", "max_norm": "c", "lr": "learning rate"}
#: The methods whose learning rate is searched with their constant (the learning-rate study).
LR_STUDY = ("L2", "max-norm", "dropout + L2", "dropout + max-norm")


def mnist_search_grids(profile: MnistProfile) -> tuple[dict, dict]:
    """The search in two stages: (1) learning rate x constant for the methods of the learning-rate
    study, on the search data; (2) the L1 and KL constants on top of the L2 method that stage 1
    chose, at the final budget (see :data:`MNIST_CONSTANTS`)."""
    stage1 = {name: {"lr": profile.lr_grid, field: values}
              for name, (field, values) in MNIST_CONSTANTS.items() if name in LR_STUDY}
    stage2 = {name: spec for name, spec in MNIST_CONSTANTS.items() if name not in LR_STUDY}
    return stage1, stage2


def mnist_profile(name: str, **overrides) -> MnistProfile:
    """The named profile with some fields replaced (``None`` values are ignored)."""
    profile = MNIST_PROFILES[check_profile(name)]
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(profile, **changes)


def mnist_methods(profile: MnistProfile) -> list[Method]:
    """The six methods of Table 9, before the search picks their learning rate and constants.

    Shared by all methods: ReLU MLP on pixel intensities in [0, 1], SGD with Nesterov momentum
    0.9, the learning rate ramped up over the first :data:`WARMUP_EPOCHS` epoch and then decayed to 0
    on a cosine, batch size from the profile. Dropout drops inputs with
    probability 0.2 and hidden units with 0.5 (keep 0.8 / 0.5, as in Srivastava et al.); max-norm
    constrains each hidden unit's incoming weights. L2 + L1 and L2 + KL are the L2 method plus
    their penalty: with the same seed, L2 + L1 *is* the L2 run until L1 switches on (last 25 %).
    """
    plain = ModelConfig(hidden=profile.hidden)
    dropout = ModelConfig(hidden=profile.hidden, dropout_input=0.2, dropout_hidden=0.5)
    base = TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size, lr=0.1, momentum=0.9,
                       warmup_epochs=WARMUP_EPOCHS)
    long = base.replace(epochs=profile.dropout_epochs)
    return [
        Method("L2", plain, base.replace(l2=1e-5)),
        Method("L2 + L1 (late)", plain, base.replace(l2=1e-5, l1=1e-4, l1_last_fraction=0.25)),
        Method("L2 + KL-sparsity", plain, base.replace(l2=1e-5, kl=1e-3, kl_rho=0.05)),
        Method("max-norm", plain, base.replace(max_norm=3.5)),
        Method("dropout + L2", dropout, long.replace(l2=1e-5)),
        Method("dropout + max-norm", dropout, long.replace(max_norm=3.5)),
    ]


#: The control run: L2 trained as long as the dropout methods.
LONG_L2 = "L2, dropout's epochs"


def final_methods(profile: MnistProfile, chosen) -> list[Method]:
    """The six methods at the profile's final budget with the constants the search ``chosen``, and
    the control :data:`LONG_L2` - L2 trained for the dropout methods' epochs - which separates what
    their extra epochs do from what dropout does."""
    budget = {m.name: m.train.epochs for m in mnist_methods(profile)}
    final = [m.replace(epochs=budget[m.name]) for m in chosen]
    l2 = next(m for m in final if m.name == "L2")
    return final + [l2.variant(LONG_L2, epochs=profile.dropout_epochs)]


#: Srivastava et al.'s own recipe for dropout + max-norm on MNIST, as their code trains it (deepnet:
#: examples/ff/model_dropout.pbtxt and train.pbtxt, the update in edge.py): a million steps of batch
#: 100, plain momentum ramped per step from 0.5 to 0.99 over the first 100,000, learning rate
#: 1/(1 + t/10,000), radius 3 on every layer's incoming weights (the output layer's too), no penalty,
#: and dropout scaled at test time, as there (see hwutils.models.DROPOUT_SCALINGS: under this
#: project's inverted dropout the same numbers would mean a step up to 4x and a radius 2x larger).
AUTHORS_RECIPE = "dropout + max-norm (authors' recipe)"
#: The variant with the values of the paper's Appendix B.1 for MNIST: final momentum 0.95, c = 2.
PAPER_B1 = "dropout + max-norm (paper's B.1)"
AUTHORS_STEPS = 1_000_000
_AUTHORS = {"batch_size": 100, "lr": 1.0, "lr_half_life_steps": 10_000, "momentum_start": 0.5, "momentum": 0.99,
            "momentum_ramp_steps": 100_000, "max_norm": 3.0}
#: Training images of the MNIST split (the 60,000 official ones less 10,000 held out for validation).
MNIST_TRAIN_IMAGES = 50_000


def recipe_steps(profile: MnistProfile) -> int:
    """Steps the authors' recipe trains for at ``profile``: its dropout epochs at the recipe's batch."""
    per_epoch = -(-(profile.train_subset or MNIST_TRAIN_IMAGES) // _AUTHORS["batch_size"])
    return profile.dropout_epochs * per_epoch


def recipe_time_scale(profile: MnistProfile) -> float:
    """The factor by which the recipe's time constants (the learning rate's half-life, the momentum
    ramp) are shrunk at ``profile``: its steps over the authors' million, so that each ends at the
    same fraction of training (1 at ``paper``)."""
    return recipe_steps(profile) / AUTHORS_STEPS


def authors_recipe_methods(profile: MnistProfile) -> list[Method]:
    """:data:`AUTHORS_RECIPE` and :data:`PAPER_B1` on the profile's hidden widths, exactly as
    configured - no warm-up, no search, no L2 - for the profile's dropout epochs at batch 100, with
    the time constants scaled by :func:`recipe_time_scale`."""
    scale = recipe_time_scale(profile)
    model = ModelConfig(hidden=profile.hidden, dropout_input=0.2, dropout_hidden=0.5, init="normal_fan_in",
                        dropout_scaling="test_time")
    recipe = TrainConfig(
        epochs=profile.dropout_epochs, batch_size=_AUTHORS["batch_size"], optimizer="sgd", lr=_AUTHORS["lr"],
        momentum=_AUTHORS["momentum"], nesterov=False, lr_schedule="inverse_t",
        lr_half_life_steps=_AUTHORS["lr_half_life_steps"] * scale, momentum_start=_AUTHORS["momentum_start"],
        momentum_ramp_steps=max(1, round(_AUTHORS["momentum_ramp_steps"] * scale)),
        max_norm=_AUTHORS["max_norm"], max_norm_output=True)
    return [Method(AUTHORS_RECIPE, model, recipe), Method(PAPER_B1, model, recipe.replace(momentum=0.95, max_norm=2.0))]


def inherit_l2(methods, chosen_l2: Method) -> list[Method]:
    """L2 + L1 and L2 + KL with the learning rate and λ₂ chosen for L2."""
    return [m.replace(lr=chosen_l2.train.lr, l2=chosen_l2.train.l2) if m.name.startswith("L2 +") else m
            for m in methods]


#: How Part 3 scales its inputs: pixel intensities in [0, 1], as Srivastava et al. (whose constants,
#: max-norm radii and learning rates assume it); "standardized" (zero mean, unit variance) only for
#: the diagnosis of why that matters.
PIXELS = ("[0, 1]", "standardized")


def mnist_splits(profile: MnistProfile, downsample=None, root=None, device=None, pixels: str = "[0, 1]") -> Splits:
    """MNIST for a profile: :func:`hwutils.data.load_mnist`, cut to the profile's subset sizes; its
    ``spec`` (part of every run's cache key) says so."""
    from .data import load_mnist  # noqa: keeps `import hwutils.profiles` free of data loading

    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
    data = load_mnist(root, downsample=downsample, device=device, standardize=pixels == "standardized")
    cut = lambda split, n: split if n is None else split.subset(n)
    spec = {**data.spec, "train_subset": profile.train_subset, "val_subset": profile.val_subset,
            "test_subset": profile.test_subset}
    return Splits(cut(data.train, profile.train_subset), cut(data.val, profile.val_subset),
                  cut(data.test, profile.test_subset), spec)


# --------------------------------------------------------------------------- Part 2: 2-D point cloud
@dataclass(frozen=True)
class PointCloudProfile:
    """Size of the point-cloud comparison: epochs, seeds, and the λ grids searched on validation.

    The λ search's seeds (``sweep_seeds``) and the comparison's (``seeds``) are disjoint: the search
    trains its runs stacked, several per step, so a run of it has no wall time of its own, while the
    comparison trains one run at a time and reports each run's time; and a comparison run that was
    also a search run would have had its validation error chosen on."""

    epochs: int
    seeds: tuple[int, ...]
    l1_grid: tuple[float, ...]
    l2_grid: tuple[float, ...]
    sweep_seeds: tuple[int, ...]

    def __post_init__(self):
        shared = sorted(set(self.seeds) & set(self.sweep_seeds))
        if shared:
            raise ValueError(f"Part 2's seeds must not include the λ search's seeds {list(self.sweep_seeds)} (here "
                             f"{', '.join(map(str, shared))}): pick others")


POINT_CLOUD_PROFILES = {
    "smoke": PointCloudProfile(epochs=100, seeds=(0, 1), l1_grid=(1e-4, 1e-3), l2_grid=(1e-4, 1e-3), sweep_seeds=(100,)),
    "quick": PointCloudProfile(epochs=1000, seeds=tuple(range(5)), l1_grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                               l2_grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), sweep_seeds=(100, 101, 102)),
}
POINT_CLOUD_PROFILES["full"] = dataclasses.replace(POINT_CLOUD_PROFILES["quick"], seeds=tuple(range(10)),
                                                   sweep_seeds=tuple(range(100, 105)))
POINT_CLOUD_PROFILES["paper"] = POINT_CLOUD_PROFILES["full"]


def point_cloud_profile(name: str, **overrides) -> PointCloudProfile:
    """The named point-cloud profile with some fields replaced (``None`` values are ignored)."""
    profile = POINT_CLOUD_PROFILES[check_profile(name)]
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(profile, **changes)


def point_cloud_settings(data: Splits, methods, sizes: PointCloudProfile) -> dict:
    """Part 2's set-up table: the data (its spec), the shared network and optimizer, early
    stopping, the λ grids and the seeds."""
    from .display import listed

    shared = methods[0]
    stopper = next(m for m in methods if m.train.patience)
    network = "-".join(map(str, (data.n_features, *shared.model.hidden, data.n_classes)))
    return {
        "data": f"{data.spec['kind']}, Gaussian noise of standard deviation {data.spec['noise']:g}; one split "
                f"for all runs",
        "points: training / validation / test": f"{len(data.train):,} / {len(data.val):,} / {len(data.test):,}",
        "network": f"{network} (ReLU), the same for every method",
        "optimizer": f"SGD, {'Nesterov ' if shared.train.nesterov else ''}momentum {shared.train.momentum:g}, "
                     f"constant learning rate {shared.train.lr:g}",
        "batch size": shared.train.batch_size,
        "epochs": f"{shared.train.epochs:,} (early stopping: at most)",
        "early stopping": f"patience {stopper.train.patience} epochs on the validation loss",
        "λ₁ searched (L1)": listed(sizes.l1_grid),
        "λ₂ searched (L2)": listed(sizes.l2_grid),
        "seeds: λ search / comparison": f"{len(sizes.sweep_seeds)} / {len(sizes.seeds)}",
    }


def point_cloud_methods(hidden=(256, 256), epochs: int = 1000, l1: float = 1e-3, l2: float = 1e-3,
                        patience: int = 50, lr: float = 0.1, batch_size: int = 25) -> list[Method]:
    """No penalty, L1, L2 and early stopping on the same MLP and SGD settings (constant learning
    rate, so that the end of training is not itself a regularizer). Only early stopping restores
    the best epoch's weights; the others keep their final weights."""
    model = ModelConfig(hidden=tuple(hidden))
    base = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, lr_schedule="constant")
    return [
        Method("no penalty", model, base),
        Method("L1", model, base.replace(l1=l1)),
        Method("L2", model, base.replace(l2=l2)),
        Method("early stopping", model, base.replace(patience=patience)),
    ]
