"""Experiments: named methods, profiles, and cached runs (method × data × seed).

A run is identified by a hash of everything that decides its outcome - the method's model and
training configs, the data description and the seed. Its result (History, final validation and
test error, trained weights) is cached under ``results_dir``, so re-rendering a notebook does not
retrain, an interrupted sweep resumes at the first missing run, and a changed parameter retrains
only the runs it changes. ``force=True`` retrains.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm  # text bars: they render in terminals, notebooks and papermill logs alike

from .data import Splits
from .models import ModelConfig, build_model
from .training import History, TrainConfig, evaluate, fit

__all__ = [
    "Method", "RunResult", "run", "run_sweep", "results_frame", "summarize", "search", "methods_frame",
    "format_summary", "COLUMN_LABELS",
    "MnistProfile", "MNIST_PROFILES", "MNIST_SEARCH_GRID", "PROFILES", "check_profile", "mnist_profile",
    "mnist_methods", "mnist_data_spec", "mnist_splits", "PointCloudProfile", "POINT_CLOUD_PROFILES",
    "point_cloud_profile", "point_cloud_methods",
    "TABLE9_TEST_ERROR",
]

#: Bump when a change to the training code changes results, so cached runs are not reused.
CACHE_VERSION = 2


@dataclass(frozen=True)
class Method:
    """A regularization method as data: a name, a model config and a training config."""

    name: str
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def replace(self, **train_changes) -> "Method":
        """The same method with some training fields changed."""
        return dataclasses.replace(self, train=self.train.replace(**train_changes))

    def variant(self, name: str, **train_changes) -> "Method":
        """A new named method: this one with some training fields changed."""
        return dataclasses.replace(self, name=name, train=self.train.replace(**train_changes))


@dataclass
class RunResult:
    """One trained run: what it was, what it measured, and (when kept) the trained model."""

    method: str
    seed: int
    key: str
    history: History
    val_error: float
    test_error: float
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None

    @property
    def wall_seconds(self) -> float:
        return self.history.wall_seconds


def run_key(method: Method, data_spec: dict, seed: int) -> str:
    """A short hash of everything that decides a run's outcome."""
    payload = {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train),
               "data": data_spec, "seed": seed, "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    os.replace(tmp, path)  # an interrupted run leaves no half-written result behind


def run(method: Method, data: Splits, *, seed: int = 0, data_spec: dict | None = None,
        results_dir: str | os.PathLike | None = "results", force: bool = False,
        progress: bool = True) -> RunResult:
    """Train ``method`` on ``data`` with ``seed`` (initial weights, shuffling, dropout); evaluate.

    ``data_spec`` describes the data (e.g. ``{"name": "mnist", "downsample": None}``) and is part
    of the cache key; with ``results_dir=None`` nothing is cached. The final validation error is
    that of the returned weights (the best epoch's when early stopping restores them); the test
    error is measured once, at the end.
    """
    spec = dict(data_spec or {})
    key = run_key(method, spec, seed)
    model = build_model(method.model, data.n_features, data.n_classes, seed=seed)
    stem = Path(results_dir) / f"{method.name.replace(' ', '_').replace('+', 'p')}-{key}" if results_dir else None
    if stem is not None and not force and stem.with_suffix(".json").exists() and stem.with_suffix(".pt").exists():
        record = json.loads(stem.with_suffix(".json").read_text())
        model.load_state_dict(torch.load(stem.with_suffix(".pt"), map_location="cpu"))
        model.to(data.train.X.device).eval()
        return RunResult(record["method"], seed, key, History.from_dict(record["history"]),
                         record["val_error"], record["test_error"], record["config"], model)

    history = fit(model, data.train, data.val, method.train.replace(seed=seed), progress=progress,
                  desc=f"{method.name} (seed {seed})")
    _, val_error = evaluate(model, data.val)
    _, test_error = evaluate(model, data.test)
    model.eval()
    config = {"model": dataclasses.asdict(method.model), "train": dataclasses.asdict(method.train), "data": spec}
    result = RunResult(method.name, seed, key, history, val_error, test_error, config, model)
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        record = {"method": method.name, "seed": seed, "key": key, "val_error": val_error,
                  "test_error": test_error, "config": config, "history": history.to_dict()}
        _atomic_write(stem.with_suffix(".pt"), lambda p: torch.save(model.state_dict(), p))
        _atomic_write(stem.with_suffix(".json"), lambda p: p.write_text(json.dumps(record)))
    return result


def run_sweep(methods, data: Splits, *, seeds=(0,), desc: str = "runs", **run_kwargs) -> list[RunResult]:
    """:func:`run` every method with every seed (cached runs are loaded, not retrained)."""
    methods = list(methods)
    jobs = [(m, s) for m in methods for s in seeds]
    bar = tqdm(jobs, desc=desc)
    results = []
    for method, seed in bar:
        bar.set_postfix_str(f"{method.name}, seed {seed}")
        results.append(run(method, data, seed=seed, **run_kwargs))
    return results


