"""Models: a ReLU multilayer perceptron that returns logits."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "ModelConfig", "build_model", "dropout"]


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability ``p``, scale the rest by 1/(1-p).

    On the CPU, ``F.dropout`` draws one Bernoulli variable at a time and costs more than a third
    of an MLP training step; here the mask comes from 16 random bits per entry (drawn 64 at a
    time), so ``p`` is rounded to a multiple of 1/65536 and kept entries are scaled by the exact
    inverse of the rounded keep probability - E[output] = x still holds exactly. On other
    devices it is ``F.dropout``. Uses the global torch RNG, so ``torch.manual_seed`` fixes it.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    uniform16 = bits.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    threshold = round(p * 65536) - 32768
    keep = (32768 - threshold) / 65536
    return x * ((uniform16 >= threshold) * (1.0 / keep)).to(x.dtype)


class MLP(nn.Module):
    """``in_features → hidden[0] → … → hidden[-1] → out_features`` with ReLU units.

    ``forward`` returns **logits**: pair it with ``F.cross_entropy`` (which applies log-softmax
    itself), never with a softmax first. Dropout (Srivastava et al. 2014) drops each input with
    probability ``dropout_input`` and each hidden unit with probability ``dropout_hidden`` during
    training ("inverted" dropout: kept units are scaled by 1/keep, so evaluation uses the weights
    as they are).
    """

    def __init__(self, in_features: int, hidden=(800, 800), out_features: int = 10,
                 dropout_input: float = 0.0, dropout_hidden: float = 0.0):
        super().__init__()
        for name, p in (("dropout_input", dropout_input), ("dropout_hidden", dropout_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} is a drop probability in [0, 1), got {p}")
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout_input = dropout_input
        self.dropout_hidden = dropout_hidden

    @property
    def hidden_layers(self) -> list[nn.Linear]:
        """The layers whose outputs are hidden units (all but the output layer)."""
        return list(self.layers[:-1])

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Logits; with ``return_hidden`` also the list of hidden ReLU activations (pre-dropout)."""
        hidden = []
        x = dropout(x, self.dropout_input, self.training)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
            hidden.append(x)
            x = dropout(x, self.dropout_hidden, self.training)
        logits = self.layers[-1](x)
        return (logits, hidden) if return_hidden else logits


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an :class:`MLP`; ``in_features``/``out_features`` come from the data."""

    hidden: tuple[int, ...] = (800, 800)
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0


def build_model(config: ModelConfig, in_features: int, out_features: int, seed: int | None = None) -> MLP:
    """An :class:`MLP` for ``config``; ``seed`` makes its initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return MLP(in_features, tuple(config.hidden), out_features, config.dropout_input, config.dropout_hidden)
