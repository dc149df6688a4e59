"""The 1-D data of the analytic GAN (Mock Final Q5): density 2 - 2x on [0, 1], generated from a seed."""
from __future__ import annotations

import torch

from .base import DataModule, check_range, register_data


@register_data("triangle1d")
class Triangle1D(DataModule):
    """1-D data on [0, 1] with density 2 - 2x, sampled as 1 - sqrt(1 - u); y is unused (zeros)."""

    def __init__(self, n: int = 50000, n_test: int = 10000, seed: int = 0):
        check_range("n", n, 1, 10**8)
        check_range("n_test", n_test, 1, 10**8)
        self.n, self.n_test, self.seed = n, n_test, seed
        self.info = {"input_shape": (1,), "num_classes": 0}

    def setup(self) -> "Triangle1D":
        g = torch.Generator().manual_seed(self.seed)
        draw = lambda m: 1 - torch.sqrt(1 - torch.rand(m, 1, generator=g))  # noqa: E731
        n, n_test = self.n, self.n_test
        self.splits = {"train": (draw(n), torch.zeros(n, dtype=torch.long)),
                       "val": (draw(n_test), torch.zeros(n_test, dtype=torch.long)),
                       "test": (draw(n_test), torch.zeros(n_test, dtype=torch.long))}
        return self
