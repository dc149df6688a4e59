"""Synthetic linear regression, and the one scalar data point of the instance-noise exercise.

With ``input_noise: sigma`` (a common data option) every training input becomes x + N(0, sigma^2 I), and SGD on
the per-sample mean squared error minimises, in expectation, (1/m)||Xw - y||^2 + sigma^2 ||w||^2: ridge
regression with lambda = sigma^2 (zoo/models/linear.py, LinearRegression).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import DataModule, check_range, register_data


@register_data("synthetic_regression")
class Regression(DataModule):
    """y = x w_true + noise e, x ~ N(0, diag(scales^2)), w_true ~ N(0, I): ``self.w_true`` after setup.

    ``scales``: the features' standard deviations (default: log-spaced from 1 down to 0.2, so a ridge penalty
    shrinks the weak features far more than the strong ones and ridge and least squares differ visibly).
    """

    info_keys = ("input_shape", "num_classes", "target_dim")

    def __init__(self, n: int = 2000, dim: int = 5, noise: float = 0.1, scales: list | None = None,
                 n_test: int = 1000, seed: int = 0):
        check_range("n", n, 2)
        check_range("dim", dim, 1, 10000)
        check_range("noise", noise, 0.0)
        check_range("n_test", n_test, 1)
        if scales is not None and (len(scales) != dim or any(not isinstance(s, (int, float)) or s <= 0
                                                             for s in scales)):
            raise ConfigError(f"data.scales must be {dim} positive numbers (one per feature), got {scales!r}")
        self.n, self.dim, self.noise, self.n_test, self.seed = n, dim, noise, n_test, seed
        self.scales = list(scales) if scales is not None else torch.logspace(0, -0.7, dim).tolist()
        self.info = {"input_shape": (dim,), "num_classes": 0, "target_dim": 1}

    def setup(self) -> Regression:
        g = torch.Generator().manual_seed(self.seed)
        self.w_true = torch.randn(self.dim, 1, generator=g)
        scales = torch.tensor(self.scales)

        def draw(m):
            x = torch.randn(m, self.dim, generator=g) * scales
            return x, x @ self.w_true + self.noise * torch.randn(m, 1, generator=g)

        self.splits = {"train": draw(self.n), "val": draw(self.n_test), "test": draw(self.n_test)}
        return self


@register_data("scalar_point")
class Point(DataModule):
    """One scalar data point (x, y), repeated ``copies`` times (Problem 1 of the instance-noise exercise).

    A batch of all the copies gets independent noise per copy; its mean gradient has the expectation of the
    one-sample gradient (so E[w_t] follows the same recurrence) with ``copies`` times less variance: one run of
    batch ``copies`` traces E[w_t] closely.
    """

    info_keys = ("input_shape", "num_classes", "target_dim")

    def __init__(self, x: float = 1.0, y: float = 3.0, copies: int = 4096):
        check_range("copies", copies, 1)
        self.x, self.y, self.copies = float(x), float(y), copies
        self.info = {"input_shape": (1,), "num_classes": 0, "target_dim": 1}

    def setup(self) -> Point:
        pair = (torch.full((self.copies, 1), self.x), torch.full((self.copies, 1), self.y))
        self.splits = {split: pair for split in ("train", "val", "test")}
        return self
