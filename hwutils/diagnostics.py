"""Diagnostics of trained models: weight sparsity, per-unit norms, hidden-unit activity."""
from __future__ import annotations

import torch
from torch import nn

from .regularizers import weights

__all__ = ["flat_weights", "near_zero_fraction", "unit_norms", "hidden_activity",
           "regularizer_activity", "dead_fraction", "failure_signs"]


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
    on which it is active (> 0), and mean of tanh(activation) - the ρ̂ of the KL penalty -, measured
    in evaluation mode on ``X``."""
    was_training = model.training
    model.eval()
    total_mean, total_active, total_tanh = 0, 0, 0
    for i in range(0, len(X), batch_size):
        _, hidden = model(X[i:i + batch_size], return_hidden=True)
        h = torch.cat(hidden, 1)
        total_mean = total_mean + h.sum(0)
        total_active = total_active + (h > 0).float().sum(0)
        total_tanh = total_tanh + torch.tanh(h).sum(0)
    model.train(was_training)
    return {"mean_activation": (total_mean / len(X)).cpu(), "active_fraction": (total_active / len(X)).cpu(),
            "mean_tanh": (total_tanh / len(X)).cpu()}


def regularizer_activity(results, X_val: torch.Tensor, reference: str = "L2") -> "pd.DataFrame":
    """Is each method's regularizer doing anything? One row per method (first seed), read off the run.

    * max-norm: hidden units at the cap (‖w‖ ≥ 0.99 c) at the end and at the peak of training;
      active when the peak is at least 1 %.
    * L1: weights below 10⁻³ against the ``reference`` run (same seed, no L1); active when L1 adds
      at least one percentage point.
    * KL sparsity: on ``X_val``, the mean over units of ρ̂ (mean tanh activation, what the penalty
      pulls towards ρ) and of the share of inputs a unit fires on, against the reference run;
      active when either is at most 0.8 of the reference's.
    * dropout: active by construction (the masks are drawn at every step).
    """
    import pandas as pd

    first = {}
    for r in results:
        first.setdefault(r.method, r)
    ref = first.get(reference)
    rows = []
    for name, r in first.items():
        train, model = r.config["train"], r.config["model"]
        h = r.history
        if train.get("max_norm"):
            end, peak = 100 * h.at_cap[-1], 100 * max(h.at_cap)
            rows.append({"method": name, "regularizer": f"max-norm, c = {train['max_norm']:g}",
                         "measure": "hidden units at the cap (%), end / peak",
                         "value": f"{end:.1f} / {peak:.1f}", "reference": f"largest norm {h.max_unit_norm[-1]:.2f}",
                         "active": peak >= 1.0})
        if train.get("l1") and ref is not None:
            mine, theirs = 100 * h.small_weights[-1], 100 * ref.history.small_weights[-1]
            rows.append({"method": name, "regularizer": f"L1, λ₁ = {train['l1']:g}",
                         "measure": "weights below 10⁻³ (%)", "value": f"{mine:.1f}",
                         "reference": f"{reference}: {theirs:.1f}", "active": mine - theirs >= 1.0})
        if train.get("kl") and ref is not None:
            mine, theirs = hidden_activity(r.model, X_val), hidden_activity(ref.model, X_val)
            rho = [float(a["mean_tanh"].mean()) for a in (mine, theirs)]
            fires = [float(a["active_fraction"].mean()) for a in (mine, theirs)]
            rows.append({"method": name, "regularizer": f"KL, β = {train['kl']:g}, ρ = {train['kl_rho']:g}",
                         "measure": "mean ρ̂ / share of inputs a unit fires on",
                         "value": f"{rho[0]:.3f} / {fires[0]:.3f}",
                         "reference": f"{reference}: {rho[1]:.3f} / {fires[1]:.3f}",
                         "active": rho[0] <= 0.8 * rho[1] or fires[0] <= 0.8 * fires[1]})
        if model.get("dropout_hidden"):
            rows.append({"method": name, "regularizer": "dropout",
                         "measure": "units dropped (input / hidden)",
                         "value": f"{model['dropout_input']:.0%} / {model['dropout_hidden']:.0%}",
                         "reference": "", "active": True})
    return pd.DataFrame(rows)


def dead_fraction(model: nn.Module, X: torch.Tensor) -> float:
    """Fraction of hidden units that are never active (ReLU output 0) on any input of ``X``: dead
    units get no gradient, so they stay dead."""
    return float((hidden_activity(model, X)["active_fraction"] == 0).float().mean())


@torch.no_grad()
def failure_signs(model: nn.Module, X: torch.Tensor) -> dict:
    """What a run that fails at a high learning rate looks like: dead hidden units (%), the most
    negative hidden bias, and the largest row norm of the (unconstrained) output layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {"dead_pct": 100 * dead_fraction(model, X),
            "min_hidden_bias": float(torch.cat([layer.bias for layer in linears[:-1]]).min()),
            "max_output_row_norm": float(linears[-1].weight.norm(dim=1).max())}
