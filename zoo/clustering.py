"""Clustering helpers shared by k-means, competitive learning and the Bernoulli mixture.

Metrics are computed on the official 60,000 MNIST training images (``data.full_train()``), the set the
homework's 10 x 10 (digit, cluster) table is about. ``ClusterModel`` gives every clustering model the same
``evaluate`` / ``artifacts`` / ``visuals`` from two methods: ``assign(x)`` (cluster ids) and ``prototypes()``.
"""
from __future__ import annotations

import contextlib
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .visuals import Grid

CHUNK = 8192  # rows per distance block: bounds memory for any N


@contextlib.contextmanager
def one_thread():
    """Run many tiny tensor ops on one CPU thread: splitting them only adds hand-offs, and on a busy machine
    each hand-off waits for a descheduled thread (competitive learning's per-image loop: 18x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- distances, assignments, Lloyd's algorithm -----------------------------------------------------------------
def sq_distances(x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """||x_n - c_i||^2 [N, k] via ||x||^2 - 2 x.c + ||c||^2 (clamped: rounding can go slightly negative);
    ``x_sq`` = ||x||^2 [N, 1] when the caller computes it once for many calls."""
    x_sq = x.pow(2).sum(1, keepdim=True) if x_sq is None else x_sq
    return (x_sq - 2 * x @ centers.T + centers.pow(2).sum(1)).clamp_min(0)


def assign(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre for each row of ``x`` (ties: lowest index).

    argmin ||x - c||^2 = argmax x.c - ||c||^2 / 2: the network's own first layer, with no ||x||^2 to compute.
    """
    half = 0.5 * centers.pow(2).sum(1)
    return torch.cat([(x[i:i + CHUNK] @ centers.T - half).argmax(1) for i in range(0, len(x), CHUNK)])


