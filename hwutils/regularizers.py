"""Regularizers: weight penalties, KL sparsity, the max-norm constraint and the late-L1 schedule.

Conventions (each is what a test checks):

* Penalties act on **weights only** (``nn.Linear.weight`` of every layer), never on biases.
* ``l2_penalty`` is ``Σ w²`` — *without* a factor 1/2 — so a coefficient λ adds ``λ·Σw²`` to the
  loss and ``2λw`` to the gradient.
* ``l1_penalty`` is ``Σ |w|``.
* ``kl_sparsity_penalty`` is ``Σ_layers Σ_units KL(ρ ‖ ρ̂_j)`` with ``ρ̂_j`` the batch mean of
  ``tanh(h_j)``, see its docstring.
* ``max_norm_`` is a projection applied *after* the optimizer step, not a penalty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "weights",
    "l1_penalty",
    "l2_penalty",
    "kl_sparsity_penalty",
    "max_norm_",
    "soft_threshold_",
    "project_rows_",
    "shrink_",
    "L1Schedule",
    "MemberRegularizer",
    "member_regularizers",
]


def weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight matrices of every ``nn.Linear`` in ``model`` (biases excluded)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """``Σ |w|`` over all weight matrices (biases excluded)."""
    return sum(w.abs().sum() for w in weights(model))


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """``Σ w²`` over all weight matrices (biases excluded); no factor 1/2."""
    return sum(w.pow(2).sum() for w in weights(model))


def kl_sparsity_penalty(activations, rho: float = 0.05, eps: float = 1e-6) -> torch.Tensor:
    """Sparsity penalty ``Σ_layers Σ_j KL(ρ ‖ ρ̂_j)`` for hidden ReLU activations.

    ``KL(ρ‖q) = ρ log(ρ/q) + (1-ρ) log((1-ρ)/(1-q))`` is the divergence between Bernoulli
    variables, which needs ``q`` in (0, 1). A ReLU's mean activation is unbounded, so ``ρ̂_j`` is
    the batch mean of ``tanh(h_j)``: equal to the mean activation for small activations (the sparse
    regime the penalty aims at), below 1 for any activation, and with a gradient everywhere
    (a hard clamp at 1 would leave very active units unpenalized). It is then clamped to
    ``[eps, 1-eps]`` so that dead units (all zeros) give a finite penalty, never NaN or inf.

    ``activations``: one (batch x units) tensor or a list of them (one per hidden layer); or, for
    the K members of a stacked model, ``[K, batch, units]`` tensors with ``rho`` of shape ``[K, 1]``,
    giving one penalty per member.
    """
    if not torch.is_tensor(rho) and not 0.0 < rho < 1.0:
        raise ValueError(f"rho is a target mean activation in (0, 1), got {rho}")
    if isinstance(activations, torch.Tensor):
        activations = [activations]
    total = 0.0
    for h in activations:
        q = torch.tanh(h).mean(-2).clamp(eps, 1 - eps)  # batch mean per unit
        total = total + (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).sum(-1)
    return total


@torch.no_grad()
def max_norm_(model: nn.Module, c: float, *, include_output: bool = False) -> None:
    """Project each hidden unit's incoming weight vector onto the ball ``‖w‖₂ ≤ c``, in place.

    A unit's incoming weights are a row of ``nn.Linear.weight``; rows with norm above ``c`` are
    rescaled to norm ``c`` and rows inside the ball are left exactly as they are. By default only
    the layers that feed hidden units are constrained (Srivastava et al. 2014, sec. 5.1);
    ``include_output`` also constrains the output layer. Call it after every optimizer step.
    """
    if c <= 0:
        raise ValueError(f"max-norm radius c must be > 0, got {c}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in linears if include_output else linears[:-1]:
        project_rows_(layer.weight, c)


@torch.no_grad()
def project_rows_(w: torch.Tensor, c) -> None:
    """Rescale each row (last dimension) of ``w`` with norm above ``c`` to norm ``c``, in place.

    ``c`` is a float or a tensor broadcasting against the row norms (``[K, 1, 1]`` for stacked
    ``[K, out, in]`` weights; ``inf`` leaves a member unconstrained). Rows inside the ball are
    multiplied by exactly 1, i.e. left as they are.
    """
    norms = w.norm(dim=-1, keepdim=True)
    w.mul_(torch.clamp(c / norms.clamp_min(1e-12), max=1.0))


@torch.no_grad()
def soft_threshold_(model: nn.Module, threshold: float) -> None:
    """Proximal step of the L1 penalty: ``w ← sign(w)·max(|w| − threshold, 0)`` on all weights.

    After a gradient step with learning rate η, ``threshold = η·λ`` gives proximal gradient
    descent on ``loss + λ Σ|w|``. Unlike the subgradient ``λ·sign(w)``, which makes small
    weights oscillate around zero, it sets them exactly to zero.
    """
    for w in weights(model):
        shrink_(w, threshold)


@torch.no_grad()
def shrink_(w: torch.Tensor, threshold) -> None:
    """Soft-threshold ``w`` in place; ``threshold`` is a float or a tensor broadcasting against ``w``
    (0 leaves ``w`` exactly as it is)."""
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0.0))


@dataclass(frozen=True)
class L1Schedule:
    """L1 switched on for the last ``last_fraction`` of training ("L2 + L1 towards the end").

    ``coef_at(epoch, epochs)`` is 0 before epoch ``round((1 - last_fraction) · epochs)`` and
    ``coef`` from then on. ``last_fraction=1`` means L1 throughout.
    """

    coef: float = 0.0
    last_fraction: float = 1.0

    def __post_init__(self):
        if self.coef < 0:
            raise ValueError(f"L1 coefficient must be >= 0, got {self.coef}")
        if not 0.0 <= self.last_fraction <= 1.0:
            raise ValueError(f"last_fraction must be in [0, 1], got {self.last_fraction}")

    def start_epoch(self, epochs: int) -> int:
        return int(round((1.0 - self.last_fraction) * epochs))

    def coef_at(self, epoch: int, epochs: int) -> float:
        return self.coef if epoch >= self.start_epoch(epochs) else 0.0


# --------------------------------------------------------------------------- per member of a stack
class MemberRegularizer:
    """One regularizer acting on the K members of a :class:`hwutils.models.StackedMLP`, each with
    its own constant. A regularizer contributes to a training step in (any of) three ways:

    * ``loss(hidden)``: a term added to the objective before the backward pass (``[K]``);
    * ``add_grad_(weights, grads)``: a term added to the weight gradients after it;
    * ``project_(weights, lr)``: a change of the weights after the optimizer step.

    ``value(weights)`` is its weighted penalty per member (``[K]``, for the History), and
    ``start_epoch(epoch, epochs)`` lets it follow a schedule. Constants are ``[K, 1, 1]`` tensors,
    updated in place, so that a captured CUDA graph sees their new values.
    """

    def start_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def loss(self, hidden) -> torch.Tensor | float:
        return 0.0

    def add_grad_(self, weights, grads) -> None:
        pass

    def project_(self, weights, lr) -> None:
        pass

    def value(self, weights) -> torch.Tensor | float:
        return 0.0


def _member_values(values, device) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device).view(-1, 1, 1)


def _per_member(weights, fn) -> torch.Tensor:
    return sum(fn(w).sum((1, 2)) for w in weights)


class L2Penalty(MemberRegularizer):
    """``l2·Σw²``, entered as its gradient ``2·l2·w``."""

    def __init__(self, l2, device):
        self.coef = _member_values(l2, device)
        self.grad_coef = 2 * self.coef

    def add_grad_(self, weights, grads):
        for w, g in zip(weights, grads):
            g.addcmul_(w, self.grad_coef)

    def value(self, weights):
        return self.coef.view(-1) * _per_member(weights, torch.square)


class L1Penalty(MemberRegularizer):
    """``l1·Σ|w|`` from the member's :class:`L1Schedule` start on: as the subgradient ``l1·sign w``,
    or, for members with ``proximal``, as a soft-threshold after the step by ``lr·l1·prox_scale``."""

    def __init__(self, schedules, proximal, prox_scale, device):
        self.schedules = list(schedules)
        self.proximal = _member_values(proximal, device)
        self.prox_scale = _member_values(prox_scale, device)
        self.any_proximal = any(proximal)
        self.coef = torch.zeros_like(self.proximal)

    def start_epoch(self, epoch, epochs):
        now = [s.coef_at(epoch, epochs) for s in self.schedules]
        self.coef.copy_(torch.tensor(now).view(-1, 1, 1))

    def add_grad_(self, weights, grads):
        subgradient = self.coef * (1 - self.proximal)
        for w, g in zip(weights, grads):
            g.addcmul_(torch.sign(w), subgradient)

    def project_(self, weights, lr):
        if self.any_proximal:
            threshold = lr * self.coef * self.proximal * self.prox_scale
            for w in weights:
                shrink_(w, threshold)

    def value(self, weights):
        return self.coef.view(-1) * _per_member(weights, torch.abs)


class KLSparsity(MemberRegularizer):
    """``β·Σ KL(ρ ‖ ρ̂_j)`` over hidden units (:func:`kl_sparsity_penalty`), a loss term; its value is
    that of the last minibatch."""

    def __init__(self, beta, rho, device):
        self.beta = _member_values(beta, device).view(-1)
        self.rho = _member_values([r if b else 0.5 for r, b in zip(rho, beta)], device).view(-1, 1)
        self.last = torch.zeros_like(self.beta)

    def loss(self, hidden):
        term = self.beta * kl_sparsity_penalty(hidden, self.rho)
        self.last = term.detach()
        return term

    def value(self, weights):
        return self.last


class MaxNorm(MemberRegularizer):
    """Each hidden unit's incoming weight vector projected onto ``‖w‖ ≤ c`` after every step
    (``c = inf``: unconstrained member); the output layer is left free (sec. 5.1 of Srivastava et
    al.), except for members with ``include_output`` (their deepnet code constrains it too)."""

    def __init__(self, c, device, include_output=None):
        radii = [math.inf if v is None else v for v in c]
        include_output = include_output or [False] * len(radii)
        self.c = _member_values(radii, device)
        self.c_output = _member_values([r if out else math.inf for r, out in zip(radii, include_output)], device)
        self.any_output = any(include_output)  # no projection of the output layer when no member asks

    def project_(self, weights, lr):
        for w in weights[:-1]:
            project_rows_(w, self.c)
        if self.any_output:
            project_rows_(weights[-1], self.c_output)


def member_regularizers(configs, device) -> list[MemberRegularizer]:
    """The regularizers that at least one of the training ``configs`` uses, one constant per member."""
    regs = []
    if any(c.l2 for c in configs):
        regs.append(L2Penalty([c.l2 for c in configs], device))
    if any(c.l1 for c in configs):
        # Momentum SGD moves by lr/(1-momentum) per unit of steady gradient; the prox step uses the
        # same effective step so that proximal and subgradient L1 shrink weights equally fast.
        scale = [1 / (1 - c.momentum) if c.optimizer == "sgd" else 1.0 for c in configs]
        regs.append(L1Penalty([c.l1_schedule for c in configs], [c.l1_proximal for c in configs], scale, device))
    if any(c.kl for c in configs):
        regs.append(KLSparsity([c.kl for c in configs], [c.kl_rho for c in configs], device))
    if any(c.max_norm is not None for c in configs):
        regs.append(MaxNorm([c.max_norm for c in configs], device, [c.max_norm_output for c in configs]))
    return regs
