"""hwutils: data, models, regularizers and the one training loop behind the hw3 report."""
import os as _os
import sys as _sys

# First, before anything here loads torch: Intel MKL's strict conditional numerical reproducibility,
# under which a float32 product rounds the same at any thread count, so that a run's weights do not
# depend on how many cores other processes leave it (hwutils.threads). MKL reads the variable at its
# first product; a value set by the user wins ("" turns it off). See hwutils.threads.numerical_mode.
CBWR_DEFAULT = "AUTO,STRICT"
_cbwr_after_torch = "torch" in _sys.modules and "MKL_CBWR" not in _os.environ
_os.environ.setdefault("MKL_CBWR", CBWR_DEFAULT)

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
