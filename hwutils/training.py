"""The one training loop: :func:`fit` trains any model of this project and returns a :class:`History`.

A step is: slice a minibatch from in-memory tensors → forward → data loss (+ KL penalty) →
backward → weight-penalty gradients → optimizer step → constraints (max-norm, L1 prox) → log.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm  # text bars: they render in terminals, notebooks and papermill logs alike

from .data import Split
from .diagnostics import near_zero_fraction
from .regularizers import (L1Schedule, kl_sparsity_penalty, l1_penalty, l2_penalty, max_norm_,
                           soft_threshold_, weights)

__all__ = ["TrainConfig", "History", "fit", "evaluate", "penalty_value"]

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
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
    step ("cosine": from ``lr`` down to 0 over ``epochs``; "constant").
    """

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    lr_schedule: str = "cosine"
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

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"),
            (self.l2 >= 0 and self.l1 >= 0 and self.kl >= 0, "penalty coefficients l2, l1, kl must be >= 0"),
            (0 < self.kl_rho < 1, f"kl_rho must be in (0, 1), got {self.kl_rho}"),
            (0 <= self.l1_last_fraction <= 1, f"l1_last_fraction must be in [0, 1], got {self.l1_last_fraction}"),
            (self.max_norm is None or self.max_norm > 0, f"max_norm must be None or > 0, got {self.max_norm}"),
            (self.patience is None or self.patience >= 1, f"patience must be None or >= 1, got {self.patience}"),
            (self.monitor in MONITORS, f"monitor must be one of {MONITORS}, got {self.monitor!r}"),
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

    * ``iter_loss``: data loss (cross-entropy, no penalty) of every minibatch.
    * ``train_loss``: mean minibatch data loss of the epoch (dropout active, as trained).
    * ``penalty``: the weighted penalty terms at the end of the epoch, kept apart from the data
      loss so that methods are compared by data loss. The KL term is measured on the last minibatch.
    * ``val_loss``, ``val_error``: on the validation split, model in evaluation mode.
    * ``small_weights``: fraction of weights with ``|w| < 1e-3`` at the end of each epoch
      (how sparse the network is; see L1).
    * ``epoch_seconds``: wall time of each epoch (training and validation).
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
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    steps_per_epoch: int = 0

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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)

    def to_frame(self):
        """Per-epoch table (pandas DataFrame indexed by epoch)."""
        import pandas as pd

        cols = ["train_loss", "penalty", "val_loss", "val_error", "lr", "small_weights", "epoch_seconds"]
        frame = pd.DataFrame({c: getattr(self, c) for c in cols})
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="epoch")
        return frame


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and error rate (fraction misclassified) of ``model`` on ``split``."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=split.X.device)
    total_wrong = torch.zeros((), device=split.X.device, dtype=torch.long)
    for i in range(0, len(split), batch_size):
        logits = model(split.X[i:i + batch_size])
        y = split.y[i:i + batch_size]
        total_loss += F.cross_entropy(logits, y, reduction="sum")
        total_wrong += (logits.argmax(1) != y).sum()
    model.train(was_training)
    loss, wrong = total_loss.item(), total_wrong.item()  # one host sync per evaluation
    return loss / len(split), wrong / len(split)


def penalty_value(model: nn.Module, config: TrainConfig, l1_coef: float, hidden=None) -> float:
    """The weighted penalty ``l2·Σw² + l1·Σ|w| + kl·KL`` (KL only when ``hidden`` is given)."""
    with torch.no_grad():
        value = 0.0
        if config.l2:
            value += config.l2 * float(l2_penalty(model))
        if l1_coef:
            value += l1_coef * float(l1_penalty(model))
        if config.kl and hidden is not None:
            value += config.kl * float(kl_sparsity_penalty(hidden, config.kl_rho))
    return value


def _make_optimizer(params, config: TrainConfig):
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, foreach=True)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           nesterov=config.momentum > 0, foreach=True)


