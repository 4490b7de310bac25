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
    "MnistProfile", "MNIST_PROFILES", "MNIST_SEARCH_GRID", "mnist_profile", "mnist_methods",
    "mnist_data_spec", "mnist_splits", "TABLE9_TEST_ERROR",
    "PointCloudProfile", "POINT_CLOUD_PROFILES", "point_cloud_profile", "point_cloud_methods",
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
    """Size of the MNIST sweep: network, epochs, seeds, and how much of the data is used.

    ``epochs`` is the budget of the methods without dropout, ``dropout_epochs`` that of the two
    dropout methods: dropout trains a different thinned network at every step and needs several
    times more epochs to converge (Srivastava et al. 2014, sec. 7.2), while the others stop
    improving on validation long before (see the curves in the notebook).
    """

    hidden: tuple[int, ...]
    epochs: int
    dropout_epochs: int
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 128
    search: bool = False  # run the validation search for the constants (else use the defaults)
    train_subset: int | None = None  # None: all 50,000 training images
    val_subset: int | None = None
    test_subset: int | None = None


MNIST_PROFILES = {
    # Seconds: proves the notebook runs end to end (CI).
    "smoke": MnistProfile(hidden=(64, 64), epochs=2, dropout_epochs=2, train_subset=2000, val_subset=1000,
                          test_subset=1000),
    # The default of `make report`: the six methods in about 12 minutes on 2 CPU cores. Budget from
    # the measured speed (`make bench`): ~5.5 ms per step of 128 at 784-800-800-10, i.e. 2.2-2.9 s
    # per epoch of 50,000 images with validation, so 4 x 20 + 2 x 80 = 240 epochs take 9-12 minutes.
    "quick": MnistProfile(hidden=(800, 800), epochs=20, dropout_epochs=80),
    # A workstation: wider net, longer training, three seeds, and the validation search.
    "full": MnistProfile(hidden=(1024, 1024), epochs=40, dropout_epochs=200, seeds=(0, 1, 2), search=True),
    # The Table 9 network and about a million updates for dropout (2,000 epochs x 500 steps of 100); a GPU.
    "paper": MnistProfile(hidden=(1024, 1024, 2048), epochs=300, dropout_epochs=2000, batch_size=100, search=True),
}

#: The constant searched on the validation split for each method (name → (field, values)).
MNIST_SEARCH_GRID = {
    "L2": ("l2", (3e-5, 1e-4, 3e-4)),
    "L2 + L1 (late)": ("l1", (3e-6, 1e-5, 3e-5)),
    "L2 + KL-sparsity": ("kl", (3e-5, 1e-4, 3e-4)),
    "max-norm": ("max_norm", (2.0, 3.0, 4.0)),
    "dropout + L2": ("l2", (1e-5, 1e-4)),
    "dropout + max-norm": ("max_norm", (1.5, 3.5)),
}


def mnist_profile(name: str, **overrides) -> MnistProfile:
    """The named profile with some fields replaced (``None`` values are ignored)."""
    profile = MNIST_PROFILES[check_profile(name)]
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(profile, **changes)


def mnist_methods(profile: MnistProfile) -> list[Method]:
    """The six methods of Table 9 with the constants chosen on the validation split.

    Shared by all methods: ReLU MLP, SGD with Nesterov momentum 0.9, cosine learning-rate decay,
    batch size from the profile. Dropout drops inputs with probability 0.2 and hidden units with
    0.5 (keep 0.8 / 0.5, as in Srivastava et al.).
    """
    plain = ModelConfig(hidden=profile.hidden)
    dropout = ModelConfig(hidden=profile.hidden, dropout_input=0.2, dropout_hidden=0.5)
    base = TrainConfig(epochs=profile.epochs, batch_size=profile.batch_size, lr=0.05, momentum=0.9)
    long = base.replace(epochs=profile.dropout_epochs)
    # The searched constants (MNIST_SEARCH_GRID) as the quick-profile search chose them on the
    # validation split (784-800-800-10, one seed). L2 + L1 and L2 + KL keep the L2 coefficient
    # chosen for L2, so that with the same seed L2 + L1 *is* the L2 run until L1 switches on.
    l2 = 3e-5
    return [
        Method("L2", plain, base.replace(l2=l2)),
        Method("L2 + L1 (late)", plain, base.replace(l2=l2, l1=3e-6, l1_last_fraction=0.25)),
        Method("L2 + KL-sparsity", plain, base.replace(l2=l2, kl=3e-5, kl_rho=0.05)),
        Method("max-norm", plain, base.replace(lr=0.1, max_norm=2.0)),
        Method("dropout + L2", dropout, long.replace(l2=1e-4)),
        Method("dropout + max-norm", dropout, long.replace(max_norm=3.5)),
    ]


def mnist_splits(profile: MnistProfile, downsample=None, root=None, device=None) -> Splits:
    """MNIST for a profile: :func:`hwutils.data.load_mnist`, cut to the profile's subset sizes."""
    from .data import load_mnist  # noqa: keeps `import hwutils.profiles` free of data loading

    data = load_mnist(root, downsample=downsample, device=device)
    cut = lambda split, n: split if n is None else split.subset(n)
    return Splits(cut(data.train, profile.train_subset), cut(data.val, profile.val_subset),
                  cut(data.test, profile.test_subset))


def mnist_data_spec(profile: MnistProfile, downsample) -> dict:
    """What identifies the MNIST data of a run (part of its cache key)."""
    return {"name": "mnist", "downsample": downsample, "val_size": 10_000, "split_seed": 0,
            "train_subset": profile.train_subset, "val_subset": profile.val_subset,
            "test_subset": profile.test_subset}


# --------------------------------------------------------------------------- Part 2: 2-D point cloud
@dataclass(frozen=True)
class PointCloudProfile:
    """Size of the point-cloud comparison: epochs, seeds, and the λ grids searched on validation."""

    epochs: int
    seeds: tuple[int, ...]
    l1_grid: tuple[float, ...]
    l2_grid: tuple[float, ...]
    sweep_seeds: tuple[int, ...]


POINT_CLOUD_PROFILES = {
    "smoke": PointCloudProfile(epochs=100, seeds=(0, 1), l1_grid=(1e-4, 1e-3), l2_grid=(1e-4, 1e-3), sweep_seeds=(0,)),
    "quick": PointCloudProfile(epochs=1000, seeds=tuple(range(5)), l1_grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                               l2_grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), sweep_seeds=(0, 1, 2)),
}
POINT_CLOUD_PROFILES["full"] = dataclasses.replace(POINT_CLOUD_PROFILES["quick"], seeds=tuple(range(10)),
                                                   sweep_seeds=tuple(range(5)))
POINT_CLOUD_PROFILES["paper"] = POINT_CLOUD_PROFILES["full"]


def point_cloud_profile(name: str, **overrides) -> PointCloudProfile:
    """The named point-cloud profile with some fields replaced (``None`` values are ignored)."""
    profile = POINT_CLOUD_PROFILES[check_profile(name)]
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return dataclasses.replace(profile, **changes)


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