def results_frame(results) -> "pd.DataFrame":
    """One row per run: method, seed, validation/test error (%), epochs, best epoch, wall time."""
    import pandas as pd

    return pd.DataFrame([{
        "method": r.method, "seed": r.seed,
        "val_error_pct": 100 * r.val_error, "test_error_pct": 100 * r.test_error,
        "epochs_run": r.history.epochs_run, "best_epoch": r.history.best_epoch,
        "wall_seconds": r.wall_seconds,
    } for r in results])


def summarize(results, order=None) -> "pd.DataFrame":
    """Mean and standard deviation over seeds of each column of :func:`results_frame`, per method."""
    frame = results_frame(results)
    order = order or list(dict.fromkeys(frame["method"]))
    summary = frame.drop(columns="seed").groupby("method", sort=False).agg(["mean", "std"]).reindex(order)
    summary.insert(0, ("seeds", "n"), frame.groupby("method").size().reindex(order))
    return summary


def search(methods, grid: dict, data: Splits, *, seeds=(0,), **run_kwargs):
    """Choose one training constant per method on the validation split.

    ``grid`` maps a method name to ``(field, values)``, e.g. ``{"L2": ("l2", (1e-5, 1e-4))}``;
    methods not in it are kept as they are. Each candidate is trained with every seed (cached
    like any run) and the value with the lowest mean *validation* error wins; the test error is
    not looked at; ties go to the smallest value. Returns the methods with the chosen values and
    a table of the search.
    """
    import pandas as pd

    chosen, rows = [], []
    for method in methods:
        if method.name not in grid:
            chosen.append(method)
            continue
        field_name, values = grid[method.name]
        candidates = [method.replace(**{field_name: v}) for v in values]
        results = run_sweep(candidates, data, seeds=seeds, desc=f"search {method.name}", **run_kwargs)
        for r in results:
            rows.append({"method": method.name, "field": field_name,
                         "value": r.config["train"][field_name], "seed": r.seed,
                         "val_error_pct": 100 * r.val_error})
        table = pd.DataFrame([row for row in rows if row["method"] == method.name])
        best = table.groupby("value")["val_error_pct"].mean().idxmin()
        chosen.append(method.replace(**{field_name: best}))
    return chosen, pd.DataFrame(rows)


def format_summary(summary, digits: int = 2) -> "pd.DataFrame":
    """A :func:`summarize` table as text cells "mean ± std" (just the mean for a single seed)."""
    import pandas as pd

    out = pd.DataFrame(index=summary.index)
    out["seeds"] = summary[("seeds", "n")]
    for column in dict.fromkeys(c for c, _ in summary.columns if c != "seeds"):
        mean, std = summary[(column, "mean")], summary[(column, "std")]
        exact = lambda m, s: float(m).is_integer() and (pd.isna(s) or s == 0)  # e.g. epochs of one seed
        out[COLUMN_LABELS.get(column, column)] = [
            f"{m:.0f}" if exact(m, s) else f"{m:.{digits}f}" + ("" if pd.isna(s) else f" ± {s:.{digits}f}")
            for m, s in zip(mean, std)]
    return out


#: Readable headers for the columns of :func:`results_frame`.
COLUMN_LABELS = {"val_error_pct": "validation error (%)", "test_error_pct": "test error (%)",
                 "epochs_run": "epochs run", "best_epoch": "best epoch", "wall_seconds": "wall time (s)"}


def methods_frame(methods) -> "pd.DataFrame":
    """The methods' settings side by side: what differs between them, and what they share."""
    import pandas as pd

    return pd.DataFrame([{
        "method": m.name, "hidden": "-".join(map(str, m.model.hidden)),
        "dropout (in/hidden)": f"{m.model.dropout_input:g} / {m.model.dropout_hidden:g}",
        "L2 λ": m.train.l2, "L1 λ": m.train.l1,
        "L1 on for last": f"{m.train.l1_last_fraction:.0%}" if m.train.l1 else "",
        "KL β": m.train.kl, "KL ρ": m.train.kl_rho if m.train.kl else "",
        "max-norm c": m.train.max_norm or "", "lr": m.train.lr, "epochs": m.train.epochs,
        "early stopping (patience)": m.train.patience or "",
    } for m in methods]).set_index("method")


# --------------------------------------------------------------------------- MNIST profiles
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
    from .data import load_mnist

    data = load_mnist(root, downsample=downsample, device=device)
    cut = lambda split, n: split if n is None else split.subset(n)
    return Splits(cut(data.train, profile.train_subset), cut(data.val, profile.val_subset),
                  cut(data.test, profile.test_subset))


def mnist_data_spec(profile: MnistProfile, downsample) -> dict:
    """What identifies the MNIST data of a run (part of its cache key)."""
    return {"name": "mnist", "downsample": downsample, "val_size": 10_000, "split_seed": 0,
            "train_subset": profile.train_subset, "val_subset": profile.val_subset,
            "test_subset": profile.test_subset}


# --------------------------------------------------------------------------- 2-D point cloud
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
