"""Datasets -> in-memory uint8 tensors on the training device; batches are index tensors.

Every dataset ends up as three :class:`Split`s of ``uint8 (N, C, H, W)`` images (plus labels or
generative factors). Scaling to [0, 1] and binarization happen on the batch, on the device; no
per-sample Python runs on the training path.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from vaerun.errors import DataError

log = logging.getLogger("vaerun")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHAPE_NAMES = ("square", "ellipse", "heart")
SHAPES_FACTORS = ("shape", "scale", "rotation", "x", "y")
CLASS_NAMES = {  # torchvision's order of the class ids
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


@dataclass
class Split:
    images: torch.Tensor                     # (N, C, H, W) uint8
    labels: Optional[torch.Tensor] = None    # (N,) class ids, or (N, F) generative factors

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: Optional[int]) -> "Split":
        if n is None:
            return self
        return Split(self.images[:n], None if self.labels is None else self.labels[:n])

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), None if self.labels is None else self.labels.to(device))


@dataclass
class Data:
    """Train/val/test splits plus how to turn a uint8 batch into model input."""

    name: str
    train: Split
    val: Split
    test: Split
    binarize: str = "none"                   # none | static | dynamic (static is applied at load)
    label_names: Sequence[str] = field(default_factory=tuple)  # class names, or factor names
    value_names: dict = field(default_factory=dict)  # factor -> names of its integer values (shapes: shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # (C, H, W)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)

    def to(self, device: torch.device) -> "Data":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def is_binary(self) -> bool:
        """True when the model sees only 0/1 pixels: dynamic binarization, or every training pixel
        is 0 or 255 (after static binarization, if any)."""
        return self.binarize == "dynamic" or self.saturated_share() == 1.0

    def saturated_share(self) -> float:
        """The share of training pixels at exactly 0 or 255 (before dynamic binarization): where
        a density on [0, 1] meets pixels piled on its two ends (MNIST at 28×28: 81.5 %)."""
        x = self.train.images
        return float(((x == 0) | (x == 255)).sum()) / max(1, x.numel())

    def prepare(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 in [0, 1]; a fresh Bernoulli draw per pixel when dynamic
        (``noise``: that draw's uniforms given, :meth:`binarization_noise`).

        Dynamic binarization draws x = 1 with probability v/255 exactly, as U < v for U uniform
        on the 255 integers 0..254, all in uint8: a third of the cost of ``torch.bernoulli`` on
        the scaled floats (the largest per-step overhead of an MNIST MLP step on a CPU)."""
        if self.binarize == "dynamic":
            u = self.binarization_noise(images.shape, generator, images.device) if noise is None else noise
            return (u < images).float()                                 # (B, C, H, W) in {0, 1}
        return torch.div(images, 255.0)                                 # (B, C, H, W) float32, one pass

    def binarization_noise(self, shape: torch.Size, generator: Optional[torch.Generator] = None,
                           device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
        """The uniforms of one dynamic binarization of images of ``shape`` (uint8 in 0..254), or
        None when the data are not dynamically binarized. Evaluation draws a whole split's at
        once, so its binarization does not depend on the batch size."""
        if self.binarize != "dynamic":
            return None
        device = device if device is not None else self.train.images.device
        return torch.randint(0, 255, shape, dtype=torch.uint8, generator=generator, device=device)

    def train_epoch(self, batch_size: int, order: torch.Generator, skip: int = 0) -> Iterator[torch.Tensor]:
        """One shuffled pass over the training split as uint8 batches; the permutation is drawn
        from ``order`` first, so restoring ``order`` to an epoch's start state and skipping
        ``skip`` batches continues that epoch exactly (resume)."""
        images = self.train.images
        perm = torch.randperm(images.shape[0], generator=order, device=images.device)
        for start in range(skip * batch_size, images.shape[0], batch_size):
            yield images.index_select(0, perm[start:start + batch_size])  # a third of images[idx]'s time


def default_root() -> str:
    """Where torchvision datasets live when ``dataset.root`` is null: $VAERUN_DATA or a cache dir."""
    return os.environ.get("VAERUN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "vaerun", "data")


# ---------------------------------------------------------------- shapes (dSprites-like)
def make_shapes(n: int, image_size: int, seed: int, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders ``n`` binary shapes with random factors, deterministically from ``seed`` (or
    from ``generator``'s state, which it advances).

    Returns uint8 images (n, 1, S, S) in {0, 255} and float factors (n, 5): shape id
    (0 square, 1 ellipse, 2 heart), scale in [0.6, 1], rotation in [0, 2π), x and y centre in
    [0.35, 0.65] of the image. Like dSprites, every factor is drawn from a small grid of values.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    shape = torch.randint(0, 3, (n,), generator=g)
    scale = torch.linspace(0.6, 1.0, 6)[torch.randint(0, 6, (n,), generator=g)]
    rotation = (2 * math.pi / 40) * torch.randint(0, 40, (n,), generator=g)
    grid = torch.linspace(0.35, 0.65, 16)
    cx = grid[torch.randint(0, 16, (n,), generator=g)]
    cy = grid[torch.randint(0, 16, (n,), generator=g)]
    factors = torch.stack([shape.float(), scale, rotation, cx, cy], dim=1)  # (n, 5)
    images = torch.empty(n, 1, image_size, image_size, dtype=torch.uint8)
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # pixel centres
    py, px = torch.meshgrid(coords, coords, indexing="ij")                       # (S, S)
    for start in range(0, n, 4096):                                              # bounded memory
        sl = slice(start, start + 4096)
        images[sl, 0] = _render(shape[sl], scale[sl], rotation[sl], cx[sl], cy[sl], px, py)
    return images, factors


def shapes_splits(sizes: Sequence[int], image_size: int, seed: int) -> list["Split"]:
    """Splits of ``sizes`` examples (train, val, test) of :func:`make_shapes`, none of whose
    held-out images is pixel for pixel a training image.

    Draws from the factor grid repeat, and distinct factors can render alike (a square turned
    by 90°, an ellipse by 180°, small turns at low resolution): drawn per split independently,
    about a fifth of the held-out images would be training images. Here each image goes to the
    split its bytes' hash picks (in proportion to ``sizes``), so equal images always share a
    split; draws for a split already full are dropped, and more are rendered until all are full."""
    import hashlib

    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    edges = torch.tensor(list(itertools.accumulate(sizes)), dtype=torch.float64) / total   # (S,) cumulative shares
    images, factors, splits, picks = [], [], [], []
    while not picks or any(len(p) < n for p, n in zip(picks, sizes)):
        imgs, facs = make_shapes(total, image_size, seed, generator=g)
        keys = torch.tensor([int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=6).digest(), "little")
                             for img in imgs.numpy()], dtype=torch.float64) / 2 ** 48          # (n,) in [0, 1)
        images.append(imgs)
        factors.append(facs)
        splits.append(torch.searchsorted(edges, keys, right=True))                           # (n,) split ids
        split = torch.cat(splits)
        picks = [torch.nonzero(split == k).flatten()[:n] for k, n in enumerate(sizes)]
    all_images, all_factors = torch.cat(images), torch.cat(factors)
    return [Split(all_images[p], all_factors[p]) for p in picks]


def _render(shape, scale, rotation, cx, cy, px, py) -> torch.Tensor:
    """Implicit-function rendering of a chunk of shapes: (n,) factors -> (n, S, S) uint8."""
    r = 0.35 * scale[:, None, None]                       # radius as a fraction of the image
    cos, sin = rotation.cos()[:, None, None], rotation.sin()[:, None, None]
    dx, dy = px[None] - cx[:, None, None], py[None] - cy[:, None, None]  # (n, S, S)
    u = (dx * cos + dy * sin) / r
    v = (-dx * sin + dy * cos) / r
    square = torch.maximum(u.abs(), v.abs()) <= 0.8
    ellipse = u.square() + (v / 0.55).square() <= 1.0
    hx, hy = 1.15 * u, -1.15 * v + 0.15                   # heart: (x²+y²−1)³ − x²y³ ≤ 0
    heart = (hx.square() + hy.square() - 1).pow(3) - hx.square() * hy.pow(3) <= 0
    s = shape[:, None, None]
    inside = torch.where(s == 0, square, torch.where(s == 1, ellipse, heart))
    return inside.to(torch.uint8) * 255


# ---------------------------------------------------------------- torchvision-layout datasets
_TV_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_TV_FILES = {"mnist": "MNIST/raw/train-images-idx3-ubyte",
             "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
             "cifar10": "cifar-10-batches-py/data_batch_1"}


def _missing_data(name: str, root: str, cause: Exception, download: bool) -> DataError:
    expected = os.path.join(root, _TV_FILES[name])
    if not download:
        why, online = "downloading is off (dataset.download=false)", "or allow the download with dataset.download=true"
    else:
        why = (f"the download failed ({type(cause).__name__}: "
               f"{str(cause).splitlines()[0].rstrip(':') if str(cause) else 'no message'})")
        online = "or connect this machine to the network (dataset.download is on)"
    return DataError(
        f"dataset '{name}' not found under dataset.root={root} (looked for {expected}) and {why}.\n"
        f"  fix: point dataset.root at the folder that holds it, e.g. dataset.root=../shared/data, "
        f"or set VAERUN_DATA; {online}.")


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: str) -> torch.Tensor:
    """An IDX file (MNIST's format: big-endian header, then uint8 data) as a uint8 tensor."""
    import numpy as np

    with open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x0801 labels, 0x0803 images: uint8 payloads
        raise DataError(f"{path} is not an uint8 IDX file (magic {magic:#x}).\n  fix: replace it with the original file")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({payload.size} of {int(np.prod(shape))} values).\n"
                        f"  fix: replace it with the original file")
    return torch.from_numpy(payload.copy()).view(*shape)


