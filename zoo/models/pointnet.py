"""Point-cloud classifiers for MNIST digits as 2-D point sets (Midterm Q7; data ``mnist_points``).

``pointnet``: the exam's network. Shared per-point weights Z = X·W1 (then more shared layers), an element-wise
ReLU, a symmetric pooling over the points into a global feature F (average as in the exam, max as in PointNet,
or both), an MLP head and cross-entropy. Permuting the points permutes the rows of Z and leaves F unchanged.

``pointnet_sa``: set abstraction (PointNet++, single scale). Each level picks centroids by farthest-point
sampling (the exam's Algorithm 1), groups each centroid's k nearest neighbours (or those within a radius), runs
a mini-PointNet on every group in coordinates relative to its centroid and max-pools it into the centroid's
feature; 1 to 3 levels are stacked, then a PointNet over the last centroids gives F.

FPS and the neighbour search are batched tensor code (FPS loops only over the samples it picks), computed in
fp32 with autocast off: under bf16 the distances would round and neighbour ranks change. ``EXAM_GROUPINGS``
holds the four grouping schemes of the exam's part (b), for the test that says which are permutation invariant.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..data.mnist_points import rotate
from ..losses import cross_entropy
from ..registry import register_model
from .base import ZooModel

MAX_WIDTH, MAX_LAYERS, MAX_LEVELS, MAX_K = 2048, 8, 3, 128  # at most 8 x 2048² weights a stack


# ---- geometry: distances, FPS, neighbours (fp32, no autocast) -----------------------------------------------
def fp32(t: torch.Tensor):
    """A context with autocast off, for exact distance ranks; use with ``.float()`` inputs."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def square_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, M, D], [B, N, D] -> [B, M, N] squared distances from differences (no |a|² + |b|² - 2ab cancellation)."""
    with fp32(a):
        return (a.float()[:, :, None] - b.float()[:, None]).pow(2).sum(-1)


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, C] at indices idx [B, ...] -> [B, ..., C]."""
    flat = idx.reshape(len(idx), -1, 1).expand(-1, -1, x.shape[2])
    return x.gather(1, flat).reshape(*idx.shape, x.shape[2])


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, m: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [B, m] of the exam's Algorithm 1: repeatedly move to ``sampled`` the remaining point whose nearest
    sampled point is farthest. ``nearest`` holds each point's distance to the sampled set and is updated with
    the newest sample only, so each of the m - 1 steps costs O(N) per cloud.

    The exam starts from a random point. The default start here is the point farthest from the cloud's mean:
    a function of the point set, not of the order, so the centroids do not change when the points are permuted
    (index 0 would change with the order). ``start`` [B] overrides it.
    """
    with fp32(xyz):
        xyz = xyz.float()
        b, n, _ = xyz.shape
        if start is None:
            start = (xyz - xyz.mean(1, keepdim=True)).pow(2).sum(-1).argmax(1)
        idx = torch.empty(b, m, dtype=torch.long, device=xyz.device)
        idx[:, 0] = start
        nearest = torch.full((b, n), math.inf, device=xyz.device)
        rows = torch.arange(b, device=xyz.device)
        for i in range(1, m):
            newest = xyz[rows, idx[:, i - 1]]
            nearest = torch.minimum(nearest, (xyz - newest[:, None]).pow(2).sum(-1))
            idx[:, i] = nearest.argmax(1)  # sampled points have distance 0: never picked while others remain
        return idx


@torch.no_grad()
def knn_group(centres: torch.Tensor, xyz: torch.Tensor, k: int, radius: float | None = None) -> torch.Tensor:
    """Indices [B, M, k] of each centre's k nearest points of ``xyz``, nearest first. With ``radius``, a
    neighbour farther than it is replaced by the nearest one (the centre itself, when it is one of the points):
    a ball query that, unlike PointNet++'s first-k-by-index, does not depend on the order of the points."""
    d, idx = square_distances(centres, xyz).topk(k, dim=2, largest=False)
    if radius is not None:
        idx = torch.where(d <= radius ** 2, idx, idx[..., :1])
    return idx


