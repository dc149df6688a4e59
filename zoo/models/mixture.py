"""Mixture of Bernoulli vectors fitted by EM (HW3 Q3), on binarised MNIST.

x in {0,1}^D is drawn by picking a component c ~ pi, then each pixel j independently with P(x_j = 1) = W_cj.
E step: r_ic ∝ pi_c prod_j W_cj^x_j (1 - W_cj)^(1 - x_j), computed in log space (784 factors underflow).
M step: W_cj = sum_i r_ic x_ij / sum_i r_ic and pi_c = sum_i r_ic / n; with ``smoothing`` a > 0 these are the
MAP estimates under a Beta(1 + a, 1 + a) prior on each W_cj and a Dirichlet(1 + a) prior on pi:
W_cj = (sum_i r_ic x_ij + a) / (sum_i r_ic + 2a), pi_c = (sum_i r_ic + a) / (n + k a).

With the trainer, one epoch is one EM iteration: every batch's E step (under the current parameters) adds
to the sufficient statistics, and ``on_epoch_end`` does the M step. The statistics are buffers, so a run
stopped mid-epoch resumes exactly.
"""
from __future__ import annotations

import math

from typing import Literal

import torch
from torch import nn

from ..clustering import CHUNK, ClusterModel
from ..errors import ConfigError
from ..registry import register_model
from .base import ZooModel

INITS = ("random", "samples")
TINY = 1e-30  # log(0) stand-in: a pixel a component never turns on costs ~69 nats instead of -inf * 0 = nan


@register_model("bernoulli_mixture", family="clustering", config="configs/bernoulli_mixture.yaml",
                description="mixture of k Bernoulli images fitted by EM on binarised MNIST (E step in log space)")
class BernoulliMixture(ClusterModel, ZooModel):
    """Parameters W [k, D] (pixel probabilities) and log pi [k]; no gradients, no optimizer."""

    manual_update = True

    def __init__(self, input_shape=(1, 28, 28), k: int = 10, smoothing: float = 1e-2,
                 init: Literal["random", "samples"] = "random"):
        super().__init__()
        if k < 1 or smoothing < 0:
            raise ValueError("need k >= 1 and smoothing >= 0")
        if init not in INITS:
            raise ValueError(f"init={init!r} is not one of: {', '.join(INITS)}")
        self.k, self.smoothing, self.init = k, smoothing, init
        self.image_shape = tuple(input_shape)
        d = math.prod(self.image_shape)
        self.W = nn.Parameter(torch.full((k, d), 0.5), requires_grad=False)
        self.log_pi = nn.Parameter(torch.full((k,), -math.log(k)), requires_grad=False)
        # sufficient statistics of the EM iteration in progress: sum r_ic, sum r_ic x_i, sum log p(x_i), n
        self.register_buffer("stat_r", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("stat_rx", torch.zeros(k, d, dtype=torch.float64))
        self.register_buffer("stat_ll", torch.zeros((), dtype=torch.float64))
        self.register_buffer("stat_n", torch.zeros((), dtype=torch.float64))

    # ---- EM ---------------------------------------------------------------------------------------------------
    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_c + log p(x | c) [N, k] for binary rows x [N, D]."""
        log_w, log_1mw = self.W.clamp_min(TINY).log(), (1 - self.W).clamp_min(TINY).log()
        return x @ log_w.T + (1 - x) @ log_1mw.T + self.log_pi

    def e_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Responsibilities r [N, k] and log p(x_i) [N] under the current parameters."""
        joint = self.log_joint(x)
        ll = torch.logsumexp(joint, 1)
        return (joint - ll[:, None]).exp(), ll

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """E step on a batch, added to the running statistics; returns log p(x_i)."""
        r, ll = self.e_step(x)
        self.stat_r += r.sum(0).double()
        self.stat_rx += (r.T @ x).double()
        self.stat_ll += ll.double().sum()
        self.stat_n += len(x)
        return ll

    def m_step(self) -> dict[str, float]:
        """New W and pi from the statistics; returns the finished iteration's average log-likelihood."""
        n, a = self.stat_n.item(), self.smoothing
        if n == 0:
            return {}
        ll = self.stat_ll.item() / n
        self.W.copy_(((self.stat_rx + a) / (self.stat_r[:, None] + 2 * a)).to(self.W.dtype))
        self.log_pi.copy_(((self.stat_r + a) / (n + self.k * a)).log().to(self.log_pi.dtype))
        for s in (self.stat_r, self.stat_rx, self.stat_ll, self.stat_n):
            s.zero_()
        return {"log_likelihood_per_image": ll}

    def log_prior(self) -> float:
        """log of the Beta/Dirichlet prior density (up to a constant): EM climbs log-likelihood + this."""
        a = self.smoothing
        if a == 0:
            return 0.0
        w = self.W.double().clamp(TINY, 1 - 1e-16)
        return (a * (w.log() + (1 - w).log()).sum() + a * self.log_pi.double().sum()).item()

    # ---- trainer hooks ----------------------------------------------------------------------------------------
    def on_fit_start(self, data) -> None:
        x, _ = data.tensors("train")
        x = x.flatten(1)
        if not bool(((x == 0) | (x == 1)).all()):
            raise ConfigError("bernoulli_mixture needs binary images: set data.binarize: true")
        if self.init == "random":  # the classic start: every pixel probability uniform in [0.25, 0.75]
            w = 0.25 + 0.5 * torch.rand(self.W.shape)
        else:  # k random images, pulled halfway to 1/2 so no probability starts at 0 or 1
            w = 0.25 + 0.5 * x[torch.randperm(len(x))[:self.k].to(x.device)].cpu()
        self.W.copy_(w)
        self.log_pi.fill_(-math.log(self.k))

    def training_step(self, batch, optimizer="main"):
        ll = self.accumulate(batch[0].flatten(1))
        return {"loss": -ll.mean(), "log_likelihood": ll.mean()}

    def validation_step(self, batch):
        ll = self.e_step(batch[0].flatten(1))[1]
        return {"loss": -ll.mean(), "bits_per_dim": -ll.mean() / (math.log(2) * self.W.shape[1])}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return self.m_step()

    # ---- clustering interface ---------------------------------------------------------------------------------
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.log_joint(x[i:i + CHUNK]).argmax(1) for i in range(0, len(x), CHUNK)])

    def prototypes(self) -> torch.Tensor:
        return self.W.detach()

    def log_likelihood(self, x: torch.Tensor) -> float:
        """Average log p(x) in nats over rows of binary ``x``."""
        return sum(self.e_step(x[i:i + CHUNK])[1].double().sum().item() for i in range(0, len(x), CHUNK)) / len(x)

    def extra_metrics(self, x, y, data, ctx):
        x_test = data.tensors("test")[0].flatten(1).to(self.device)
        ll = self.log_likelihood(x)
        return {"log_likelihood_per_image": ll, "bits_per_dim": -ll / (math.log(2) * x.shape[1]),
                "test_log_likelihood_per_image": self.log_likelihood(x_test), "log_prior": self.log_prior()}
