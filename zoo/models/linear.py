"""Linear models with closed-form optima: the trainer's check against known answers (and course material).

``linear_ae``: x -> D E (x - mean) + mean with E: k x d, D: d x k (or D = E^T, tied). Its squared error is
minimised by any E, D whose product projects onto the top-k principal subspace (Homework 6 Q1), so the decoder's
column space must be PCA's. ``linear_purifier``: a square W on ||X - WX||_F^2 + lam ||W||_F^2, minimised by
U diag(s_i^2 / (s_i^2 + lam)) U^T for X = U diag(s) V^T (Q10 of the final): m decoupled ridge regressions.
``linear_regression``: half the squared error, trained with instance noise (``data.input_noise: sigma``), lands
on ridge regression with lambda = sigma^2. ``mlp``: a tiny configurable perceptron, the network of Homework 6
Q3(a)'s backprop by hand. Each ``evaluate`` recomputes the closed form in the same ``zoo eval``.
"""
from __future__ import annotations

import itertools
import math
import weakref
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZooError
from ..losses import mse
from ..registry import register_model
from .base import ZooModel


# ---- closed forms ------------------------------------------------------------------------------------------------
class PCA(NamedTuple):
    mean: torch.Tensor  # [d], zeros when not centred
    components: torch.Tensor  # [k, d], orthonormal rows, by decreasing singular value
    singular_values: torch.Tensor  # all of them, of the (centred) data matrix


def pca(x: torch.Tensor, k: int, center: bool = True) -> PCA:
    """Top-k principal components of the rows of ``x`` [N, d] by ``torch.linalg.svd`` (in float64)."""
    x = x.flatten(1).double()
    mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return PCA(mean.float(), vh[:k].float(), s.float())


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees, ascending, between the column spaces of ``a`` [d, k] and ``b`` [d, l]."""
    qa, qb = torch.linalg.qr(a.double()).Q, torch.linalg.qr(b.double()).Q
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos)).float()


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float, bias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin (1/m)||x w + b - y||^2 + lam ||w||^2 (b unpenalised, 0 unless ``bias``): (w [d, T], b [T])."""
    x, y = x.flatten(1).double(), y.double()
    mx, my = (x.mean(0), y.mean(0)) if bias else (torch.zeros_like(x[0]), torch.zeros_like(y[0]))
    xc, yc = x - mx, y - my
    m, d = xc.shape
    w = torch.linalg.solve(xc.T @ xc / m + lam * torch.eye(d, dtype=x.dtype, device=x.device), xc.T @ yc / m)
    return w.float(), (my - mx @ w).float()


