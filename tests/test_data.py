import gzip
import os
import re

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


def test_read_idx_rejects_truncated_and_non_idx_files_in_one_line(tmp_path):
    payload = write_idx(tmp_path / "full", np.zeros((2, 3, 3)))
    (tmp_path / "short").write_bytes(payload[:-1])
    (tmp_path / "long").write_bytes(payload + b"\0")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 definitely not idx")
    (tmp_path / "empty").write_bytes(b"")
    for name in ("short", "long", "junk", "empty"):
        with pytest.raises(DataError, match=rf"{name} is not a complete IDX file \(truncated or corrupt\); "
                                            rf"replace it with the official {name}$"):
            read_idx(tmp_path / name)


def test_read_idx_names_a_bad_gzip_file(tmp_path):
    payload = write_idx(tmp_path / "full", np.zeros((2, 3, 3)))
    (tmp_path / "plain.gz").write_bytes(payload)          # not gzipped at all
    gzipped = gzip.compress(payload)
    (tmp_path / "cut.gz").write_bytes(gzipped[:len(gzipped) // 2])  # a download cut short
    for name in ("plain.gz", "cut.gz"):
        with pytest.raises(DataError, match=rf"{name} is not a valid gzip file .*replace it with the official {name}"):
            read_idx(tmp_path / name)


def test_the_md5s_are_torchvisions():
    from torchvision.datasets import MNIST

    assert {f"{name}.gz": md5 for name, md5 in MNIST_FILES.items()} == dict(MNIST.resources)


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
        load_mnist(tmp_path)


def test_missing_files_raise_one_error_naming_files_md5s_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("HWUTILS_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        find_mnist_dir(tmp_path / "nowhere")
    message = str(err.value)
    assert "HWUTILS_DATA_DIR" in message and "\n" not in message
    for name, md5 in MNIST_FILES.items():
        assert f"{name}.gz" in message and md5 in message


def test_missing_files_are_never_downloaded_and_nothing_is_created(tmp_path, monkeypatch):
    no_download(monkeypatch)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    searched = f"{tmp_path}: none of the four files; {tmp_path / 'data'}: no such folder"
    with pytest.raises(DataError, match=rf"MNIST not found \(searched {re.escape(searched)}\).*never downloaded"):
        load_mnist()
    assert list(tmp_path.iterdir()) == []


def test_lookup_order_is_root_then_environment_variable(tmp_path, monkeypatch):
    fake_mnist_folder(tmp_path / "env")
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError, match="env"):  # found there, MD5 rejected
        find_mnist_dir()
    with pytest.raises(DataError, match="searched .*elsewhere"):  # root wins over the variable
        find_mnist_dir(tmp_path / "elsewhere")


def test_bad_arguments_fail_before_any_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="downsample"):
        load_mnist(tmp_path, downsample=5)
    with pytest.raises(ValueError, match="val_size"):
        load_mnist(tmp_path, val_size=60_000)


@pytest.mark.mnist
def test_real_mnist_has_the_official_shapes_counts_and_first_labels(mnist_dir):
    arrays = [read_idx(p).numpy() for p in find_mnist_dir(mnist_dir).values()]
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
def test_load_mnist_is_the_same_at_one_and_at_two_threads(mnist_dir):
    """Its mean and std are summed in float64: a float32 sum rounds differently at 2 threads than at 1."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = load_mnist(mnist_dir, device="cpu")
        torch.set_num_threads(2)
        two = load_mnist(mnist_dir, device="cpu")
    finally:
        torch.set_num_threads(before)
    for a, b in zip((one.train, one.val, one.test), (two.train, two.val, two.test)):
        assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert one.spec == {"name": "mnist", "pixels": "standardized", "downsample": None, "val_size": 10_000,
                        "split_seed": 0}


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
    from torchvision.datasets.utils import calculate_md5

    sums = {name: calculate_md5(folder / f"{name}.gz") for name in MNIST_FILES}
    monkeypatch.setattr(data_mod, "MNIST_FILES", sums)


def no_download(monkeypatch):
    """Every way torchvision downloads MNIST fails the test."""
    import torchvision.datasets
    import torchvision.datasets.mnist
    import torchvision.datasets.utils

    def fail(*args, **kwargs):
        pytest.fail("a download was attempted")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fail)
    monkeypatch.setattr(torchvision.datasets.mnist.MNIST, "download", fail)
    for module in (torchvision.datasets.mnist, torchvision.datasets.utils):
        monkeypatch.setattr(module, "download_and_extract_archive", fail)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fail)


def test_a_relative_data_dir_is_resolved_once_and_exported_absolute(tmp_path, monkeypatch):
    fake_mnist_folder(tmp_path / "data")
    official(monkeypatch, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", "data")
    files = find_mnist_dir()
    assert all(p.is_absolute() and p.parent == tmp_path / "data" for p in files.values())
    assert data_mod.export_mnist_dir() == tmp_path / "data"
    monkeypatch.chdir(tmp_path.parent)  # as the notebooks do: another working directory
    assert os.environ["HWUTILS_DATA_DIR"] == str(tmp_path / "data") and find_mnist_dir() == files


def test_a_mistyped_data_dir_is_named_and_no_folder_is_created(tmp_path, monkeypatch):
    no_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", "dtaa")
    with pytest.raises(DataError) as err:
        find_mnist_dir()
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / 'dtaa'}: no such folder" in message and "HWUTILS_DATA_DIR=" in message
    assert list(tmp_path.iterdir()) == []


def test_a_data_dir_that_is_a_file_is_named_with_its_folder_as_the_fix(tmp_path, monkeypatch):
    no_download(monkeypatch)
    folder = fake_mnist_folder(tmp_path / "mnist")
    official(monkeypatch, folder)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder / "train-images-idx3-ubyte.gz"))
    with pytest.raises(DataError) as err:
        find_mnist_dir()
    message = str(err.value)
    assert "\n" not in message and "is a file, not a folder" in message and "mkdir" not in message
    assert f"e.g. {folder} if they are there" in message
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder))  # the fix it names works
    assert find_mnist_dir()["train-images-idx3-ubyte"].parent == folder


def test_not_found_says_which_of_the_four_files_are_missing_where(tmp_path, monkeypatch):
    folder = fake_mnist_folder(tmp_path / "mnist")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWUTILS_DATA_DIR", str(folder))
    with pytest.raises(DataError) as err:
        find_mnist_dir()
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
        find_mnist_dir(folder)
    assert str(err.value).startswith(f"cannot read {victim} (Permission denied)") and "chmod a+r" in str(err.value)
    with pytest.raises(DataError, match="cannot read .*train-labels"):
        read_idx(victim)
