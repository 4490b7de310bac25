"""Adam written out from Algorithm 1 of Kingma & Ba (2015), and the helpers behind Part 1 of the report.

Indexing convention, used throughout: gradients are numbered from 1 (``g_1, g_2, ...``), the
moment estimates start at ``m_0 = v_0 = 0``, and a step first increments ``t`` and then uses
``g_t`` to form ``m_t`` and ``v_t``; so after ``t`` steps ``v_t`` has seen exactly ``t`` gradients
and its initialization bias is the factor ``1 - beta2**t``. Squares are elementwise.

Only numpy and torch are used; the functions favour clarity over speed.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

__all__ = [
    "LogisticLoss",
    "bias_correction",
    "unrolled_second_moment",
    "recursive_second_moment",
    "Adam",
    "adam_update_",
    "sgd_update_",
    "centred_exponential",
    "monte_carlo_second_moment",
    "expected_second_moment_ratio",
    "uncorrected_step_ratio",
    "max_relative_deviation",
    "trajectory_deviation",
    "update_sizes",
]


# --------------------------------------------------------------------------- moment algebra
def bias_correction(beta, t):
    """The factor ``1 - beta**t`` by which an EMA started at 0 underestimates its target after t steps."""
    return 1 - beta ** t


bias_correction_factor = bias_correction  # the name used where "bias_correction" is a flag


def _check_beta(name: str, beta) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta!r}")


def _as_sequence(grads) -> np.ndarray:
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim < 1 or g.shape[0] < 1:
        raise ValueError(f"grads must be an array of shape (T, ...) with T >= 1, got shape {g.shape}")
    return g


def unrolled_second_moment(grads, beta2: float) -> np.ndarray:
    """All ``v_t = (1-beta2) * sum_{i=1..t} beta2**(t-i) * g_i**2`` for ``grads`` of shape (T, ...) (O(T²) memory)."""
    _check_beta("beta2", beta2)
    g = _as_sequence(grads)
    t = np.arange(1, g.shape[0] + 1)
    lag = t[:, None] - t[None, :]                                    # t - i, row t, column i
    weights = np.where(lag >= 0, float(beta2) ** np.clip(lag, 0, None), 0.0)
    return (1 - beta2) * np.tensordot(weights, g * g, axes=1)


def recursive_second_moment(grads, beta2: float) -> np.ndarray:
    """All ``v_t = beta2 * v_{t-1} + (1-beta2) * g_t**2`` with ``v_0 = 0`` for ``grads`` of shape (T, ...)."""
    _check_beta("beta2", beta2)
    g = _as_sequence(grads)
    v = np.zeros(g.shape[1:])
    out = np.empty_like(g)
    for k in range(g.shape[0]):                                      # row k holds v_{k+1}
        v = beta2 * v + (1 - beta2) * g[k] * g[k]
        out[k] = v
    return out


def expected_second_moment_ratio(beta2: float, variances) -> np.ndarray:
    """Exact ``E[v_t] / E[g_t²]`` for t = 1..T when ``E[g_t²] = variances[t-1]``; ``1 - beta2**t`` if constant."""
    _check_beta("beta2", beta2)
    variances = np.asarray(variances, dtype=np.float64)
    expected_v, out = 0.0, np.empty_like(variances)
    for k, var in enumerate(variances):                              # the recursion, taken in expectation
        expected_v = beta2 * expected_v + (1 - beta2) * var
        out[k] = expected_v / var
    return out


def uncorrected_step_ratio(beta1, beta2, t):
    """Step size without / with bias correction for a constant gradient: ``(1-beta1**t) / sqrt(1-beta2**t)``."""
    return bias_correction(beta1, t) / np.sqrt(bias_correction(beta2, t))


# --------------------------------------------------------------------------- Monte-Carlo
def centred_exponential(rng: np.random.Generator, size, variance=1.0) -> np.ndarray:
    """Skewed, non-Gaussian draws ``sqrt(variance) * (E - 1)``, ``E ~ Exp(1)``: mean 0, ``E[g²] = variance``."""
    return np.sqrt(variance) * (rng.exponential(1.0, size) - 1.0)


def monte_carlo_second_moment(beta2s, variances, n_runs: int, rng: np.random.Generator):
    """Mean and standard error over ``n_runs`` runs of ``v_t / E[g_t²]``, shape (len(beta2s), T) each.

    Run r draws independent gradients ``g_t = centred_exponential(rng, ., variances[t-1])`` and
    feeds the same sequence to one second-moment recursion per ``beta2``.
    """
    if n_runs < 2:
        raise ValueError(f"n_runs must be at least 2 to estimate a standard error, got {n_runs}")
    for b in np.atleast_1d(beta2s):
        _check_beta("beta2", b)
    beta2s = np.asarray(beta2s, dtype=np.float64)[:, None]
    variances = np.asarray(variances, dtype=np.float64)
    v = np.zeros((beta2s.shape[0], n_runs))
    mean = np.empty((beta2s.shape[0], variances.shape[0]))
    se = np.empty_like(mean)
    for k, var in enumerate(variances):
        g = centred_exponential(rng, n_runs, var)
        v = beta2s * v + (1 - beta2s) * g * g
        ratio = v / var
        mean[:, k] = ratio.mean(axis=1)
        se[:, k] = ratio.std(axis=1, ddof=1) / np.sqrt(n_runs)
    return mean, se


# --------------------------------------------------------------------------- the optimizers
@torch.no_grad()
def adam_update_(p, g, m, v, t: int, lr, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 bias_correction: bool = True) -> None:
    """One Adam step of Algorithm 1 on ``p`` in place, given its gradient ``g``, moments ``m``, ``v``
    and the step number ``t`` (already incremented). ``lr`` is a float or a tensor broadcasting
    against ``p`` (one learning rate per member of a stacked model)."""
    m.mul_(beta1).add_(g, alpha=1 - beta1)                           # m_t = β1 m_{t-1} + (1-β1) g_t
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)                    # v_t = β2 v_{t-1} + (1-β2) g_t²
    if bias_correction:
        m_hat = m / bias_correction_factor(beta1, t)
        v_hat = v / bias_correction_factor(beta2, t)
    else:
        m_hat, v_hat = m, v
    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


@torch.no_grad()
def sgd_update_(p, g, buf, lr, momentum, nesterov: bool = True) -> None:
    """One step of SGD with momentum on ``p`` in place, as ``torch.optim.SGD`` (dampening 0):
    ``buf ← momentum·buf + g``; step along ``g + momentum·buf`` (Nesterov) or ``buf``. ``lr`` and
    ``momentum`` are floats or tensors broadcasting against ``p`` (one per stacked member).
    With Nesterov, ``g`` is overwritten by the step direction (as ``torch.optim.SGD`` does with
    ``.grad``): a new tensor the size of ``p`` every step costs more on the CPU than the addition."""
    buf.mul_(momentum).add_(g)
    if nesterov:
        g.addcmul_(buf, momentum) if torch.is_tensor(momentum) else g.add_(buf, alpha=momentum)
    step = g if nesterov else buf
    p.addcmul_(step, lr, value=-1) if torch.is_tensor(lr) else p.add_(step, alpha=-lr)


class Adam(torch.optim.Optimizer):
    """Adam, Algorithm 1 of Kingma & Ba (2015), one parameter tensor at a time with plain tensor ops.

    Per step: ``t ← t+1``; ``m ← β1 m + (1-β1) g``; ``v ← β2 v + (1-β2) g²``;
    ``m̂ = m / (1-β1^t)``; ``v̂ = v / (1-β2^t)``; ``θ ← θ - lr · m̂ / (sqrt(v̂) + eps)``.
    With ``bias_correction=False`` the two divisions are skipped (``m̂ = m``, ``v̂ = v``), which
    is only there to show what the correction is for.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, bias_correction: bool = True):
        if not 0.0 <= lr:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check_beta("beta1", betas[0])
        _check_beta("beta2", betas[1])
        if not 0.0 <= eps:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not isinstance(bias_correction, (bool, np.bool_)):
            raise ValueError(f"bias_correction must be True or False, got {bias_correction!r}")
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                        bias_correction=bool(bias_correction))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step for every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("hwutils.optim.Adam does not support sparse gradients")
                state = self.state[p]
                if not state:                                        # m_0 = v_0 = 0, t = 0
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1                                   # t ← t + 1 comes first
                adam_update_(p, g, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"],
                             beta1, beta2, group["eps"], group["bias_correction"])
        return loss


