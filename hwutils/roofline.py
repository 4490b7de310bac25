"""How fast a training step of the stacked engine could be: the bytes it must move and the
products it must compute, against what the device measurably does (the floors ``make bench`` prints).

The memory model (:func:`step_bytes`), per float32 parameter and step, counting only what must go
to and from the device's memory:

* a weight: read by the forward product (4 bytes) and by the input-gradient product (4; not in the
  first layer, whose input, the images, needs no gradient); its gradient written by the
  weight-gradient product (4) and read by the update (4); its momentum read and written (8); the
  weight read and written by the update (8) - 32 bytes, 28 in the first layer;
* a bias: read forward (4), its gradient written (4) and read (4), momentum (8), update (8) - 28.

At the paper shape (784-1024-1024-2048-10) that is 124 MB per run-step. Activations are left out:
at batch 100 they are a few MB per run and can stay in the GPU's L2 cache, so a floor that counted
them would not be a floor. Every extra elementwise pass over the weights (the plain update's: see
:mod:`hwutils.fused`) is above this floor. The arithmetic floor is the step's product FLOPs
(:func:`step_flops`) at the rate the same products reach alone (:func:`product_rate`).
"""
from __future__ import annotations

import time

import torch

from .precision import matmul_precision, product_dtype
from .threads import TrainingThreads

__all__ = ["step_bytes", "step_flops", "copy_bandwidth", "product_rate", "floors"]

_F32 = 4


def _layers(widths):
    return list(zip(widths[:-1], widths[1:]))


def step_bytes(widths, members: int = 1) -> int:
    """Bytes one training step of ``members`` stacked runs of an MLP with layer ``widths``
    (inputs, hidden..., classes) has to move at the least (the model in the module's docstring)."""
    total = 0
    for i, (fan_in, fan_out) in enumerate(_layers(widths)):
        weight = 7 * _F32 + (_F32 if i else 0)   # 28 bytes, 32 where the input gradient reads it again
        total += weight * fan_in * fan_out + 7 * _F32 * fan_out
    return members * total


def step_flops(widths, batch: int, members: int = 1) -> int:
    """FLOPs of the step's matrix products: per layer 2·B·in·out for the forward product, as many
    for the weight gradient, and as many again for the input gradient except in the first layer."""
    flops = 0
    for i, (fan_in, fan_out) in enumerate(_layers(widths)):
        flops += (3 if i else 2) * 2 * batch * fan_in * fan_out
    return members * flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, device: torch.device, seconds: float, repeat: int = 5) -> float:
    """The fastest mean time of ``fn`` over blocks of ``repeat`` calls, for about ``seconds`` after a
    warm-up of a quarter of that (the first calls of a shape are slow: allocation, library set-up)."""
    began = time.perf_counter()
    while True:
        fn()
        _sync(device)
        if time.perf_counter() - began > seconds / 4:
            break
    best, began = float("inf"), time.perf_counter()
    while time.perf_counter() - began < seconds or best == float("inf"):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def copy_bandwidth(device, megabytes: float | None = None, seconds: float = 1.0) -> float:
    """Bytes per second that ``dst.copy_(src)`` of one large float32 tensor moves on ``device``,
    counting what is read and what is written (the fastest of repeats over about ``seconds``).
    The tensor (default 1 GiB on CUDA, 256 MiB elsewhere) is many times any cache."""
    device = torch.device(device)
    megabytes = megabytes or (1024 if device.type == "cuda" else 256)
    src = torch.ones(int(megabytes * 2**20) // _F32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * _F32 / _best_seconds(lambda: dst.copy_(src), device, seconds)


def product_rate(widths, batch: int, members: int = 1, *, device=None, precision: str | None = None,
                 seconds: float = 1.0) -> float:
    """FLOP/s of exactly the step's products as the stacked engine runs them - ``members`` runs as
    batched products (``bmm``), at ``precision`` (:mod:`hwutils.precision`), on the CPU with the
    threads a training step would take now (:class:`hwutils.threads.TrainingThreads`) - timed alone."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = product_dtype(precision, device) or torch.float32
    gen = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(members, *shape, generator=gen).to(device, dtype)  # noqa: E731
    layers = [(make(b, a), make(batch, a), make(batch, b)) for a, b in _layers(widths)]

    def products():
        for i, (w, x, g) in enumerate(layers):
            torch.bmm(x, w.transpose(1, 2))
            torch.bmm(g.transpose(1, 2), x)
            if i:
                torch.bmm(g, w)

    threads = TrainingThreads(device)
    threads.adapt()
    try:
        with matmul_precision(precision, device):
            return step_flops(widths, batch, members) / _best_seconds(products, device, seconds)
    finally:
        threads.restore()


def floors(widths, batch: int, members: int, bandwidth: float, flop_rate: float) -> dict:
    """The floors of one step of ``members`` stacked runs, in seconds per step per run: memory
    (:func:`step_bytes` ÷ ``bandwidth``), arithmetic (:func:`step_flops` ÷ ``flop_rate``), and
    ``floor``, the larger of the two (neither can be beaten)."""
    memory = step_bytes(widths, members) / bandwidth / members
    arithmetic = step_flops(widths, batch, members) / flop_rate / members
    return {"memory": memory, "arithmetic": arithmetic, "floor": max(memory, arithmetic)}
