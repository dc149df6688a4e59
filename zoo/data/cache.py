"""A disk cache for derived datasets (superpixel graphs, point clouds...): built once under the data root.

Each entry is keyed by a hash of the parameters that made it, so changing one builds a new entry instead of
reading a stale one. Entries are written atomically and carry a digest of their tensors: a truncated or
corrupted file is noticed on load and rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import atomic_save

VERSION = 1  # bump when a builder's output changes for the same parameters


def cache_key(name: str, params: dict) -> str:
    blob = json.dumps({"name": name, "params": params, "version": VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous().cpu()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached(root: str | Path, name: str, params: dict, build: Callable[[], dict[str, torch.Tensor]],
           log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """The tensors ``build()`` returns for ``params``, from ``root/cache/`` when a sound entry is there."""
    path = Path(root) / "cache" / f"{name}-{cache_key(name, params)}.pt"
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry["digest"] == digest(entry["tensors"]):
                return entry["tensors"]
            problem = "its digest does not match its contents"
        except Exception as e:  # any unreadable entry is rebuilt, whatever broke it
            problem = f"it cannot be read ({type(e).__name__})"
        log(f"cache {path} is corrupt: {problem}; rebuilding it")
    tensors = build()
    atomic_save(path, {"name": name, "params": params, "tensors": tensors, "digest": digest(tensors)})
    return tensors
