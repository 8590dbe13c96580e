"""A folder of samples or data from any tool, as one float32 tensor (n, ...).

A folder holds one kind of file:

- PNG/JPEG images (read by :func:`easyhard.data.images.load_image_folder`: RGB, (n, 3, H, W) in [-1, 1];
  needs the ``images`` extra), or
- NumPy ``.npy`` files (read with ``allow_pickle=False``: object arrays are refused), or
- PyTorch ``.pt`` / ``.pth`` files (read with ``torch.load(weights_only=True)``; the file must hold one
  tensor: pickled code, classes and containers are refused without running anything).

Arrays keep their own value range (no rescaling): samples and training data must use the same one.
Files are read in sorted file-name order (zero-pad numbers in names) and concatenated. Hidden files
(names starting with ".") and files of other suffixes are ignored.

Each array file is either one item or a batch (n, ...) of items [choice, to settle the ambiguity of
shapes]:

- files with 4 or more dimensions are batches (n, C, H, W, ...);
- files with one dimension are single vectors (d,);
- files with 2 or 3 dimensions ((H, W), (C, H, W), or batches (n, d), (n, H, W)): a lone file is a
  batch; several files of one shape are single items; several files whose shapes differ only in the
  first axis are batches;
- files of two dimensionalities r and r + 1 mix single items (r) and batches of them (r + 1).

Every problem (missing or empty folder, mixed kinds, unreadable or refused files, inconsistent shapes,
non-finite values) raises :class:`ConfigError` with one line naming the folder.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from easyhard._validate import ConfigError
from easyhard.data.images import IMAGE_SUFFIXES, load_image_folder

#: file kind by suffix
KINDS = {**{s: "image" for s in IMAGE_SUFFIXES}, ".npy": ".npy", ".pt": ".pt", ".pth": ".pt"}
ACCEPTED = "*.png, *.jpg, *.jpeg, *.npy, *.pt, *.pth"


def _one_line(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _read_npy(path: Path, label: str) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # pickled object arrays raise ValueError; garbage raises various errors
        raise ConfigError(f"{label}: {path.name} is not a readable .npy array without pickle "
                          f"({_one_line(err)})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive behind a .npy name
        getattr(arr, "close", lambda: None)()
        raise ConfigError(f"{label}: {path.name} is an .npz archive; each .npy file must hold one array")
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{label}: {path.name} has dtype {arr.dtype}; a bool, integer or float array is needed")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _read_pt(path: Path, label: str) -> torch.Tensor:
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol is refused below, not warned about
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # weights_only refuses globals (code, classes) with UnpicklingError
        found = re.search(r"GLOBAL (\S+)", str(err))
        kind = type(err).__name__ + (f": it would load {found.group(1)}" if found else "")
        raise ConfigError(f"{label}: {path.name} was refused by torch.load(weights_only=True) ({kind}); "
                          f"a .pt file must hold one tensor saved with torch.save(tensor, path)") from None
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"{label}: {path.name} holds a {type(obj).__name__}, not a tensor; "
                          f"a .pt file must hold one tensor saved with torch.save(tensor, path)")
    if obj.layout != torch.strided or obj.is_complex() or obj.is_quantized:
        raise ConfigError(f"{label}: {path.name} holds a {obj.layout} {obj.dtype} tensor; "
                          f"a dense real (bool, integer or float) tensor is needed")
    return obj.detach().to(torch.float32).contiguous()


def _items(label: str, arrays: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Concatenate single items and batches (module docstring rules) into (n, ...)."""
    ndims = sorted({t.ndim for _, t in arrays})
    if ndims[0] == 0:
        name = next(n for n, t in arrays if t.ndim == 0)
        raise ConfigError(f"{label}: {name} holds a scalar; each file must be one item or a batch (n, ...)")
    if len(ndims) > 2 or (len(ndims) == 2 and ndims[1] != ndims[0] + 1):
        raise ConfigError(f"{label}: files have incompatible numbers of dimensions {ndims}; each file must be "
                          f"one item or a batch (n, ...) of items of one shape")
    r = ndims[0]
    shapes = [tuple(t.shape) for _, t in arrays]
    if len(ndims) == 2:
        batch = [t.ndim == r + 1 for _, t in arrays]
    elif r >= 4 or (r >= 2 and len(arrays) == 1):
        batch = [True] * len(arrays)
    elif r == 1 or len(set(shapes)) == 1:
        batch = [False] * len(arrays)
    else:
        batch = [True] * len(arrays)  # 2 or 3 dimensions, several shapes: batches if only the first axis differs
    item_shapes = {(name, s[1:] if b else s) for (name, _), s, b in zip(arrays, shapes, batch)}
    distinct = {}
    for name, s in sorted(item_shapes):
        distinct.setdefault(s, name)
    if len(distinct) > 1:
        examples = ", ".join(f"{name} {s}" for s, name in list(distinct.items())[:3])
        raise ConfigError(f"{label}: files hold items of different shapes ({examples}); each file must be one item "
                          f"or a batch (n, ...) of items of one shape")
    x = torch.cat([t if b else t[None] for (_, t), b in zip(arrays, batch)])
    if len(x) == 0:
        raise ConfigError(f"{label}: the arrays hold no items (batches of length 0)")
    return x


def load_tensor_folder(folder: str | Path, name: str | None = None) -> torch.Tensor:
    """Every image or array file of ``folder`` as one float32 tensor (n, ...) (module docstring).

    ``name``: the option or parameter the folder was given as, prefixed to error messages.
    """
    label = f"{name} {folder}" if name else str(folder)
    root = Path(folder)
    if not root.exists():
        raise ConfigError(f"{label}: no such folder")
    if not root.is_dir():
        raise ConfigError(f"{label} is not a folder")
    files = sorted(p for p in root.iterdir()
                   if p.suffix.lower() in KINDS and not p.name.startswith(".") and p.is_file())
    if not files:
        raise ConfigError(f"{label} holds no images or arrays ({ACCEPTED})")
    counts: dict[str, int] = {}
    for p in files:
        counts[KINDS[p.suffix.lower()]] = counts.get(KINDS[p.suffix.lower()], 0) + 1
    if len(counts) > 1:
        mix = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        raise ConfigError(f"{label} mixes file kinds ({mix}); a folder must hold only images, only .npy or "
                          f"only .pt files")
    kind = next(iter(counts))
    if kind == "image":
        try:
            return load_image_folder(root)
        except ConfigError as err:
            raise ConfigError(f"{label}: {err}") from None
    read = _read_npy if kind == ".npy" else _read_pt
    arrays = []
    for path in files:
        t = read(path, label)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ConfigError(f"{label}: {path.name} holds {bad} non-finite values (NaN or inf)")
        arrays.append((path.name, t))
    return _items(label, arrays)