# --------------------------------------------------------------------------- experiments
def max_relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` for two tensors of one shape (``b`` is the reference)."""
    scale = b.detach().abs().max().item()
    return (a.detach() - b.detach()).abs().max().item() / max(scale, torch.finfo(b.dtype).tiny)


def _adam_step(model, optimizer, loss_fn) -> None:
    optimizer.zero_grad()
    loss_fn(model).backward()
    optimizer.step()


class LogisticLoss:
    """The mean logistic loss of a one-output model on ``(X, y)``, as a function of the model: the
    ``loss_fn`` of :func:`trajectory_deviation` for a logistic regression."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.X, self.y = X, y

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(model(self.X).squeeze(1), self.y)


def trajectory_deviation(model: torch.nn.Module, loss_fn, steps: int, **adam_kwargs) -> np.ndarray:
    """Per step, the largest :func:`max_relative_deviation` over parameters between copies of ``model``
    trained full-batch on ``loss_fn(model)`` with this :class:`Adam` and with ``torch.optim.Adam``.
    """
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    opt_ours = Adam(ours.parameters(), **adam_kwargs)
    opt_ref = torch.optim.Adam(ref.parameters(), **adam_kwargs)
    deviation = np.empty(steps)
    for k in range(steps):
        _adam_step(ours, opt_ours, loss_fn)
        _adam_step(ref, opt_ref, loss_fn)
        deviation[k] = max(max_relative_deviation(p, q)
                           for p, q in zip(ours.parameters(), ref.parameters()))
    return deviation


def update_sizes(model: torch.nn.Module, loss_fn, steps: int, **adam_kwargs) -> np.ndarray:
    """Mean ``|Δθ|`` over all coordinates at each of ``steps`` full-batch :class:`Adam` steps on a copy of ``model``."""
    model = copy.deepcopy(model)
    optimizer = Adam(model.parameters(), **adam_kwargs)
    flat = lambda: torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    sizes = np.empty(steps)
    for k in range(steps):
        before = flat()
        _adam_step(model, optimizer, loss_fn)
        sizes[k] = (flat() - before).abs().mean().item()
    return sizes