def canonical_order(x: torch.Tensor) -> torch.Tensor:
    """Each cloud's points sorted by (x, y, features...): the same tensor for every ordering of the same set.

    Digit clouds lie on a pixel grid, so exact distance ties are common (the 4 pixels at distance 1). A tie
    for the last neighbour slot, or for the next FPS pick, would be broken by position and the features would
    change with the order. Sorting first breaks every tie by coordinates instead.
    """
    idx = torch.arange(x.shape[1], device=x.device).expand(x.shape[:2])
    for c in reversed(range(x.shape[2])):  # least significant key first; stable sorts keep the earlier keys
        idx = idx.gather(1, x[..., c].gather(1, idx).sort(dim=1, stable=True).indices)
    return gather_points(x, idx)


# ---- the exam's part (b): four ways to add neighbourhood context to each point -----------------------------
def _concat(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Each point followed by the points at idx [N, m]: [N, 2(m + 1)]."""
    return torch.cat([x, x[idx].flatten(1)], 1)


def knn_by_distance(x: torch.Tensor, m: int = 3, r: float = 0.0) -> torch.Tensor:
    """Scheme 1: the point, then its m nearest neighbours from the closest to the m-th closest."""
    return _concat(x, square_distances(x[None], x[None])[0].topk(m + 1, largest=False).indices[:, 1:])


def knn_by_input_order(x: torch.Tensor, m: int = 3, r: float = 0.0) -> torch.Tensor:
    """Scheme 2: the same neighbours, concatenated in their order in X: not permutation invariant."""
    idx = square_distances(x[None], x[None])[0].topk(m + 1, largest=False).indices[:, 1:]
    return _concat(x, idx.sort(1).values)


def radius_by_distance(x: torch.Tensor, m: int = 0, r: float = 0.5) -> torch.Tensor:
    """Scheme 3: the point, then every point within r from the closest to the farthest, zero-padded to
    2(n + 1) columns: zeros meet no weight, so X̃ W̃1 is the exam's product with the relevant truncation."""
    d = square_distances(x[None], x[None])[0]
    d.fill_diagonal_(math.inf)
    order = d.argsort(1)
    inside = d.gather(1, order) <= r * r
    return torch.cat([x, (x[order] * inside[..., None]).flatten(1)], 1)


def radius_farthest_distance(x: torch.Tensor, m: int = 0, r: float = 0.5) -> torch.Tensor:
    """Scheme 4: the point and the distance to its farthest neighbour within r: [N, 3]."""
    d = square_distances(x[None], x[None])[0]
    return torch.cat([x, d.masked_fill(d > r * r, 0).amax(1, keepdim=True).sqrt()], 1)


EXAM_GROUPINGS = {"knn_by_distance": knn_by_distance, "knn_by_input_order": knn_by_input_order,
                  "radius_by_distance": radius_by_distance, "radius_farthest_distance": radius_farthest_distance}


def exam_global_feature(x_tilde: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """F = mean over points of ReLU(X̃ W̃1), the exam's average-pooled global feature."""
    return torch.relu(x_tilde @ w1[:x_tilde.shape[1]]).mean(0)


# ---- layers -----------------------------------------------------------------------------------------------
def check_sizes(key: str, values, low: int, high: int, max_len: int) -> list[int]:
    """A list of 1..max_len integers in [low, high], else ValueError naming the key (sizes are bounded so a
    typo cannot allocate the machine's memory)."""
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= max_len:
        raise ValueError(f"{key} must be a list of 1 to {max_len} sizes, got {values!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"{key}[{i}]={v!r} must be an integer in [{low}, {high}]")
    return list(values)


class SharedMLP(nn.Module):
    """The same Linear(-BatchNorm)-ReLU layers applied to every point: [..., C] -> [..., widths[-1]]."""

    def __init__(self, in_dim: int, widths: list[int], batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Linear(in_dim, w, bias=not batch_norm), *([nn.BatchNorm1d(w)] if batch_norm else []),
                       nn.ReLU(inplace=True)]  # in place: one activation fewer per layer, on B·N rows
            in_dim = w
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_dim)  # BN over all points


class SetAbstraction(nn.Module):
    """One level: FPS centroids, groups of k neighbours, a mini-PointNet on (offset to centroid, features)."""

    def __init__(self, centroids: int, k: int, in_features: int, widths: list[int], radius: float | None):
        super().__init__()
        self.centroids, self.k, self.radius = centroids, k, radius
        self.mlp = SharedMLP(2 + in_features, widths)

    def forward(self, xyz, feats):
        """xyz [B, N, 2], feats [B, N, C] or None -> centres [B, M, 2], features [B, M, width], groups [B, M, k]."""
        centres = gather_points(xyz, farthest_point_sample(xyz, self.centroids))
        nbrs = knn_group(centres, xyz, self.k, self.radius)
        local = gather_points(xyz, nbrs) - centres[:, :, None]  # the group in its centroid's coordinates
        if self.radius:
            local = local / self.radius
        h = local if feats is None else torch.cat([local, gather_points(feats, nbrs)], -1)
        return centres, self.mlp(h).max(2).values, nbrs


# ---- models -----------------------------------------------------------------------------------------------
class PointClassifier(ZooModel):
    """What both networks share: input checks, the MLP head, cross-entropy, accuracy, ``evaluate``, the figure.
    Subclasses define ``features(x) -> F [B, feature_dim]``."""

    goal = 0.99
    evaluates_views = True  # zoo eval --views V: voting over rotated copies

    def _init_common(self, input_shape, head, dropout, name: str) -> int:
        if len(input_shape) != 2 or input_shape[1] < 2:
            raise ValueError(f"{name} needs point clouds [points, 2 + features] (data: mnist_points), "
                             f"not input_shape {tuple(input_shape)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        self.head_widths = check_sizes("head", head, 1, MAX_WIDTH, MAX_LAYERS) if len(head) else []  # []: linear
        self.dropout = dropout
        return input_shape[1]

    def _build_head(self, in_dim: int, num_classes: int) -> None:
        layers: list[nn.Module] = []
        for w in self.head_widths:
            layers += [nn.Linear(in_dim, w, bias=False), nn.BatchNorm1d(w), nn.ReLU(), nn.Dropout(self.dropout)]
            in_dim = w
        self.head = nn.Sequential(*layers, nn.Linear(in_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, optimizer="main"):
        x, y = batch
        logits = self(x)
        return {"loss": cross_entropy(logits.float(), y).mean(), "acc": (logits.argmax(1) == y).float().mean()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, views: int = 1, max_degrees: float = 0.0) -> torch.Tensor:
        """Class log-probabilities [B, C]; with ``views`` > 1, averaged over copies rotated by angles evenly
        spaced in [-max_degrees, max_degrees] (the training augmentation's range): multi-view voting."""
        angles = torch.linspace(-max_degrees, max_degrees, views) if views > 1 else torch.zeros(1)
        total = 0
        for a in torch.deg2rad(angles).tolist():
            theta = torch.full((x.shape[0],), a, dtype=torch.float64, device=x.device)
            total = total + self(torch.cat([rotate(x[..., :2], theta), x[..., 2:]], -1)).float().log_softmax(-1)
        return total / len(angles)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250, views: int = 1,
                 max_degrees: float = 0.0) -> float:
        was = self.training
        self.eval()
        correct = sum((self.predict(x[i:i + batch_size].to(self.device), views, max_degrees).argmax(1).cpu()
                       == y[i:i + batch_size].cpu()).sum().item() for i in range(0, len(x), batch_size))
        self.train(was)
        return correct / len(x)

    def evaluate(self, data, ctx):
        """Test accuracy, with baselines on the same clouds: the majority class, and a nearest-centroid and a
        logistic-regression classifier of each cloud's 8×8 occupancy histogram (how much the arrangement of
        the points, not just where they fall, is worth). ``zoo eval --views V``: also the accuracy of voting
        over V rotated copies of each cloud, within the training rotation range."""
        x, y = data.tensors("test")
        acc = self.accuracy(x, y)
        out = {"test_accuracy": acc, "test_error": 1 - acc, "goal_accuracy": self.goal, "meets_goal": acc >= self.goal,
               "num_parameters": sum(p.numel() for p in self.parameters()), "n_test": len(y),
               "baseline_majority_class": torch.bincount(y.cpu()).max().item() / len(y)}
        views = int((getattr(ctx, "options", None) or {}).get("views") or 1)
        if views > 1:
            voted = self.accuracy(x, y, views=views, max_degrees=float(getattr(data, "rotate", 0.0)))
            out.update({"views": views, "test_accuracy_voted": voted, "meets_goal_voted": voted >= self.goal})
        if ctx.baselines:
            out.update(histogram_baselines(*data.tensors("train"), x, y))
        return out

    def visuals(self, batch):
        return {"point_clouds": self.figure(batch[0][:4], batch[1][:4])}

    def illustrate(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The points [B, N, 2] in the order the rest indexes, level-1 centroids [B, M, 2], each centroid's
        group [B, M, k] and, for max pooling, the critical points [B, N] (those that win a max). The plain
        network has no centroids of its own: it shows FPS(32) and 16-NN groups of its input."""
        xyz = x[..., :2].float()
        centres = farthest_point_sample(xyz, min(32, xyz.shape[1]))
        picked = gather_points(xyz, centres)
        return xyz, picked, knn_group(picked, xyz, min(16, xyz.shape[1])), None

    def figure(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """A few clouds with the centroids and the first centroid's group; titles: label and prediction."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with torch.no_grad():
            pred = self(x.to(self.device)).argmax(1).tolist()
            x, centres, groups, critical = (t if t is None else t.cpu() for t in self.illustrate(x))
        fig, axes = plt.subplots(1, len(x), figsize=(2.6 * len(x), 2.8))
        for i, ax in enumerate(axes if len(x) > 1 else [axes]):
            ax.scatter(x[i, :, 0], x[i, :, 1], s=6, c="0.7", label="points")
            if critical is not None:
                ax.scatter(x[i, critical[i], 0], x[i, critical[i], 1], s=8, c="k", label="critical")
            g = x[i, groups[i, 0]]
            ax.scatter(g[:, 0], g[:, 1], s=22, facecolors="none", edgecolors="tab:blue", label="neighbourhood")
            ax.scatter(centres[i, :, 0], centres[i, :, 1], s=14, c="tab:red", marker="x", label="FPS centroids")
            ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), xticks=[], yticks=[], aspect="equal")
            ax.set_title((f"label {int(labels[i])}, " if labels is not None else "") + f"predicted {pred[i]}",
                         fontsize=8)
        fig.axes[0].legend(fontsize=6, loc="lower left")
        fig.tight_layout()
        return fig


@register_model("pointnet", family="point_cloud", config="configs/pointcloud.yaml",
                description="the exam's point-cloud network: shared per-point layers, avg/max pooling, MLP head")
class PointNet(PointClassifier):
    """Per-point SharedMLP(``widths``) -> ``pool`` over points -> head MLP(``head``) -> class logits.
    ``widths: [f]``, ``pool: avg``, ``batch_norm: false`` is the exam's Figure 4 (one shared layer W1 [2, f]);
    ``head: []`` makes its classifier linear."""

    def __init__(self, input_shape, num_classes: int, widths: tuple = (64, 128, 512),
                 pool: Literal["avg", "max", "both"] = "max", head: tuple = (256, 128), dropout: float = 0.3,
                 batch_norm: bool = True):
        super().__init__()
        channels = self._init_common(input_shape, head, dropout, "pointnet")
        self.pool = pool
        self.point_mlp = SharedMLP(channels, check_sizes("widths", widths, 1, MAX_WIDTH, MAX_LAYERS), batch_norm)
        self._build_head(self.point_mlp.out_dim * (2 if pool == "both" else 1), num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The global feature F [B, f] (2f for ``both``): per-point features pooled over the points."""
        z = self.point_mlp(x)
        if self.pool == "avg":
            return z.mean(1)
        if self.pool == "max":
            return z.max(1).values
        return torch.cat([z.mean(1), z.max(1).values], 1)

    def illustrate(self, x):
        xyz, centres, groups, _ = super().illustrate(x)
        if self.pool == "avg":
            return xyz, centres, groups, None
        winners = self.point_mlp(x.to(self.device)).argmax(1)  # [B, f]: the point that sets each max
        critical = torch.zeros(x.shape[:2], dtype=torch.bool, device=winners.device).scatter_(1, winners, True)
        return xyz, centres, groups, critical


@register_model("pointnet_sa", family="point_cloud", config="configs/pointcloud_sa.yaml",
                description="PointNet++-style set abstraction: FPS centroids, kNN/radius groups, mini-PointNets")
class PointNetSA(PointClassifier):
    """``len(centroids)`` set-abstraction levels (level i: ``centroids[i]`` centroids, ``k`` neighbours, mini-
    PointNet ``widths[i]``), then a PointNet (``global_widths``) over the last centroids and their features,
    max-pooled, then the head. ``group: radius`` keeps only neighbours within ``radius[i]`` (offsets divided by
    it). The input is put in ``canonical_order`` first, so grid ties never depend on the order of the points.
    """

    goal = 0.994

    def __init__(self, input_shape, num_classes: int, centroids: tuple = (64, 16), k: int = 16,
                 group: Literal["knn", "radius"] = "knn", radius: tuple = (0.2, 0.4),
                 widths: tuple = ((32, 32, 64), (64, 64, 128)), global_widths: tuple = (128, 256, 512),
                 head: tuple = (256,), dropout: float = 0.4):
        super().__init__()
        channels = self._init_common(input_shape, head, dropout, "pointnet_sa")
        n = input_shape[0]
        centroids = check_sizes("centroids", centroids, 1, 1024, MAX_LEVELS)
        if not isinstance(widths, (list, tuple)) or len(widths) != len(centroids):
            raise ValueError(f"widths needs one list per level ({len(centroids)} centroids), got {widths!r}")
        if len(radius) != len(centroids) or not all(isinstance(r, (int, float)) and 0 < r <= 4 for r in radius):
            raise ValueError(f"radius must be one number in (0, 4] per level ({len(centroids)}), got {radius!r}")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k={k} must be in [1, {MAX_K}]")
        levels, in_features = [], channels - 2
        for i, m in enumerate(centroids):
            if m > n:
                raise ValueError(f"centroids[{i}]={m} exceeds the {n} points it samples from "
                                 f"({'data.num_points' if i == 0 else f'centroids[{i - 1}]'})")
            if k > n:
                raise ValueError(f"k={k} exceeds the {n} points of level {i + 1} "
                                 f"({'data.num_points' if i == 0 else f'centroids[{i - 1}]'})")
            layer = SetAbstraction(m, k, in_features, check_sizes(f"widths[{i}]", widths[i], 1, MAX_WIDTH,
                                                                  MAX_LAYERS), radius[i] if group == "radius" else None)
            levels.append(layer)
            n, in_features = m, layer.mlp.out_dim
        self.levels = nn.ModuleList(levels)
        self.global_mlp = SharedMLP(2 + in_features, check_sizes("global_widths", global_widths, 1, MAX_WIDTH,
                                                                 MAX_LAYERS))
        self._build_head(self.global_mlp.out_dim, num_classes)

    def abstract(self, x: torch.Tensor, canonical: bool = True):
        """Per level: (centres, features, groups); the input is sorted first (see ``canonical_order``)."""
        if canonical:
            x = canonical_order(x)
        xyz, feats, out = x[..., :2], (x[..., 2:] if x.shape[2] > 2 else None), []
        for level in self.levels:
            xyz, feats, nbrs = level(xyz, feats)
            out.append((xyz, feats, nbrs))
        return x, out

    def features(self, x: torch.Tensor, canonical: bool = True) -> torch.Tensor:
        """The global feature F [B, global_widths[-1]]."""
        _, levels = self.abstract(x, canonical)
        xyz, feats, _ = levels[-1]
        return self.global_mlp(torch.cat([xyz.to(feats.dtype), feats], -1)).max(1).values

    def illustrate(self, x):
        x, levels = self.abstract(x.to(self.device))
        return x[..., :2], levels[0][0], levels[0][2], None


def occupancy(x: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """[B, N, C] clouds in [-1, 1]² -> [B, bins²] fraction of the points in each cell of a bins×bins grid."""
    cell = ((x[..., :2].float().clamp(-1, 1 - 1e-6) + 1) * (bins / 2)).long()
    flat = cell[..., 0] * bins + cell[..., 1]
    counts = torch.zeros(len(x), bins * bins, device=x.device)
    return counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float)) / x.shape[1]


def histogram_baselines(x_train, y_train, x_test, y_test) -> dict[str, float]:
    """Test accuracy of two classifiers of the occupancy histogram, fitted on the training clouds."""
    from sklearn.linear_model import LogisticRegression

    h_tr, h_te = occupancy(x_train).cpu(), occupancy(x_test).cpu()
    y_tr, y_te = y_train.cpu(), y_test.cpu()
    means = torch.stack([h_tr[y_tr == c].mean(0) for c in range(int(y_tr.max()) + 1)])
    nearest = torch.cdist(h_te, means).argmin(1)
    logistic = LogisticRegression(max_iter=300).fit(h_tr.numpy(), y_tr.numpy())
    return {"baseline_nearest_centroid_histogram": (nearest == y_te).float().mean().item(),
            "baseline_logistic_histogram": float(logistic.score(h_te.numpy(), y_te.numpy()))}