def inertia(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """Sum of squared distances sum_n ||x_n - c_{z_n}||^2 (nearest centre if no labels), accumulated in float64."""
    if labels is None:
        labels = assign(x, centers)
    return sum((x[i:i + CHUNK] - centers[labels[i:i + CHUNK]]).pow(2).sum(1).double().sum().item()
               for i in range(0, len(x), CHUNK))


def cluster_means(x: torch.Tensor, labels: torch.Tensor, k: int, fallback: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's points; an empty cluster keeps its ``fallback`` row (the homework's convention)."""
    onehot = torch.zeros(len(x), k, dtype=x.dtype, device=x.device)
    onehot[torch.arange(len(x), device=x.device), labels] = 1
    counts = torch.bincount(labels, minlength=k)
    means = (onehot.T @ x) / counts.clamp_min(1)[:, None].to(x.dtype)
    return torch.where((counts > 0)[:, None], means, fallback)


def partition_inertia(x: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """k-means cost of a partition: each point against the mean of its own cluster (the best centres for it)."""
    return inertia(x, cluster_means(x, labels, k, torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)), labels)


@dataclass
class LloydResult:
    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    iterations: int  # number of mean updates
    converged: bool  # assignments stopped changing before max_iter


def lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int = 300) -> LloydResult:
    """Lloyd's algorithm: assign to the nearest centre, move centres to their cells' means, until no point moves.

    This is full-batch gradient descent on the k-means loss with a per-centre step that lands exactly on the
    mean (the homework's eta = 5 at b = N, were all cells a tenth of the data). Empty cells keep their centre.
    """
    c = centers.detach().clone()
    labels = assign(x, c)
    for it in range(1, max_iter + 1):
        c = cluster_means(x, labels, len(c), c)
        new = assign(x, c)
        if torch.equal(new, labels):
            return LloydResult(c, labels, inertia(x, c, labels), it, True)
        labels = new
    return LloydResult(c, labels, inertia(x, c, labels), max_iter, False)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                     local_trials: int | None = None, restarts: int = 1) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn): each new centre is the best of ``2 + ln k`` D^2-draws.
    ``restarts`` independent seedings share each pass over ``x`` (one GEMM): [k, D], or [restarts, k, D]."""
    n = len(x)
    trials = local_trials or 2 + int(math.log(k))
    first = torch.cat([torch.randint(n, (1,), generator=generator) for _ in range(restarts)]).to(x.device)
    centers = [x[first]]  # [R, D] per round
    x_sq = x.pow(2).sum(1, keepdim=True)  # once, not once per centre: the GEMM is then the whole cost
    closest = sq_distances(x, x[first], x_sq)  # [N, R]
    for _ in range(1, k):
        # GEMM-form distances can round below 0; with fewer distinct points than k they are all 0: draw evenly
        weights = closest.clamp(min=0).T.cpu().double()  # [R, N]
        total = weights.sum(1, keepdim=True)
        probs = torch.where(total > 0, weights / total.clamp(min=1e-300), torch.full_like(weights, 1.0 / n))
        candidates = torch.cat([torch.multinomial(p, trials, replacement=True, generator=generator)
                                for p in probs]).to(x.device)  # [R * trials]
        new_closest = torch.minimum(closest[:, :, None], sq_distances(x, x[candidates], x_sq).view(n, restarts, trials))
        best = new_closest.sum(0).argmin(1)  # [R]
        rows = torch.arange(restarts, device=x.device)
        centers.append(x[candidates.view(restarts, trials)[rows, best]])
        closest = new_closest[:, rows, best]
    out = torch.stack(centers, 1)  # [R, k, D]
    return out[0] if restarts == 1 else out


# ---- label-based metrics ---------------------------------------------------------------------------------------
def contingency(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int, k: int) -> torch.Tensor:
    """[n_classes, k] counts: row = true label, column = cluster (the homework's 10 x 10 table)."""
    idx = y_true.long().cpu() * k + y_pred.long().cpu()
    return torch.bincount(idx, minlength=n_classes * k).reshape(n_classes, k)


def hungarian_accuracy(table: torch.Tensor) -> float:
    """Clustering accuracy: the best one-to-one matching of clusters to labels (unmatched clusters count wrong)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return table[rows, cols].sum().item() / table.sum().item()


def label_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, k: int) -> dict[str, Any]:
    """ACC (Hungarian), NMI, ARI and the number of empty clusters of a labelling."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    yt, yp = y_true.cpu().numpy(), y_pred.cpu().numpy()
    table = contingency(y_true, y_pred, int(y_true.max()) + 1, k)
    return {"acc": hungarian_accuracy(table), "nmi": float(normalized_mutual_info_score(yt, yp)),
            "ari": float(adjusted_rand_score(yt, yp)), "empty_clusters": int((table.sum(0) == 0).sum())}


def sklearn_kmeans(x: torch.Tensor, y: torch.Tensor, k: int, n_init: int = 10, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's KMeans (k-means++ seeding, best of ``n_init``) on the same data: the reference inertia."""
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x.cpu().numpy())
    labels = torch.from_numpy(km.labels_).long()
    return {"inertia": float(km.inertia_), "iterations": int(km.n_iter_), "seconds": time.perf_counter() - t0,
            **label_metrics(y, labels, k)}


# ---- figures ---------------------------------------------------------------------------------------------------
def write_table_csv(table: torch.Tensor, path: Path) -> Path:
    """The (true digit, cluster) counts as CSV with a header row and a label column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["digit"] + [f"cluster_{j}" for j in range(table.shape[1])])
        for i, row in enumerate(table.tolist()):
            w.writerow([i] + row)
    return path


def table_heatmap(table: torch.Tensor, title: str = "training images: digit x cluster"):
    """Matplotlib heat map of the contingency table with the counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * table.shape[1], 1 + 0.5 * table.shape[0]))
    ax.imshow(table.numpy(), cmap="viridis")
    ax.set_xlabel("cluster")
    ax.set_ylabel("true digit")
    ax.set_title(f"{title} (sum {table.sum().item():,})")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(table.shape[0]))
    top = table.max().item()
    for (i, j), v in zip(((i, j) for i in range(table.shape[0]) for j in range(table.shape[1])), table.flatten()):
        ax.text(j, i, str(v.item()), ha="center", va="center", fontsize=6,
                color="black" if v.item() > 0.6 * top else "white")
    plt.close(fig)  # kept alive by the caller's reference; closing avoids pyplot's open-figure registry
    return fig