def _read_mnist_like(folder: str) -> tuple[Split, Split]:
    """torchvision's ``<root>/<Name>/raw`` IDX files, read directly (no per-image objects)."""
    def read(split: str) -> Split:
        images, labels = (os.path.join(folder, f) for f in _IDX_FILES[split])
        return Split(_read_idx(images).unsqueeze(1), _read_idx(labels).long())

    return read("train"), read("test")


def _load_torchvision(name: str, root: str, download: bool) -> tuple[Split, Split]:
    """(train, test) splits of MNIST / Fashion-MNIST / CIFAR-10 in torchvision's file layout.
    Files are read directly; torchvision is imported only to download missing files."""
    present = os.path.exists(os.path.join(root, _TV_FILES[name]))
    try:
        if not present:
            if not download:
                raise FileNotFoundError("dataset.download=false")
            import torchvision

            if name == "cifar10":
                torchvision.datasets.CIFAR10(root, train=True, download=True)
            else:
                getattr(torchvision.datasets, _TV_CLASSES[name])(root, train=True, download=True)
                getattr(torchvision.datasets, _TV_CLASSES[name])(root, train=False, download=True)
        if name == "cifar10":
            return _read_cifar10(os.path.join(root, "cifar-10-batches-py"))
        return _read_mnist_like(os.path.join(root, _TV_CLASSES[name], "raw"))
    except DataError:
        raise
    except Exception as err:  # torchvision raises RuntimeError / URLError / OSError here
        raise _missing_data(name, root, err, download) from err


