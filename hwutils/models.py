"""Models: a ReLU multilayer perceptron that returns logits."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "StackedMLP", "ModelConfig", "build_model", "dropout", "INITS", "DROPOUT_SCALINGS"]

#: Initial weights: "torch", ``nn.Linear``'s own (weights and biases uniform on ±1/√fan-in);
#: "normal_fan_in", weights Gaussian with σ = 1/√fan-in and biases 0 (Srivastava et al.'s recipe).
INITS = ("torch", "normal_fan_in")
#: Where dropout's scaling goes: "inverted", kept units scaled by 1/keep while training (the
#: weights are used as they are at test time); "test_time", kept units left as they are while
#: training and every dropped layer's output multiplied by keep at test time (Srivastava et al.,
#: sec. 4, and their deepnet code). The two compute the same functions with weights that differ
#: by the factor keep (of the layer's input), so a max-norm radius, a learning rate and an initial
#: scale mean different things under each: radius c under "test_time" is radius keep·c under
#: "inverted", and learning rate ε under "inverted" moves the weights as ε/keep² does under "test_time".
DROPOUT_SCALINGS = ("inverted", "test_time")


def dropout(x: torch.Tensor, p, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability ``p``, scale the rest by 1/(1-p).

    ``p`` is a float, or a tensor that broadcasts against ``x`` (one rate per member of a
    :class:`StackedMLP`, shape ``[K, 1, 1]``). On the CPU, ``F.dropout``'s one-Bernoulli-at-a-time
    draw costs more than a third of an MLP training step; here the mask comes from 16 random bits
    per entry (drawn 64 at a time), so ``p`` is rounded to a multiple of 1/65536 and kept entries
    are scaled by the exact inverse of the rounded keep probability - E[output] = x still holds
    exactly. On other devices the mask is ``rand >= p``. Uses the global torch RNG, so
    ``torch.manual_seed`` fixes it.
    """
    if not training or (not torch.is_tensor(p) and p == 0.0):
        return x
    if x.device.type != "cpu":
        return x * ((torch.rand_like(x) >= p) * (1.0 / (1.0 - p)))
    n = x.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    uniform16 = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    threshold = (torch.round(p * 65536) if torch.is_tensor(p) else round(p * 65536)) - 32768
    keep = (32768 - threshold) / 65536
    return x * ((uniform16 >= threshold) * (1.0 / keep)).to(x.dtype)


class MLP(nn.Module):
    """``in_features → hidden[0] → … → hidden[-1] → out_features`` with ReLU units.

    ``forward`` returns **logits**: pair it with ``F.cross_entropy`` (which applies log-softmax
    itself), never with a softmax first. Dropout (Srivastava et al. 2014) drops each input with
    probability ``dropout_input`` and each hidden unit with probability ``dropout_hidden`` during
    training ("inverted" dropout: kept units are scaled by 1/keep, so evaluation uses the weights
    as they are), or with ``dropout_scaling="test_time"`` as in the paper (see :data:`DROPOUT_SCALINGS`).
    """

    def __init__(self, in_features: int, hidden=(800, 800), out_features: int = 10,
                 dropout_input: float = 0.0, dropout_hidden: float = 0.0, dropout_scaling: str = "inverted"):
        super().__init__()
        for name, p in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} is a drop probability in [0, 1), got {p}")
        if dropout_scaling not in DROPOUT_SCALINGS:
            raise ValueError(f"dropout_scaling must be one of {DROPOUT_SCALINGS}, got {dropout_scaling!r}")
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout_input = dropout_input
        self.dropout_hidden = dropout_hidden
        self.dropout_scaling = dropout_scaling

    def _drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        # test-time scaling is inverted dropout times keep, in training and in evaluation alike
        x = dropout(x, p, self.training)
        return x * (1.0 - p) if self.dropout_scaling == "test_time" and p else x

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        """The layers whose outputs are hidden units (all but the output layer)."""
        return list(self.layers[:-1])

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Logits; with ``return_hidden`` also the list of hidden ReLU activations (pre-dropout)."""
        hidden = []
        x = self._drop(x, self.dropout_input)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
            hidden.append(x)
            x = self._drop(x, self.dropout_hidden)
        logits = self.layers[-1](x)
        return (logits, hidden) if return_hidden else logits


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an :class:`MLP`; ``in_features``/``out_features`` come from the data.
    ``init``: its initial weights (:data:`INITS`); ``dropout_scaling``: :data:`DROPOUT_SCALINGS`."""

    hidden: tuple[int, ...] = (800, 800)
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    init: str = "torch"
    dropout_scaling: str = "inverted"

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.dropout_scaling not in DROPOUT_SCALINGS:
            raise ValueError(f"dropout_scaling must be one of {DROPOUT_SCALINGS}, got {self.dropout_scaling!r}")


