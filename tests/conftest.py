import os
from pathlib import Path

import pytest
import torch

from hwutils.data import split_point_cloud

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def moons():
    """A small, clean two-moons problem the tests build themselves."""
    return split_point_cloud("moons", n_train=200, n_val=200, n_test=200, noise=0.1, seed=0)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from HWUTILS_DATA_DIR; tests using it skip when it is not set."""
    path = os.environ.get("HWUTILS_DATA_DIR")
    if not path:
        pytest.skip("HWUTILS_DATA_DIR is not set: no real MNIST files to test against")
    if not Path(path).is_dir():
        pytest.fail(f"HWUTILS_DATA_DIR={path} is not a directory")
    return Path(path)
