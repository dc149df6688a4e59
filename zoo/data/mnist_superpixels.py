"""MNIST as superpixel graphs (Dwivedi et al., "Benchmarking Graph Neural Networks"), built from the zoo's MNIST.

Each image is cut into at most ``n_segments`` SLIC superpixels (scikit-image; SLIC may return more than asked,
so it is rerun asking for one fewer until it does not); a node's features are its mean intensity in [0, 1]
and its centroid (column, 1 - row) scaled to [0, 1] (upright when plotted), and each node attends to its ``k``
nearest other nodes. The 55k/5k/10k split is the MNIST module's own (same ``val_size``, ``seed``, ``limit``);
``limit`` also keeps a tenth of that many test images. Graphs are built once per split, in ``workers``
processes with a progress bar, and cached under the data root (zoo/data/cache.py).
"""
from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import torch

from .graphs import GraphData
from .base import check_range, register_data
from .cache import cached
from .mnist import MNIST

CHUNK = 500  # images per task handed to a worker process


def superpixel_graph(image: np.ndarray, n_segments: int, compactness: float, k: int):
    """[H, W] image in [0, 1] -> features [n, 3] (intensity, x, y), neighbours [n, k] (-1 when n <= k)."""
    from skimage.segmentation import slic

    ask = n_segments
    while True:
        seg = slic(image, n_segments=ask, compactness=compactness, channel_axis=None, start_label=0)
        labels = np.unique(seg)
        if len(labels) <= n_segments or ask == 1:
            break
        ask -= 1
    seg = np.searchsorted(labels, seg).ravel()  # labels 0..n-1
    n = len(labels)
    count = np.bincount(seg, minlength=n)
    rows, cols = np.indices(image.shape)
    h, w = image.shape
    mean = lambda v: np.bincount(seg, weights=v.ravel(), minlength=n) / count  # noqa: E731
    feats = np.stack([mean(image), mean(cols) / (w - 1), 1 - mean(rows) / (h - 1)], axis=1)
    d = ((feats[:, None, 1:] - feats[None, :, 1:]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    take = min(k, n - 1)
    nbr = np.full((n, k), -1, dtype=np.int16)
    nbr[:, :take] = np.argsort(d, axis=1, kind="stable")[:, :take]
    return feats.astype(np.float32), nbr


def _build_chunk(args):
    images, n_segments, compactness, k = args
    x = np.zeros((len(images), n_segments, 3), dtype=np.float32)
    nbr = np.full((len(images), n_segments, k), -1, dtype=np.int16)
    num = np.zeros(len(images), dtype=np.int64)
    for i, img in enumerate(images):
        f, nb = superpixel_graph(img, n_segments, compactness, k)
        x[i, :len(f)], nbr[i, :len(f)], num[i] = f, nb, len(f)
    return x, nbr, num


def build_graphs(images: torch.Tensor, n_segments: int, compactness: float, k: int, workers: int = 1,
                 desc: str = "superpixels") -> dict[str, torch.Tensor]:
    """Superpixel graphs of [G, H, W] images in [0, 1]: x [G, n_segments, 3], nbr [G, n_segments, k] (int16),
    num_nodes [G]. Chunks go to ``workers`` processes with a progress bar. Forked where the OS can: a spawned
    worker would re-run the caller's main script, and the workers use numpy and scikit-image only, never the
    parent's torch threads (which make fork unsafe)."""
    from tqdm import tqdm

    arr = images.double().numpy()
    tasks = [(arr[s:s + CHUNK], n_segments, compactness, k) for s in range(0, len(arr), CHUNK)]
    bar = tqdm(total=len(arr), desc=desc, unit="img", leave=False, file=sys.stderr, dynamic_ncols=True)
    results = []
    if workers > 1 and len(tasks) > 1:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(min(workers, len(tasks))) as pool:
            for r in pool.imap(_build_chunk, tasks):
                results.append(r)
                bar.update(len(r[2]))
    else:
        for t in tasks:
            results.append(_build_chunk(t))
            bar.update(len(t[0]))
    bar.close()
    x, nbr, num = (np.concatenate(parts) for parts in zip(*results))
    return {"x": torch.from_numpy(x), "nbr": torch.from_numpy(nbr), "num_nodes": torch.from_numpy(num)}


@register_data("mnist_superpixels")
class MNISTSuperpixels(GraphData):
    """MNIST superpixel graphs, 10 classes. Splits follow zoo/data/graphs.py: (x, pos, nbr, num_nodes, y, highlight)
    with pos the centroid columns of x and nothing highlighted."""

    def __init__(self, root: str | None = None, limit: int | None = None, val_size: int = 5000, seed: int = 0,
                 n_segments: int = 75, compactness: float = 0.25, k: int = 8, workers: int | None = None):
        self.mnist = MNIST(root=root, limit=limit, val_size=val_size, seed=seed)  # checks those four
        check_range("n_segments", n_segments, 2, 784)
        check_range("compactness", compactness, 1e-4, 1e4)
        check_range("k", k, 1, n_segments - 1)
        check_range("workers", workers, 1, 64, allow_none=True)
        self.params = {"n_segments": n_segments, "compactness": compactness, "k": k}
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.info = {"node_features": 3, "coord_dim": 2, "num_classes": 10, "fixed_nodes": None}
        self._loaded = None

    def _load(self) -> dict[str, tuple[torch.Tensor, ...]]:
        mnist, limit = self.mnist.setup(), self.mnist.limit
        out = {}
        for split, (images, y) in mnist.splits.items():
            if limit is not None and split == "test":
                images, y = images[:max(1, limit // 10)], y[:max(1, limit // 10)]
            key = {**self.params, "split": split, "limit": limit, "val_size": mnist.val_size, "seed": mnist.seed}
            g = cached(mnist.root, "mnist_superpixels", key, lambda: build_graphs(
                images[:, 0], **self.params, workers=self.workers, desc=f"superpixels ({split})"),
                log=lambda s: print(s, file=sys.stderr))
            x = g["x"]
            out[split] = (x, x[..., 1:], g["nbr"], g["num_nodes"], y,
                          torch.zeros(x.shape[:2], dtype=torch.bool))
        return out

    def prepare_data(self) -> None:
        self._loaded = self._load()

    def setup(self) -> "MNISTSuperpixels":
        self.splits, self._loaded = self._loaded or self._load(), None
        return self