def build_model(config: ModelConfig, in_features: int, out_features: int, seed: int | None = None) -> MLP:
    """An :class:`MLP` for ``config``; ``seed`` makes its initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    model = MLP(in_features, tuple(config.hidden), out_features, config.dropout_input, config.dropout_hidden,
                config.dropout_scaling)
    if config.init == "normal_fan_in":  # drawn after nn.Linear's own, so "torch" draws what it always drew
        with torch.no_grad():
            for layer in model.layers:
                layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.in_features))
                layer.bias.zero_()
    return model


class _StackedLinear(torch.autograd.Function):
    """``x @ wᵀ + b`` for stacked ``x [K, B, in]``, ``w [K, out, in]``, ``b [K, 1, out]`` (one
    ``baddbmm``), whose weight gradient is formed as ``gᵀ·x``: contiguous in ``w``'s own layout, as
    ``nn.Linear``'s is. Autograd's ``baddbmm`` rule forms it as ``(xᵀ·g)ᵀ``, a transposed view, and
    then every elementwise operation of the update (momentum, step, penalties) runs strided - on the
    CPU that made a K = 1 step of 784-800-800-10 about a third slower than ``nn.Linear``'s.

    ``dtype`` (e.g. ``torch.bfloat16``): the three products take their operands cast to it, and
    their results come back as float32 (:mod:`hwutils.precision`); the casts are saved for the
    backward pass, so each tensor is cast once per step."""

    @staticmethod
    def forward(ctx, x, w, b, dtype=None):
        ctx.dtype = dtype
        if dtype is None:
            ctx.save_for_backward(x, w)
            return torch.baddbmm(b, x, w.transpose(1, 2))
        x, w = x.to(dtype), w.to(dtype)
        ctx.save_for_backward(x, w)
        return torch.bmm(x, w.transpose(1, 2)).float() + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gp = g if ctx.dtype is None else g.to(ctx.dtype)
        grad_x = torch.bmm(gp, w).float() if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(gp.transpose(1, 2), x).float() if ctx.needs_input_grad[1] else None
        grad_b = g.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class StackedMLP(nn.Module):
    """K :class:`MLP` s of one architecture as one model, for training them together.

    Layer ``l`` holds ``weight[l]`` of shape ``[K, out, in]`` (member k's row i is the incoming
    weight vector of its unit i, as in ``nn.Linear``) and ``bias[l]`` of shape ``[K, 1, out]``;
    a forward pass is one batched product per layer. Each member keeps its own dropout rates and
    dropout scaling. ``product_dtype`` (None: float32): the dtype of the products while training
    (``torch.bfloat16`` for :mod:`hwutils.precision`'s "bf16"); in ``eval()`` mode they are float32.
    Build it from models with :meth:`from_models`, write the trained weights back with
    :meth:`copy_to`.
    """

    def __init__(self, weights, biases, dropout_input, dropout_hidden, dropout_scaling=None):
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b) for b in biases)
        k = len(weights[0])
        self.register_buffer("dropout_input", torch.as_tensor(dropout_input, dtype=torch.float32).view(k, 1, 1))
        self.register_buffer("dropout_hidden", torch.as_tensor(dropout_hidden, dtype=torch.float32).view(k, 1, 1))
        # test-time scaling as inverted dropout times keep (see MLP._drop): 1 for inverted members
        test_time = torch.tensor([s == "test_time" for s in dropout_scaling or ["inverted"] * k]).view(k, 1, 1)
        self.register_buffer("keep_input", torch.where(test_time, 1 - self.dropout_input, 1.0))
        self.register_buffer("keep_hidden", torch.where(test_time, 1 - self.dropout_hidden, 1.0))
        # Python-side flags: members without dropout cost nothing when none of them drops.
        self.drops_input = bool(self.dropout_input.any())
        self.drops_hidden = bool(self.dropout_hidden.any())
        self.scales_input = bool((self.keep_input != 1).any())
        self.scales_hidden = bool((self.keep_hidden != 1).any())
        self.product_dtype = None

    @classmethod
    @torch.no_grad()
    def from_models(cls, models) -> "StackedMLP":
        """Stack copies of the parameters of same-architecture :class:`MLP` s."""
        shapes = {tuple(layer.weight.shape for layer in m.layers) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"models of different architectures cannot be stacked: {sorted(shapes)}")
        layers = range(len(models[0].layers))
        return cls([torch.stack([m.layers[l].weight.detach() for m in models]).clone() for l in layers],
                   [torch.stack([m.layers[l].bias.detach() for m in models])[:, None, :].clone() for l in layers],
                   [m.dropout_input for m in models], [m.dropout_hidden for m in models],
                   [m.dropout_scaling for m in models])

    @torch.no_grad()
    def copy_to(self, models) -> None:
        """Write member k's parameters into ``models[k]``."""
        for k, model in enumerate(models):
            for layer, w, b in zip(model.layers, self.weights, self.biases):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k, 0])

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Logits ``[K, B, classes]`` for inputs ``[K, B, in]`` (member k sees ``x[k]``) or ``[B, in]``
        (every member sees the same batch); with ``return_hidden`` also the hidden ReLU activations
        (pre-dropout), one ``[K, B, units]`` tensor per hidden layer."""
        if x.dim() == 2:
            x = x.expand(self.members, *x.shape)
        if self.drops_input:
            x = dropout(x, self.dropout_input, self.training)
        if self.scales_input:
            x = x * self.keep_input
        hidden = []
        weights, biases = list(self.weights), list(self.biases)  # slicing a ParameterList builds a module
        dtype = self.product_dtype if self.training else None
        for w, b in zip(weights[:-1], biases[:-1]):
            x = F.relu(_StackedLinear.apply(x, w, b, dtype))
            hidden.append(x)
            if self.drops_hidden:
                x = dropout(x, self.dropout_hidden, self.training)
            if self.scales_hidden:
                x = x * self.keep_hidden
        logits = _StackedLinear.apply(x, weights[-1], biases[-1], dtype)
        return (logits, hidden) if return_hidden else logits
