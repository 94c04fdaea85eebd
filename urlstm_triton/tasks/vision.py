"""Pixel-by-pixel image classification: sequential MNIST, permuted MNIST, sequential CIFAR-10.

Images become sequences of pixels in row-major order: MNIST is 784 steps of 1 value, CIFAR-10 is 1024 steps of
3 channels (R, G, B). Permuted MNIST applies ONE fixed permutation of the 784 positions, drawn from a seed and
shared by every image of every split (the community port drew a new one per image: a different, harder task).

Data comes from the Hugging Face hub through ``datasets`` (``ylecun/mnist``, ``uoft-cs/cifar10``) or from a
local file, checked in full before training starts (:class:`DataError` names the file and the problem):

- ``.csv`` / ``.csv.gz``: one image per row, its pixel values (0..255) then its label (0..9), no header needed
  (a non-numeric first line is skipped as a header); the layout of ``data/mnist-5k/mnist_5k.csv.gz``.
  MNIST rows hold 784 pixels (row-major), CIFAR-10 rows 3072 (channel planes R, G, B, as CIFAR's own files).
- ``.npz``: ``x_train, y_train, x_test, y_test`` (Keras layout: both splits) or ``x, y`` / ``images, labels``
  (one set); images ``(N, 28, 28)`` / ``(N, 784)`` for MNIST, ``(N, 32, 32, 3)``, ``(N, 3, 32, 32)`` or
  ``(N, 3072)`` (channel planes) for CIFAR-10.
- ``.parquet``: the hub's layout (an ``image`` or ``img`` column of encoded PNGs and a ``label`` column) or one
  column per pixel plus a ``label`` column.

When only one file (one set) is given, a deterministic split (fixed seed) keeps ``test_fraction`` for testing:
4,000 / 1,000 for mnist-5k.
"""
from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, DataFileNotFound

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ImageSpec:
    name: str
    hub_name: str
    height: int
    width: int
    channels: int
    num_classes: int = 10

    @property
    def seq_len(self) -> int:
        return self.height * self.width

    @property
    def values_per_image(self) -> int:
        return self.seq_len * self.channels


MNIST = ImageSpec("mnist", "ylecun/mnist", 28, 28, 1)
CIFAR10 = ImageSpec("cifar10", "uoft-cs/cifar10", 32, 32, 3)

# task name -> (image spec, permuted?)
VISION_TASKS = {"smnist": (MNIST, False), "pmnist": (MNIST, True), "scifar": (CIFAR10, False)}


def vision_task(name: str) -> Tuple[ImageSpec, bool]:
    if name not in VISION_TASKS:
        raise ValueError(f"unknown vision task {name!r}: expected one of {tuple(VISION_TASKS)}")
    return VISION_TASKS[name]


@dataclass
class ImageSet:
    """Images as pixel sequences ``(N, T, C)`` uint8 in step order, and labels ``(N,)`` int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------------------------------
# checks shared by every format


def _image(k: int) -> str:
    return f"image {k}"


def _number(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return str(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)


def _check_labels(labels: np.ndarray, spec: ImageSpec, source: str, where=_image) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{source}: labels must be one value per image, got an array of shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            bad = int(np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0])
            raise DataError(f"{source}: label of {where(bad)} is {_number(labels[bad])}, not an integer class")
    out_of_range = (labels < 0) | (labels >= spec.num_classes)
    if np.any(out_of_range):
        bad = int(np.flatnonzero(out_of_range)[0])
        raise DataError(f"{source}: label of {where(bad)} is {_number(labels[bad])}, outside the classes "
                        f"0..{spec.num_classes - 1} "
                        f"({int(out_of_range.sum())} labels out of range)")
    return labels.astype(np.int64)


def _check_pixels(pixels: np.ndarray, source: str, where=_image) -> np.ndarray:
    """Pixel values must be integers in 0..255 (floats in [0, 1] are refused rather than guessed at)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise DataError(f"{source}: pixel values must be numbers, got dtype {pixels.dtype}")
    flat = pixels.reshape(len(pixels), -1)
    bad = ~np.isfinite(flat) | (flat < 0) | (flat > 255)
    if np.any(bad):
        n, k = np.argwhere(bad)[0]
        raise DataError(f"{source}: pixel {k} of {where(n)} is {_number(flat[n, k])}, outside 0..255 "
                        f"({int(bad.sum())} values out of range)")
    if np.issubdtype(pixels.dtype, np.floating) and np.any(flat != np.round(flat)):
        n, k = np.argwhere(flat != np.round(flat))[0]
        raise DataError(f"{source}: pixel {k} of {where(n)} is {_number(flat[n, k])}, not an integer in 0..255 "
                        "(if the file holds values in [0, 1], multiply them by 255)")
    return pixels.astype(np.uint8)


