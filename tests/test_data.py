import gzip
import os

import numpy as np
import pytest
import torch

from hwutils import data as data_mod
from hwutils.data import (MNIST_FILES, DataError, find_mnist_dir, load_mnist, make_point_cloud,
                          read_idx, split_point_cloud)


def write_idx(path, array, compress=False):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return payload


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_parses_images_and_labels_written_by_the_test(tmp_path, compress):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 2, 1], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"img{suffix}", images, compress)
    write_idx(tmp_path / f"lab{suffix}", labels, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"lab{suffix}"), labels)


def test_read_idx_rejects_truncated_and_non_idx_files(tmp_path):
    payload = write_idx(tmp_path / "full", np.zeros((2, 3, 3)))
    (tmp_path / "short").write_bytes(payload[:-1])
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 definitely not idx")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def fake_mnist_folder(folder):
    """Four small IDX files under the official names (their MD5s will not match)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        shape = (5, 28, 28) if "images" in name else (5,)
        write_idx(folder / f"{name}.gz", np.zeros(shape), compress=True)
    return folder


def test_md5_mismatch_raises_a_clear_error_naming_the_file(tmp_path):
    fake_mnist_folder(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz has MD5 .* expected f68b3c2d"):
        load_mnist(tmp_path, download=False)


def test_missing_files_raise_one_error_naming_files_md5s_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("HWUTILS_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        find_mnist_dir(tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert "HWUTILS_DATA_DIR" in message and "\n" not in message
    for name, (md5_gz, _) in MNIST_FILES.items():
        assert f"{name}.gz" in message and md5_gz in message


def test_failed_download_becomes_the_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="download failed: OSError.*|HWUTILS_DATA_DIR"):
        find_mnist_dir(tmp_path, download=True)


def test_lookup_order_is_root_then_environment_variable(tmp_path, monkeypatch):
    fake_mnist_folder(tmp_path / "env")
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError, match="env"):  # found there, MD5 rejected
        find_mnist_dir(download=False)
    with pytest.raises(DataError, match="searched .*elsewhere"):  # root wins over the variable
        find_mnist_dir(tmp_path / "elsewhere", download=False)


def test_bad_arguments_fail_before_any_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="downsample"):
        load_mnist(tmp_path, downsample=5)
    with pytest.raises(ValueError, match="val_size"):
        load_mnist(tmp_path, val_size=60_000)


@pytest.mark.mnist
def test_real_mnist_has_the_official_shapes_counts_and_first_labels(mnist_dir):
    arrays = [read_idx(p) for p in find_mnist_dir(mnist_dir, download=False).values()]
    train_x, train_y, test_x, test_y = arrays
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert np.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train_y[:5].tolist() == [5, 0, 4, 1, 9] and test_y[:5].tolist() == [7, 2, 1, 0, 4]


@pytest.mark.mnist
def test_load_mnist_holds_out_a_fixed_disjoint_validation_split(mnist_dir):
    d = load_mnist(mnist_dir, device="cpu")
    assert d.train.X.shape == (50_000, 784) and d.val.X.shape == (10_000, 784) and d.test.X.shape == (10_000, 784)
    assert d.train.X.dtype == torch.float32 and d.train.y.dtype == torch.int64
    assert d.test.y[:5].tolist() == [7, 2, 1, 0, 4]  # the official test set, in its order
    assert abs(d.train.X.mean().item()) < 1e-4 and abs(d.train.X.std().item() - 1) < 1e-4
    again = load_mnist(mnist_dir, device="cpu")
    assert torch.equal(d.val.y, again.val.y)
    counts = torch.bincount(d.train.y, minlength=10) + torch.bincount(d.val.y, minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    other = load_mnist(mnist_dir, device="cpu", seed=1)
    assert not torch.equal(d.val.y, other.val.y)


@pytest.mark.mnist
def test_load_mnist_accepts_torchvision_raw_layout_and_downsamples_to_7x7(mnist_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / f"{name}.gz").symlink_to((mnist_dir / f"{name}.gz").resolve())
    d = load_mnist(tmp_path, downsample=7, standardize=False, device="cpu")
    assert d.train.X.shape == (50_000, 49)
    full = load_mnist(mnist_dir, standardize=False, device="cpu")
    pooled = full.test.X[:3].view(3, 7, 4, 7, 4).mean((2, 4)).reshape(3, 49)
    torch.testing.assert_close(d.test.X[:3], pooled)


def test_point_clouds_are_balanced_reproducible_and_validated():
    for kind in ("moons", "spirals"):
        X, y = make_point_cloud(kind, n=101, noise=0.2, seed=3)
        assert X.shape == (101, 2) and X.dtype == np.float32
        assert sorted(np.bincount(y).tolist()) == [50, 51]
        X2, _ = make_point_cloud(kind, n=101, noise=0.2, seed=3)
        np.testing.assert_array_equal(X, X2)
    with pytest.raises(ValueError, match="kind"):
        make_point_cloud("circles")


def test_split_point_cloud_defaults_give_a_small_train_and_large_evaluation_splits():
    d = split_point_cloud()
    assert len(d.train) < len(d.val) < len(d.test)
    assert d.n_features == 2 and d.n_classes == 2


# --------------------------------------------------------------------------- where the data is, and when it is not
def official(monkeypatch, folder):
    """Make the fake files in ``folder`` pass the MD5 check (as if they were the official ones)."""
    sums = {name: (data_mod._md5(folder / f"{name}.gz"),) * 2 for name in MNIST_FILES}
    monkeypatch.setattr(data_mod, "MNIST_FILES", sums)


def no_download(monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: pytest.fail("a download was attempted"))


def test_a_relative_data_dir_is_resolved_once_and_exported_absolute(tmp_path, monkeypatch):
    fake_mnist_folder(tmp_path / "data")
    official(monkeypatch, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", "data")
    files = find_mnist_dir(download=False)
    assert all(p.is_absolute() and p.parent == tmp_path / "data" for p in files.values())
    assert data_mod.export_mnist_dir(download=False) == tmp_path / "data"
    monkeypatch.chdir(tmp_path.parent)  # as the notebooks do: another working directory
    assert os.environ["HWUTILS_DATA_DIR"] == str(tmp_path / "data") and find_mnist_dir(download=False) == files


def test_a_mistyped_data_dir_is_named_and_no_folder_is_created(tmp_path, monkeypatch):
    no_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", "dtaa")
    with pytest.raises(DataError) as err:
        find_mnist_dir(download=True)
    message = str(err.value)
    assert "\n" not in message and "HWUTILS_DATA_DIR=dtaa" in message and str(tmp_path / "dtaa") in message
    assert "mkdir -p" in message and list(tmp_path.iterdir()) == []


def test_a_data_dir_that_is_a_file_is_named_with_its_folder_as_the_fix(tmp_path, monkeypatch):
    no_download(monkeypatch)
    folder = fake_mnist_folder(tmp_path / "mnist")
    official(monkeypatch, folder)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder / "train-images-idx3-ubyte.gz"))
    with pytest.raises(DataError) as err:
        find_mnist_dir(download=True)
    message = str(err.value)
    assert "\n" not in message and "is a file, not a folder" in message and "mkdir" not in message
    assert f"e.g. {folder} if they are there" in message
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder))  # the fix it names works
    assert find_mnist_dir(download=False)["train-images-idx3-ubyte"].parent == folder


def test_a_failed_download_leaves_no_folders_behind(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, **kwargs):
        (tmp_path / "mnist" / "MNIST" / "raw").mkdir(parents=True)  # what torchvision does first
        raise OSError("network is unreachable")

    (tmp_path / "mnist").mkdir()
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(tmp_path / "mnist"))
    with pytest.raises(DataError, match="download failed: OSError"):
        find_mnist_dir(download=True)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_not_found_says_which_of_the_four_files_are_missing_where(tmp_path, monkeypatch):
    folder = fake_mnist_folder(tmp_path / "mnist")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder))
    with pytest.raises(DataError) as err:
        find_mnist_dir(download=False)
    message = str(err.value)
    assert f"{folder}: missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz;" in message
    assert f"{tmp_path / 'data'}: no such folder" in message and "\n" not in message


def test_an_unreadable_mnist_file_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import builtins

    folder = fake_mnist_folder(tmp_path)
    official(monkeypatch, folder)
    victim = folder / "train-labels-idx1-ubyte.gz"
    victim.chmod(0)
    real_open = builtins.open

    def guarded(file, *args, **kwargs):  # chmod 0 does not stop root: refuse as the kernel would for a user
        if str(file) == str(victim):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(DataError) as err:
        find_mnist_dir(folder, download=False)
    assert str(err.value).startswith(f"cannot read {victim} (Permission denied)") and "chmod a+r" in str(err.value)
    with pytest.raises(DataError, match="cannot read .*train-labels"):
        read_idx(victim)
