"""Graph self-attention transformer (Mock Final Q7): attention restricted to each node's neighbours.

One layer, at node v with neighbours N(v) (plus v itself when ``self_loops``), per head of width k = dim/heads:
    Q_v = W^Q x_v, K_v = W^K x_v, V_v = W^V x_v,
    alpha_{v,v'} = softmax over v' in N(v) of Q_v.K_{v'} / sqrt(k)   (zero for v' not in N(v)),
    S_v = sum_{v'} alpha_{v,v'} V_{v'};
the heads' S_v are concatenated, then add & norm, feed-forward, add & norm. After L layers a node's output
depends on exactly its L-hop neighbourhood.

The same layer has two implementations with the same parameters (``attention``): ``dense`` masks a [B, H, N, N]
score tensor (batches of small graphs padded to the largest), ``edges`` computes one score per edge and a
softmax over each node's incoming edges by scatter (per-destination max subtracted first, so it cannot
overflow): memory linear in the edges, for one graph of 10,000 nodes and 100,000 edges. ``auto`` picks dense
while the score tensor is small.

Inputs: the node features, optionally the coordinates with their sines and cosines at ``coords`` frequencies
(pi, 2 pi, 4 pi...: from raw coordinates a network learns sharp functions of position slowly), log(1 + in-degree)
(``degree``: softmax attention averages, so without it a node cannot tell 3 neighbours from 12) and ``laplacian``
eigenvectors of the normalised Laplacian (signs flipped at random in training: an eigenvector's sign is
arbitrary). Readout:
mean, sum, max or attention pooling then a linear head, or the exam's sigma(sum_v w_v . x_v + b) (``exam``),
one weight vector per node, only for data whose graphs share one fixed node set. One logit and BCE for a
binary task (num_classes 2), C logits and cross-entropy otherwise.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ZooError
from ..registry import register_model
from .base import ZooModel

MAX_PARAMS = 20_000_000
MAX_LAPLACIAN_NODES = 2000  # the eigenvectors come from a dense eigendecomposition per graph
DENSE_CELLS = 1 << 24  # auto: dense attention while B * heads * N^2 scores fit in this (64 MB of float32)


def dense_adjacency(edges: torch.Tensor, mask: torch.Tensor, self_loops: bool) -> torch.Tensor:
    """[B, N, N] bool, adj[b, i, j] when j -> i is an edge of graph b (``edges`` index the flattened nodes)."""
    b, n = mask.shape
    adj = torch.zeros(b * n, n, dtype=torch.bool, device=mask.device)
    adj[edges[1], edges[0] % n] = True
    adj = adj.view(b, n, n)
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return (adj | (eye & mask[:, :, None])) if self_loops else adj


def edge_list(edges: torch.Tensor, mask: torch.Tensor, self_loops: bool) -> torch.Tensor:
    """[2, E'] edges, with a self-loop on every node when ``self_loops`` (graphs come without; zoo/data/graphs.py).
    Padding nodes get one too, which only they read: choosing the real ones would cost a host sync a step."""
    if not self_loops:
        return edges
    loops = torch.arange(mask.numel(), device=edges.device)
    return torch.cat([edges, loops.expand(2, -1)], dim=1)


class GraphAttentionLayer(nn.Module):
    """Multi-head neighbour attention, add & norm, feed-forward, add & norm (post-norm, as in the exam)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads, self.k = heads, dim // heads
        self.query, self.key, self.value = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def attend_dense(self, h: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [B, N, d], adj [B, N, N] -> S [B, N, d] and alpha [B, H, N, N] (rows without neighbours: zero)."""
        b, n, d = h.shape
        q, k, v = (f(h).view(b, n, self.heads, self.k).transpose(1, 2) for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.k)
        # a finite fill, not -inf: a row with no neighbour (padding) stays finite and is zeroed by the mask
        scores = scores.masked_fill(~adj[:, None], torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=-1) * adj[:, None]
        return (alpha @ v).transpose(1, 2).reshape(b, n, d), alpha

    def attend_edges(self, h: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [M, d], edges [2, E] (source, destination) -> S [M, d] and alpha [E, H]: softmax over each
        destination's incoming edges by scatter."""
        m, d = h.shape
        src, dst = edges
        q, k, v = (f(h).view(m, self.heads, self.k) for f in (self.query, self.key, self.value))
        scores = (q[dst] * k[src]).sum(-1) / math.sqrt(self.k)  # [E, H]
        top = scores.new_full((m, self.heads), -math.inf)
        top = top.scatter_reduce(0, dst[:, None].expand_as(scores), scores.detach(), "amax", include_self=False)
        e = torch.exp(scores - top[dst])  # the shift cancels in the ratio: no gradient needed through it
        alpha = e / scores.new_zeros(m, self.heads).index_add(0, dst, e)[dst]
        out = v.new_zeros(m, self.heads, self.k).index_add(0, dst, alpha[..., None] * v[src])
        return out.reshape(m, d), alpha

    def forward(self, h, adj=None, edges=None):
        s, alpha = self.attend_dense(h, adj) if adj is not None else self.attend_edges(h, edges)
        h = self.norm1(h + self.drop(s))
        return self.norm2(h + self.drop(self.ffn(h))), alpha


@register_model("graph_transformer", family="graph", config="configs/graph_disturbance.yaml",
                description="graph self-attention transformer: softmax over neighbours, dense or edge-list")
class GraphTransformer(ZooModel):
    """Graph batches as zoo/data/graphs.py describes them: (x, pos, edges, mask, y, highlight)."""

    def __init__(self, node_features: int, num_classes: int, coord_dim: int = 2, fixed_nodes: int | None = None,
                 dim: int = 64, heads: int = 4, layers: int = 3, ffn_mult: int = 2, dropout: float = 0.0,
                 self_loops: bool = True, attention: Literal["auto", "dense", "edges"] = "auto",
                 coords: int = 0, degree: bool = False, laplacian: int = 0,
                 readout: Literal["mean", "sum", "max", "attention", "exam"] = "mean"):
        super().__init__()
        for key, value, low, high in (("node_features", node_features, 1, 4096), ("num_classes", num_classes, 2, 10000),
                                      ("coord_dim", coord_dim, 0, 16), ("dim", dim, 1, 1024),
                                      ("heads", heads, 1, 64), ("layers", layers, 1, 32),
                                      ("ffn_mult", ffn_mult, 1, 16), ("laplacian", laplacian, 0, 64),
                                      ("coords", coords, 0, 16)):
            if not low <= value <= high:
                raise ValueError(f"{key}={value} must be in [{low}, {high}]")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        if readout == "exam" and fixed_nodes is None:
            raise ConfigError("model.readout=exam needs a fixed node set (every graph the same nodes in the same "
                              "order) and this data declares none; use mean, sum, max or attention")
        if fixed_nodes is not None and not 1 <= fixed_nodes <= 100_000:
            raise ValueError(f"fixed_nodes={fixed_nodes} must be in [1, 100000]")
        self.out = 1 if num_classes == 2 else num_classes
        inputs = node_features + coord_dim * (2 * coords + 1) * (coords > 0) + degree + laplacian
        params = inputs * dim + layers * (3 * dim * dim + 2 * dim * dim * ffn_mult) + \
            (fixed_nodes if readout == "exam" else 1) * dim * self.out
        if params > MAX_PARAMS:
            raise ValueError(f"about {params:,} parameters is more than {MAX_PARAMS:,}: lower dim, layers or ffn_mult")
        self.attention, self.self_loops, self.readout = attention, self_loops, readout
        self.coords, self.degree, self.laplacian, self.fixed_nodes = coords, degree, laplacian, fixed_nodes
        self.embed = nn.Linear(inputs, dim)
        self.layers = nn.ModuleList(GraphAttentionLayer(dim, heads, dim * ffn_mult, dropout) for _ in range(layers))
        if readout == "exam":
            self.node_weight = nn.Parameter(torch.randn(fixed_nodes, dim, self.out) / math.sqrt(fixed_nodes * dim))
            self.node_bias = nn.Parameter(torch.zeros(self.out))
        else:
            self.gate = nn.Linear(dim, 1) if readout == "attention" else None
            self.head = nn.Linear(dim, self.out)

    # ---- the graph ---------------------------------------------------------------------------------------------
    def mode(self, edges: torch.Tensor, mask: torch.Tensor) -> str:
        """``auto``: dense while its score tensor is small and the graphs are not too sparse for it (dense
        does B N^2 work in batched matrix products, edges E in gathers and scatters, several times slower per
        item: on CPU, 100-node graphs of degree 7 run faster by edges, 75-node graphs of degree 8 densely)."""
        b, n = mask.shape
        if self.attention != "auto":
            return self.attention
        small = b * self.layers[0].heads * n * n <= DENSE_CELLS
        return "dense" if small and 10 * (edges.shape[1] + b * n) >= b * n * n else "edges"  # shapes: no sync

    def inputs(self, x, pos, edges, mask) -> torch.Tensor:
        parts = [x]
        if self.coords:
            angles = pos[..., None] * (math.pi * 2.0 ** torch.arange(self.coords, device=pos.device))
            parts += [pos, angles.sin().flatten(-2), angles.cos().flatten(-2)]
        if self.degree:
            deg = x.new_zeros(mask.numel()).index_add_(0, edges[1], x.new_ones(edges.shape[1]))
            parts.append(torch.log1p(deg).view(*mask.shape, 1))
        if self.laplacian:
            parts.append(self.laplacian_encoding(edges, mask).to(x.dtype))
        return torch.cat(parts, dim=-1) * mask[..., None]

    @torch.no_grad()
    def laplacian_encoding(self, edges, mask) -> torch.Tensor:
        """[B, N, laplacian]: eigenvectors 2 to laplacian + 1 (by eigenvalue) of each graph's symmetric
        normalised Laplacian I - D^-1/2 A D^-1/2 (A symmetrised), zero on padding and where a graph has fewer.
        Dense eigendecompositions, a few graphs at a time."""
        b, n = mask.shape
        if n > MAX_LAPLACIAN_NODES:
            raise ZooError(f"model.laplacian: graphs of {n} nodes are too large for Laplacian eigenvectors "
                           f"(a dense eigendecomposition, at most {MAX_LAPLACIAN_NODES} nodes); set model.laplacian=0")
        adj = dense_adjacency(edges, mask, False)
        step = max(1, MAX_LAPLACIAN_NODES ** 2 // (n * n))
        vecs = torch.cat([self._eigenvectors(adj[i:i + step], mask[i:i + step]) for i in range(0, b, step)])
        vecs = F.pad(vecs, (0, self.laplacian - vecs.shape[-1]))
        if self.training:
            vecs = vecs * (torch.randint(0, 2, (b, 1, vecs.shape[-1]), device=vecs.device) * 2 - 1)
        return vecs * mask[..., None]

    def _eigenvectors(self, adj, mask):
        a = (adj | adj.transpose(1, 2)).double()
        deg = a.sum(-1)
        inv = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
        lap = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device) - inv[:, :, None] * a * inv[:, None, :]
        # padding nodes get eigenvalue 3, above the spectrum [0, 2] of any graph: their eigenvectors come last
        lap = lap + torch.diag_embed(2.0 * (~mask).double())
        return torch.linalg.eigh(lap).eigenvectors[..., 1:self.laplacian + 1]

    def node_states(self, x, pos, edges, mask, attention: str | None = None):
        """Final node states [B, N, dim] and each layer's attention (dense [B, H, N, N] or per edge [E, H])."""
        h = self.embed(self.inputs(x, pos, edges, mask))
        b, n, d = h.shape
        alphas = []
        if (attention or self.mode(edges, mask)) == "dense":
            if b * self.layers[0].heads * n * n > 16 * DENSE_CELLS:
                raise ZooError(f"model.attention=dense: {b} graphs of {n} nodes need {b * n * n:,} scores per "
                               f"head; use attention edges or auto")
            adj = dense_adjacency(edges, mask, self.self_loops)
            for layer in self.layers:
                h, alpha = layer(h, adj=adj)
                alphas.append(alpha)
            return h, alphas
        e = edge_list(edges, mask, self.self_loops)
        h = h.reshape(b * n, d)
        for layer in self.layers:
            h, alpha = layer(h, edges=e)
            alphas.append(alpha)
        return h.view(b, n, d), alphas

    # ---- readout -----------------------------------------------------------------------------------------------
    def readout_logits(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.readout == "exam":
            if h.shape[1] != self.fixed_nodes:  # data with a fixed node set has no padding
                raise ZooError(f"model.readout=exam was built for graphs of exactly {self.fixed_nodes} nodes")
            return torch.einsum("bnd,ndo->bo", h, self.node_weight) + self.node_bias
        m = mask[..., None].to(h.dtype)
        if self.readout == "max":
            pooled = h.masked_fill(~mask[..., None], -math.inf).amax(1)
        elif self.readout == "attention":
            pooled = (self.pool_weights(h, mask)[..., None] * h).sum(1)
        else:
            pooled = (h * m).sum(1)
            if self.readout == "mean":
                pooled = pooled / m.sum(1).clamp_min(1)
        return self.head(pooled)

    def pool_weights(self, h, mask) -> torch.Tensor:
        return torch.softmax(self.gate(h).squeeze(-1).masked_fill(~mask, -math.inf), dim=1)

    def forward(self, x, pos, edges, mask, attention: str | None = None) -> torch.Tensor:
        return self.readout_logits(self.node_states(x, pos, edges, mask, attention)[0], mask)

    def contributions(self, h: torch.Tensor, mask: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """[B, N]: each node's share of the logit of class ``cls`` [B] (the only logit for a binary task);
        over a graph's nodes they sum to the logit minus the head's bias, for every readout."""
        if self.readout == "exam":
            return (h * self.node_weight.permute(2, 0, 1)[cls]).sum(-1)
        w = self.head.weight[cls]  # [B, d]
        if self.readout == "max":
            top = h.masked_fill(~mask[..., None], -math.inf)
            share = (top == top.amax(1, keepdim=True)).to(h.dtype)
            share = share / share.sum(1, keepdim=True)  # ties split the feature's weight
            per = (h * share * w[:, None]).sum(-1)
        else:
            per = (h * w[:, None]).sum(-1)
            if self.readout == "mean":
                per = per / mask.sum(1, keepdim=True).clamp_min(1)
            elif self.readout == "attention":
                per = per * self.pool_weights(h, mask)
        return per * mask

    # ---- training and evaluation -------------------------------------------------------------------------------
    def loss_and_hits(self, logits, y):
        if self.out == 1:
            z = logits.squeeze(1)
            return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none"), (z > 0).long() == y
        return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) == y

    def training_step(self, batch, optimizer="main"):
        x, pos, edges, mask, y, _ = batch
        loss, hits = self.loss_and_hits(self(x, pos, edges, mask), y)
        return {"loss": loss.mean(), "acc": hits.float().mean()}

    @torch.no_grad()
    def evaluate(self, data, ctx):
        """Test accuracy and loss, beside the reference detectors the data offers on the same test graphs."""
        was = self.training
        self.eval()
        loss = hits = 0.0
        for batch in data.batches("test", 256):
            x, pos, edges, mask, y, _ = batch
            losses, right = self.loss_and_hits(self(x, pos, edges, mask), y)
            loss, hits = loss + float(losses.sum()), hits + float(right.sum())
        self.train(was)
        y = data.tensors("test")[4]
        n = len(y)
        out = {"test_accuracy": hits / n, "test_loss": loss / n, "n_test": n,
               "parameters": sum(p.numel() for p in self.parameters()),
               "baseline_majority_class": torch.bincount(y).max().item() / n}
        if ctx.baselines:
            out.update({f"baseline_{k}": v for k, v in data.baselines("test").items()})
        return out

    # ---- figures -------------------------------------------------------------------------------------------------
    def figure(self, batch, count: int = 4):
        """A few graphs in the plane: top row nodes coloured by their first feature (the signal), bottom row by
        their contribution to the logit; nodes the data highlights (a disturbance's ball) ringed in red."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection  # one artist for all edges: a line each is slow

        x, pos, edges, mask, y, highlight = batch
        h, _ = self.node_states(x, pos, edges, mask)
        logits = self.readout_logits(h, mask)
        cls = torch.zeros_like(y) if self.out == 1 else logits.argmax(1)
        share = self.contributions(h, mask, cls)
        pick = list(range(min(count, len(y))))
        if self.out == 1:  # half of them disturbed, when the batch has them
            ones, zeros = (y == 1).nonzero().squeeze(1).tolist(), (y == 0).nonzero().squeeze(1).tolist()
            pick = (ones[:count // 2] + zeros + ones[count // 2:])[:count]
        fig, axes = plt.subplots(2, len(pick), figsize=(3.2 * len(pick), 6.4), squeeze=False)
        n = mask.shape[1]
        for col, g in enumerate(pick):
            real, pg = mask[g].cpu(), pos[g].cpu().float()
            p = pg[real]
            e = edges[:, (edges[1] // n) == g].cpu() % n  # this graph's edges, as its own node indices
            ring = highlight[g].cpu()[real]
            for row, (values, cmap, label) in enumerate(((x[g, :, 0], "viridis", "signal"),
                                                         (share[g], "coolwarm", "contribution"))):
                ax = axes[row, col]
                ax.add_collection(LineCollection(pg[e.T].numpy(), colors="0.8", linewidths=0.4, zorder=0))
                v = values.detach().cpu()[real].float()
                lim = float(v.abs().max().clamp_min(1e-6))
                sc = ax.scatter(p[:, 0], p[:, 1], c=v, cmap=cmap, s=18, zorder=1,
                                **({"vmin": -lim, "vmax": lim} if row else {}))
                ax.scatter(p[ring, 0], p[ring, 1], s=70, facecolors="none", edgecolors="red", lw=1.0, zorder=2,
                           label="marked by the data\n(the true disturbance)")
                if row == 0 and ring.any() and not fig.legends:  # once: what the red rings are
                    fig.legend(loc="upper left", fontsize=7, frameon=False)
                fig.colorbar(sc, ax=ax, fraction=0.046, label=label)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_aspect("equal")
            z = logits[g].detach().cpu()
            said = f"P(label 1)={torch.sigmoid(z[0]):.2f}" if self.out == 1 else f"pred {int(z.argmax())}"
            axes[0, col].set_title(f"label {int(y[g])}, {said}", fontsize=9)
        fig.tight_layout()
        return fig

    def visuals(self, batch):
        return {"graphs": self.figure(batch)}

    def artifacts(self, data, run_dir):
        return {"test_graphs": self.figure(next(data.batches("test", 64)))}