def purifier_optimum(x: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The minimiser of ||X - WX||_F^2 + lam ||W||_F^2 for the points ``x`` [n, m] (X = x^T = U diag(s) V^T).

    Returns (W, U, gains), gains_i = s_i^2 / (s_i^2 + lam), directions of X's null space included with gain 0
    (with lam = 0 those are free; 0 is the minimum-norm choice).
    """
    u, s, _ = torch.linalg.svd(x.flatten(1).double().T, full_matrices=True)
    s2 = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
    s2[:len(s)] = s ** 2
    gains = torch.where(s2 > 0, s2 / (s2 + lam), torch.zeros_like(s2))
    return ((u * gains) @ u.T).float(), u.float(), gains.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _test_split(data) -> str:
    return "test" if "test" in data.splits else data.val_split


# ---- linear autoencoder ------------------------------------------------------------------------------------------
@register_model("linear_ae", family="shallow", config="configs/linear_ae.yaml",
                description="linear encoder to k dims + linear decoder (untied or tied), MSE: learns PCA's subspace")
class LinearAE(ZooModel):
    """x_hat = mean + D E (x - mean), E: k x d, D: d x k, or D = E^T with ``tied`` (the homework's hint: one
    weight matrix). ``center``: subtract the training mean, computed in ``on_fit_start`` and kept as a buffer,
    so the model centres its inputs itself on any data, reconstructs in input space, and is compared with PCA
    of the centred data; without it, with the SVD of the raw data (whose first component points at the mean).

    Both weights start from one random orthonormal basis (E's rows, D = E^T), i.e. a projection onto a random
    k-dimensional subspace: training then only has to turn the subspace (no saddle at zero to leave).
    """

    def __init__(self, input_shape=(1, 28, 28), k: int = 10, tied: bool = False, center: bool = True):
        super().__init__()
        self.input_shape = tuple(input_shape)
        d = math.prod(self.input_shape)
        if not 1 <= k <= d:
            raise ValueError(f"k must be in [1, {d}] (the input dimension)")
        self.k, self.tied, self.center = k, tied, center
        self.encoder = nn.Linear(d, k, bias=False)
        self.decoder = None if tied else nn.Linear(k, d, bias=False)
        self.register_buffer("mean", torch.zeros(d))
        self._orthonormal_init()

    @torch.no_grad()
    def _orthonormal_init(self) -> None:
        d = self.encoder.in_features
        q = torch.linalg.qr(torch.randn(d, self.k)).Q  # torch's global RNG: the trainer seeds it
        self.encoder.weight.copy_(q.T)
        if self.decoder is not None:
            self.decoder.weight.copy_(q)

    def decoder_weight(self) -> torch.Tensor:
        """D [d, k]: its columns are the learned basis."""
        return self.encoder.weight.T if self.tied else self.decoder.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.encoder.weight.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.decoder_weight().T + self.mean).reshape(-1, *self.input_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def training_step(self, batch, optimizer="main"):
        x = batch[0]
        # squared error summed over pixels, averaged over the batch (the PCA objective per image)
        return {"loss": mse(self.reconstruct(x), x).mean()}

    def setup(self, data) -> None:
        n, need = data.size("train"), self.k + int(self.center)  # centring spends one dimension
        if n < need:  # PCA, the closed form every run is checked against, would have fewer than k components
            raise ZooError(f"linear_ae with model.k={self.k} needs at least {need} training items to compare with "
                           f"PCA, and the data has {n}: raise data.limit or lower model.k")

    def on_fit_start(self, data) -> None:
        if self.center:
            with torch.no_grad():
                self.mean.copy_(data.tensors("train")[0].flatten(1).mean(0))

    def _recon_error(self, x: torch.Tensor, chunk: int = 4096) -> float:
        return sum(mse(self.reconstruct(x[i:i + chunk]), x[i:i + chunk]).sum().item()
                   for i in range(0, len(x), chunk)) / len(x)

    def _compare(self, data) -> dict:
        """The model against PCA of the same training data (the closed form of the same objective)."""
        raw = data.tensors("train")[0]
        x = raw.flatten(1).to(self.device)
        cached = getattr(self, "_pca", None)  # artifacts, then evaluate, on the same tensor: one SVD
        if cached is None or cached[0]() is not raw:
            self._pca = cached = (weakref.ref(raw), pca(x, self.k, self.center))
        p = cached[1]
        d = self.decoder_weight().detach()
        z = self.encode(x)
        coords = (x - p.mean) @ p.components.T  # PCA coordinates of the training points
        a = torch.linalg.lstsq(z.double(), coords.double()).solution  # encoder output -> PCA coordinates
        return {"pca": p, "angles": principal_angles(d, p.components.T), "map": a,
                "map_residual": _rel((z.double() @ a).float(), coords)}

    def evaluate(self, data, ctx):
        """Reconstruction error per item (squared error summed over pixels), and with baselines: PCA's, the
        principal angles between the decoder's column space and the top-k principal subspace, and the
        least-squares map from the encoder's output to the PCA coordinates (its relative residual is ~0 when
        the encoder spans the same subspace)."""
        split = _test_split(data)
        x_train, x_test = data.tensors("train")[0], data.tensors(split)[0]
        out = {"k": self.k, "tied": self.tied, "center": self.center,
               "recon_error_train": self._recon_error(x_train), f"recon_error_{split}": self._recon_error(x_test)}
        if not ctx.baselines:
            return out
        ctx.log(f"PCA (torch.linalg.svd) of the {data.size('train')} training items")
        c = self._compare(data)
        p = c["pca"]

        def pca_error(x):
            r = (x.flatten(1) - p.mean) @ p.components.T @ p.components + p.mean
            return (r - x.flatten(1)).pow(2).sum(1).mean().item()

        out["pca"] = {"recon_error_train": pca_error(x_train), f"recon_error_{split}": pca_error(x_test)}
        out["recon_ratio_train"] = out["recon_error_train"] / out["pca"]["recon_error_train"]
        out[f"recon_ratio_{split}"] = out[f"recon_error_{split}"] / out["pca"][f"recon_error_{split}"]
        out["principal_angles_deg"] = [round(a, 4) for a in c["angles"].tolist()]
        out["max_principal_angle_deg"] = c["angles"].max().item()
        out["lstsq_map"] = {"relative_residual": c["map_residual"],
                            "singular_values": torch.linalg.svdvals(c["map"]).float().tolist()}
        return out

    def artifacts(self, data, run_dir):
        """The learned basis (D's columns), the same basis turned by the least-squares map, and PCA's."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        c = self._compare(data)
        d = self.decoder_weight().detach().double()
        aligned = torch.linalg.solve(c["map"], d.T)  # z = coords A^-1, so x_hat - mean = coords A^-1 D^T
        rows = {"learned\n(decoder)": d.T.float(), "learned,\naligned": aligned.float(),
                "PCA": c["pca"].components}
        k = min(self.k, 16)
        image = len(self.input_shape) == 3 and self.input_shape[0] == 1
        fig, axes = plt.subplots(3, k, figsize=(1.2 * k, 4.2), squeeze=False)
        for r, (title, basis) in enumerate(rows.items()):
            for i in range(k):
                ax = axes[r][i]
                v = basis[i].cpu().numpy()
                if image:
                    top = abs(v).max()
                    ax.imshow(v.reshape(self.input_shape[1:]), cmap="RdBu_r", vmin=-top, vmax=top)
                else:
                    ax.bar(range(len(v)), v)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r][0].set_ylabel(title, fontsize=7)
        fig.suptitle(f"largest principal angle {c['angles'].max().item():.2f} deg", fontsize=9)
        return {"basis": fig}


# ---- self-supervised linear purification ------------------------------------------------------------------------
@register_model("linear_purifier", family="shallow", config="configs/purifier.yaml",
                description="square W on ||X - WX||_F^2 + lam ||W||_F^2: shrinks direction i by s_i^2/(s_i^2 + lam)")
class LinearPurifier(ZooModel):
    """x -> W x with W: m x m. ``lam`` weighs ||W||_F^2 against the reconstruction error *summed* over the
    training set, as in the final's Q10; per batch the loss is the mean error per point + (lam / n) ||W||_F^2,
    whose expectation is the objective / n (n: training points, taken from the data in ``setup``).
    ``init``: random (an nn.Linear draw), identity (the trivial solution) or zeros; the objective is strictly
    convex for lam > 0, so all end on the same W.
    """

    def __init__(self, input_shape=(8,), lam: float = 1.0, init: Literal["random", "identity", "zeros"] = "random"):
        super().__init__()
        if lam < 0:
            raise ValueError("lam must be >= 0")
        self.input_shape = tuple(input_shape)
        m = math.prod(self.input_shape)
        self.lam = lam
        w = {"random": lambda: nn.Linear(m, m, bias=False).weight.detach().clone(),
             "identity": lambda: torch.eye(m), "zeros": lambda: torch.zeros(m, m)}
        if init not in w:
            raise ValueError(f"init must be one of: {', '.join(w)}")
        self.weight = nn.Parameter(w[init]())
        self.register_buffer("n_train", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ self.weight.T).reshape(x.shape)

    def losses(self, x: torch.Tensor) -> dict[str, float]:
        """The two terms of the objective over the points ``x`` [n, m]: ||X - WX||_F^2 and ||W||_F^2."""
        return {"reconstruction": mse(self(x), x).sum().item(), "regularization": self.weight.pow(2).sum().item()}

    def setup(self, data) -> None:
        self.n_train.fill_(data.size("train"))

    def training_step(self, batch, optimizer="main"):
        x = batch[0]
        if self.n_train <= 0:
            raise RuntimeError("linear_purifier needs setup(data) (the training-set size) before training")
        recon = mse(self(x), x).mean()
        reg = self.weight.pow(2).sum()
        return {"loss": recon + self.lam / self.n_train * reg, "reconstruction": recon, "regularization": reg}

    def _compare(self, data) -> dict:
        x = data.tensors("train")[0].flatten(1).to(self.device)
        exact, u, gains = purifier_optimum(x, self.lam)
        w = self.weight.detach()
        rotated = u.T @ w @ u  # W in the singular basis: diagonal at the optimum
        learned = torch.diagonal(rotated)
        return {"x": x, "exact": exact, "u": u, "gains": gains, "learned_gains": learned,
                "off_diagonal": (rotated - torch.diag(learned)).norm().item()}

    def evaluate(self, data, ctx):
        """W against the closed form U diag(s^2 / (s^2 + lam)) U^T of the training data: relative Frobenius
        error, the gain per singular direction (u_i^T W u_i, learned and exact), the objective of both."""
        c = self._compare(data)
        ctx.log(f"closed form from the SVD of the {len(c['x'])} training points")
        exact_obj = LinearPurifier(self.input_shape, self.lam).to(self.device)
        with torch.no_grad():
            exact_obj.weight.copy_(c["exact"])
        mine, best = self.losses(c["x"]), exact_obj.losses(c["x"])
        split = _test_split(data)
        xt = data.tensors(split)[0]
        return {
            "lam": self.lam, "rel_frobenius_error": _rel(self.weight.detach(), c["exact"]),
            "gains_learned": [round(g, 6) for g in c["learned_gains"].tolist()],
            "gains_exact": [round(g, 6) for g in c["gains"].tolist()],
            "max_gain_error": (c["learned_gains"] - c["gains"]).abs().max().item(),
            "off_diagonal_norm": c["off_diagonal"],
            "objective": mine["reconstruction"] + self.lam * mine["regularization"],
            "objective_exact": best["reconstruction"] + self.lam * best["regularization"],
            **{f"{k}_loss": v for k, v in mine.items()},
            f"recon_error_{split}": mse(self(xt), xt).mean().item(),
        }

    def artifacts(self, data, run_dir):
        """Gains per singular direction, learned and exact, as a table."""
        from ..visuals import table

        c = self._compare(data)
        s = torch.linalg.svdvals(c["x"].double().T).float().tolist()
        s += [0.0] * (len(c["gains"]) - len(s))
        rows = [(i + 1, f"{s[i]:.4g}", f"{g:.6f}", f"{e:.6f}")
                for i, (g, e) in enumerate(zip(c["learned_gains"].tolist(), c["gains"].tolist()))]
        return {"gains": table(["direction", "singular value", "learned gain", "exact s^2/(s^2+lam)"], rows)}


# ---- linear regression (instance noise = ridge) -----------------------------------------------------------------
@register_model("linear_regression", family="shallow", config="configs/instance_noise.yaml",
                description="y = w x (+ b), half squared error; "
                            "with input noise sigma it learns ridge, lambda = sigma^2")
class LinearRegression(ZooModel):
    """y_hat = x w (+ b). The loss is half the squared error, averaged over the batch: its gradient is
    (y_hat - y) x, so SGD's step is the textbook one. Weights start at 0 (w_0 = 0 in the exercise).

    Trained on inputs x + N(0, sigma^2 I) (``data.input_noise``), the expected loss is the noiseless one plus
    (sigma^2 / 2)||w||^2, so the weights go to ridge regression with lambda = sigma^2 (for the per-sample mean
    error), the bias unpenalised; ``evaluate`` compares them with that closed form and with least squares.
    """

    def __init__(self, input_shape=(1,), target_dim: int = 1, bias: bool = False):
        super().__init__()
        if target_dim < 1:
            raise ValueError("linear_regression needs real-valued targets (data with target_dim >= 1)")
        self.linear = nn.Linear(math.prod(input_shape), target_dim, bias=bias)
        with torch.no_grad():
            for p in self.linear.parameters():
                p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def training_step(self, batch, optimizer="main"):
        x, y = batch[0], batch[1]
        return {"loss": 0.5 * (self(x) - y).pow(2).sum(1).mean()}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """||w||, the shrinkage as it happens; a one-weight model also logs w itself (the exercise's w_t)."""
        w = self.linear.weight.detach()
        return {"weight_norm": w.norm().item(), **({"w": w.item()} if w.numel() == 1 else {})}

    def evaluate(self, data, ctx):
        """Learned w against ridge with lambda = data.input_noise^2 and against least squares (lambda = 0)."""
        x, y = (t.to(self.device) for t in data.tensors("train")[:2])
        sigma = float(getattr(data, "input_noise", 0.0))
        bias = self.linear.bias is not None
        w = self.linear.weight.detach().T
        w_ridge, b_ridge = ridge(x, y, sigma ** 2, bias)
        w_ols, _ = ridge(x, y, 0.0, bias)
        split = _test_split(data)
        xt, yt = data.tensors(split)[:2]
        return {"input_noise": sigma, "ridge_lambda": sigma ** 2,
                "rel_error_vs_ridge": _rel(w, w_ridge), "rel_error_vs_least_squares": _rel(w, w_ols),
                "ridge_vs_least_squares": _rel(w_ridge, w_ols),
                "weights": w.flatten().tolist(), "weights_ridge": w_ridge.flatten().tolist(),
                "weights_least_squares": w_ols.flatten().tolist(),
                **({"bias": self.linear.bias.tolist(), "bias_ridge": b_ridge.tolist()} if bias else {}),
                f"mse_{split}": (self(xt) - yt).pow(2).sum(1).mean().item()}


# ---- tiny MLP ----------------------------------------------------------------------------------------------------
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


@register_model("mlp", family="shallow", config="configs/backprop.yaml",
                description="tiny MLP (widths, activation): squared error on real targets, cross-entropy on classes")
class MLP(ZooModel):
    """Linear layers of widths ``hidden`` with ``activation`` between them (none after the last).

    Real-valued targets (data declaring ``target_dim``): loss = squared error summed over outputs, averaged over
    the batch, i.e. (y_hat - y)^2 for one output, as in Homework 6 Q3(a). Class labels (``num_classes``):
    cross-entropy. ``init_constant``: every weight and bias set to this value (the homework's 1), else PyTorch's
    default initialisation.
    """

    def __init__(self, input_shape=(2,), target_dim: int = 0, num_classes: int = 0, hidden: tuple = (16,),
                 activation: Literal["relu", "tanh", "sigmoid", "identity"] = "relu", bias: bool = True,
                 init_constant: float | None = None):
        super().__init__()
        if not all(isinstance(h, int) and h >= 1 for h in hidden):
            raise ValueError(f"hidden must be a list of widths >= 1, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of: {', '.join(ACTIVATIONS)}")
        if target_dim < 1 and num_classes < 2:
            raise ValueError("mlp needs data with real targets (target_dim) or class labels (num_classes)")
        self.regression = target_dim >= 1
        widths = [math.prod(input_shape), *hidden, target_dim if self.regression else num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        if init_constant is not None:
            with torch.no_grad():
                for p in self.net.parameters():
                    p.fill_(float(init_constant))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, optimizer="main"):
        x, y = batch[0], batch[1]
        out = self(x)
        if self.regression:
            return {"loss": (out - y).pow(2).sum(1).mean()}
        return {"loss": F.cross_entropy(out, y), "accuracy": (out.argmax(1) == y).float().mean()}

    def evaluate(self, data, ctx):
        split = _test_split(data)
        x, y = data.tensors(split)[:2]
        out = {f"{k}_{split}": v.item() for k, v in self.training_step((x, y)).items()}
        out["parameters"] = {name: p.detach().flatten().tolist() for name, p in self.named_parameters()
                             if p.numel() <= 64}  # the hand-checkable weights of tiny nets
        return out
