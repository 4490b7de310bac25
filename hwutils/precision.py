"""The precision of the training step's matrix products: FP32, TF32 (CUDA only), or bf16 with
FP32 master weights.

* "fp32": the products in full float32.
* "tf32": float32 tensors, the products on the tensor cores with a 10-bit mantissa
  (``torch.set_float32_matmul_precision("high")``); a CUDA mode, refused on the CPU.
* "bf16": each training product's operands cast to bfloat16 (the libraries accumulate in
  float32) and its result cast back to float32; weights, gradients, momentum and the update stay
  float32, and evaluation (a model in ``eval()`` mode) uses float32 products.

A run's precision is a training field, ``TrainConfig.precision``; ``None`` is the device's default
- TF32 on CUDA, FP32 on the CPU - which is what the runs cached before the field existed were
trained with, so that value keeps their cache keys (:data:`hwutils.experiments.LATER_FIELDS`).
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "default_precision", "resolve", "neutral", "matmul_precision", "use_products",
           "product_dtype", "describe"]

PRECISIONS = ("fp32", "tf32", "bf16")
#: What ``torch.set_float32_matmul_precision`` takes for each precision's float32 products.
_MATMUL = {"fp32": "highest", "tf32": "high", "bf16": "highest"}


def _device_type(device) -> str:
    return torch.device(device).type


def default_precision(device) -> str:
    """The precision of a run whose ``precision`` is None: "tf32" on CUDA, "fp32" elsewhere."""
    return "tf32" if _device_type(device) == "cuda" else "fp32"


def resolve(precision: str | None, device) -> str:
    """The precision a run trains with on ``device`` (None: :func:`default_precision`)."""
    if precision is None:
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if precision == "tf32" and _device_type(device) != "cuda":
        raise ValueError(f"precision 'tf32' is a CUDA mode and the training here is on {_device_type(device)}: "
                         f"use 'fp32' or 'bf16'")
    return precision


def neutral(precision: str | None, device) -> str | None:
    """``precision`` as a run's field: None where it is the device's default (the key of a run
    trained as before the field existed), else the name."""
    concrete = resolve(precision, device)
    return None if concrete == default_precision(device) else concrete


@contextlib.contextmanager
def matmul_precision(precision: str | None, device):
    """Float32 products at ``precision`` on CUDA while the block runs (the previous setting after);
    nothing changes on the CPU, whose float32 products are always FP32 here."""
    concrete = resolve(precision, device)
    if _device_type(device) != "cuda":
        yield concrete
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(_MATMUL[concrete])
    try:
        yield concrete
    finally:
        torch.set_float32_matmul_precision(before)


def use_products(precision: str | None, device) -> None:
    """Float32 products at ``precision`` from now on, on CUDA (what a study does once, so that its
    evaluations outside training match its runs); nothing on the CPU."""
    concrete = resolve(precision, device)
    if _device_type(device) == "cuda":
        torch.set_float32_matmul_precision(_MATMUL[concrete])


def product_dtype(precision: str | None, device) -> torch.dtype | None:
    """The dtype a training product's operands are cast to (None: left float32)."""
    return torch.bfloat16 if resolve(precision, device) == "bf16" else None


def describe(precision: str | None, device) -> str:
    """How the set-up table names it: "TF32 matrix products", "bf16 matrix products, FP32 weights"."""
    concrete = resolve(precision, device)
    return {"fp32": "FP32 matrix products", "tf32": "TF32 matrix products",
            "bf16": "bf16 matrix products, FP32 weights"}[concrete]
