"""The one training loop: :func:`fit_members` trains K same-shape MLPs at once as one stacked model;
:func:`fit` is its K = 1 case.

A step (:func:`train_step`) is: slice each member's minibatch from in-memory tensors → forward
(one batched product per layer) → data loss + loss terms (KL) → gradients + gradient terms
(L2, L1) → optimizer update → projections (max-norm, L1 prox). The step is the same on every
device; on CUDA it is captured once as a CUDA graph and replayed, and no epoch reads a value back
to the host before its end.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from .data import Split
from .fused import chosen_update, fused_step_, fused_terms
from .models import MLP, StackedMLP
from .optim import adam_update_, sgd_update_
from .precision import PRECISIONS, matmul_precision, product_dtype
from .progress import progress_bar
from .regularizers import L1Schedule, member_regularizers
from .threads import TrainingThreads
from .thresholds import AT_CAP, NEAR_ZERO

__all__ = ["TrainConfig", "History", "fit", "fit_members", "train_step", "evaluate", "evaluate_members",
           "step_seconds", "momentum_at", "largest_effective_step", "trunk_config", "shared_prefix_epochs"]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "inverse_t")
MONITORS = ("val_loss", "val_error")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained; a regularization method is a value of this.

    Penalties (weights only, see :mod:`hwutils.regularizers`): the loss is
    ``cross_entropy + l2·Σw² + l1(t)·Σ|w| + kl·Σ KL(kl_rho ‖ ρ̂)``, where ``l1(t)`` is ``l1`` during
    the last ``l1_last_fraction`` of the epochs and 0 before. With ``l1_proximal`` the L1 term is
    applied as a soft-threshold after each step instead of as a subgradient (threshold
    ``lr·l1/(1-momentum)`` for SGD, the steady-state step of momentum SGD; ``lr·l1`` for Adam). ``max_norm``: radius
    of the max-norm projection applied after each step (``None``: off). ``patience``: early
    stopping after that many epochs without improvement of ``monitor`` (``None``: off), after
    which the best epoch's weights are restored. The learning rate follows ``lr_schedule`` per
    step t (from 0): "cosine" from ``lr`` down to 0 over ``epochs``; "constant"; "inverse_t"
    ``lr / (1 + t/T)`` with T = ``lr_half_life_steps`` (Srivastava et al.'s deepnet); times a
    linear warm-up from ``lr/W`` to ``lr`` over the first W = ``warmup_epochs`` x steps-per-epoch
    steps (0: none). ``momentum_start`` with ``momentum_ramp_steps`` = N ramps the momentum
    linearly per step from ``momentum_start`` at t = 0 to ``momentum`` at t = N, then keeps it
    (``None``: ``momentum`` throughout; the L1 prox threshold uses the final ``momentum``).
    ``max_norm_output`` holds the output layer's incoming weights to ``max_norm`` too.
    ``precision``: of the matrix products (:mod:`hwutils.precision`; None: the device's default).
    """

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    l2: float = 0.0
    l1: float = 0.0
    l1_last_fraction: float = 1.0
    l1_proximal: bool = False
    kl: float = 0.0
    kl_rho: float = 0.05
    max_norm: float | None = None
    patience: int | None = None
    monitor: str = "val_loss"
    seed: int = 0
    lr_half_life_steps: float | None = None
    momentum_start: float | None = None
    momentum_ramp_steps: int = 0
    max_norm_output: bool = False
    precision: str | None = None

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"),
            (0 <= self.warmup_epochs < self.epochs, f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}"),
            (self.l2 >= 0 and self.l1 >= 0 and self.kl >= 0, "penalty coefficients l2, l1, kl must be >= 0"),
            (0 < self.kl_rho < 1, f"kl_rho must be in (0, 1), got {self.kl_rho}"),
            (0 <= self.l1_last_fraction <= 1, f"l1_last_fraction must be in [0, 1], got {self.l1_last_fraction}"),
            (self.max_norm is None or self.max_norm > 0, f"max_norm must be None or > 0, got {self.max_norm}"),
            (self.patience is None or self.patience >= 1, f"patience must be None or >= 1, got {self.patience}"),
            (self.monitor in MONITORS, f"monitor must be one of {MONITORS}, got {self.monitor!r}"),
            ((self.lr_schedule == "inverse_t") == (self.lr_half_life_steps is not None),
             "lr_half_life_steps goes with lr_schedule='inverse_t' (and only with it): set both or neither"),
            (self.lr_half_life_steps is None or self.lr_half_life_steps > 0,
             f"lr_half_life_steps must be > 0, got {self.lr_half_life_steps}"),
            ((self.momentum_start is None) == (self.momentum_ramp_steps == 0),
             "momentum_start and momentum_ramp_steps make a ramp together: set both or neither"),
            (self.momentum_start is None or 0 <= self.momentum_start < 1,
             f"momentum_start must be in [0, 1), got {self.momentum_start}"),
            (self.momentum_ramp_steps >= 0, f"momentum_ramp_steps must be >= 0, got {self.momentum_ramp_steps}"),
            (self.momentum_start is None or self.optimizer == "sgd",
             "a momentum ramp needs optimizer='sgd' (Adam has no momentum to ramp)"),
            (not self.max_norm_output or self.max_norm is not None,
             "max_norm_output needs the radius: set max_norm too"),
            (self.precision is None or self.precision in PRECISIONS,
             f"precision must be one of {PRECISIONS} or None (the device's default), got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def l1_schedule(self) -> L1Schedule:
        return L1Schedule(self.l1, self.l1_last_fraction)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class History:
    """What :func:`fit` measured. Per-epoch lists have one entry per epoch run (epoch 1 first).

    * ``iter_loss``: data loss (cross-entropy, no penalty) of every minibatch; or, with
      ``iter_loss_every`` = s > 1 (a history coarsened for a portable bundle), the mean of each
      block of s minibatches.
    * ``train_loss``: mean minibatch data loss of the epoch (dropout active, as trained).
    * ``penalty``: the weighted penalty terms at the end of the epoch, kept apart from the data
      loss so that methods are compared by data loss. The KL term is measured on the last minibatch.
    * ``val_loss``, ``val_error``: on the validation split, model in evaluation mode.
    * ``small_weights``: fraction of weights below :data:`~hwutils.thresholds.NEAR_ZERO` in
      magnitude at the end of each epoch
      (how sparse the network is; see L1).
    * ``max_unit_norm``, ``at_cap``: the largest norm of a hidden unit's incoming weight vector, and
      the fraction of hidden units at the max-norm radius (norm ≥ AT_CAP · c; 0 without max-norm), at
      the end of each epoch: whether the constraint binds.
    * ``epoch_seconds``: wall time of each epoch (training and validation); for K runs trained
      together, the epoch's time divided by K.
    * ``best_epoch``: the epoch with the best ``monitor`` value; with early stopping, the weights
      returned are that epoch's.
    """

    iter_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    small_weights: list[float] = field(default_factory=list)
    max_unit_norm: list[float] = field(default_factory=list)
    at_cap: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    diverged: bool = False
    steps_per_epoch: int = 0
    iter_loss_every: int = 1

    @property
    def epochs_run(self) -> int:
        return len(self.val_loss)

    @property
    def wall_seconds(self) -> float:
        return float(sum(self.epoch_seconds))

    @property
    def best_val_error(self) -> float:
        return self.val_error[self.best_epoch - 1]

    def to_dict(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every float, seconds for the million losses of a long run.
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    def coarsened(self, max_points: int) -> "History":
        """This history with ``iter_loss`` averaged over blocks of minibatches so that at most
        ``max_points`` remain (the per-epoch lists are kept whole); ``iter_loss_every`` says how many
        minibatches a point stands for."""
        every = max(1, math.ceil(len(self.iter_loss) / max_points))
        if every == 1:
            return dataclasses.replace(self)
        blocks = [self.iter_loss[i:i + every] for i in range(0, len(self.iter_loss), every)]
        return dataclasses.replace(self, iter_loss=[sum(b) / len(b) for b in blocks],
                                   iter_loss_every=every * self.iter_loss_every)

    def record(self, **values) -> None:
        """Append one epoch's values (``train_loss=..., val_loss=..., ...``)."""
        for name, value in values.items():
            getattr(self, name).append(value)

    def to_frame(self):
        """Per-epoch table (pandas DataFrame indexed by epoch)."""
        import pandas as pd

        cols = ["train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights", "max_unit_norm", "at_cap",
                "epoch_seconds"]
        frame = pd.DataFrame({c: getattr(self, c) for c in cols})
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame


@torch.no_grad()
def evaluate_members(net: StackedMLP, split: Split, batch_size: int = 4096, *, wrong: bool = False):
    """Mean cross-entropy and error rate of every member on ``split`` (two ``[K]`` tensors, left on
    the device: reading them is the caller's one host sync); with ``wrong``, also which images each
    member gets wrong (a ``[K, n]`` boolean tensor: the per-image results that paired tests compare)."""
    was_training = net.training
    net.eval()
    total_loss = torch.zeros(net.members, device=split.X.device)
    misses = []
    for i in range(0, len(split), batch_size):
        logits = net(split.X[i:i + batch_size])                          # [K, B, classes]
        y = split.y[i:i + batch_size].expand(net.members, -1)
        total_loss += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y).sum(1)
        misses.append(logits.argmax(-1) != y)
    net.train(was_training)
    missed = torch.cat(misses, 1)
    error = missed.sum(1) / len(split)
    return (total_loss / len(split), error, missed) if wrong else (total_loss / len(split), error)


def evaluate(model: MLP, split: Split, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and error rate (fraction misclassified) of ``model`` on ``split``."""
    loss, error = evaluate_members(StackedMLP.from_models([model]).to(split.X.device), split, batch_size)
    return float(loss[0]), float(error[0])


def _lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of ``step`` (from 0) as a fraction of ``config.lr``: the schedule, times a
    linear ramp from 1/W to 1 over the first W = ``warmup_epochs · steps_per_epoch`` steps."""
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
    elif config.lr_schedule == "inverse_t":
        factor = 1.0 / (1.0 + step / config.lr_half_life_steps)
    else:
        factor = 1.0
    warmup = config.warmup_epochs * steps_per_epoch
    return factor * min(1.0, (step + 1) / warmup) if warmup else factor


def momentum_at(config: TrainConfig, step: int) -> float:
    """The momentum of ``step`` (from 0): ``config.momentum``, or on its ramp from
    ``momentum_start`` (step 0) to ``momentum`` (step ``momentum_ramp_steps`` and after)."""
    if config.momentum_start is None or step >= config.momentum_ramp_steps:
        return config.momentum
    f = step / config.momentum_ramp_steps
    return (1 - f) * config.momentum_start + f * config.momentum


def largest_effective_step(config: TrainConfig, steps_per_epoch: int) -> tuple[float, int]:
    """The largest effective step ``lr_t / (1 - m_t)`` of SGD with momentum over a whole run (how
    far a steady gradient moves a weight per unit of gradient), and the step (from 0) it is reached at."""
    total = config.epochs * steps_per_epoch
    steps = ((config.lr * _lr_factor(config, t, total, steps_per_epoch) / (1 - momentum_at(config, t)), t)
             for t in range(total))
    return max(steps, key=lambda pair: (pair[0], -pair[1]))


#: Every this many steps, optimizer state smaller than :data:`TINY_STATE` in magnitude is set to 0.
#: A weight whose gradient is exactly 0 - a dead unit's, or that of a pixel no image of the batch
#: lights, in a method without L2 - keeps a momentum that decays geometrically into the float32
#: denormals (below 1.2e-38) and stays there (0.9 x the smallest of them rounds back to itself). On
#: x86 an operation on a denormal costs about 13x an ordinary one (measured on the 2-core developer
#: host: 8.6 against 0.65 ms for a momentum update of 1.3 million values), so in Part 3's quick profile
#: dropout + max-norm took 430 s instead of 252, and the authors' recipe (half its units dead) 450 s
#: instead of 275, at 20 ms per step by its end. ``torch.set_flush_denormal`` does not help: it sets
#: only the calling thread, not the OpenMP workers that do half of each update. A momentum of 1e-30 moves a weight by
#: less than float32 resolves for any weight above 1e-23 in magnitude, and from 1e-30 a value needs
#: 175 steps at momentum 0.9 (1,833 at 0.99) to become denormal: swept every 100 steps, none does.
TINY_STATE = 1e-30
SWEEP_EVERY = 100


class MemberOptimizer:
    """SGD (momentum, Nesterov or plain) or Adam over a stacked model's parameters, each member
    with its own learning rate and momentum (``[K, 1, 1]`` tensors). ``ramps``: some member's
    momentum changes from step to step, and each step is handed it (see :func:`momentum_at`).
    ``update``: "plain", or "fused" / "compiled" for SGD (:mod:`hwutils.fused`; None: ``$HWUTILS_UPDATE``)."""

    def __init__(self, params, configs, update: str | None = None):
        kinds = {(c.optimizer, c.nesterov) for c in configs}
        if len(kinds) != 1:
            raise ValueError(f"runs trained together must share the optimizer, got {sorted(kinds)}")
        (self.kind, self.nesterov), = kinds
        self.params = list(params)
        momenta = {c.momentum for c in configs}  # one float when shared: fewer, fused operations
        self.momentum = momenta.pop() if len(momenta) == 1 else torch.tensor(
            [c.momentum for c in configs], device=self.params[0].device).view(-1, 1, 1)
        self.ramps = any(c.momentum_start is not None for c in configs)
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.t = 0
        self.update = chosen_update(update) if self.kind == "sgd" else "plain"

    @torch.no_grad()
    def fused_step_(self, weights, grads, lr, momentum, regularizers) -> bool:
        """The update with the regularizers' gradient terms and projections fused into it
        (:func:`hwutils.fused.fused_step_`); False, having done nothing, where the plain path must run."""
        terms = fused_terms(regularizers, len(weights)) if self.update != "plain" else None
        if terms is None:
            return False
        self.t += 1
        n = len(weights)
        fused_step_(self.update, self.params[:n], self.params[n:], grads, [a for a, _ in self.state], lr,
                    self.momentum if momentum is None else momentum, self.nesterov, terms)
        return True

    @torch.no_grad()
    def sweep_tiny_(self) -> None:
        """Set optimizer state below :data:`TINY_STATE` in magnitude to 0 (see there)."""
        for buffer in ([a for a, _ in self.state] if self.kind == "sgd" else [x for pair in self.state for x in pair]):
            buffer.masked_fill_(buffer.abs() < TINY_STATE, 0.0)

    @torch.no_grad()
    def step_(self, grads, lr: torch.Tensor, momentum: torch.Tensor | None = None) -> None:
        """One update; ``momentum`` (``[K, 1, 1]``) replaces the constant one for this step."""
        self.t += 1
        momentum = self.momentum if momentum is None else momentum
        for p, g, (a, b) in zip(self.params, grads, self.state):
            if self.kind == "sgd":
                sgd_update_(p, g, a, lr, momentum, self.nesterov)
            else:
                adam_update_(p, g, a, b, self.t, lr)


def train_step(net: StackedMLP, train: Split, idx: torch.Tensor, lr: torch.Tensor, regularizers,
               optimizer: MemberOptimizer, momentum: torch.Tensor | None = None) -> torch.Tensor:
    """One minibatch step of every member; returns the data loss (cross-entropy) per member, ``[K]``.

    ``idx[k]`` holds member k's example indices, ``lr[k]`` its learning rate (0: frozen member),
    ``momentum[k]`` its momentum this step (``None``: the optimizer's constant one).
    """
    xb, yb = train.X[idx], train.y[idx]                                  # [K, B, D], [K, B]
    logits, hidden = net(xb, return_hidden=True)
    data_loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view_as(yb).mean(1)
    objective = (data_loss + sum(r.loss(hidden) for r in regularizers)).sum()  # members are independent
    weights = list(net.weights)                     # a list: slicing a ParameterList builds a module
    grads = torch.autograd.grad(objective, [*weights, *net.biases])
    with torch.no_grad():
        if optimizer.fused_step_(weights, grads, lr, momentum, regularizers):
            return data_loss.detach()
        for r in regularizers:
            r.add_grad_(weights, grads[:len(weights)])
        optimizer.step_(grads, lr, momentum)
        for r in regularizers:
            r.project_(weights, lr)
    return data_loss.detach()


class _ReplayedStep:
    """:func:`train_step` captured once as a CUDA graph and replayed: one launch per step instead
    of one per kernel. Inputs (indices, learning rates, and momenta when they change from step to
    step) go through static tensors, updated before each replay; the first ``warmup`` steps run eagerly
    (on a side stream, as capture requires). A minibatch of another size runs eagerly, and so does
    every step after a capture that fails (with a warning saying why)."""

    def __init__(self, step, idx_shape, k: int, device, warmup: int = 3):
        self.step, self.warmup = step, warmup
        self.idx = torch.zeros(idx_shape, dtype=torch.long, device=device)
        self.lr = torch.zeros(k, 1, 1, device=device)
        self.momentum = torch.zeros(k, 1, 1, device=device)
        self.graph, self.loss, self.done, self.eager = None, None, 0, False

    def __call__(self, idx, lr, momentum=None):
        if idx.shape != self.idx.shape or self.eager:
            return self.step(idx, lr, momentum)
        self.idx.copy_(idx)
        self.lr.copy_(lr)
        if momentum is not None:  # always given or never, within one run: the graph reads the tensor
            self.momentum.copy_(momentum)
        static_momentum = None if momentum is None else self.momentum
        if self.graph is None and self.done < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self.step(self.idx, self.lr, static_momentum)
            torch.cuda.current_stream().wait_stream(side)
            self.done += 1
            return loss
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.loss = self.step(self.idx, self.lr, static_momentum)
                self.graph = graph
            except RuntimeError as err:  # capture changes nothing, so this step can still run eagerly
                warnings.warn(f"CUDA-graph capture of the training step failed ({err}); training on without it")
                self.eager = True
                return self.step(idx, lr, momentum)
        self.graph.replay()
        return self.loss


def _check_together(models, configs) -> None:
    if len(models) != len(configs) or not models:
        raise ValueError(f"need one config per model, got {len(models)} models and {len(configs)} configs")
    shared = {(c.epochs, c.batch_size) for c in configs}
    if len(shared) != 1:
        raise ValueError(f"runs trained together must share epochs and batch size, got {sorted(shared)}")
    precisions = {c.precision for c in configs}
    if len(precisions) != 1:
        raise ValueError(f"runs trained together must share the precision, got {sorted(map(str, precisions))}")


def _at_run_precision(fit):
    """``fit`` with its runs' float32 product precision set while it trains (and the previous one
    after, also when it raises): see :func:`hwutils.precision.matmul_precision`."""
    @functools.wraps(fit)
    def wrapped(models, train, val, configs, **kwargs):
        configs = list(configs)
        with matmul_precision(configs[0].precision if configs else None, train.X.device):
            return fit(models, train, val, configs, **kwargs)
    return wrapped


def trunk_config(config: TrainConfig) -> TrainConfig:
    """``config`` without its L1: the run that one with L1 switched on late is until it switches on."""
    return config.replace(l1=0.0, l1_last_fraction=1.0, l1_proximal=False)


def shared_prefix_epochs(config: TrainConfig, dropout: bool = False) -> int:
    """Epochs for which a run with ``config`` is the same run as its :func:`trunk_config` (same seed
    and initial weights): until its L1 switches on (:class:`~hwutils.regularizers.L1Schedule`); all
    of them without L1; 0 with L1 from the start, and with dropout (whose masks depend on how many
    runs share a step)."""
    if dropout:
        return 0
    return config.l1_schedule.start_epoch(config.epochs) if config.l1 else config.epochs


@dataclass(frozen=True)
class _Lanes:
    """Which member each lane of a shared prefix stands for (:func:`fit_members`): ``lane[m]`` of
    member m, ``heads[j]`` the first member of lane j, ``split`` the epochs the lanes train for."""

    lane: tuple[int, ...]
    heads: tuple[int, ...]
    split: int


def _shared_prefix(models, configs) -> _Lanes | None:
    """Members that are the same run for their first epochs - the same trunk config (seed included),
    the same initial weights, no dropout; so L2 and L2 + late L1 - as lanes, or None when none is shared."""
    lanes: list[int] = []
    heads: list[int] = []
    for m, (model, config) in enumerate(zip(models, configs)):
        if model.dropout_input or model.dropout_hidden:
            lanes.append(len(heads))
            heads.append(m)
            continue
        same = next((j for j, h in enumerate(heads)
                     if trunk_config(configs[h]) == trunk_config(config) and not models[h].dropout_input
                     and not models[h].dropout_hidden
                     and all(torch.equal(a, b) for a, b in zip(models[h].state_dict().values(),
                                                               model.state_dict().values()))), None)
        if same is None:
            same = len(heads)
            heads.append(m)
        lanes.append(same)
    if len(heads) == len(models):
        return None
    shared = {j for j in lanes if lanes.count(j) > 1}
    split = min(shared_prefix_epochs(configs[m]) for m, j in enumerate(lanes) if j in shared)
    return _Lanes(tuple(lanes), tuple(heads), split) if split > 0 else None


@dataclass
class _Training:
    """What one stretch of :func:`fit_members` trains: the stacked model of its members (or lanes),
    their configs, optimizer, regularizers, minibatch generators, histories and best epochs."""

    net: StackedMLP
    configs: list
    names: list
    optimizer: "MemberOptimizer"
    regularizers: list
    shuffles: list
    histories: list
    best: list
    active: list
    base_lr: torch.Tensor
    cap: torch.Tensor
    step: object

    @classmethod
    def build(cls, models, configs, names, shuffles, train: Split, update, cuda_graph, steps: int):
        device, k = train.X.device, len(models)
        net = StackedMLP.from_models(models).to(device)
        net.product_dtype = product_dtype(configs[0].precision, device)
        regularizers = member_regularizers(configs, device)
        optimizer = MemberOptimizer([*net.weights, *net.biases], configs, update)
        base_lr = torch.tensor([float(c.lr) for c in configs], dtype=torch.float32)  # float32 whatever c.lr's type
        cap = torch.tensor([math.inf if c.max_norm is None else c.max_norm for c in configs], device=device)
        step = lambda idx, lr, momentum: train_step(net, train, idx, lr, regularizers, optimizer, momentum)
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and optimizer.kind == "sgd"
        if cuda_graph:
            step = _ReplayedStep(step, (k, configs[0].batch_size), k, device)
        return cls(net, list(configs), list(names), optimizer, regularizers, list(shuffles),
                   [History(steps_per_epoch=steps) for _ in configs], [(math.inf, None, 0)] * k, [True] * k,
                   base_lr, cap, step)

    @torch.no_grad()
    def expand(self, lanes: _Lanes, models, configs, names, shuffles, train: Split, update, cuda_graph,
               steps: int) -> "_Training":
        """Every member from here on, each starting where its lane is: weights, optimizer state,
        minibatch generator, history and best epoch copied from it."""
        full = _Training.build(models, configs, names, shuffles, train, update, cuda_graph, steps)
        index = torch.tensor(lanes.lane, device=train.X.device)
        for mine, theirs in zip([*full.net.weights, *full.net.biases], [*self.net.weights, *self.net.biases]):
            mine.copy_(theirs[index])
        for mine, theirs in zip(full.optimizer.state, self.optimizer.state):
            for a, b in zip(mine, theirs):
                a.copy_(b[index])
        full.optimizer.t = self.optimizer.t
        for m, j in enumerate(lanes.lane):
            full.shuffles[m].set_state(self.shuffles[j].get_state())
            full.histories[m] = History.from_dict(self.histories[j].to_dict())
            score, weights, since = self.best[j]
            full.best[m] = (score, None if weights is None else [w.clone() for w in weights], since)
            full.active[m] = self.active[j]
        return full


@_at_run_precision
def fit_members(models, train: Split, val: Split, configs, *, names=None, progress: bool = True,
                desc: str | None = None, on_nan: str = "raise", cuda_graph: bool | None = None,
                update: str | None = None) -> list[History]:
    """Train K same-architecture :class:`MLP` s together, each with its own :class:`TrainConfig`;
    return one :class:`History` each. The models' weights are replaced by the trained ones.

    The models are stacked into a :class:`StackedMLP` (weights ``[K, out, in]``) and every step
    trains all members with batched products. Each member keeps its own seed (minibatch order),
    constants, learning rate and early stopping: a member that stops keeps its weights (learning
    rate 0) and gets its best epoch's weights back at the end. Dropout masks come from the global
    RNG, seeded with the first member's seed. Members must share epochs and batch size.
    Members that are the same run for their first epochs (:func:`shared_prefix_epochs`: L2 and
    L2 with L1 switched on late, same seed and initial weights) train those epochs once, as one
    lane, and go on apart from the state it reached.
    ``on_nan``: "raise" stops everything with a :class:`FloatingPointError` naming the member
    (``names``) and its learning rate; "stop" freezes the diverged member and marks its History
    ``diverged`` (for learning-rate studies). ``cuda_graph``: capture the step as a CUDA graph
    (default: on CUDA with SGD). Members must share ``precision`` too (:mod:`hwutils.precision`).
    ``update``: the SGD update's path, "plain" or fused (:mod:`hwutils.fused`; None: ``$HWUTILS_UPDATE``).
    """
    configs = list(configs)
    _check_together(models, configs)
    if on_nan not in ("raise", "stop"):
        raise ValueError(f"on_nan must be 'raise' or 'stop', got {on_nan!r}")
    if len(train) == 0 or len(val) == 0:
        raise ValueError("train and val splits must not be empty")
    if val.X.device != train.X.device:
        raise ValueError(f"train is on {train.X.device} but val is on {val.X.device}; put both on one device")
    names = list(names or [f"run {k}" for k in range(len(models))])
    device = train.X.device
    for model in models:  # trained where the data is, and left there (as fit leaves its model)
        model.to(device)
    torch.manual_seed(configs[0].seed)
    shuffles = [torch.Generator().manual_seed(c.seed) for c in configs]
    epochs, steps = configs[0].epochs, math.ceil(len(train) / configs[0].batch_size)
    lanes = _shared_prefix(models, configs)
    setup = dict(train=train, update=update, cuda_graph=cuda_graph, steps=steps)
    if lanes is None:
        run = _Training.build(models, configs, names, shuffles, **setup)
    else:
        heads = lanes.heads
        run = _Training.build([models[h] for h in heads], [trunk_config(configs[h]) for h in heads],
                              [names[h] for h in heads], [shuffles[h] for h in heads], **setup)
    bar = progress_bar(total=epochs, desc=desc or ", ".join(names), unit="epoch", disable=not progress)
    threads = TrainingThreads(device)  # on the CPU: as many as the cores other processes leave free
    try:
        for epoch in range(1, epochs + 1):
            if lanes is not None and epoch == lanes.split + 1:
                run, lanes = run.expand(lanes, models, configs, names, shuffles, **setup), None
            start = time.perf_counter()
            losses, lrs = _train_epoch(run, train, epoch, epochs, steps, threads)
            _record_epoch(run, val, epoch, losses, lrs, start, on_nan)
            if progress:
                # refresh=False: the bar redraws at tqdm's own pace (mininterval), not at every epoch -
                # in a Jupyter kernel each redraw is a message, and a 10 ms epoch of Part 2 took 1.7x as long
                errors = [h.val_error[-1] for h in run.histories if h.val_error]
                bar.set_postfix_str(f"val error {min(errors):.2%}" if errors else "", refresh=False)
            bar.update()
            if not any(run.active):
                break
    finally:  # also when a run diverges or the user interrupts: the caller's threads, a closed bar
        bar.close()
        threads.restore()
    if lanes is not None:  # every lane stopped before the split: each member ends where its lane did
        run = run.expand(lanes, models, configs, names, shuffles, **setup)
    with torch.no_grad():
        for m, (_, weights, _) in enumerate(run.best):
            if weights is not None:                                     # early stopping: best epoch back
                for w, saved in zip([*run.net.weights, *run.net.biases], weights):
                    w[m].copy_(saved)
    run.net.copy_to(models)
    return run.histories


def _train_epoch(run: "_Training", train: Split, epoch: int, epochs: int, steps: int, threads):
    """One epoch of minibatch steps of every member of ``run``: the data losses ``[steps, K]`` and
    the learning rates of the epoch's steps ``[steps, K, 1, 1]`` (both left on the device)."""
    device, bs, n = train.X.device, run.configs[0].batch_size, len(train)
    run.net.train()
    k = len(run.configs)
    order = torch.stack([torch.randperm(n, generator=g) for g in run.shuffles]).to(device)
    first = (epoch - 1) * steps
    factors = torch.tensor([[_lr_factor(c, s, epochs * steps, steps) for c in run.configs]
                            for s in range(first, first + steps)], dtype=torch.float32)
    lrs = (factors * run.base_lr * torch.tensor(run.active, dtype=torch.float32)).to(device).view(steps, k, 1, 1)
    momenta = [None] * steps
    if run.optimizer.ramps:  # the epoch's momenta, moved to the device at once (as its learning rates)
        momenta = torch.tensor([[momentum_at(c, s) for c in run.configs] for s in range(first, first + steps)],
                               dtype=torch.float32).to(device).view(steps, k, 1, 1)
    for r in run.regularizers:
        r.start_epoch(epoch - 1, epochs)
    losses = torch.empty(steps, k, device=device)
    for b in range(steps):
        threads.adapt()  # re-decided at most every WINDOW_SECONDS: a neighbour may start mid-epoch
        losses[b] = run.step(order[:, b * bs:(b + 1) * bs], lrs[b], momenta[b])
        if (first + b + 1) % SWEEP_EVERY == 0:  # outside the replayed step: the same on every device
            run.optimizer.sweep_tiny_()
    return losses, lrs


def _record_epoch(run: "_Training", val: Split, epoch: int, losses, lrs, start: float, on_nan: str) -> None:
    """Validate every member after an epoch and append the epoch to each active member's History
    (one host sync for all of it; its time since ``start``, training and validation, shared by the
    members); a member whose loss is no longer finite raises (``on_nan="raise"``) or is frozen and
    marked diverged."""
    net, k, device = run.net, len(run.configs), losses.device
    val_loss, val_error = evaluate_members(net, val)
    penalty = sum(r.value(net.weights) for r in run.regularizers) + torch.zeros(k, device=device)
    small = sum((w.abs() < NEAR_ZERO).sum((1, 2)) for w in net.weights) / sum(w[0].numel() for w in net.weights)
    norms = torch.cat([w.norm(dim=2) for w in net.weights[:-1]], 1)             # [K, hidden units]
    at_cap = (norms >= AT_CAP * run.cap[:, None]).float().mean(1)
    per_member = torch.cat([losses.T, torch.stack([val_loss, val_error, penalty, small, norms.max(1).values,
                                                   at_cap], 1)], 1)
    rows = per_member.tolist()                                           # the epoch's one host sync
    seconds, steps = time.perf_counter() - start, losses.shape[0]
    for m, row in enumerate(rows):
        if not run.active[m]:
            continue
        *iter_loss, v_loss, v_error, pen, small_m, max_norm_m, at_cap_m = row
        h = run.histories[m]
        if not all(map(math.isfinite, iter_loss)):
            if on_nan == "raise":
                raise FloatingPointError(f"{run.names[m]}: training loss became {iter_loss[-1]} in epoch "
                                         f"{epoch}; lower the learning rate (lr={run.configs[m].lr:g})")
            h.diverged, run.active[m] = True, False
            continue
        h.iter_loss += iter_loss
        h.record(train_loss=sum(iter_loss) / steps, penalty=pen, val_loss=v_loss, val_error=v_error,
                 lr=float(lrs[-1, m]), small_weights=small_m, max_unit_norm=max_norm_m, at_cap=at_cap_m,
                 epoch_seconds=seconds / k)
        run.active[m] = _track_best(h, run.best, m, net, run.configs[m], epoch)


def _track_best(history: History, best: list, m: int, net: StackedMLP, config: TrainConfig, epoch: int) -> bool:
    """Update member ``m``'s best epoch (and, with early stopping, its best weights); False: stop it."""
    score = history.val_loss[-1] if config.monitor == "val_loss" else history.val_error[-1]
    best_score, weights, since = best[m]
    if score < best_score:
        history.best_epoch = epoch
        if config.patience is not None:
            weights = [p[m].detach().clone() for p in [*net.weights, *net.biases]]
        best[m] = (score, weights, 0)
        return True
    best[m] = (best_score, weights, since + 1)
    if config.patience is not None and since + 1 >= config.patience:
        history.stopped_early = epoch < config.epochs
        return False
    return True


def fit(model: MLP, train: Split, val: Split, config: TrainConfig = TrainConfig(), *,
        progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` on ``train`` with ``config``, validating on ``val`` after every epoch: the
    one-member case of :func:`fit_members`.

    Runs on the device that holds ``train`` (the model is moved there). Minibatches are slices of
    the in-memory tensors by a permutation drawn from ``config.seed``, which also seeds dropout:
    the same seed, model initialisation and data give the same :class:`History` on the CPU.
    ``progress`` shows a bar over epochs.
    """
    model.to(train.X.device)
    return fit_members([model], train, val, [config], names=[desc or "run"], progress=progress, desc=desc)[0]


def step_seconds(hidden, batch_size: int, members: int = 1, *, dropout: bool = False, in_features: int = 784,
                 classes: int = 10, device=None, steps: int = 20, warmup: int = 5, precision: str | None = None,
                 update: str | None = None, max_norm: float | None = None) -> float:
    """Measured wall time of one :func:`train_step` of ``members`` runs of a ``hidden`` MLP trained
    together (seconds per step for all members), on random data on ``device`` - for estimates of
    a sweep's time before it starts, and for the benchmark. The step has L2 (and max-norm with
    radius ``max_norm``), products at ``precision``, the update's path ``update`` (as in :func:`fit_members`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    p = (0.2, 0.5) if dropout else (0.0, 0.0)
    models = [MLP(in_features, tuple(hidden), classes, *p) for _ in range(members)]
    net = StackedMLP.from_models(models).to(device)
    n = batch_size * 4
    data = Split(torch.rand(n, in_features, device=device), torch.randint(classes, (n,), device=device))
    configs = [TrainConfig(batch_size=batch_size, l2=1e-5, max_norm=max_norm, precision=precision)] * members
    net.product_dtype = product_dtype(precision, device)
    optimizer = MemberOptimizer([*net.weights, *net.biases], configs, update)
    regularizers = member_regularizers(configs, device)
    idx = torch.randint(n, (members, batch_size), device=device)
    lr = torch.full((members, 1, 1), 1e-3, device=device)
    step = lambda: train_step(net, data, idx, lr, regularizers, optimizer)
    if device.type == "cuda" and optimizer.kind == "sgd":
        replayed = _ReplayedStep(lambda i, l, m: train_step(net, data, i, l, regularizers, optimizer, m),
                                 idx.shape, members, device)
        step = lambda: replayed(idx, lr)
    threads = TrainingThreads(device)  # the threads fit would train with now (hwutils.threads)
    threads.adapt()
    with matmul_precision(precision, device):  # a CUDA graph keeps the kernels chosen at its capture
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    threads.restore()
    return seconds
