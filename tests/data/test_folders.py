"""Folders of images or arrays as one tensor: formats, item/batch rules, one-line errors, no code execution."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from easyhard._validate import ConfigError
from easyhard.data.folders import load_tensor_folder
from easyhard.data.images import load_image_folder


class _Payload:
    """Unpickling calls os.mkdir(marker): proof that code would have run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _one_line_error(folder, name=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_tensor_folder(folder, name)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_png_folder_equals_image_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    x = load_tensor_folder(tmp_path)
    assert x.shape == (3, 3, 6, 5) and torch.equal(x, load_image_folder(tmp_path))


def test_npy_single_items_and_batches_in_name_order(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(size=(3, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "c.npy", np.stack([c, c]))  # a batch of 2 (one more dimension) with single items
    (tmp_path / "notes.txt").write_text("ignored")
    x = load_tensor_folder(tmp_path)
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(np.stack([a, b, c, c])))


@pytest.mark.parametrize("shapes,expected", [
    ([(5, 3, 4, 4)], (5, 3, 4, 4)),           # 4-D: a batch
    ([(2, 3, 4, 4), (2, 3, 4, 4)], (4, 3, 4, 4)),
    ([(7, 6)], (7, 6)),                       # a lone 2-D file: a batch of vectors
    ([(4, 4), (4, 4), (4, 4)], (3, 4, 4)),    # several 2-D files of one shape: single images
    ([(5, 6), (2, 6)], (7, 6)),               # shapes differ in the first axis only: batches
    ([(6,), (6,)], (2, 6)),                   # 1-D: single vectors
])
def test_item_and_batch_rules(tmp_path, shapes, expected):
    for i, shape in enumerate(shapes):
        np.save(tmp_path / f"{i:02d}.npy", np.ones(shape))
    assert load_tensor_folder(tmp_path).shape == expected


def test_pt_tensors(tmp_path):
    t = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    torch.save(t[:2], tmp_path / "0.pt")
    torch.save(t[2:], tmp_path / "1.pt")
    assert torch.equal(load_tensor_folder(tmp_path), t.float())


def test_missing_empty_mixed_and_shapes(tmp_path):
    assert "no such folder" in _one_line_error(tmp_path / "nope", "--train")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.npy").write_bytes(b"")
    assert "holds no images or arrays" in _one_line_error(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((2, 3)))
    torch.save(torch.zeros(2, 3), mixed / "b.pt")
    assert "mixes file kinds" in _one_line_error(mixed)
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    np.save(shapes / "a.npy", np.zeros((2, 3, 4, 4)))
    np.save(shapes / "b.npy", np.zeros((2, 3, 5, 5)))
    assert "different shapes" in _one_line_error(shapes)
    dims = tmp_path / "dims"
    dims.mkdir()
    np.save(dims / "a.npy", np.zeros(4))
    np.save(dims / "b.npy", np.zeros((2, 2, 2)))
    assert "incompatible numbers of dimensions" in _one_line_error(dims)


def test_non_finite_and_bad_dtype(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[0.0, np.nan], [1.0, np.inf]]))
    assert "a.npy holds 2 non-finite values" in _one_line_error(tmp_path)
    other = tmp_path / "str"
    other.mkdir()
    np.save(other / "a.npy", np.array(["x", "y"]))
    assert "dtype" in _one_line_error(other)


def test_pt_non_tensor_is_refused(tmp_path):
    torch.save({"x": torch.zeros(2)}, tmp_path / "a.pt")
    assert "holds a dict, not a tensor" in _one_line_error(tmp_path)


def test_malicious_files_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for name, write in [("zip.pt", lambda p: torch.save(_Payload(marker), p)),
                        ("legacy.pt", lambda p: p.write_bytes(pickle.dumps(_Payload(marker)))),
                        ("object.npy", lambda p: np.save(p, np.array([_Payload(marker)], dtype=object)))]:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        write(folder / name)
        message = _one_line_error(folder)
        assert "refused" in message or "without pickle" in message
        assert not marker.exists()