def to_sequences(pixels: np.ndarray, spec: ImageSpec, source: str, layout: str = "auto", where=_image) -> np.ndarray:
    """Images of any accepted shape -> ``(N, T, C)`` uint8 in row-major step order.

    ``layout`` tells how a flat row of CIFAR values is ordered: ``"planes"`` (R plane, G plane, B plane: CIFAR's
    files and our csv layout) or ``"pixels"`` (R, G, B of pixel 0, then pixel 1...).
    """
    pixels = _check_pixels(pixels, source, where)
    n, h, w, c = len(pixels), spec.height, spec.width, spec.channels
    shape = pixels.shape[1:]
    if shape == (h * w * c,):
        if c == 1 or layout in ("auto", "planes"):
            seq = pixels.reshape(n, c, h * w).transpose(0, 2, 1)
        else:
            seq = pixels.reshape(n, h * w, c)
    elif c == 1 and shape in ((h, w), (h, w, 1), (1, h, w)):
        seq = pixels.reshape(n, h * w, 1)
    elif shape == (h, w, c):
        seq = pixels.reshape(n, h * w, c)
    elif shape == (c, h, w):
        seq = pixels.reshape(n, c, h * w).transpose(0, 2, 1)
    else:
        accepted = f"(N, {h * w * c}), (N, {h}, {w})" if c == 1 else \
            f"(N, {h * w * c}), (N, {h}, {w}, {c}) or (N, {c}, {h}, {w})"
        raise DataError(f"{source}: images of shape {pixels.shape} do not fit {spec.name} ({h}x{w}x{c}); "
                        f"expected {accepted}")
    return np.ascontiguousarray(seq)


# ---------------------------------------------------------------------------------------------------------------
# local file formats