def _read_cifar10(folder: str) -> tuple[Split, Split]:
    """Reads torchvision's ``cifar-10-batches-py`` pickles directly (no per-image objects)."""
    def read(files: list[str]) -> Split:
        data, labels = [], []
        for f in files:
            path = os.path.join(folder, f)
            if not os.path.exists(path):
                raise FileNotFoundError(f"missing {path}")
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            data.append(torch.as_tensor(entry["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            labels.append(torch.as_tensor(entry.get("labels", entry.get("fine_labels"))))
        return Split(torch.cat(data), torch.cat(labels).long())

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])


# ---------------------------------------------------------------- image folders
def _load_image_folder(path: str, image_size: int, channels: int,
                       on_bad_image: str = "error") -> tuple[Split, tuple[str, ...]]:
    """Every image under ``path`` (recursively), resized (shorter side) and centre-cropped.
    Labels are the index of each image's first-level subfolder when there are subfolders.
    An unreadable file stops with its name (``on_bad_image='error'``) or is skipped and counted."""
    from PIL import Image

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"dataset.path={path} is not a folder.\n  fix: pass dataset.path=/path/to/images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"dataset.path={path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).\n"
                        f"  fix: point dataset.path at a folder of images")
    classes = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)
    good, bad, converted, resized = [], [], 0, 0
    for p in files:  # load time only; training indexes the resulting tensor
        try:
            with Image.open(p) as im:
                converted += im.mode != mode
                resized += im.size != (image_size, image_size)
                im = im.convert(mode)
                w, h = im.size
                k = image_size / min(w, h)
                im = im.resize((max(image_size, round(w * k)), max(image_size, round(h * k))), Image.BILINEAR)
                left, top = (im.size[0] - image_size) // 2, (im.size[1] - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except Exception as err:
            if on_bad_image != "skip":
                raise DataError(f"could not read image {p}: {err}\n  fix: remove or replace the file, or skip "
                                f"unreadable files with dataset.on_bad_image=skip") from err
            bad.append(f"{p.name} ({type(err).__name__})")
            continue
        images[len(good)] = t.reshape(image_size, image_size, channels).permute(2, 0, 1)
        good.append(p)
    if bad:
        log.warning("image_folder: skipped %d unreadable of %d files under %s (dataset.on_bad_image=skip): %s%s",
                    len(bad), len(files), path, ", ".join(bad[:5]), " ..." if len(bad) > 5 else "")
    if not good:
        raise DataError(f"dataset.path={path}: none of its {len(files)} image files could be read.\n"
                        f"  fix: point dataset.path at a folder of readable images")
    if converted or resized:
        done = ([f"{converted} converted to {mode}"] if converted else []) + \
            ([f"{resized} resized/cropped to {image_size}x{image_size}"] if resized else [])
        log.info("image_folder: of %d images, %s", len(good), " and ".join(done))
    files, images = good, images[:len(good)]
    labels = None
    if classes:
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index.get(p.relative_to(folder).parts[0], -1) for p in files])
    return Split(images, labels), tuple(classes)  # class ids index the subfolder names; -1: a top-level file