def _lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1 + math.cos(math.pi * step / total_steps))
    return config.lr


def fit(model: nn.Module, train: Split, val: Split, config: TrainConfig = TrainConfig(), *,
        progress: bool = True, desc: str | None = None) -> History:
    """Train ``model`` on ``train`` with ``config``; validate on ``val`` after every epoch.

    Runs on the device that holds ``train`` (the model is moved there). Minibatches are slices of
    the in-memory tensors by a permutation drawn from ``config.seed``, which also seeds dropout:
    the same seed, model initialisation and data give the same :class:`History` on the CPU.
    ``progress`` shows a tqdm bar over epochs.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError("train and val splits must not be empty")
    if val.X.device != train.X.device:
        raise ValueError(f"train is on {train.X.device} but val is on {val.X.device}; put both on one device")
    device = train.X.device
    model.to(device)
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    optimizer = _make_optimizer(model.parameters(), config)
    ws = weights(model)
    schedule = config.l1_schedule
    # Momentum SGD moves by lr/(1-momentum) per unit of steady gradient; the prox step uses the
    # same effective step size so that proximal and subgradient L1 shrink weights equally fast.
    prox_scale = 1.0 / (1.0 - config.momentum) if config.optimizer == "sgd" else 1.0
    n, bs = len(train), config.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total_steps = config.epochs * steps_per_epoch
    history = History(steps_per_epoch=steps_per_epoch)
    best_score, best_state, since_best = math.inf, None, 0
    step = 0
    bar = tqdm(range(1, config.epochs + 1), desc=desc or "epochs", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        l1_coef = schedule.coef_at(epoch - 1, config.epochs)
        perm = torch.randperm(n, generator=shuffle).to(device)
        losses = torch.empty(steps_per_epoch, device=device)
        hidden = None
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            xb, yb = train.X[idx], train.y[idx]
            lr = _lr_at(config, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.kl:
                logits, hidden = model(xb, return_hidden=True)
                loss = F.cross_entropy(logits, yb)
                objective = loss + config.kl * kl_sparsity_penalty(hidden, config.kl_rho)
            else:
                loss = objective = F.cross_entropy(logits := model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            # Weight penalties enter as their gradients (2·l2·w, l1·sign w): the same update as
            # differentiating l2·Σw² + l1·Σ|w|, without an autograd graph over every weight.
            grads = [w.grad for w in ws]
            if config.l2:
                torch._foreach_add_(grads, ws, alpha=2 * config.l2)
            if l1_coef and not config.l1_proximal:
                torch._foreach_add_(grads, torch._foreach_sign(ws), alpha=l1_coef)
            optimizer.step()
            if l1_coef and config.l1_proximal:
                soft_threshold_(model, lr * l1_coef * prox_scale)
            if config.max_norm is not None:
                max_norm_(model, config.max_norm)
            losses[b] = loss.detach()
            step += 1
        epoch_losses = losses.tolist()
        if not all(map(math.isfinite, epoch_losses)):
            raise FloatingPointError(f"training loss became {epoch_losses[-1]} in epoch {epoch}; "
                                     f"lower the learning rate (lr={config.lr})")
        val_loss, val_error = evaluate(model, val)
        history.iter_loss += epoch_losses
        history.train_loss.append(sum(epoch_losses) / len(epoch_losses))
        history.penalty.append(penalty_value(model, config, l1_coef, hidden))
        history.val_loss.append(val_loss)
        history.val_error.append(val_error)
        history.lr.append(lr)
        history.small_weights.append(near_zero_fraction(model))
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(train_loss=f"{history.train_loss[-1]:.4f}", val_error=f"{val_error:.2%}")

        score = val_loss if config.monitor == "val_loss" else val_error
        if score < best_score:
            best_score, since_best, history.best_epoch = score, 0, epoch
            if config.patience is not None:
                best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if config.patience is not None and since_best >= config.patience:
                history.stopped_early = epoch < config.epochs
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history