def resolve_data_path(path) -> Path:
    """``path`` as given, else relative to the project root (so ``data/...`` works from anywhere)."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() or p.is_absolute():
        if not p.exists():
            raise DataFileNotFound(f"data file not found: {p}")
        return p
    alt = PROJECT_ROOT / p
    if alt.exists():
        return alt
    raise DataFileNotFound(f"data file not found: {path} (looked in {Path.cwd()} and in the project root "
                            f"{PROJECT_ROOT})")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_csv(path: Path, spec: ImageSpec, label_column: str = "last") -> ImageSet:
    """One image per row: ``spec.values_per_image`` pixels and a label (last column, or first)."""
    if label_column not in ("last", "first"):
        raise ValueError(f"label_column must be 'last' or 'first', got {label_column!r}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"{path}: cannot be read as a {'gzip-compressed ' if opener is gzip.open else ''}"
                        f"text csv file ({err})") from err
    lines = text.splitlines()
    first = 0
    if lines and not all(_is_number(t) for t in lines[0].split(",")):
        first = 1  # a header line
    expected = spec.values_per_image + 1
    rows, line_numbers = [], []
    for i in range(first, len(lines)):
        line = lines[i].strip()
        if not line:
            continue
        n = line.count(",") + 1
        if n != expected:
            raise DataError(f"{path}: line {i + 1} has {n} columns, expected {expected} for {spec.name} "
                            f"({spec.values_per_image} pixel values and a label)")
        rows.append(line)
        line_numbers.append(i + 1)
    if not rows:
        raise DataError(f"{path}: holds no image rows")
    try:
        values = np.array(",".join(rows).split(","), dtype=np.float64).reshape(len(rows), expected)
    except ValueError:
        for k, row in enumerate(rows):  # find the culprit only on failure: the fast path parses in one go
            bad = [t for t in row.split(",") if not _is_number(t)]
            if bad:
                raise DataError(f"{path}: line {line_numbers[k]} holds {bad[0]!r}, which is not a number") from None
        raise
    if label_column == "last":
        pixels, labels = values[:, :-1], values[:, -1]
    else:
        pixels, labels = values[:, 1:], values[:, 0]
    source = str(path)

    def where(k):
        return f"line {line_numbers[k]}"

    return ImageSet(to_sequences(pixels, spec, source, "planes", where), _check_labels(labels, spec, source, where))


def read_npz(path: Path, spec: ImageSpec) -> Tuple[ImageSet, Optional[ImageSet]]:
    """``(train_or_all, test or None)`` from an ``.npz`` (keys listed in the module docstring)."""
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except Exception as err:  # numpy raises several types for a damaged archive
        raise DataError(f"{path}: cannot be read as an .npz archive ({err})") from err

    def pair(xk, yk):
        x, y = data[xk], data[yk]
        if len(x) != len(y):
            raise DataError(f"{path}: '{xk}' holds {len(x)} images but '{yk}' holds {len(y)} labels")
        source = f"{path} ['{xk}']"
        return ImageSet(to_sequences(x, spec, source), _check_labels(y, spec, f"{path} ['{yk}']"))

    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        return pair("x_train", "y_train"), pair("x_test", "y_test")
    for xk, yk in (("x", "y"), ("images", "labels")):
        if {xk, yk} <= keys:
            return pair(xk, yk), None
    raise DataError(f"{path}: expected arrays x_train, y_train, x_test, y_test (or x, y; or images, labels), "
                    f"found {sorted(keys)}")


def _decode_images(column, source: str) -> np.ndarray:
    from PIL import Image

    out = []
    for k, item in enumerate(column):
        raw = item.get("bytes") if isinstance(item, dict) else item
        if raw is None:
            raise DataError(f"{source}: image {k} holds no encoded bytes")
        try:
            out.append(np.asarray(Image.open(io.BytesIO(raw))))
        except Exception as err:
            raise DataError(f"{source}: image {k} cannot be decoded ({err})") from err
    return np.stack(out)


def read_parquet(path: Path, spec: ImageSpec) -> ImageSet:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:
        raise DataError(f"{path}: cannot be read as a parquet file ({err})") from err
    cols = table.column_names
    if "label" not in cols:
        raise DataError(f"{path}: has no 'label' column (columns: {cols[:8]}{'...' if len(cols) > 8 else ''})")
    labels = _check_labels(np.asarray(table.column("label").to_numpy(zero_copy_only=False)), spec, str(path))
    image_col = next((c for c in ("image", "img") if c in cols), None)
    if image_col is not None:
        pixels = _decode_images(table.column(image_col).to_pylist(), f"{path} ['{image_col}']")
        return ImageSet(to_sequences(pixels, spec, str(path)), labels)
    pixel_cols = [c for c in cols if c != "label"]
    if len(pixel_cols) != spec.values_per_image:
        raise DataError(f"{path}: has {len(pixel_cols)} pixel columns besides 'label', expected "
                        f"{spec.values_per_image} for {spec.name} (or an 'image'/'img' column of encoded images)")
    pixels = np.stack([np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                       for c in pixel_cols], axis=1)
    return ImageSet(to_sequences(pixels, spec, str(path), "planes"), labels)


def read_local(path, spec: ImageSpec, label_column: str = "last") -> Tuple[ImageSet, Optional[ImageSet]]:
    """Read a local file of any supported format: ``(train_or_all, test or None)``."""
    p = resolve_data_path(path)
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return read_csv(p, spec, label_column), None
    if name.endswith(".npz"):
        return read_npz(p, spec)
    if name.endswith(".parquet"):
        return read_parquet(p, spec), None
    raise DataError(f"{p}: unknown data format; expected a .csv, .csv.gz, .npz or .parquet file")


# ---------------------------------------------------------------------------------------------------------------
# the hub


def load_hub(spec: ImageSpec, hub_name: Optional[str] = None) -> Tuple[ImageSet, ImageSet]:
    """The train and test splits of ``hub_name`` (default ``spec.hub_name``) through ``datasets``."""
    name = hub_name or spec.hub_name
    try:
        import datasets

        ds = datasets.load_dataset(name)
    except Exception as err:
        raise DataError(
            f"could not load the {spec.name} data set {name!r} through `datasets` ({type(err).__name__}: {err}). "
            "Without network access, point --data at a local file: a .csv/.csv.gz with "
            f"{spec.values_per_image} pixel values (0..255) then the label on each row (e.g. "
            "data/mnist-5k/mnist_5k.csv.gz), an .npz with x_train/y_train/x_test/y_test (or x/y), or a "
            ".parquet with image+label columns (the hub's own files) or one column per pixel plus 'label'"
        ) from err
    sets = []
    for split in ("train", "test"):
        if split not in ds:
            raise DataError(f"hub data set {name!r} has no {split!r} split (splits: {list(ds)})")
        part = ds[split]
        image_col = next((c for c in ("image", "img") if c in part.column_names), None)
        if image_col is None or "label" not in part.column_names:
            raise DataError(f"hub data set {name!r} has columns {part.column_names}; expected image/img and label")
        source = f"{name} [{split}]"
        column = part[image_col]
        if len(column) and isinstance(column[0], dict):  # an undecoded image column: {"bytes": png, "path": ...}
            pixels = _decode_images(column, source)
        else:
            pixels = np.stack([np.asarray(im) for im in column])
        sets.append(ImageSet(to_sequences(pixels, spec, source),
                             _check_labels(np.asarray(part["label"]), spec, source)))
    return sets[0], sets[1]


# ---------------------------------------------------------------------------------------------------------------
# splits, permutation, torch datasets


def split_train_test(data: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> Tuple[ImageSet, ImageSet]:
    """A deterministic split: a fixed-seed shuffle, the last ``round(N * test_fraction)`` images for testing."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise DataError(f"{n} images cannot be split with test_fraction={test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    tr, te = order[: n - n_test], order[n - n_test:]
    return ImageSet(data.images[tr], data.labels[tr]), ImageSet(data.images[te], data.labels[te])


def fixed_permutation(seq_len: int, seed: int) -> torch.Tensor:
    """The one permutation of pixel positions that permuted MNIST applies to every image of every split."""
    return torch.randperm(seq_len, generator=torch.Generator().manual_seed(int(seed)))


def load_vision_data(task: str, data: Optional[str] = None, test_data: Optional[str] = None,
                     hub_name: Optional[str] = None, test_fraction: float = 0.2, split_seed: int = 0,
                     label_column: str = "last", max_train: Optional[int] = None,
                     max_test: Optional[int] = None) -> Tuple[ImageSet, ImageSet]:
    """Train and test sets for ``task``, from local files (``data`` [+ ``test_data``]) or else the hub."""
    spec, _ = vision_task(task)
    if data is None:
        if test_data is not None:
            raise ValueError("test_data was given without data (the training file)")
        train, test = load_hub(spec, hub_name)
    else:
        train, test = read_local(data, spec, label_column)
        if test_data is not None:
            if test is not None:
                raise ValueError(f"{data} already holds a test split; do not pass test_data as well")
            test, extra = read_local(test_data, spec, label_column)
            if extra is not None:
                raise ValueError(f"{test_data} holds two splits; pass a single-set file as test_data")
        if test is None:
            train, test = split_train_test(train, test_fraction, split_seed)
    if max_train is not None:
        train = ImageSet(train.images[:max_train], train.labels[:max_train])
    if max_test is not None:
        test = ImageSet(test.images[:max_test], test.labels[:max_test])
    return train, test


class PixelSequences(Dataset):
    """``(x (T, C) float32 in [0, 1], label)`` items, with an optional fixed permutation of the T steps."""

    def __init__(self, data: ImageSet, permutation: Optional[torch.Tensor] = None):
        images = torch.from_numpy(data.images)
        if permutation is not None:
            if sorted(permutation.tolist()) != list(range(images.shape[1])):
                raise ValueError(f"permutation must be a permutation of {images.shape[1]} steps")
            images = images[:, permutation]
        self.images = images.contiguous()
        self.labels = torch.from_numpy(data.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div_(255.0), self.labels[i]