# ---------------------------------------------------------------- shaping and splitting
def _conform(split: Split, channels: int, image_size: int) -> Split:
    """Converts channels (1 <-> 3) and resizes to ``image_size`` when the source differs."""
    x = split.images
    if x.shape[1] != channels:
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:  # ITU-R 601 luma
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return Split(x, split.labels)


def _carve(split: Split, sizes: Sequence[int]) -> list[Split]:
    """Consecutive pieces of a split: the first sizes[0] examples, then sizes[1], ..."""
    out, start = [], 0
    for n in sizes:
        out.append(Split(split.images[start:start + n],
                         None if split.labels is None else split.labels[start:start + n]))
        start += n
    return out


def load_data(name: str, *, root: Optional[str] = None, path: Optional[str] = None, download: bool = True,
              image_size: int = 32, channels: int = 1, num_examples: int = 20000, val_size: int = 2000,
              test_size: int = 2000, subset: Optional[int] = None, binarize: str = "none",
              seed: int = 0, on_bad_image: str = "error") -> Data:
    """Loads (or generates) a dataset into CPU uint8 tensors, split into train/val/test.

    Validation is carved from the end of the training set. ``subset`` keeps the first N examples
    of every split. ``binarize='static'`` draws one fixed Bernoulli sample per pixel here (seeded);
    ``'dynamic'`` draws a fresh one per batch in :meth:`Data.prepare`. ``root`` and ``path`` may
    start with ``~`` (the home folder).
    """
    root, path = (os.path.expanduser(p) if p else p for p in (root, path))
    label_names: Sequence[str] = ()
    if name == "shapes":
        train, val, test = shapes_splits([num_examples - val_size, val_size, test_size], image_size, seed)
        label_names = SHAPES_FACTORS
    elif name in ("mnist", "fashion_mnist", "cifar10"):
        full, test = _load_torchvision(name, root or default_root(), download)
        if val_size >= len(full):
            raise DataError(f"dataset.val_size={val_size} leaves no training examples out of {len(full)}.\n"
                            f"  fix: use e.g. dataset.val_size=5000")
        train, val = _carve(full, [len(full) - val_size, val_size])
    elif name == "image_folder":
        full, label_names = _load_image_folder(path or "", image_size, channels, on_bad_image)
        if len(full) <= val_size + test_size:
            raise DataError(
                f"dataset.path={path} has {len(full)} images, not more than dataset.val_size + dataset.test_size "
                f"= {val_size + test_size}.\n  fix: lower them, e.g. dataset.val_size={max(1, len(full) // 10)} "
                f"dataset.test_size={max(1, len(full) // 10)}")
        perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))
        full = Split(full.images[perm], None if full.labels is None else full.labels[perm])
        train, val, test = _carve(full, [len(full) - val_size - test_size, val_size, test_size])
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of shapes, mnist, fashion_mnist, cifar10, image_folder")
    label_names = CLASS_NAMES.get(name, label_names)
    train, val, test = (_conform(s.head(subset), channels, image_size) for s in (train, val, test))
    if binarize == "static":  # one fixed draw, the same for every epoch (Larochelle-style)
        g = torch.Generator().manual_seed(seed + 7919)
        train, val, test = (Split((torch.bernoulli(s.images.float() / 255, generator=g) * 255).to(torch.uint8),
                                  s.labels) for s in (train, val, test))
    return Data(name, train, val, test, binarize=binarize, label_names=label_names,
                value_names={"shape": SHAPE_NAMES} if name == "shapes" else {})
