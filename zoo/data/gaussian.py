"""Synthetic Gaussian images with a known covariance: the check that learned decoder covariances are right."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import DataModule, check_range, register_data


@register_data("gaussian")
class GaussianImages(DataModule):
    """Images ``mean + r`` with r ~ N(0, C), C known (``self.cov`` after setup)."""

    def __init__(self, size: int = 8, n: int = 20000, std: float = 0.05, corr: float = 0.5, seed: int = 0):
        check_range("size", size, 1, 64)
        check_range("n", n, 10, 10**7)
        if not 0 < std <= 1e3:  # 0 has no Cholesky factor ("could not be loaded" later), NaN none either
            raise ConfigError(f"data.std={std!r} must be a standard deviation in (0, 1000]")
        check_range("corr", corr, 0.0, 1.0)
        self.side, self.n, self.std, self.corr, self.seed = size, n, std, corr, seed
        self.info = {"input_shape": (1, size, size), "num_classes": 0}

    def setup(self) -> "GaussianImages":
        g = torch.Generator().manual_seed(self.seed)
        size, n, std, corr = self.side, self.n, self.std, self.corr
        d = size * size
        a = torch.randn(d, d, generator=g) / d ** 0.5
        self.cov = std ** 2 * ((1 - corr) * torch.eye(d) + corr * (a @ a.T) / torch.diag(a @ a.T).mean())
        chol = torch.linalg.cholesky(self.cov)
        self.mean = 0.5 + 0.2 * torch.sin(torch.arange(d, dtype=torch.float32) / 3.0)

        def draw(m):
            return (self.mean + torch.randn(m, d, generator=g) @ chol.T).reshape(m, 1, size, size)

        self.splits = {"train": (draw(n), torch.zeros(n, dtype=torch.long)),
                       "val": (draw(n // 10), torch.zeros(n // 10, dtype=torch.long)),
                       "test": (draw(n // 10), torch.zeros(n // 10, dtype=torch.long))}
        return self
