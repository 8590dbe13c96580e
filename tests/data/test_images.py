"""Natural-image data: embedded patches, CIFAR-10 batches, image folders and the Gaussian clone."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.images import (
    embedded_patches,
    gaussian_clone,
    load_cifar10,
    load_image_folder,
    load_photos,
)


@pytest.fixture(scope="module")
def patches():
    return embedded_patches("train", n=20_000), embedded_patches("test", n=5_000)


def test_patches_shape_range_and_seeded_subsample(patches):
    train, test = patches
    assert train.shape == (20_000, 1, 8, 8) and test.shape == (5_000, 1, 8, 8)
    assert train.dtype == torch.float32 and train.min() >= -1 and train.max() <= 1
    assert torch.equal(embedded_patches("test", n=5_000), test)  # fixed seed, fixed split
    assert not torch.equal(embedded_patches("test", n=5_000, seed=1), test)
    assert embedded_patches("train", size=16, stride=8, color=True, n=10).shape == (10, 3, 16, 16)


def test_split_is_by_region():
    """Train patches come from the left 80% of the columns, test patches from the rest: counts by geometry."""
    size, stride = 8, 4
    expected = {"train": 0, "test": 0}
    for img in load_photos():
        h, w = img.shape[:2]
        cut = int(round(w * 0.8))
        for split, width in (("train", cut), ("test", w - cut)):
            expected[split] += ((h - size) // stride + 1) * ((width - size) // stride + 1)
    for split in ("train", "test"):
        assert len(embedded_patches(split, size=size, stride=stride)) == expected[split]


def _pca_kurtosis(x: torch.Tensor, modes=slice(-16, -1)) -> torch.Tensor:
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(0)
    _, vecs = torch.linalg.eigh(torch.cov(x.T))
    s = x @ vecs[:, modes]
    return (s**4).mean(0) / (s**2).mean(0) ** 2 - 3


def test_patches_are_leptokurtic_and_the_clone_is_not(patches):
    """docs/theory/images.md section 9: PCA modes 2-16 of natural patches have excess kurtosis ~9-21; a Gaussian 0."""
    train, _ = patches
    assert _pca_kurtosis(train).mean() > 5
    clone = gaussian_clone(train, generator=torch.Generator().manual_seed(0))
    assert clone.shape == train.shape and clone.dtype == train.dtype
    assert _pca_kurtosis(clone).abs().max() < 0.3


def test_clone_matches_mean_and_covariance_within_the_split_half_error(patches):
    """Sanity check of docs/theory/images.md section 2.1: ||Sigma_clone - Sigma|| is within 2x of two disjoint halves."""
    train, _ = patches
    flat = train.reshape(len(train), -1).double()
    cov = torch.cov(flat.T)
    clone = gaussian_clone(train, generator=torch.Generator().manual_seed(3)).reshape(len(train), -1).double()
    err_clone = torch.linalg.norm(torch.cov(clone.T) - cov) / torch.linalg.norm(cov)
    half = len(flat) // 2
    err_halves = torch.linalg.norm(torch.cov(flat[:half].T) - torch.cov(flat[half:].T)) / torch.linalg.norm(cov)
    assert err_clone < 2 * err_halves
    assert (clone.mean(0) - flat.mean(0)).abs().max() < 5 * flat.std(0).max() / len(flat) ** 0.5


def _write_cifar(folder, rng, n=20):
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, fh, protocol=2)
        batches[name] = (data, labels)
    return batches


def test_cifar10_folder_in_the_standard_format(tmp_path):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    train, train_labels = load_cifar10(tmp_path, "train")
    test, test_labels = load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    assert train.shape == (100, 3, 32, 32) and test.shape == (20, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(train[0].numpy(), first, atol=1e-6)  # channel-major rows, scaled to [-1, 1]
    assert test_labels.tolist() == batches["test_batch"][1]
    assert train_labels[20:40].tolist() == batches["data_batch_2"][1]


def test_cifar10_errors_name_the_layout_and_refuse_code(tmp_path):
    with pytest.raises(ConfigError, match="data_batch_1 .. data_batch_5 and test_batch"):
        load_cifar10(tmp_path, "train")
    _write_cifar(tmp_path / "c", np.random.default_rng(1))

    class Exploit:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    with open(tmp_path / "c" / "test_batch", "wb") as fh:
        pickle.dump({b"data": Exploit(), b"labels": []}, fh)
    with pytest.raises(ConfigError, match="forbidden object"):
        load_cifar10(tmp_path / "c", "test")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path.cwd() / "PWNED").exists()


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = [rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    x = load_image_folder(folder)
    assert x.shape == (3, 3, 12, 10)
    np.testing.assert_allclose(x[1].numpy(), arrays[1].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    assert load_image_folder(folder, color=False).shape == (3, 1, 12, 10)
    Image.fromarray(arrays[0][:8]).save(folder / "3.png")
    with pytest.raises(ConfigError, match="different sizes"):
        load_image_folder(folder)
    assert load_image_folder(folder, size=8).shape == (4, 3, 8, 8)
    with pytest.raises(ConfigError, match="PNG or JPEG"):
        load_image_folder(tmp_path / "nothing-here")
