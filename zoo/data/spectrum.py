"""Points whose data matrix has exactly the singular values asked for: the purifier's closed-form check."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import DataModule, check_range, register_data


@register_data("spectrum")
class Spectrum(DataModule):
    """n points in R^m whose matrix X = [x_1 ... x_n] (m x n) is U diag(s) V^T, U a random rotation (``self.U``
    and ``self.singular_values`` after setup). Default s: the spectrum of the final's Q10(c).

    Validation and test points are U diag(s) g / sqrt(n), g ~ N(0, I): the same second moment X X^T / n.
    """

    def __init__(self, singular_values: list = (10.0, 8.0, 4.0, 1.0, 0.5, 0.36, 0.16, 0.01), n: int = 64,
                 seed: int = 0):
        s = list(singular_values)
        if not s or any(not isinstance(v, (int, float)) or v < 0 for v in s):
            raise ConfigError(f"data.singular_values must be numbers >= 0, got {singular_values!r}")
        check_range("n", n, len(s))  # n >= m: X has m singular values
        self.values, self.n, self.seed = s, n, seed
        self.info = {"input_shape": (len(s),), "num_classes": 0}

    def setup(self) -> Spectrum:
        g = torch.Generator().manual_seed(self.seed)
        m, n = len(self.values), self.n
        s = torch.tensor(self.values, dtype=torch.float64)
        u = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64)).Q
        v = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64)).Q  # orthonormal columns
        self.U, self.singular_values = u.float(), s.float()
        x = (u * s) @ v.T  # m x n, built in float64 so the float32 points keep the spectrum to ~1e-7

        def fresh(count):
            return ((u * s) @ torch.randn(m, count, generator=g, dtype=torch.float64) / n ** 0.5).T.float()

        def zeros(count):
            return torch.zeros(count, dtype=torch.long)

        self.splits = {"train": (x.T.float(), zeros(n)), "val": (fresh(n), zeros(n)), "test": (fresh(n), zeros(n))}
        return self
