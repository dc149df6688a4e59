"""Batches of graphs, shared by the graph datasets (zoo/data/graph_disturbance.py, mnist_superpixels.py) and
graph models (zoo/models/graph_transformer.py).

A graph split is six tensors with one row per graph, padded to the split's largest graph:
``x`` [G, N, F] node features, ``pos`` [G, N, 2] node coordinates, ``nbr`` [G, N, D] the in-neighbours of each
node (node i attends to nbr[g, i, :], -1 pads), ``num_nodes`` [G], ``y`` [G] labels, ``highlight`` [G, N] nodes
the data marks for figures (a disturbance's ball). Graphs are simple: no duplicate edges, no self-loops (models
add those themselves).

``collate`` trims a batch to its own largest graph and returns ``Batch((x, pos, edges, mask, y, highlight))``
with ``num_items`` = graphs: ``edges`` [2, E] (source, destination) indexes the batch's flattened padded nodes
(graph b's node i is b * N + i), sorted by destination; ``mask`` [B, N] marks real nodes. A dense model
builds its [B, N, N] adjacency from ``edges``, an edge-list model uses them as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Batch, DataModule

#: cells of the boolean work tensors one chunk of graphs may use while graphs are generated or analysed
_CHUNK_CELLS = 1 << 24


def chunks(count: int, cells_per_graph: int):
    """Slices of ``count`` graphs, each using ``cells_per_graph`` cells of work memory, 16M cells a chunk."""
    step = max(1, _CHUNK_CELLS // max(1, cells_per_graph))
    return [slice(s, min(count, s + step)) for s in range(0, count, step)]


def adjacency_to_neighbours(adj: torch.Tensor) -> torch.Tensor:
    """[G, n, n] bool (adj[g, i, j]: j is a neighbour of i) -> [G, n, max degree] int16 lists, -1 padded."""
    deg = adj.sum(-1)
    width = max(1, int(deg.max()) if deg.numel() else 1)
    order = torch.argsort((~adj).to(torch.uint8), dim=-1, stable=True)[..., :width]  # neighbours first
    return torch.where(torch.arange(width) < deg[..., None], order, -1).to(torch.int16)


def hop_reach(nbr: torch.Tensor, start: torch.Tensor, hops: int) -> torch.Tensor:
    """[G, n, D] neighbour lists of undirected graphs, [G, S, n] bool start sets -> [G, S, n] bool: the nodes
    within ``hops`` edges of each start set. A hop gathers over the lists: S n D work per graph."""
    g, n, d = nbr.shape
    idx = torch.where(nbr >= 0, nbr.long(), n).view(g, 1, n * d).expand(g, start.shape[1], n * d)
    reach = start.clone()
    for _ in range(hops):  # u is reached when one of its neighbours is (index n: a False column for the pads)
        reach |= F.pad(reach, (0, 1)).gather(2, idx).view(g, start.shape[1], n, d).any(-1)
    return reach


def hop_balls(nbr: torch.Tensor, hops: int) -> torch.Tensor:
    """[G, n, n] bool: ball[g, c, u] when u is within ``hops`` edges of c (c included)."""
    g, n, _ = nbr.shape
    return hop_reach(nbr, torch.eye(n, dtype=torch.bool, device=nbr.device).expand(g, n, n), hops)


def pad_cat(parts: list[torch.Tensor], value=-1) -> torch.Tensor:
    """Concatenate [g_i, n, D_i] blocks along graphs, padding the last dimension to the largest D_i."""
    width = max(p.shape[-1] for p in parts)
    return torch.cat([F.pad(p, (0, width - p.shape[-1]), value=value) for p in parts])


def radius_for_degree(n: int, degree: float) -> float:
    """The radius r at which n uniform points in the unit square have mean degree ``degree``: the expected
    area of a radius-r disk inside the square, pi r^2 - 8 r^3 / 3 + r^4 / 2 (r <= 1), times n - 1."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        r = (lo + hi) / 2
        lo, hi = (r, hi) if (n - 1) * (math.pi * r * r - 8 * r ** 3 / 3 + r ** 4 / 2) < degree else (lo, r)
    return (lo + hi) / 2


def collate_graphs(x, pos, nbr, num_nodes, y, highlight) -> Batch:
    """Rows of a graph split -> the batch described in the module docstring."""
    b, width = len(x), int(num_nodes.max())
    nbr = nbr[:, :width].long()
    gi, node, slot = (nbr >= 0).nonzero(as_tuple=True)  # row-major: sorted by (graph, destination)
    dst = gi * width + node
    src = gi * width + nbr[gi, node, slot]
    mask = torch.arange(width, device=x.device) < num_nodes[:, None]
    return Batch((x[:, :width], pos[:, :width], torch.stack([src, dst]), mask, y, highlight[:, :width]), b)


class GraphData(DataModule):
    """Base of the graph datasets: the info every graph model reads, and the collate.

    ``info``: ``node_features``, ``coord_dim`` (2), ``num_classes`` (2: a binary task, one logit), and
    ``fixed_nodes``: the node count when every graph has the same nodes in the same order (sensor v is the same
    sensor in every graph), else None. Only then is a readout with one weight per node meaningful.
    """

    info_keys = ("node_features", "coord_dim", "num_classes", "fixed_nodes")

    def collate(self, split, parts, generator):
        x, *rest = parts
        return collate_graphs(self.transform(split, x, generator), *rest)
