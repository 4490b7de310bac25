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
    "L1Schedule",
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

    ``activations``: one (batch x units) tensor or a list of them (one per hidden layer).
    """
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho is a target mean activation in (0, 1), got {rho}")
    if isinstance(activations, torch.Tensor):
        activations = [activations]
    total = 0.0
    for h in activations:
        q = torch.tanh(h).mean(0).clamp(eps, 1 - eps)
        total = total + (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).sum()
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
    if not include_output:
        linears = linears[:-1]
    for layer in linears:
        w = layer.weight
        norms = w.norm(dim=1, keepdim=True)
        w.mul_(torch.clamp(c / norms.clamp_min(1e-12), max=1.0))


@torch.no_grad()
def soft_threshold_(model: nn.Module, threshold: float) -> None:
    """Proximal step of the L1 penalty: ``w ← sign(w)·max(|w| − threshold, 0)`` on all weights.

    After a gradient step with learning rate η, ``threshold = η·λ`` gives proximal gradient
    descent on ``loss + λ Σ|w|``. Unlike the subgradient ``λ·sign(w)``, which makes small
    weights oscillate around zero, it sets them exactly to zero.
    """
    for w in weights(model):
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
