"""The homework's tiny datasets as fixed tensors: the hand-worked examples the trainer must reproduce.

``hw6_q3a``: the two input-label pairs of Homework 6 Q3(a) (two steps of backprop by hand), in the given order.
``hw6_q1a``: the 2 x 3 matrix of Homework 6 Q1(a), one row per point; its singular values are 6 and 3 sqrt(2).
``final_q10a``: the 2 x 4 data matrix X of the final's Q10(a) (self-supervised purification), one column of X
per point, so the rows here are X's columns. Every split holds the same tensors: a worked example has no
held-out data. Train the backprop example with ``shuffle: false`` to keep its order.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError
from .base import DataModule, register_data

PROBLEMS = {
    # inputs, float targets (None: unsupervised)
    "hw6_q3a": ([[0.0, 1.0], [1.0, 0.0]], [[1.0], [0.0]]),
    "hw6_q1a": ([[5.0, 1.0, 1.0], [1.0, 5.0, -1.0]], None),
    "final_q10a": ([[-2.17, 0.02], [1.98, -0.01], [2.41, 0.01], [-2.03, -0.02]], None),
}


@register_data("homework")
class Homework(DataModule):
    """One of the ``PROBLEMS`` above: x [N, D] and y, float targets [N, T] or zeros (unsupervised)."""

    info_keys = ("input_shape", "num_classes", "target_dim")

    def __init__(self, problem: Literal["hw6_q3a", "hw6_q1a", "final_q10a"] = "hw6_q3a"):
        if problem not in PROBLEMS:
            raise ConfigError(f"data.problem={problem!r} is not one of: {', '.join(PROBLEMS)}")
        self.problem = problem
        x, y = PROBLEMS[problem]
        self.info = {"input_shape": (len(x[0]),), "num_classes": 0, "target_dim": len(y[0]) if y else 0}

    def setup(self) -> Homework:
        x, y = PROBLEMS[self.problem]
        x = torch.tensor(x)
        y = torch.tensor(y) if y is not None else torch.zeros(len(x), dtype=torch.long)
        self.splits = {split: (x, y) for split in ("train", "val", "test")}
        return self
