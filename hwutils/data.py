"""Data: MNIST from the official files, and small 2-D point clouds.

Every loader returns in-memory tensors (no per-sample Dataset/DataLoader): training slices
them by a permuted index per minibatch, which is what keeps :func:`hwutils.training.fit` fast.
MNIST is read from local files only, never downloaded: a missing file is one line naming the fix.
"""
from __future__ import annotations

import functools
import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MNIST_FILES",
    "DataError",
    "Split",
    "Splits",
    "find_mnist_dir",
    "export_mnist_dir",
    "read_idx",
    "load_mnist",
    "make_point_cloud",
    "split_point_cloud",
    "default_device",
]

#: The four official MNIST files (gzipped, as distributed) and the MD5 of each: torchvision's
#: ``MNIST.resources`` (a test checks they agree), kept here so that ``import hwutils`` does not load
#: torchvision (seconds) before MNIST is read.
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
DATA_ENV_VAR = "HWUTILS_DATA_DIR"


class DataError(RuntimeError):
    """A data file is missing, corrupt or malformed; the message names the fix."""


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Split:
    """Features ``X`` (N x D float32) and integer labels ``y`` (N, int64) of one split."""

    X: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.X.shape[0] != self.y.shape[0]:
            raise ValueError(f"X has {self.X.shape[0]} rows but y has {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return self.X.shape[0]

    def to(self, device) -> "Split":
        return Split(self.X.to(device), self.y.to(device))

    def subset(self, n: int) -> "Split":
        """The first ``n`` examples (the split is already shuffled, so this is a random subset)."""
        return Split(self.X[:n], self.y[:n])


@dataclass(frozen=True)
class Splits:
    """Train / validation / test splits. The test split is for final numbers only.

    ``spec`` says what data this is (source, sizes, scaling, seeds): the function that builds the
    splits fills it in from its own arguments, and it is part of every cached run's key, so that a
    changed argument or default never reuses a run trained on other data.
    """

    train: Split
    val: Split
    test: Split
    spec: dict = field(default_factory=dict, compare=False)

    @property
    def n_features(self) -> int:
        return self.train.X.shape[1]

    @property
    def n_classes(self) -> int:
        return int(self.train.y.max()) + 1

    def to(self, device) -> "Splits":
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device), self.spec)


# --------------------------------------------------------------------------- IDX / MNIST
def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """An IDX file (gzipped when its name ends in ``.gz``) as a tensor, parsed by torchvision's MNIST reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import extract_archive

    path = Path(path)
    try:
        if path.suffix != ".gz":
            return read_sn3_pascalvincent_tensor(str(path), strict=True)
        with tempfile.TemporaryDirectory(prefix="hwutils-idx-") as tmp:  # torchvision reads a file, not bytes
            return read_sn3_pascalvincent_tensor(extract_archive(str(path), tmp), strict=True)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({err}); replace it with the official "
                        f"{path.name}") from None
    except OSError as err:
        raise _unreadable(path, err) from None
    except (AssertionError, KeyError, RuntimeError, ValueError):  # torchvision's checks of the header and size
        raise DataError(f"{path} is not a complete IDX file (truncated or corrupt); replace it with the "
                        f"official {path.name}") from None


def _unreadable(path: Path, err: OSError) -> DataError:
    return DataError(f"cannot read {path} ({err.strerror or type(err).__name__}): make it readable "
                     f"(chmod a+r {path}) or point {DATA_ENV_VAR} to a readable copy of the MNIST files")


def _file_names(names) -> str:
    return ", ".join(f"{n}.gz" for n in names)


def _where(base: Path) -> str:
    """What ``base`` (a searched folder, with its MNIST/raw and raw subfolders) holds of the four files."""
    if not base.is_dir():
        return f"{base}: {'a file, not a folder' if base.exists() else 'no such folder'}"
    best = []
    for folder in (base, base / "MNIST" / "raw", base / "raw"):
        present = [n for n in MNIST_FILES if (folder / f"{n}.gz").is_file()]
        if len(present) > len(best) or (folder == base and not best):
            best, where = present, folder
    missing = [n for n in MNIST_FILES if n not in best]
    return f"{where}: missing {_file_names(missing)}" if best else f"{where}: none of the four files"


def _missing_message(bases: list[Path]) -> str:
    files = ", ".join(f"{name}.gz (md5 {md5})" for name, md5 in MNIST_FILES.items())
    where = "; ".join(_where(b) for b in bases) or "nowhere"
    return (f"MNIST not found (searched {where}). Put the four official "
            f"files {files} in one folder and set {DATA_ENV_VAR}=/path/to/that/folder "
            f"(or pass root=...); MNIST is never downloaded.")


def _absolute(path) -> Path:
    """``path`` absolute and normalized (``..`` removed; symbolic links kept)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _search_bases(root) -> list[tuple[Path, str | None]]:
    """The folders searched, absolute, each with who named it (None: the default ./data)."""
    if root is not None:
        return [(_absolute(root), "root")]  # an explicit root is the only place looked at
    bases = []
    if os.environ.get(DATA_ENV_VAR):
        bases.append((_absolute(os.environ[DATA_ENV_VAR]), DATA_ENV_VAR))
    bases.append((_absolute("data"), None))
    return bases