# ---- the shared model behaviour --------------------------------------------------------------------------------
class ClusterModel:
    """Mixin for a ZooModel that clusters images into ``self.k`` groups: define ``assign`` and ``prototypes``.

    ``evaluate`` reports, on the 60k training images: the partition's inertia, ACC, NMI, ARI, empty clusters,
    and scikit-learn KMeans on the same data; subclasses add their own numbers in ``extra_metrics``.
    """

    k: int
    image_shape: tuple

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster id of each (flattened) row of ``x``."""
        raise TypeError(f"{type(self).__name__} must define assign()")

    def prototypes(self) -> torch.Tensor:
        """[k, D] images representing the clusters, in pixel space (shown as a grid)."""
        raise TypeError(f"{type(self).__name__} must define prototypes()")

    def data_for_metrics(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The 60k training images, flattened as the model sees them, and their labels."""
        x, y = data.full_train()
        return x.flatten(1).to(self.device), y

    def extra_metrics(self, x: torch.Tensor, y: torch.Tensor, data, ctx) -> dict[str, Any]:
        """Model-specific numbers on the same images (own inertia, log-likelihood, baselines)."""
        return {}

    @torch.no_grad()
    def clustering_summary(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
        z = self.assign(x)
        metrics = {"partition_inertia": partition_inertia(x, z, self.k), **label_metrics(y, z, self.k)}
        metrics["cluster_sizes"] = torch.bincount(z.cpu(), minlength=self.k).tolist()
        return metrics, contingency(y, z, int(y.max()) + 1, self.k)

    @torch.no_grad()
    def evaluate(self, data, ctx) -> dict[str, Any]:
        x, y = self.data_for_metrics(data)
        ctx.log(f"clustering {len(x)} training images")
        metrics, _ = self.clustering_summary(x, y)
        out = {"n_images": len(x), "k": self.k, **metrics, **self.extra_metrics(x, y, data, ctx)}
        if not ctx.baselines:  # zoo eval --no-baselines: the model's own numbers only
            return out
        ctx.log(f"scikit-learn KMeans(n_clusters={self.k}, n_init=10) on the same {len(x)} images")
        out["sklearn_kmeans"] = sklearn_kmeans(x, y, self.k, n_init=10, seed=ctx.seed)
        ref = out["sklearn_kmeans"]["inertia"]
        key = "inertia" if "inertia" in out else "partition_inertia"
        out["inertia_vs_sklearn"] = out[key] / ref - 1  # relative gap; <= 0.005 is issue 3's goal for k-means
        return out

    @torch.no_grad()
    def artifacts(self, data, run_dir) -> dict[str, Any]:
        x, y = self.data_for_metrics(data)
        _, table = self.clustering_summary(x, y)
        write_table_csv(table, Path(run_dir) / "cluster_table.csv")
        out = {"cluster_table": table_heatmap(table)}
        if len(self.image_shape) == 3:
            out["centers"] = self.prototype_images()
        return out

    def prototype_images(self) -> Grid:
        """The centres as images, up to 10 a row (k = 10: one row, cluster 0 to 9, as the table's columns)."""
        return Grid(self.prototypes().detach().reshape(self.k, *self.image_shape).clamp(0, 1), min(self.k, 10))

    def visuals(self, batch) -> dict[str, Any]:
        if len(self.image_shape) != 3:  # not images (e.g. RGB pixels in compression): nothing to show
            return {}
        return {"centers": self.prototype_images()}
