"""The SGD step of a stacked model with its gradient term and projection fused: an option of
:class:`hwutils.training.MemberOptimizer`, off by default.

At batch 100 a GPU step is bound by memory traffic, and the plain step reads and writes every
weight once per elementwise pass: the L2 gradient term (``g += 2λ·w``), the momentum
(``buf = m·buf``, then ``buf += g``), the Nesterov direction, the update and the max-norm
projection (a norm, then a rescale) are 68 bytes per weight in float32. :func:`sgd_step_fused_`
does the same per weight tensor with the momentum product folded into its addition (60 bytes,
eagerly); compiled (``torch.compile``, "compiled"), the whole of it can become one or two kernels
that read the weight, its gradient and its momentum once and write the weight and the momentum
(20 bytes, 24 where the row norms need the new weights read once more).

``HWUTILS_UPDATE`` = "plain" (the default: :func:`hwutils.optim.sgd_update_` and the regularizers
one by one), "fused" or "compiled" picks the path where the caller does not. The fused paths give
the weights of the plain one up to float rounding (the folded product rounds once where the plain
path rounds twice); they apply to SGD with any mix of L2, KL and max-norm members - a step with L1
(a subgradient or a proximal shrink) or with Adam takes the plain path.
"""
from __future__ import annotations

import functools
import os

import torch

from .optim import sgd_update_
from .regularizers import KLSparsity, L2Penalty, MaxNorm, project_rows_

__all__ = ["UPDATES", "UPDATE_ENV", "chosen_update", "sgd_step_fused_", "fused_terms", "fused_step_"]

UPDATES = ("plain", "fused", "compiled")
UPDATE_ENV = "HWUTILS_UPDATE"


def chosen_update(update: str | None = None) -> str:
    """``update``, else ``$HWUTILS_UPDATE``, else "plain"; one line naming the choices otherwise."""
    value = update if update is not None else os.environ.get(UPDATE_ENV, "plain")
    if value not in UPDATES:
        source = "update" if update is not None else UPDATE_ENV
        raise ValueError(f"{source}={value!r}: use one of {', '.join(UPDATES)}")
    return value


@torch.no_grad()
def sgd_step_fused_(p, g, buf, lr, momentum, nesterov: bool = True, l2_grad=None, radius=None) -> None:
    """One SGD step of one weight tensor with its L2 gradient term and max-norm projection, in place:
    ``g += l2_grad·p``; ``buf = g + momentum·buf``; ``p -= lr·(g + momentum·buf)`` (Nesterov) or
    ``lr·buf``; then each row of ``p`` with norm above ``radius`` rescaled to it. ``l2_grad``,
    ``radius``: None, or tensors broadcasting against ``p`` (``[K, 1, 1]``; 0 and ``inf`` leave a
    member as it is); ``lr``, ``momentum`` as in :func:`hwutils.optim.sgd_update_`."""
    if l2_grad is not None:
        g.addcmul_(p, l2_grad)
    if torch.is_tensor(momentum):
        torch.addcmul(g, buf, momentum, out=buf)
    else:
        torch.add(g, buf, alpha=momentum, out=buf)
    if nesterov:
        g.addcmul_(buf, momentum) if torch.is_tensor(momentum) else g.add_(buf, alpha=momentum)
    step = g if nesterov else buf
    p.addcmul_(step, lr, value=-1) if torch.is_tensor(lr) else p.add_(step, alpha=-lr)
    if radius is not None:
        project_rows_(p, radius)


@functools.cache
def _compiled():
    return torch.compile(sgd_step_fused_)


def fused_terms(regularizers, n_weights: int):
    """Per weight tensor (layer), the ``(l2_grad, radius)`` that :func:`sgd_step_fused_` applies for
    ``regularizers``; None when one of them has no fused form (L1), and the step must be plain."""
    l2, radii = [None] * n_weights, [None] * n_weights
    for r in regularizers:
        if isinstance(r, L2Penalty):
            l2 = [r.grad_coef] * n_weights
        elif isinstance(r, MaxNorm):
            radii = [r.c] * (n_weights - 1) + [r.c_output if r.any_output else None]
        elif not isinstance(r, KLSparsity):  # KL is a loss term only: nothing after the gradients
            return None
    return list(zip(l2, radii))


@torch.no_grad()
def fused_step_(update: str, weights, biases, grads, state, lr, momentum, nesterov: bool, terms) -> None:
    """The whole update of a stacked model on the fused path: each weight tensor with its ``terms``
    (:func:`fused_terms`) in one :func:`sgd_step_fused_` (compiled for "compiled"), the biases
    (no penalty, no projection) as :func:`hwutils.optim.sgd_update_` does them. ``grads`` and
    ``state`` (momentum buffers) in the order weights, then biases."""
    step = _compiled() if update == "compiled" else sgd_step_fused_
    n = len(weights)
    for p, g, buf, (l2_grad, radius) in zip(weights, grads[:n], state[:n], terms):
        step(p, g, buf, lr, momentum, nesterov, l2_grad, radius)
    for p, g, buf in zip(biases, grads[n:], state[n:]):
        sgd_update_(p, g, buf, lr, momentum, nesterov)
