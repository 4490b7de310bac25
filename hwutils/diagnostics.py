"""Diagnostics of trained models: weight sparsity, per-unit norms, hidden-unit activity.

:func:`end_of_training` measures everything the report reads off a trained model once, when the
run ends, into a small JSON-ready record (per-unit values packed as float16): a run's
measurements then travel without its weights (:mod:`hwutils.bundle`).
"""
from __future__ import annotations

import base64
import math

import numpy as np
import torch
from torch import nn

from .regularizers import weights
from .thresholds import NEAR_ZERO, at_cap_text, near_zero_text

__all__ = ["flat_weights", "near_zero_fraction", "unit_norms", "hidden_activity",
           "regularizer_activity", "dead_fraction", "failure_signs", "end_of_training", "unit_values",
           "WEIGHT_LOG10_BINS", "MEASUREMENTS_VERSION"]

#: Bump when :func:`end_of_training` measures something new: older records are measured again.
MEASUREMENTS_VERSION = 1
#: The stored histogram of log10 |w| of the non-zero weights: (lowest edge, highest edge, bins).
WEIGHT_LOG10_BINS = (-9.0, 1.0, 200)


@torch.no_grad()
def flat_weights(model: nn.Module) -> torch.Tensor:
    """All weights (no biases) as one CPU vector."""
    return torch.cat([w.detach().flatten().cpu() for w in weights(model)])


@torch.no_grad()
def near_zero_fraction(model: nn.Module, tol: float = NEAR_ZERO) -> float:
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


def regularizer_activity(results, reference: str = "L2") -> "pd.DataFrame":
    """Is each method's regularizer doing anything? One row per method (first seed), read off the
    run's History and its :func:`end_of_training` measurements (no weights needed).

    * max-norm: hidden units at the cap (:data:`~hwutils.thresholds.AT_CAP`) at the end and at the
      peak of training; active when the peak is at least 1 %.
    * L1: near-zero weights (:data:`~hwutils.thresholds.NEAR_ZERO`) against the ``reference`` run
      (same seed, no L1); active when L1 adds at least one percentage point.
    * KL sparsity: the mean over units of ρ̂ (mean tanh activation on the validation images, what
      the penalty pulls towards ρ) and of the share of inputs a unit fires on, against the
      reference run; active when either is at most 0.8 of the reference's.
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
                         "measure": f"hidden units at the cap ({at_cap_text()}, %), end / peak",
                         "value": f"{end:.1f} / {peak:.1f}", "reference": f"largest norm {h.max_unit_norm[-1]:.2f}",
                         "active": peak >= 1.0})
        if train.get("l1") and ref is not None:
            mine, theirs = 100 * h.small_weights[-1], 100 * ref.history.small_weights[-1]
            rows.append({"method": name, "regularizer": f"L1, λ₁ = {train['l1']:g}",
                         "measure": f"weights with {near_zero_text()} (%)", "value": f"{mine:.1f}",
                         "reference": f"{reference}: {theirs:.1f}", "active": mine - theirs >= 1.0})
        if train.get("kl") and ref is not None:
            mine, theirs = r.measurements, ref.measurements
            rows.append({"method": name, "regularizer": f"KL, β = {train['kl']:g}, ρ = {train['kl_rho']:g}",
                         "measure": "mean ρ̂ / share of inputs a unit fires on",
                         "value": f"{mine['rho_hat']:.3f} / {mine['active_fraction']:.3f}",
                         "reference": f"{reference}: {theirs['rho_hat']:.3f} / {theirs['active_fraction']:.3f}",
                         "active": mine["rho_hat"] <= 0.8 * theirs["rho_hat"]
                         or mine["active_fraction"] <= 0.8 * theirs["active_fraction"]})
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
def failure_signs(model: nn.Module, X: torch.Tensor, activity: dict | None = None) -> dict:
    """What a run that fails at a high learning rate looks like: dead hidden units (%), the most
    negative hidden bias, and the largest row norm of the output layer (``activity``: the
    :func:`hidden_activity` of ``model`` on ``X``, when already measured)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    activity = hidden_activity(model, X) if activity is None else activity
    return {"dead_pct": 100 * float((activity["active_fraction"] == 0).float().mean()),
            "min_hidden_bias": float(torch.cat([layer.bias for layer in linears[:-1]]).min()),
            "max_output_row_norm": float(linears[-1].weight.norm(dim=1).max())}


def _pack(values: torch.Tensor) -> str:
    """A vector as base64 of little-endian float16: about 3 significant digits, 2 bytes a value
    (magnitudes beyond float16's 65504, as in a diverged run, are stored as ±65504)."""
    x = np.clip(values.detach().float().cpu().numpy(), -65504, 65504)
    return base64.b64encode(x.astype("<f2").tobytes()).decode("ascii")


def unit_values(measurements: dict, name: str) -> np.ndarray:
    """One per-hidden-unit vector of an :func:`end_of_training` record ("norm", "active_fraction",
    "rho_hat"), as float32."""
    return np.frombuffer(base64.b64decode(measurements["per_unit"][name]), dtype="<f2").astype(np.float32)


@torch.no_grad()
def end_of_training(model: nn.Module, X: torch.Tensor) -> dict:
    """What the report reads off a trained model, measured on ``X`` (the validation images), as a
    JSON-ready dict:

    * ``dead_pct``: hidden units that fire on no input; ``min_hidden_bias``,
      ``max_output_row_norm`` (see :func:`failure_signs`);
    * ``near_zero_pct`` / ``zero_pct``: weights below :data:`~hwutils.thresholds.NEAR_ZERO` in
      magnitude / exactly zero;
    * ``rho_hat``: the mean over units of ρ̂ = mean tanh(activation) (what the KL penalty pulls
      towards ρ), ``active_fraction``: the mean share of inputs a unit fires on;
    * ``per_unit``: each hidden unit's incoming weight norm, active fraction and ρ̂ (packed, read
      with :func:`unit_values`);
    * ``abs_weight_histogram``: counts of log10 |w| of the non-zero weights in
      :data:`WEIGHT_LOG10_BINS`.
    """
    activity = hidden_activity(model, X)
    w = flat_weights(model).abs()
    w = w[torch.isfinite(w)]
    lo, hi, bins = WEIGHT_LOG10_BINS
    nonzero = w[w > 0]
    counts = torch.histc(nonzero.log10().clamp(lo, hi), bins=bins, min=lo, max=hi) if len(nonzero) else \
        torch.zeros(bins)
    signs = failure_signs(model, X, activity=activity)
    finite = lambda v: v if math.isfinite(v) else None  # JSON has no NaN: a diverged run's values are null
    return {
        "version": MEASUREMENTS_VERSION,
        "dead_pct": signs["dead_pct"], "min_hidden_bias": finite(signs["min_hidden_bias"]),
        "max_output_row_norm": finite(signs["max_output_row_norm"]),
        "near_zero_pct": 100 * float((w < NEAR_ZERO).float().mean()) if len(w) else None,
        "zero_pct": 100 * float((w == 0).float().mean()) if len(w) else None,
        "rho_hat": finite(float(activity["mean_tanh"].mean())),
        "active_fraction": float(activity["active_fraction"].mean()),
        "per_unit": {"norm": _pack(unit_norms(model)), "active_fraction": _pack(activity["active_fraction"]),
                     "rho_hat": _pack(activity["mean_tanh"])},
        "abs_weight_histogram": [int(c) for c in counts.tolist()],
        "n_weights": int(sum(p.numel() for p in weights(model))),
    }
