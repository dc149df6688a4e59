"""MNIST digits as 2-D point clouds (the exam's Q7 input): the pixels brighter than a threshold, as (x, y) points.

The splits are MNIST's own (same validation split, same ``limit``): this module is the MNIST module with its
per-split image hook, ``to_float``, turning uint8 images into clouds instead of float images. Conversion is
vectorised over images (all 70k in a few seconds) and seeded, so a config always gives the same clouds.
"""
from __future__ import annotations

import math

import torch

from .base import Batch, check_range, register_data
from .mnist import MNIST

CHUNK = 8192  # images converted at once: bounds the [chunk, 784] noise and key tensors to ~50 MB


def image_to_points(images: torch.Tensor, num_points: int, threshold: float, weighted: bool, intensity: bool,
                    generator: torch.Generator) -> torch.Tensor:
    """uint8 images [B, 28, 28] -> clouds [B, num_points, 2 (+1)] of (x, y[, intensity]).

    Pixels above ``threshold`` are the candidates (a digit with none keeps its brightest pixels). Each cloud
    draws ``num_points`` of them without replacement by Gumbel-top-k (keys u^(1/w), weights w = intensity when
    ``weighted``); a digit with fewer candidates uses all of them, each repeated as evenly as possible.
    Coordinates are x to the right and y up, centred on the mean candidate and scaled to unit radius.
    """
    b, h, w = images.shape
    v = images.reshape(b, h * w).float() / 255.0
    cand = v > threshold
    cand |= ~cand.any(1, keepdim=True) & (v == v.max(1, keepdim=True).values)  # blank above threshold
    u = torch.rand(v.shape, generator=generator).clamp_min(1e-12)
    keys = u.log() / v.clamp_min(1e-6) if weighted else u  # larger key = drawn earlier
    keys = keys.masked_fill(~cand, -math.inf)
    order = keys.topk(min(num_points, h * w), dim=1).indices  # candidates first, in random order
    count = cand.sum(1, keepdim=True)
    order = order.gather(1, torch.arange(num_points) % count)  # repeat when there are fewer than num_points

    row, col = torch.div(torch.arange(h * w), w, rounding_mode="floor"), torch.arange(h * w) % w
    xy = torch.stack([col.float(), (h - 1 - row).float()], 1)  # [784, 2], y up so plots show upright digits
    centre = (cand.float() @ xy) / count  # mean of all candidates, not of the (repeated) sample
    radius = ((xy[None] - centre[:, None]) * cand[..., None]).norm(dim=2).amax(1).clamp_min(1.0)
    pts = (xy[order] - centre[:, None]) / radius[:, None, None]
    if intensity:
        pts = torch.cat([pts, v.gather(1, order)[..., None]], 2)
    return pts


def rotate(xy: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Points [B, N, 2] each cloud turned by its angle ``theta`` [B] (radians; cos and sin taken in theta's dtype,
    then cast to the points')."""
    c, s = theta.cos().to(xy.dtype), theta.sin().to(xy.dtype)
    rot = torch.stack([torch.stack([c, s], 1), torch.stack([-s, c], 1)], 1)  # row vectors: xy @ rot
    return xy @ rot


@register_data("mnist_points")
class MNISTPoints(MNIST):
    """MNIST as point clouds [N, num_points, 2] (``intensity``: [N, num_points, 3]) and int64 labels.

    Training batches are augmented (random rotation within ±``rotate`` degrees, isotropic scaling by a factor
    in [1 - ``scale``, 1 + ``scale``], Gaussian ``jitter`` of the coordinates, and dropping a random fraction
    up to ``dropout`` of the points, each replaced by a copy of a kept one so every cloud keeps its size).
    Set a value to 0 to turn that augmentation off.
    """

    def __init__(self, root: str | None = None, limit: int | None = None, val_size: int = 5000, seed: int = 0,
                 num_points: int = 256, threshold: float = 0.5, weighted: bool = False, intensity: bool = False,
                 rotate: float = 15.0, scale: float = 0.1, jitter: float = 0.01, dropout: float = 0.1):
        super().__init__(root=root, limit=limit, val_size=val_size, seed=seed)
        check_range("num_points", num_points, 1, 1024)  # 784 pixels at most; a few repeats allowed
        check_range("threshold", threshold, 0.0, 0.99)
        check_range("rotate", rotate, 0.0, 180.0)
        check_range("scale", scale, 0.0, 0.9)
        check_range("jitter", jitter, 0.0, 1.0)
        check_range("dropout", dropout, 0.0, 0.95)
        self.num_points, self.threshold, self.weighted, self.intensity = num_points, threshold, weighted, intensity
        self.rotate, self.scale, self.jitter, self.dropout = rotate, scale, jitter, dropout
        self.info = {"input_shape": (num_points, 3 if intensity else 2), "num_classes": 10}

    def to_float(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """MNIST.setup's per-split hook: uint8 images -> point clouds, in chunks, from a fixed-seed generator
        (a split's clouds depend on the config alone)."""
        g = torch.Generator().manual_seed(self.seed + 7919)
        return torch.cat([image_to_points(x_uint8[i:i + CHUNK], self.num_points, self.threshold, self.weighted,
                                          self.intensity, g) for i in range(0, len(x_uint8), CHUNK)])

    def transform(self, split, x, generator):
        return x  # clouds are final; MNIST's dequantisation does not apply

    def augment(self, batch: Batch, generator: torch.Generator | None) -> Batch:
        """Rotate, scale, jitter and drop points of a training batch, drawing only from ``generator`` (on the
        CPU, then moved: the same draws on any device, so a resumed run augments identically)."""
        x, *rest = batch
        b, n, _ = x.shape
        draw = lambda *shape: torch.rand(shape, generator=generator).to(x.device)  # noqa: E731
        xy = x[..., :2]
        if self.rotate:
            xy = rotate(xy, (2 * draw(b) - 1) * math.radians(self.rotate))
        if self.scale:
            xy = xy * (1 + self.scale * (2 * draw(b, 1, 1) - 1))
        if self.jitter:
            xy = xy + self.jitter * torch.randn((b, n, 2), generator=generator).to(x.device)
        x = torch.cat([xy, x[..., 2:]], 2)
        if self.dropout:
            drop = draw(b, n) < self.dropout * draw(b, 1)
            drop[:, 0] = False  # point 0 (a random candidate: clouds are stored in random order) stands in
            x = torch.where(drop[..., None], x[:, :1], x)
        return Batch((x, *rest), batch.num_items)
