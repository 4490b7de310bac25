"""Diagnostics of trained models: weight sparsity, per-unit norms, hidden-unit activity."""
from __future__ import annotations

import torch
from torch import nn

from .regularizers import weights

__all__ = ["flat_weights", "near_zero_fraction", "unit_norms", "hidden_activity"]


@torch.no_grad()
def flat_weights(model: nn.Module) -> torch.Tensor:
    """All weights (no biases) as one CPU vector."""
    return torch.cat([w.detach().flatten().cpu() for w in weights(model)])


@torch.no_grad()
def near_zero_fraction(model: nn.Module, tol: float = 1e-3) -> float:
    """Fraction of weights with ``|w| < tol`` (biases excluded); counted where the weights live."""
    ws = weights(model)
    return sum(int((w.abs() < tol).sum()) for w in ws) / sum(w.numel() for w in ws)


@torch.no_grad()
def unit_norms(model: nn.Module) -> torch.Tensor:
    """L2 norm of each hidden unit's incoming weight vector (rows of the hidden layers), on the CPU."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    return torch.cat([layer.weight.norm(dim=1).cpu() for layer in linears])


@torch.no_grad()
def hidden_activity(model: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Per hidden unit (all hidden layers, concatenated): mean ReLU activation and fraction of inputs
    on which it is active (> 0), measured in evaluation mode on ``X``."""
    was_training = model.training
    model.eval()
    total_mean, total_active = 0, 0
    for i in range(0, len(X), batch_size):
        _, hidden = model(X[i:i + batch_size], return_hidden=True)
        h = torch.cat(hidden, 1)
        total_mean = total_mean + h.sum(0)
        total_active = total_active + (h > 0).float().sum(0)
    model.train(was_training)
    return {"mean_activation": (total_mean / len(X)).cpu(), "active_fraction": (total_active / len(X)).cpu()}
