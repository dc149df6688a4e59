"""Competitive (winner-take-all) learning, Mock Final Q2: a Hebbian rule instead of a gradient.

For each input x, in order: the winner i = argmax_i w_i.x (ties: the lowest index), its output y = w_i.x, and only
the winner moves, w_i <- w_i + eta y (x - w_i) = (1 - eta y) w_i + eta y x. Each weight drifts to a y-weighted mean
of the inputs it wins: a prototype, so the winners define a clustering. Options: round the weights after every
update (the exam's integer version; torch.round, half to even) and unit-length inputs and weights
(``normalize``), which makes the winner the prototype at the smallest angle; without it, w.x also grows with
||w||, so long weight vectors win inputs they do not resemble.
"""
from __future__ import annotations

import math

from typing import Literal

import torch
from torch import nn

from ..clustering import CHUNK, ClusterModel, one_thread
from ..registry import register_model
from .base import ZooModel
from .kmeans import init_centers

INITS = ("samples", "uniform", "kmeans++")


@register_model("competitive", family="clustering", config="configs/competitive.yaml",
                description="winner-take-all Hebbian learning: only argmax_i w_i.x moves, w += eta y (x - w)")
class Competitive(ClusterModel, ZooModel):
    """k weight vectors updated online by the competitive rule; the trainer steps no optimizer.

    ``eta`` is the rule's rate, multiplied by ``eta_decay`` after each epoch (kept in the checkpoint).
    """

    manual_update = True

    def __init__(self, input_shape=(1, 28, 28), k: int = 10, eta: float = 0.05, eta_decay: float = 1.0,
                 init: Literal["samples", "uniform", "kmeans++"] = "samples", normalize: bool = True,
                 rounding: bool = False):
        super().__init__()
        if k < 1 or eta <= 0 or not 0 < eta_decay <= 1:
            raise ValueError("need k >= 1, eta > 0 and eta_decay in (0, 1]")
        if init not in INITS:
            raise ValueError(f"init={init!r} is not one of: {', '.join(INITS)}")
        self.k, self.init, self.normalize, self.rounding, self.eta_decay = k, init, normalize, rounding, eta_decay
        self.image_shape = tuple(input_shape)
        self.weight = nn.Parameter(torch.zeros(k, math.prod(self.image_shape)), requires_grad=False)
        self.register_buffer("eta", torch.tensor(float(eta)))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return nn.functional.normalize(x, dim=1) if self.normalize else x

    def step(self, x: torch.Tensor) -> tuple[int, float]:
        """One update with one input (already through ``inputs``): returns (winner, its output y)."""
        w = self.weight.data
        scores = w @ x
        i = int(torch.argmax(scores))  # first maximum on ties
        y = scores[i]
        w[i] += self.eta * y * (x - w[i])
        if self.normalize:
            w[i] = nn.functional.normalize(w[i], dim=0)
        if self.rounding:
            w[i] = torch.round(w[i])
        return i, float(y)

    def training_step(self, batch, optimizer="main"):
        with one_thread():  # one image at a time: a second thread cannot help, only wait
            x = self.inputs(batch[0])
            err = (x - self.weight[self.assign_inputs(x)]).pow(2).sum(1).mean()  # before this batch's updates
            ys = [self.step(row)[1] for row in x]
        return {"loss": err, "winner_output": torch.tensor(ys).mean()}

    def validation_step(self, batch):
        x = self.inputs(batch[0])
        scores = x @ self.weight.T
        best = scores.max(1)
        return {"loss": (x - self.weight[best.indices]).pow(2).sum(1).mean(), "winner_output": best.values.mean()}

    def on_fit_start(self, data) -> None:
        x, y = data.tensors("train")
        w = init_centers(self.init, self.inputs(x), y, self.k)
        self.weight.data.copy_(nn.functional.normalize(w, dim=1) if self.normalize else w)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        self.eta.mul_(self.eta_decay)
        return {"eta": float(self.eta)}

    # ---- clustering interface ---------------------------------------------------------------------------------
    def assign_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight.T).argmax(1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.assign_inputs(self.inputs(x[i:i + CHUNK])) for i in range(0, len(x), CHUNK)])

    def prototypes(self) -> torch.Tensor:
        """The weights; unit-length ones are rescaled to a maximum of 1 so they show as images."""
        w = self.weight.detach()
        return w / w.amax(1, keepdim=True).clamp_min(1e-12) if self.normalize else w