def _candidate_dirs(root) -> list[Path]:
    # A flat folder of the four files, or torchvision's MNIST/raw/ layout below it.
    return [d for b, _ in _search_bases(root) for d in (b, b / "MNIST" / "raw", b / "raw")]


def _locate(folder: Path) -> dict[str, Path] | None:
    """Map each MNIST name to its path if all four files are in ``folder``."""
    try:
        found = {name: folder / f"{name}.gz" for name in MNIST_FILES}
        return found if all(path.is_file() for path in found.values()) else None
    except PermissionError as err:
        raise _unreadable(folder, err) from None


def _check_md5(path: Path, expected: str) -> None:
    from torchvision.datasets.utils import calculate_md5

    try:
        actual = calculate_md5(path)
    except OSError as err:
        raise _unreadable(path, err) from None
    if actual != expected:
        raise DataError(f"{path} has MD5 {actual}, expected {expected}: the file is corrupt "
                        f"or not the official MNIST; replace it with the official {path.name}")


def find_mnist_dir(root=None) -> dict[str, Path]:
    """Locate and verify the four MNIST files; return a map from name to (absolute) path.

    Lookup order: ``root`` → ``$HWUTILS_DATA_DIR`` → ``./data``, relative paths taken from the
    current directory; in each, a flat folder or torchvision's ``MNIST/raw/``. Each file's MD5 is
    checked against the official value. Nothing is downloaded: when the files are absent, a
    :class:`DataError` names the missing files, where they were looked for, and the fix.
    """
    bases = _search_bases(root)
    for base, named_by in bases:
        if named_by is not None and base.exists() and not base.is_dir():
            what = f"{DATA_ENV_VAR}={os.environ.get(DATA_ENV_VAR)}" if named_by == DATA_ENV_VAR else "root"
            raise DataError(f"{what}: {base} is a file, not a folder; point it at the folder that holds the "
                            f"four MNIST files (e.g. {base.parent} if they are there)")
    for folder in _candidate_dirs(root):
        found = _locate(folder)
        if found is not None:
            for name, path in found.items():
                _check_md5(path, MNIST_FILES[name])
            return found
    raise DataError(_missing_message([b for b, _ in bases]))


def mnist_folder(files: dict[str, Path]) -> Path:
    """The one folder holding the four files that :func:`find_mnist_dir` returned."""
    return _absolute(next(iter(files.values()))).parent


def export_mnist_dir(root=None) -> Path:
    """:func:`find_mnist_dir`, then set ``$HWUTILS_DATA_DIR`` to the absolute folder of the files.

    Processes started afterwards (the notebook kernels, which run in ``notebooks/``) inherit the
    variable and find the same files whatever their working directory, also when the variable was
    relative or unset (``./data``).
    """
    folder = mnist_folder(find_mnist_dir(root))
    os.environ[DATA_ENV_VAR] = str(folder)
    return folder


@functools.lru_cache(maxsize=4)
def _mnist_arrays(paths: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, ...]:
    files = dict(paths)
    return tuple(read_idx(files[name]).numpy() for name in MNIST_FILES)


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (n - 1) of all entries of ``x``, as float32 scalars, summed in float64 by
    numpy: torch's sums (float32, or float64 of a copy) round differently at different thread counts."""
    values = x.numpy().ravel()
    n = values.size
    mean = values.mean(dtype=np.float64)
    var = (np.einsum("i,i->", values, values, dtype=np.float64) - n * mean * mean) / (n - 1)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.sqrt(var), dtype=torch.float32)


