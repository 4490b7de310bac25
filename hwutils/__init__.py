"""hwutils: data, models, regularizers and the one training loop behind the hw3 report."""
__version__ = "0.1.0"

from .data import (DataError, Split, Splits, default_device, load_mnist, make_point_cloud,
                   read_idx, split_point_cloud)
from .models import MLP, ModelConfig, build_model
from .regularizers import (L1Schedule, kl_sparsity_penalty, l1_penalty, l2_penalty, max_norm_,
                           soft_threshold_)
from .training import History, TrainConfig, evaluate, fit

__all__ = [
    "__version__",
    "DataError", "Split", "Splits", "default_device", "load_mnist", "make_point_cloud", "read_idx",
    "split_point_cloud",
    "MLP", "ModelConfig", "build_model",
    "L1Schedule", "kl_sparsity_penalty", "l1_penalty", "l2_penalty", "max_norm_", "soft_threshold_",
    "History", "TrainConfig", "evaluate", "fit",
]
