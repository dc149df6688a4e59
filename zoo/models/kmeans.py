"""k-means as a one-layer network (Homework 7 Q1), trained by plain SGD through the shared trainer.

Neuron i computes a_i = x.C_i - ||C_i||^2 / 2, which is -||x - C_i||^2 / 2 up to a term that does not depend on
i, so softmax(beta a) is a soft nearest-centre vote and softmax(beta a) C is the chosen centre. The loss is the
squared reconstruction error summed over pixels and averaged over the batch. When the softmax acts as an
argmax its gradient for centre i is (2 |V_i| / B)(C_i - m_i), m_i the mean of the batch's images in cell i, so
with |V_i| / B = 1/10 one SGD step of size eta is C_i <- (1 - eta/5) C_i + (eta/5) m_i: a mini-batch Lloyd
step, and eta = 4.5 at B = 64 is the homework's bias/variance balance. In general centre i moves a fraction
2 eta |V_i| / B of the way to m_i, which overshoots and grows once that fraction passes 2: with eta = 4.5 any
cell holding more than 2/9 of a batch does, and on MNIST some do (the run diverges); eta < 1 is safe for
every cell size, which is why configs/kmeans.yaml uses 0.9 with a decay.

Two switches turn the same network into scikit-learn's KMeans(n_init=R) (configs/kmeans_lloyd.yaml):
``normalize: cluster`` averages each centre's error over its own cell instead of the batch, so the step is
C_i <- (1 - eta) C_i + eta m_i whatever the cell sizes, and eta = 1 on the full data set is exactly Lloyd's
update; ``restarts: R`` trains R independent sets of k centres side by side in one matrix product, and the
model clusters with the set whose k-means cost on the training data is lowest.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from ..clustering import CHUNK, ClusterModel, assign, inertia, kmeans_plus_plus, label_metrics, lloyd
from ..errors import ConfigError
from ..registry import register_model
from .base import ZooModel

INITS = ("labels", "uniform", "samples", "kmeans++")


def init_centers(kind: str, x: torch.Tensor, y: torch.Tensor | None, k: int,
                 generator: torch.Generator | None = None, restarts: int = 1) -> torch.Tensor:
    """Initial centres [restarts * k, D] from flattened training rows ``x`` (and labels ``y`` for ``labels``)."""
    if kind == "kmeans++":  # the restarts share each pass over the data
        return kmeans_plus_plus(x, k, generator, restarts=restarts).reshape(restarts * k, -1)
    if restarts > 1:
        return torch.cat([init_centers(kind, x, y, k, generator) for _ in range(restarts)])
    if kind == "labels":  # the homework's "cheat": centre i is a random training image of digit i
        classes = int(y.max()) + 1 if y is not None else 0
        if classes != k:
            raise ConfigError(f"model.init=labels needs k = the number of classes ({classes}), got k={k}")
        picks = []
        for i in range(k):
            rows = (y == i).nonzero().squeeze(1)
            picks.append(x[rows[torch.randint(len(rows), (1,), generator=generator).item()]])
        return torch.stack(picks)
    if kind == "uniform":  # each coordinate uniform on [0, 1]: the homework shows most centres then die
        return torch.rand(k, x.shape[1], generator=generator).to(x)
    if kind == "samples":
        return x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
    raise ConfigError(f"model.init={kind!r} is not one of: {', '.join(INITS)}")


@register_model("kmeans_net", family="clustering", config="configs/kmeans.yaml",
                description="k-means as a network: centres C as a parameter, softmax(beta(xC^T - |C|^2/2)) C, SGD")
class KMeansNet(ClusterModel, ZooModel):
    """k centres as an ``nn.Parameter``; forward returns the reconstruction error (centre - input).

    ``init``: labels | uniform | samples | kmeans++, drawn in ``on_fit_start`` from the training split.
    ``assign_grad``: let gradients flow through the softmax (the homework's autograd network). With the
    summed-pixel loss that path is unstable on MNIST: an image almost equidistant from two centres adds a
    gradient of order beta d^3 / B (d ~ 6 the distance; ~30 at the first step, against ~1 for the Lloyd part),
    which kicks a centre out of the data for good. Centres die one by one until the mean image is left
    (configs/kmeans.yaml with assign_grad=true: 9 of 10 clusters empty, inertia +34%). ``False`` holds the
    assignment constant in the backward pass, as Lloyd's algorithm does: the step is then exactly
    C_i -= (2 eta / B) sum_b p_bi (C_i - x_b) for any beta, the formula above when p is one-hot.
    """

    def __init__(self, input_shape=(1, 28, 28), k: int = 10, beta: float = 20.0,
                 init: Literal["labels", "uniform", "samples", "kmeans++"] = "samples",
                 assign_grad: bool = True, normalize: Literal["batch", "cluster"] = "batch", restarts: int = 1):
        super().__init__()
        if not 1 <= k <= 4096 or beta <= 0 or not 1 <= restarts <= 64:
            raise ValueError("need 1 <= k <= 4096, beta > 0 and 1 <= restarts <= 64")
        if init not in INITS or normalize not in ("batch", "cluster"):
            raise ValueError(f"init={init!r} must be one of {', '.join(INITS)}; "
                             f"normalize={normalize!r} batch or cluster")
        self.k, self.beta, self.init, self.assign_grad = k, beta, init, assign_grad
        self.normalize, self.restarts = normalize, restarts
        self.image_shape = tuple(input_shape)
        d = math.prod(self.image_shape)
        if restarts * k * d > 2**28:
            raise ValueError(f"restarts * k * input size = {restarts * k * d} is too large (at most 2^28 weights)")
        self.centers = nn.Parameter(torch.zeros(restarts * k, d))  # R sets of k centres, one after the other
        self.flatten = nn.Flatten()
        self.softmax = nn.Softmax(dim=-1)
        self.register_buffer("init_centers", torch.zeros(restarts * k, d))  # for eval's Lloyd-from-the-same-init
        self.register_buffer("best", torch.zeros((), dtype=torch.long))  # the restart the model clusters with
        self._train_x: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction error, [B, D] (one set of centres) or [R, B, D] (R restarts)."""
        x0 = self.flatten(x)
        a = torch.matmul(x0, self.centers.t()) - 0.5 * torch.sum(self.centers ** 2, 1).flatten()
        if self.restarts == 1:
            p = self.softmax(self.beta * a)
            return (p.detach() if not self.assign_grad else p) @ self.centers - x0
        p = self.softmax(self.beta * a.view(len(x0), self.restarts, self.k)).transpose(0, 1)  # [R, B, k]
        p = p.detach() if not self.assign_grad else p
        return torch.bmm(p, self.centers.view(self.restarts, self.k, -1)) - x0

    def training_step(self, batch, optimizer="main"):
        x, _ = batch
        if self.normalize == "cluster":
            return self._cluster_step(x.flatten(1))
        # summed over pixels, averaged over the batch: the reduction that makes SGD's step the formula above
        loss = self(x).pow(2).sum(-1).mean(-1).sum()  # restarts add up: each set of centres gets its own step
        with torch.no_grad():  # the hard k-means cost per image, the quantity eval's inertia sums
            hard = (x.flatten(1) - self.prototypes()[self.assign(x.flatten(1))]).pow(2).sum(1).mean()
        return {"loss": loss, "inertia_per_image": hard}

    def _cluster_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``normalize: cluster`` in GEMM form: sum_b w_b sum_i p_bi ||x_b - C_i||^2 with ||x - C_i||^2 read off
        the first layer as ||x||^2 - 2 a_i (the reconstruction error, when p is one-hot, with no [B, D] tensor),
        and w_b = 1 / (2 n_i) for b's nearest centre i. Its gradient for C_i is C_i - m_i: SGD with lr 1 on the
        whole data set is one Lloyd iteration for every restart at once."""
        a = (x @ self.centers.t() - 0.5 * self.centers.pow(2).sum(1)).view(len(x), self.restarts, self.k)
        with torch.no_grad():
            labels = a.argmax(-1)  # [B, R]
            counts = torch.zeros(self.restarts, self.k, dtype=x.dtype, device=x.device)
            counts.scatter_add_(1, labels.T, torch.ones_like(labels.T, dtype=x.dtype))
            w = 0.5 / counts.gather(1, labels.T).T  # [B, R]
        # the assignment held constant is the softmax's beta -> infinity limit, the argmax: near-ties stay exact
        p = self.softmax(self.beta * a) if self.assign_grad else nn.functional.one_hot(labels, self.k).to(x.dtype)
        dist = x.pow(2).sum(1)[:, None, None] - 2 * a  # [B, R, k]
        loss = (w[..., None] * p * dist).sum()
        hard = dist.detach().gather(2, labels[..., None])[:, self.best, 0].mean()
        return {"loss": loss, "inertia_per_image": hard}

    # ---- fitting hooks ----------------------------------------------------------------------------------------
    def setup(self, data) -> None:
        self._train_x = x = data.tensors("train")[0].flatten(1)  # fresh or resumed: on_epoch_end's full-data cost
        # sum_n ||x_n||^2 is the same every epoch: the cost then needs only the GEMM pass
        self._train_sq = sum(x[i:i + CHUNK].pow(2).sum(1).double().sum() for i in range(0, len(x), CHUNK))

    def on_fit_start(self, data) -> None:
        """Initial centres from the training split, drawn from torch's global RNG (the trainer seeds it)."""
        x, y = data.tensors("train")
        with torch.no_grad():
            c = init_centers(self.init, x.flatten(1), y, self.k, restarts=self.restarts)
            self.centers.copy_(c)
            self.init_centers.copy_(c)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """The k-means cost of the current centres on the whole training split (convergence, collapse)."""
        if self._train_x is None:  # used outside the trainer, without setup()
            return {}
        x = self._train_x
        cost, labels = self._best_restart(x, self._train_sq)  # with several restarts, it picks the cheapest
        counts = torch.bincount(labels, minlength=self.k)
        return {"inertia_per_image_full": cost / len(x), "empty_clusters": float((counts == 0).sum())}

    @torch.no_grad()
    def _best_restart(self, x: torch.Tensor, sq: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Every restart's k-means cost in one GEMM pass over ``x`` (||x - C_i||^2 = ||x||^2 - 2 a_i, with
        ``sq`` = sum_n ||x_n||^2); sets ``best`` and returns its cost and labels."""
        c = self.centers.detach()
        half = 0.5 * c.pow(2).sum(1)
        costs = sq.expand(self.restarts).clone()
        labels = []
        for i in range(0, len(x), CHUNK):
            rows = x[i:i + CHUNK]
            top, arg = (rows @ c.T - half).view(len(rows), self.restarts, self.k).max(-1)  # [n, R]
            costs -= 2 * top.double().sum(0)
            labels.append(arg)
        self.best.fill_(int(costs.argmin()))
        return float(costs[self.best]), torch.cat(labels)[:, self.best]

    # ---- clustering interface ---------------------------------------------------------------------------------
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        return assign(x, self.prototypes())

    def prototypes(self) -> torch.Tensor:
        """The k centres the model clusters with (the best restart's)."""
        return self.centers.detach().view(self.restarts, self.k, -1)[self.best]

    def extra_metrics(self, x, y, data, ctx) -> dict[str, Any]:
        """The model's own inertia (its centres, nearest-centre cells) and Lloyd's from the model's init."""
        out = {"inertia": inertia(x, self.prototypes()), "init": self.init, "restarts": self.restarts}
        out["inertia_per_image"] = out["inertia"] / len(x)
        if self.init_centers.abs().sum() > 0 and ctx.baselines:
            ctx.log(f"Lloyd's algorithm from the model's own {self.init} init")
            res = lloyd(x, self.init_centers.view(self.restarts, self.k, -1)[self.best], max_iter=1000)
            out["lloyd_from_init"] = {"inertia": res.inertia, "iterations": res.iterations,
                                      "converged": res.converged, **label_metrics(y, res.labels, self.k)}
        return out