def load_mnist(root=None, *, downsample: int | None = None, val_size: int = 10_000, seed: int = 0,
               standardize: bool = True, device=None) -> Splits:
    """MNIST as in-memory tensors: train / validation / test :class:`Splits`.

    * ``val_size`` images are held out of the 60,000 official training images (a permutation
      drawn with ``seed``, so the split is fixed); the test split is the official 10,000 and is
      meant for final evaluation only.
    * Pixels are scaled to [0, 1]; with ``standardize`` they are then shifted and scaled by the
      mean and standard deviation of the *training* split (a single scalar each).
    * ``downsample=7`` averages 4x4 pixel blocks, giving 7x7 = 49 features instead of 784.
    * ``device``: where the tensors live (default: CUDA when available, else CPU).

    The files are found and checked by :func:`find_mnist_dir` (never downloaded). The tensors are
    the same at any thread count (:func:`_mean_std`).
    """
    if downsample not in (None, 7, 14, 28):
        raise ValueError(f"downsample must be None, 7, 14 or 28 (side length in pixels), got {downsample!r}")
    if not 0 <= val_size < 60_000:
        raise ValueError(f"val_size must be in [0, 60000), got {val_size}")
    files = find_mnist_dir(root)
    train_x, train_y, test_x, test_y = _mnist_arrays(tuple(sorted((k, str(v)) for k, v in files.items())))

    def features(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        if downsample not in (None, 28):
            k = 28 // downsample
            x = torch.nn.functional.avg_pool2d(x[:, None], kernel_size=k)[:, 0]
        return x.reshape(len(x), -1)

    x_all, y_all = features(train_x), torch.from_numpy(train_y.astype(np.int64))
    x_test, y_test = features(test_x), torch.from_numpy(test_y.astype(np.int64))
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    tr, va = perm[val_size:], perm[:val_size]
    x_train, y_train = x_all[tr], y_all[tr]
    if standardize:
        mean, std = _mean_std(x_train)
        x_all, x_train, x_test = (x_all - mean) / std, (x_train - mean) / std, (x_test - mean) / std
    device = default_device() if device is None else torch.device(device)
    spec = {"name": "mnist", "pixels": "standardized" if standardize else "[0, 1]", "downsample": downsample,
            "val_size": val_size, "split_seed": seed}
    return Splits(Split(x_train, y_train), Split(x_all[va], y_all[va]), Split(x_test, y_test), spec).to(device)


# --------------------------------------------------------------------------- 2-D point clouds
POINT_CLOUD_KINDS = ("moons", "spirals")


def make_point_cloud(kind: str = "moons", n: int = 200, noise: float = 0.25, seed: int = 0):
    """A 2-D binary classification point cloud: ``(X, y)`` numpy arrays, X float32 (n x 2).

    * ``"moons"``: two interleaving half circles (radius 1), Gaussian noise of std ``noise``.
    * ``"spirals"``: two interleaved Archimedean spirals, 1.5 turns each; ``noise`` is relative
      to the radius scale (about 1).
    Classes are balanced (n // 2 and n - n // 2 points).
    """
    if kind not in POINT_CLOUD_KINDS:
        raise ValueError(f"kind must be one of {POINT_CLOUD_KINDS}, got {kind!r}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    n0 = n // 2
    n1 = n - n0
    if kind == "moons":
        t0, t1 = rng.uniform(0, np.pi, n0), rng.uniform(0, np.pi, n1)
        a = np.stack([np.cos(t0), np.sin(t0)], 1)
        b = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    else:
        def arm(m, phase):
            t = np.sqrt(rng.uniform(0, 1, m)) * 3 * np.pi  # uniform density along the arm
            r = t / (3 * np.pi)
            return np.stack([r * np.cos(t + phase), r * np.sin(t + phase)], 1)

        a, b = arm(n0, 0.0), arm(n1, np.pi)
    X = np.concatenate([a, b]) + rng.normal(0, noise, (n, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n1)]).astype(np.int64)
    order = rng.permutation(n)
    return X[order].astype(np.float32), y[order]


def split_point_cloud(kind: str = "moons", n_train: int = 100, n_val: int = 500, n_test: int = 2000,
                      noise: float = 0.3, seed: int = 0, device=None) -> Splits:
    """Train / validation / test point clouds drawn i.i.d. from the same distribution.

    The defaults - 100 noisy training points against 500 validation and 2,000 test points - make a
    wide MLP overfit visibly, which is the effect the regularizers are compared on. Validation and
    test are large so that their error rates are precise.
    """
    X, y = make_point_cloud(kind, n_train + n_val + n_test, noise, seed)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    a, b = n_train, n_train + n_val
    device = torch.device("cpu") if device is None else torch.device(device)
    spec = {"name": "point cloud", "kind": kind, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "noise": noise, "seed": seed}
    return Splits(Split(X[:a], y[:a]), Split(X[a:b], y[a:b]), Split(X[b:], y[b:]), spec).to(device)
