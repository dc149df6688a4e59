"""Disturbance detection on sensor graphs (Mock Final Q7's example), generated from a seed, no files.

A graph: ``n_nodes`` sensors uniform in the unit square, an edge between two sensors closer than r (r set so the
mean degree is ``mean_degree``), signals x_v ~ N(0, I) with ``channels`` channels. With probability 1/2 a
disturbance: a centre c uniform among the nodes, and the amplitude vector a (``amplitude`` on the first
``disturbed_channels`` channels, 0 on the rest) added to every node within ``hops`` hops of c. Label: 1 when
disturbed.

The Bayes-optimal detector (``bayes_log_lr``): with B_c the ball of c,
    log p(x | c) / p(x | none) = sum_{v in B_c} a.x_v - |B_c| |a|^2 / 2,
so LR(x) = (1/n) sum_c exp(sum_{v in B_c} a.x_v - |B_c| |a|^2 / 2), and with prior 1/2 the rule says
"disturbed" when LR > 1 (computed as a logsumexp). One channel gives the issue's formula. The single-node
baseline thresholds max_v a.x_v / |a| at the threshold that is best on the training graphs.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .graphs import GraphData, adjacency_to_neighbours, chunks, hop_balls, hop_reach, pad_cat, radius_for_degree
from .base import check_range, register_data

SPLITS = ("train", "val", "test")
MAX_BYTES = 2 << 30  # the generated splits, all held in memory


@register_data("graph_disturbance")
class GraphDisturbance(GraphData):
    """Sensor graphs with or without a disturbance. ``fixed_layout``: every graph uses one layout drawn from
    ``seed`` (the same sensors in the same order), which makes a per-node readout meaningful. ``resample``:
    each training batch gets fresh noise around the same disturbances (unlimited data, from the trainer's
    generator, so a resumed run draws the same)."""

    def __init__(self, n_nodes: int = 100, mean_degree: float = 7.0, hops: int = 1, amplitude: float = 1.4,
                 channels: int = 1, disturbed_channels: int | None = None, fixed_layout: bool = False,
                 train_graphs: int = 20000, val_graphs: int = 2000, test_graphs: int = 5000,
                 resample: bool = True, seed: int = 0):
        check_range("n_nodes", n_nodes, 2, 1000)
        check_range("mean_degree", mean_degree, 0.5, n_nodes - 1)
        check_range("hops", hops, 0, 16)
        check_range("amplitude", amplitude, 0.0, 100.0)
        check_range("channels", channels, 1, 64)
        check_range("disturbed_channels", disturbed_channels, 1, channels, allow_none=True)
        for key, count in (("train_graphs", train_graphs), ("val_graphs", val_graphs), ("test_graphs", test_graphs)):
            check_range(key, count, 1, 10_000_000)
        nodes = (train_graphs + val_graphs + test_graphs) * n_nodes
        need = nodes * (4 * (channels + 2) + 2 * 3 * math.ceil(mean_degree) + 9)  # signals, positions, lists...
        if need > MAX_BYTES:
            raise ConfigError(f"data.n_nodes={n_nodes} x data.*_graphs={nodes // n_nodes:,} graphs of mean degree "
                              f"{mean_degree} with {channels} channel(s) need about {need / 2**30:.1f} GB (at most "
                              f"{MAX_BYTES / 2**30:.0f}); ask for fewer graphs, nodes, neighbours or channels")
        self.n, self.hops, self.channels, self.seed = n_nodes, hops, channels, seed
        self.sizes = dict(zip(SPLITS, (train_graphs, val_graphs, test_graphs)))
        self.fixed_layout, self.resample = fixed_layout, resample
        self.radius = radius_for_degree(n_nodes, mean_degree)
        self.a = torch.zeros(channels)
        self.a[:disturbed_channels or channels] = amplitude
        self.info = {"node_features": channels, "coord_dim": 2, "num_classes": 2,
                     "fixed_nodes": n_nodes if fixed_layout else None}

    # ---- generation --------------------------------------------------------------------------------------------
    def setup(self) -> "GraphDisturbance":
        layout = torch.rand(1, self.n, 2, generator=torch.Generator().manual_seed(self.seed)) \
            if self.fixed_layout else None
        self.splits = {s: self._generate(self.sizes[s], self.seed * 1000 + i + 1, layout)
                       for i, s in enumerate(SPLITS)}
        self._threshold = None
        return self

    def _generate(self, count: int, seed: int, layout: torch.Tensor | None):
        g = torch.Generator().manual_seed(seed)  # every draw up front: the data does not depend on chunk sizes
        pos = layout.expand(count, -1, -1).clone() if layout is not None else torch.rand(count, self.n, 2, generator=g)
        centre = torch.randint(self.n, (count,), generator=g)
        y = (torch.rand(count, generator=g) < 0.5).long()
        x = torch.randn(count, self.n, self.channels, generator=g)
        nbr, ball = [], []
        for sl in chunks(count, self.n * self.n * 4):
            adj = (torch.cdist(pos[sl], pos[sl]) < self.radius) & ~torch.eye(self.n, dtype=torch.bool)
            nbr.append(adjacency_to_neighbours(adj))
            start = torch.nn.functional.one_hot(centre[sl], self.n).bool() & y[sl, None].bool()
            ball.append(hop_reach(nbr[-1], start[:, None], self.hops)[:, 0])
        ball = torch.cat(ball)
        return x + ball[..., None] * self.a, pos, pad_cat(nbr), torch.full((count,), self.n), y, ball

    def augment(self, batch, generator):
        """Fresh N(0, I) noise around each graph's disturbance (``resample``); structure and labels kept."""
        if not self.resample:
            return batch
        x, pos, edges, mask, y, ball = batch
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        return type(batch)((noise + ball[..., None] * self.a.to(x.device), pos, edges, mask, y, ball),
                           batch.num_items)

    # ---- the detectors --------------------------------------------------------------------------------------
    def bayes_log_lr(self, split: str) -> torch.Tensor:
        """log LR(x) of every graph of ``split``: logsumexp_c (sum_{v in B_c} a.x_v - |B_c| |a|^2 / 2) - log n."""
        x, _, nbr, _, _, _ = self.tensors(split)
        a = self.a.to(x.device)
        signal = x @ a  # [G, n]: a.x_v
        out = []
        for sl in chunks(len(x), self.n ** 2 * nbr.shape[-1]):
            balls = hop_balls(nbr[sl], self.hops).float()
            ll = torch.bmm(balls, signal[sl, :, None]).squeeze(-1) - balls.sum(-1) * a.dot(a) / 2
            out.append(torch.logsumexp(ll, dim=1) - math.log(self.n))
        return torch.cat(out)

    def max_node_score(self, split: str) -> torch.Tensor:
        """max_v a.x_v / |a|: the strongest single sensor along the disturbance direction."""
        x = self.tensors(split)[0]
        a = self.a.to(x.device)
        return (x @ a).max(dim=1).values / a.norm().clamp_min(1e-12)

    def baselines(self, split: str) -> dict[str, float]:
        """Bayes-optimal and single-node max accuracies on ``split``'s graphs."""
        y = self.tensors(split)[4]
        if self._threshold is None:  # the single-node threshold that is best on the training graphs
            score, ytr = self.max_node_score("train"), self.tensors("train")[4]
            order = score.argsort()
            # predicting 1 above the k-th smallest score: correct = negatives below + positives above
            neg_below = torch.cumsum(1 - ytr[order], 0)
            pos_above = ytr.sum() - torch.cumsum(ytr[order], 0)
            k = int((neg_below + pos_above).argmax())
            self._threshold = float(score[order[k]])
        bayes = ((self.bayes_log_lr(split) > 0).long() == y).float().mean()
        single = ((self.max_node_score(split) > self._threshold).long() == y).float().mean()
        return {"bayes_optimal": float(bayes), "single_node_max": float(single)}
