"""Datasets: the shapes generator, binarization, torchvision layouts, image folders, clear errors."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA, make_fake_cifar10, make_image_folder, needs_mnist
from vaerun.data import SHAPES_FACTORS, load_data, make_shapes
from vaerun.errors import DataError


def test_shapes_are_binary_deterministic_and_carry_factors():
    a, fa = make_shapes(300, 24, seed=3)
    b, fb = make_shapes(300, 24, seed=3)
    c, _ = make_shapes(300, 24, seed=4)
    assert a.shape == (300, 1, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(fa, fb) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0, 255}
    assert fa.shape == (300, len(SHAPES_FACTORS))
    assert set(fa[:, 0].tolist()) == {0.0, 1.0, 2.0}
    assert fa[:, 1].min() >= 0.6 and fa[:, 1].max() <= 1.0
    assert (a.flatten(1) > 0).sum(1).min() > 10       # every image shows a shape
    # larger scale -> more pixels on average
    area = (a.flatten(1) > 0).sum(1).float()
    assert area[fa[:, 1] == 1.0].mean() > area[fa[:, 1] == 0.6].mean()


def test_load_shapes_splits_and_subset():
    d = load_data("shapes", image_size=16, num_examples=500, val_size=100, test_size=50, seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (400, 100, 50)
    assert d.shape == (1, 16, 16) and d.is_binary() and d.label_names == SHAPES_FACTORS
    assert d.train.labels.shape == (400, 5)
    small = load_data("shapes", image_size=16, num_examples=500, val_size=100, test_size=50, subset=30)
    assert (len(small.train), len(small.val), len(small.test)) == (30, 30, 30)


def test_dynamic_binarization_draws_fresh_pixels_every_batch():
    d = load_data("shapes", image_size=8, num_examples=50, val_size=10, test_size=10)
    d.binarize = "dynamic"
    grey = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    x1, x2 = d.prepare(grey, g), d.prepare(grey, g)
    assert set(x1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(x1, x2)


def test_static_binarization_is_fixed_at_load(tmp_path):
    make_image_folder(tmp_path, n=20)
    kw = dict(path=str(tmp_path), image_size=8, channels=1, val_size=4, test_size=4, binarize="static", seed=1)
    a, b = load_data("image_folder", **kw), load_data("image_folder", **kw)
    assert a.is_binary() and torch.equal(a.train.images, b.train.images)
    assert torch.equal(a.prepare(a.train.images), a.prepare(a.train.images))


def test_image_folder_rgb_mixed_sizes_and_labels(tmp_path):
    make_image_folder(tmp_path, n=30)
    d = load_data("image_folder", path=str(tmp_path), image_size=12, channels=3, val_size=5, test_size=5)
    assert d.shape == (3, 12, 12) and len(d.train) == 20
    assert set(d.train.labels.tolist()) == {0, 1} and d.label_names == ("cats", "dogs")   # the subfolders
    grey = load_data("image_folder", path=str(tmp_path), image_size=12, channels=1, val_size=5, test_size=5)
    assert grey.shape == (1, 12, 12)


def test_image_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_data("image_folder", path=str(tmp_path), val_size=1, test_size=1)
    with pytest.raises(DataError, match="is not a folder"):
        load_data("image_folder", path=str(tmp_path / "nope"), val_size=1, test_size=1)
    make_image_folder(tmp_path / "few", n=4)
    with pytest.raises(DataError, match="val_size"):
        load_data("image_folder", path=str(tmp_path / "few"), val_size=2, test_size=2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png"):
        load_data("image_folder", path=str(tmp_path / "bad"), val_size=1, test_size=1)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_dataset_offline_names_root_and_fix(tmp_path, name):
    with pytest.raises(DataError) as err:
        load_data(name, root=str(tmp_path), download=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "fix:" in msg and "dataset.root" in msg
    assert "downloading is off" in msg and "dataset.download=true" in msg


def test_a_failed_download_says_so_and_does_not_suggest_turning_download_on(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried all mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as err:
        load_data("mnist", root=str(tmp_path), download=True)
    msg = str(err.value)
    assert "the download failed (RuntimeError: Error downloading train-images-idx3-ubyte.gz)" in msg
    assert "dataset.download=true" not in msg and "network" in msg and "dataset.root=" in msg


def test_cifar10_layout_is_read_directly(tmp_path):
    make_fake_cifar10(tmp_path, n=20)
    d = load_data("cifar10", root=str(tmp_path), download=False, image_size=32, channels=3, val_size=10)
    assert d.shape == (3, 32, 32) and len(d.train) == 90 and len(d.test) == 20
    assert d.train.labels.dtype == torch.int64


def test_default_root_follows_vaerun_data(monkeypatch, tmp_path):
    from vaerun.data import default_root

    monkeypatch.setenv("VAERUN_DATA", str(tmp_path))
    assert default_root() == str(tmp_path)
    monkeypatch.delenv("VAERUN_DATA")
    assert default_root().endswith(".cache/vaerun/data")


@needs_mnist
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_mnist_loads_as_uint8_tensors(name):
    d = load_data(name, root=str(SHARED_DATA), download=False, image_size=28, val_size=5000)
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.shape == (1, 28, 28) and d.train.images.dtype == torch.uint8
    assert d.train.labels.shape == (55000,)
    if name == "fashion_mnist":                                     # the latent map's legend: torchvision's names
        from torchvision.datasets import FashionMNIST

        assert list(d.label_names) == FashionMNIST.classes


def test_dynamic_binarization_is_bernoulli_of_the_grey_level():
    """P(x = 1) = v/255 exactly: 0 and 255 are deterministic, every level in between has its
    frequency within sampling error of v/255; and it reads as binary data (no Bernoulli warning)."""
    d = load_data("shapes", image_size=8, num_examples=50, val_size=10, test_size=10)
    d.binarize = "dynamic"
    levels = torch.tensor([0, 1, 51, 128, 200, 254, 255], dtype=torch.uint8)
    v = levels.view(1, 1, 1, -1).expand(40000, 1, 1, -1).contiguous()
    x = d.prepare(v, torch.Generator().manual_seed(3))
    freq = x.mean(0).flatten()
    p = levels.double() / 255
    assert freq[0] == 0 and freq[-1] == 1
    assert ((freq.double() - p).abs() <= 4 * (p * (1 - p) / 40000).sqrt() + 1e-12).all(), (freq, p)
    assert d.is_binary()
