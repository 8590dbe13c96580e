"""Natural-image data: embedded photographs cut into patches, CIFAR-10 from a local folder, image folders,
and the Gaussian clone of any dataset (docs/theory/images.md sections 2.1 and 9).

Images are float tensors of shape (n, C, H, W) with pixels in [-1, 1].

- Embedded default (no download): photographs that ship inside scikit-image and scikit-learn, cut into
  square patches at a stride. The split is by region: the right ``test_fraction`` of the columns of
  every photograph is the test region, the rest the training region, so no test patch overlaps a
  training patch.
- CIFAR-10 in its standard Python format (``data_batch_1`` .. ``data_batch_5``, ``test_batch``). The
  batches are pickles; they are read by an unpickler that only admits the few NumPy constructors the
  format needs, so a foreign file cannot run code.
- Any folder of PNG/JPEG images of one size (or resized to ``size``).
- The Gaussian clone: samples of N(mean, covariance) of a dataset (full covariance over all pixels
  and channels, negative eigenvalues clipped), :class:`easyhard.data.GaussianModel`.

These loaders need the ``images`` extra (scikit-image, scikit-learn, Pillow).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from easyhard._validate import ConfigError, check_int_at_least
from easyhard.data.mcm import GaussianModel

#: the embedded photographs: scikit-image names, and scikit-learn's two sample images. (scikit-image's
#: ``cat`` is the same picture as ``chelsea`` and is left out.)
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick", "moon", "coins",
          "clock", "sklearn:china", "sklearn:flower")
IMAGES_EXTRA = "image data needs the 'images' extra: pip install 'easyhard[images]'"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _photo(name: str) -> np.ndarray:
    """One embedded photograph as uint8 (H, W) or (H, W, 3)."""
    try:
        if name.startswith("sklearn:"):
            from sklearn.datasets import load_sample_image

            return load_sample_image(name.split(":", 1)[1] + ".jpg")
        from skimage import data
    except ImportError:
        raise ConfigError(IMAGES_EXTRA) from None
    loader = getattr(data, name, None)
    if loader is None:
        raise ConfigError(f"photo must be one of {', '.join(PHOTOS)} (got {name!r})")
    return loader()


def load_photos(names: tuple[str, ...] = PHOTOS, color: bool = False) -> list[np.ndarray]:
    """The embedded photographs as float arrays in [-1, 1]: (H, W, 1) grayscale or (H, W, 3) colour.

    Grayscale uses scikit-image's luminance ``rgb2gray``; a grayscale photograph in colour mode is
    repeated over the three channels.
    """
    try:
        from skimage.color import gray2rgb, rgb2gray
    except ImportError:
        raise ConfigError(IMAGES_EXTRA) from None
    out = []
    for name in names:
        img = _photo(name).astype(np.float64) / 255.0
        if color:
            img = gray2rgb(img) if img.ndim == 2 else img[..., :3]
        else:
            img = rgb2gray(img[..., :3]) if img.ndim == 3 else img
            img = img[..., None]
        out.append(2.0 * img - 1.0)
    return out


def _patches(img: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All size x size patches of an (H, W, C) image at ``stride``: (n, C, size, size)."""
    windows = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(0, 1))[::stride, ::stride]
    return windows.reshape(-1, img.shape[2], size, size)


def embedded_patches(split: str = "train", size: int = 8, stride: int = 2, color: bool = False,
                     n: int | None = None, test_fraction: float = 0.2, seed: int = 0,
                     names: tuple[str, ...] = PHOTOS) -> torch.Tensor:
    """Patches of the embedded photographs: (n, C, size, size) float32 in [-1, 1] (docs/theory/images.md section 9).

    ``split`` "train" cuts the left 1 - ``test_fraction`` of each photograph's columns, "test" the rest
    (a patch never straddles the border). ``n`` patches are drawn without replacement from all of them
    with ``seed`` (None: all, in photograph order). Defaults: 8x8 grayscale at stride 2.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test' (got {split!r})")
    check_int_at_least("size", size, 2)
    check_int_at_least("stride", stride, 1)
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1) (got {test_fraction})")
    pieces = []
    for img in load_photos(names, color):
        cut = int(round(img.shape[1] * (1 - test_fraction)))
        region = img[:, :cut] if split == "train" else img[:, cut:]
        if min(region.shape[:2]) >= size:
            pieces.append(_patches(region, size, stride))
    patches = np.concatenate(pieces)
    if n is not None:
        check_int_at_least("n", n, 1)
        if n > len(patches):
            raise ConfigError(f"n must be at most {len(patches)} ({split} patches of size {size} at stride "
                              f"{stride}; got {n})")
        patches = patches[np.random.default_rng(seed).choice(len(patches), n, replace=False)]
    return torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds: dicts, lists, bytes, str, ints and NumPy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,)) of one batch file."""
    try:
        batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:
        raise ConfigError(f"{path} is not a CIFAR-10 batch ({type(err).__name__}: {' '.join(str(err).split())})")
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ConfigError(f"{path}: expected 'data' of shape (n, 3072) and n labels (got {data.shape})")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from a local folder in the standard Python format: (images (n, 3, 32, 32) in [-1, 1], labels).

    The folder (or its ``cifar-10-batches-py`` subfolder) must hold data_batch_1 .. data_batch_5
    (train) and test_batch (test).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test' (got {split!r})")
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = CIFAR_TRAIN if split == "train" else (CIFAR_TEST,)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ConfigError(f"--data-dir {data_dir} must hold the CIFAR-10 Python batches data_batch_1 .. "
                          f"data_batch_5 and test_batch (missing: {', '.join(missing)})")
    parts = [_read_cifar_batch(root / n) for n in names]
    images = np.concatenate([p[0] for p in parts]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(images), torch.from_numpy(np.concatenate([p[1] for p in parts]))


def load_image_folder(folder: str | Path, size: int | None = None, color: bool = True) -> torch.Tensor:
    """Every PNG/JPEG in ``folder`` (sorted by name): (n, C, H, W) float32 in [-1, 1].

    All images must share one shape unless ``size`` is given (then each is resized to size x size).
    """
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError(IMAGES_EXTRA) from None
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not files:
        raise ConfigError(f"{folder} must be a folder holding PNG or JPEG images (*.png, *.jpg, *.jpeg)")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if color else "L")
                if size is not None:
                    im = im.resize((size, size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.float32))
        except OSError as err:
            raise ConfigError(f"{path} is not a readable image ({' '.join(str(err).split())})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ConfigError(f"images in {folder} have different sizes {sorted(shapes)[:3]}; pass size to resize them")
    stack = np.stack(arrays)
    stack = stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stack / 127.5 - 1.0, dtype=np.float32))


def gaussian_clone(images: torch.Tensor, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The Gaussian clone of a dataset: n samples of N(mean, covariance) of ``images`` (n, ...), same shape.

    Mean and full covariance over all pixels and channels (float64), sampled through the eigen-factor
    with negative eigenvalues clipped; no clamping to the pixel range (it would change the moments).
    """
    x = images.reshape(len(images), -1).to(torch.float64)
    mean = x.mean(0)
    cov = torch.cov(x.T)
    n = len(images) if n is None else check_int_at_least("n", n, 1)
    clone = GaussianModel(mean, cov).sample(n, generator, dtype=torch.float64)
    return clone.to(images.dtype).reshape(n, *images.shape[1:])
