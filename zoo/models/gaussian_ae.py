"""Gaussian autoencoder with a learnable decoder covariance (Homework 7 Q2, Mock Final Q4).

Encoder z|x = g(x) + N(0, I), prior N(0, I), decoder x|z = f(z) + N(0, Sigma) with Sigma^-1 = M^T M.
Negative ELBO per image = |g(x)|^2/2 + |M(x - f(g(x) + eps))|^2/2 - log|det M| + (D/2) log 2pi.
The seed solution drops -log|det M|; with a learnable M that term is what keeps M from collapsing to zero.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZooError
from ..losses import LOG_2PI, beta_nll, bits_per_dim, gaussian_kl, gaussian_nll, pixel_nll
from ..registry import register_model
from ..visuals import Grid
from .base import ZooModel

DEQUANT_STD = 1 / (256 * math.sqrt(12))  # std of the uniform dequantisation noise U/256
PRIOR_FIT_CODES = 20_000  # training codes the mixture prior is fitted to: plenty for 10 x 16-d components


def _act(layer_norm: nn.Module, dropout: float) -> list[nn.Module]:
    """ReLU followed by batch norm and dropout, as the homework puts them after every ReLU."""
    return [nn.ReLU(), layer_norm, nn.Dropout(dropout)]


class Encoder(nn.Module):
    """CONV3-c, POOL2, CONV3-c, POOL2, FLATTEN, FC-latent (the HW6 Q3 CNN); sizes follow the input shape."""

    def __init__(self, input_shape, latent_dim: int, channels: int, dropout: float):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), *_act(nn.BatchNorm2d(channels), dropout), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), *_act(nn.BatchNorm2d(channels), dropout), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(channels * (h // 4) * (w // 4), latent_dim))

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """FC latent -> hidden -> c*b*b, unflatten, bicubic x2, ConvT(4, s2, op1), ConvT(4, s1, p1) -> H x W.

    The two transposed convolutions map b x b (after upsampling 2b) to 4b + 4, so b = ceil((H - 4) / 4);
    for 28 x 28 that is the homework's [20, 6, 6] and FC 10 -> 360 -> 720. Larger outputs are cropped.
    """

    def __init__(self, input_shape, latent_dim: int, channels: int, out_channels: int, dropout: float,
                 hidden: int | None = None):
        super().__init__()
        _, h, w = input_shape
        self.out_hw = (h, w)
        self.base = (max(1, -(-(h - 4) // 4)), max(1, -(-(w - 4) // 4)))
        flat = channels * self.base[0] * self.base[1]
        hidden = hidden or flat // 2
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden), *_act(nn.BatchNorm1d(hidden), dropout),
            nn.Linear(hidden, flat), *_act(nn.BatchNorm1d(flat), dropout),
            nn.Unflatten(1, (channels, *self.base)))
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, output_padding=1),
            *_act(nn.BatchNorm2d(channels), dropout),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=1, padding=1))

    def forward(self, z):
        out = self.conv(self.fc(z))
        return out[..., :self.out_hw[0], :self.out_hw[1]]


@register_model("gaussian_ae", family="autoencoder", config="configs/vae.yaml",
                description="CNN Gaussian autoencoder, ELBO with learnable decoder covariance Sigma^-1 = M^T M")
class GaussianAE(ZooModel):
    """``covariance``: identity (plain MSE, the homework), scalar, diagonal, full (lower-triangular M with
    positive diagonal), all shared across images; or predicted (a per-pixel log-variance from the decoder,
    floored at ``min_std`` so that near-constant pixels cannot drive the density to infinity).

    ``outlier_prob`` p > 0 (per-pixel covariances): each pixel's likelihood is (1 - p) N + p U[0, 1], so one
    pixel the decoder is sure of but gets wrong costs at most -log p nats instead of dominating the image.

    ``encoder``: fixed (the seed: z = g(x) + N(0, I)) or learned (the encoder also outputs a diagonal
    log-variance). ``channels``/``decoder_channels``/``hidden`` widen the seed's layers without changing their
    pattern. ``kl_warmup`` ramps the KL weight of the training objective from 0 to 1 over that many steps.
    ``prior_components`` > 0 fits a full-covariance Gaussian mixture to the training codes after every epoch
    (stored in the checkpoint); ``sample_prior`` says which prior ``sample`` draws from by default.

    ``nll_beta`` > 0 trains on the beta-NLL of Seitzer et al. (2022): each pixel's NLL weighted by a constant
    sigma^(2 beta). Its optimum is the ELBO's (same means and variances), but the gradient of the mean is no
    longer dominated by the near-certain background pixels, which otherwise leaves the strokes at mean 0
    with a huge variance. The reported nelbo/bpd are always the true ELBO.
    """

    evaluates_iw_samples = True  # zoo eval --iw-samples K: the importance-weighted bound

    def __init__(self, input_shape=(1, 28, 28), latent_dim: int = 10, channels: int = 10, decoder_channels: int = 20,
                 dropout: float = 0.1,
                 covariance: Literal["identity", "scalar", "diagonal", "full", "predicted"] = "diagonal",
                 init_std: float = 0.1,
                 min_std: float = DEQUANT_STD, nll_beta: float = 0.0,
                 covariance_init: Literal["data", "diagonal"] = "data",
                 encoder: Literal["fixed", "learned"] = "fixed", hidden: int | None = None, kl_warmup: int = 0,
                 prior_components: int = 0, sample_prior: Literal["standard", "fitted"] = "standard",
                 mean_margin: float = 0.0, outlier_prob: float = 0.0):
        super().__init__()
        if kl_warmup < 0 or not 0 <= prior_components <= 1000:
            raise ValueError(f"need kl_warmup >= 0 and 0 <= prior_components <= 1000, got {kl_warmup}, "
                             f"{prior_components}")
        if sample_prior == "fitted" and not prior_components:
            raise ValueError("sample_prior=fitted needs prior_components > 0 (the mixture to fit)")
        if not 0 <= nll_beta <= 1:
            raise ValueError(f"nll_beta={nll_beta} must be in [0, 1]")
        for name, value in (("latent_dim", latent_dim), ("channels", channels), ("decoder_channels", decoder_channels)):
            if not 1 <= value <= 4096:
                raise ValueError(f"{name}={value} must be in [1, 4096]")
        if not (0 < min_std < init_std):
            raise ValueError(f"need 0 < min_std < init_std, got min_std={min_std}, init_std={init_std}")
        self.input_shape, self.latent_dim, self.covariance = tuple(input_shape), latent_dim, covariance
        self.dims = math.prod(self.input_shape)
        self.log_min_var = 2 * math.log(min_std)
        self.nll_beta, self.covariance_init = nll_beta, covariance_init
        if not 0 <= mean_margin < 0.5:
            raise ValueError(f"mean_margin={mean_margin} must be in [0, 0.5)")
        if not 0 <= outlier_prob < 1 or (outlier_prob and covariance == "full"):
            raise ValueError(f"outlier_prob={outlier_prob} must be in [0, 1), and 0 with covariance=full "
                             f"(the outlier mixture is per pixel)")
        self.mean_margin, self.outlier_prob = mean_margin, outlier_prob
        self.learned_variance, self.kl_warmup, self.sample_prior = encoder == "learned", kl_warmup, sample_prior
        self.encoder = Encoder(self.input_shape, latent_dim * (2 if self.learned_variance else 1), channels, dropout)
        out_channels = self.input_shape[0] * (2 if covariance == "predicted" else 1)
        self.decoder = Decoder(self.input_shape, latent_dim, decoder_channels, out_channels, dropout, hidden)
        self.register_buffer("kl_step", torch.zeros((), dtype=torch.long))  # warm-up position, resumed exactly
        if prior_components:
            k, d = prior_components, latent_dim
            self.register_buffer("prior_fitted", torch.zeros((), dtype=torch.bool))
            self.register_buffer("prior_weights", torch.full((k,), 1 / k))
            self.register_buffer("prior_means", torch.zeros(k, d))
            self.register_buffer("prior_tril", torch.eye(d).expand(k, d, d).clone())
        d, log_prec = self.dims, -math.log(init_std)
        if covariance == "scalar":
            self.log_scale = nn.Parameter(torch.tensor(log_prec))
        elif covariance in ("diagonal", "full"):
            self.log_diag = nn.Parameter(torch.full((d,), log_prec))
        if covariance == "full":
            self.lower = nn.Parameter(torch.zeros(d, d))
            self.register_buffer("tril_mask", torch.tril(torch.ones(d, d), -1), persistent=False)

    @torch.no_grad()
    def on_fit_start(self, data):
        """Start from the data's statistics: the decoder's output bias at the mean image and the shared
        precision at 1/std per pixel; with ``covariance_init: data`` a full M starts at the maximum-likelihood
        value for the initial decoder, so its off-diagonal entries need not crawl there from zero."""
        x = next(data.batches("train", 10000, generator=torch.Generator().manual_seed(0)))[0].flatten(1).double()
        mean = x.mean(0)
        std = x.std(0).clamp_min(math.exp(self.log_min_var / 2))
        c = self.input_shape[0]
        start = torch.logit(((mean - self.mean_margin) / (1 - 2 * self.mean_margin)).clamp(1e-3, 1 - 1e-3))
        self.decoder.conv[-1].bias[:c] = start.view(self.input_shape).mean((1, 2)).float()
        if self.covariance == "scalar":
            self.log_scale.fill_(-std.log().mean())
        elif self.covariance in ("diagonal", "full"):
            self.log_diag.copy_(-std.log())
        if self.covariance == "full" and self.covariance_init == "data":
            # the maximum-likelihood Sigma for the initial decoder: the second moment of its residuals
            xs = x[:5000].float().view(-1, *self.input_shape)
            r = (xs - self(xs)[1]).flatten(1).double()
            second = r.T @ r / len(r) + torch.diag(std.new_full((self.dims,), math.exp(self.log_min_var)))
            m = lower_whitening(torch.linalg.inv(second))
            self.log_diag.copy_(torch.diag(m).log())
            self.lower.copy_(torch.tril(m, -1))

    # ---- the decoder distribution ----------------------------------------------------------------------------
    def decode(self, z):
        """Mean image f(z) in [0, 1] and, for ``predicted``, the floored per-pixel log-variance."""
        out = self.decoder(z)
        c = self.input_shape[0]
        mean = self.mean_margin + (1 - 2 * self.mean_margin) * torch.sigmoid(out[:, :c])
        if self.covariance != "predicted":
            return mean, None
        raw = out[:, c:]
        return mean, self.log_min_var + F.softplus(raw - self.log_min_var)

    def whiten(self, residual, log_var):
        """M (x - f) and log|det M| for the current covariance (per image [B] for ``predicted``)."""
        r = residual.flatten(1)
        if self.covariance == "identity":
            return r, r.new_zeros(())
        if self.covariance == "scalar":
            return r * self.log_scale.exp(), self.log_scale * self.dims
        if self.covariance == "diagonal":
            return r * self.log_diag.exp(), self.log_diag.sum()
        if self.covariance == "full":
            m = self.lower * self.tril_mask + torch.diag(self.log_diag.exp())
            return r @ m.T, self.log_diag.sum()
        lv = log_var.flatten(1)
        return r * torch.exp(-0.5 * lv), -0.5 * lv.sum(1)

    def precision_factor(self) -> torch.Tensor:
        """The shared M (D x D) of the scalar/diagonal/full/identity covariances."""
        eye = torch.eye(self.dims, device=self.device)
        return self.whiten(eye, None)[0].T if self.covariance != "predicted" else None

    def covariance_matrix(self) -> torch.Tensor:
        """Sigma = (M^T M)^-1 for the shared covariances."""
        m = self.precision_factor().double()
        return torch.cholesky_inverse(torch.linalg.cholesky(m.T @ m))

    # ---- the ZooModel contract ----------------------------------------------------------------------------------
    def encode(self, x) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The code's mean g(x) and, for the learned encoder, its diagonal log-variance (else None: unit)."""
        out = self.encoder(x)
        if not self.learned_variance:
            return out, None
        mean, log_var = out.chunk(2, dim=1)
        return mean, log_var.clamp(-12, 6)  # keeps exp() finite in the first steps of a bad init

    def forward(self, x, noise_scale: float = 1.0):
        g, z_log_var = self.encode(x)
        std = 1.0 if z_log_var is None else torch.exp(0.5 * z_log_var)
        mean, log_var = self.decode(g + noise_scale * std * torch.randn_like(g))
        return g, mean, log_var, z_log_var

    def reconstruction_nll(self, x, mean, log_var) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-log p(x|z) per image [B] and the trained-on NLL (beta-NLL when ``nll_beta`` applies, else the same)."""
        white, log_det = self.whiten(x - mean, log_var)
        if self.covariance == "full":
            nll = gaussian_nll(white, log_det)
            return nll, nll
        lv = {"identity": lambda: white.new_zeros(()), "scalar": lambda: -2 * self.log_scale,
              "diagonal": lambda: -2 * self.log_diag, "predicted": lambda: log_var.flatten(1)}[self.covariance]()
        lv = lv.expand_as(white)
        nll = pixel_nll(white, lv, self.outlier_prob).sum(1)
        if self.nll_beta and self.covariance in ("diagonal", "predicted"):
            return nll, beta_nll(white, lv, self.nll_beta, self.outlier_prob)
        return nll, nll

    def terms(self, x) -> dict[str, torch.Tensor]:
        """Per-image ELBO terms in nats, plus the training objective (beta-NLL, KL warm-up) when it differs."""
        g, mean, log_var, z_log_var = self(x)
        nll, trained = self.reconstruction_nll(x, mean, log_var)
        kl = gaussian_kl(g, z_log_var)
        out = {"kl": kl, "nll": nll, "nelbo": kl + nll}
        weight = self.kl_weight()
        if trained is not nll or weight < 1:
            out["objective"] = weight * kl + trained
        return out

    def kl_weight(self) -> float:
        if not self.training or not self.kl_warmup:
            return 1.0
        return min(1.0, float(self.kl_step) / self.kl_warmup)

    def on_train_batch_end(self, step: int) -> None:
        self.kl_step.fill_(step)

    @torch.no_grad()
    def log_importance_weights(self, x, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image: [B, k] (the IWAE bound's terms)."""
        g, z_log_var = self.encode(x)
        lv = torch.zeros_like(g) if z_log_var is None else z_log_var
        eps = torch.randn(k, *g.shape, device=g.device, dtype=g.dtype, generator=generator)
        z = g + torch.exp(0.5 * lv) * eps  # [k, B, d]
        mean, log_var = self.decode(z.flatten(0, 1))
        log_px = -self.reconstruction_nll(x.expand(k, *x.shape).flatten(0, 1), mean, log_var)[0].view(k, -1)
        log_pz = -0.5 * (z.pow(2).sum(-1) + g.shape[1] * LOG_2PI)
        log_qz = -0.5 * (eps.pow(2).sum(-1) + lv.sum(-1) + g.shape[1] * LOG_2PI)
        return (log_px + log_pz - log_qz).T

    def training_step(self, batch, optimizer="main"):
        t = {k: v.mean() for k, v in self.terms(batch[0]).items()}
        out = {"loss": t.get("objective", t["nelbo"]), "nelbo": t["nelbo"], "kl": t["kl"], "nll": t["nll"],
               "bpd": bits_per_dim(t["nelbo"], self.dims)}
        if self.covariance in ("scalar", "diagonal", "full"):  # geometric-mean std: collapse would show here
            _, log_det = self.whiten(batch[0][:1], None)
            out["sigma"] = torch.exp(-log_det.detach() / self.dims)
        return out

    # ---- sampling ---------------------------------------------------------------------------------------------
    @property
    def priors(self) -> tuple[str, ...]:
        """The priors ``sample`` can draw from, its default first: standard, and fitted once a mixture is."""
        if not (hasattr(self, "prior_fitted") and bool(self.prior_fitted)):
            return ("standard",)
        return ("fitted", "standard") if self.sample_prior == "fitted" else ("standard", "fitted")

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               prior: str | None = None):
        """Decode z drawn from the prior (``sample_prior`` unless given), its noise scaled by ``temperature``:
        standard N(0, t^2 I), or fitted (a mixture component, then its mean + t L eps). The image is f(z)."""
        prior = prior or self.priors[0]
        if prior not in self.priors:
            raise ZooError(f"prior '{prior}': this model has {' and '.join(self.priors)} (a fitted prior needs "
                           f"model.prior_components > 0 and one finished epoch)")
        return self.decode(self.draw_codes(n, generator, temperature, prior).to(self.device))[0]

    def draw_codes(self, n: int, generator: torch.Generator | None, temperature: float, prior: str) -> torch.Tensor:
        """n codes [n, d] on the CPU from the standard or the fitted prior, noise scaled by ``temperature``."""
        eps = torch.randn(n, self.latent_dim, generator=generator) * temperature
        if prior == "standard":
            return eps
        comp = torch.multinomial(self.prior_weights.cpu(), n, replacement=True, generator=generator)
        return self.prior_means.cpu()[comp] + (self.prior_tril.cpu()[comp] @ eps[..., None])[..., 0]

    @torch.no_grad()
    def codes(self, data, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Code means g(x) [N, d] and labels of a split (in eval mode), in a fixed order."""
        was = self.training
        self.eval()
        zs, ys = [], []
        for x, y in data.batches(split, 2000, generator=torch.Generator().manual_seed(0)):
            zs.append(self.encode(x)[0].double().cpu())
            ys.append(y.cpu())
            if limit and sum(map(len, zs)) >= limit:
                break
        self.train(was)
        return torch.cat(zs)[:limit], torch.cat(ys)[:limit]

    def setup(self, data) -> None:
        self._data = data
        if hasattr(self, "prior_fitted"):
            # imported before a resume restores the RNGs: the import draws from Python's `random` (rich, which
            # scikit-learn pulls in), and a first import at an epoch end would draw again after the restore
            import sklearn.mixture  # noqa: F401

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Refit the mixture prior to 20,000 training codes, starting from the last fit (seconds, not minutes, and
        resumed runs refit the same way: the last fit is in the checkpoint); returns the codes' mean log-density."""
        if not hasattr(self, "prior_fitted"):
            return {}
        from sklearn.mixture import GaussianMixture

        z = self.codes(self._data, "train", PRIOR_FIT_CODES)[0].numpy()
        warm = {}
        if bool(self.prior_fitted):
            precisions = torch.cholesky_inverse(self.prior_tril.double().cpu())
            weights = self.prior_weights.double().cpu()
            warm = {"weights_init": (weights / weights.sum()).numpy(),  # float32 round trip: renormalise
                    "means_init": self.prior_means.double().cpu().numpy(), "precisions_init": precisions.numpy()}
        gmm = GaussianMixture(len(self.prior_weights), covariance_type="full", reg_covar=1e-4, max_iter=200,
                              random_state=0, **warm).fit(z)
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.prior_means.device)  # noqa: E731
        self.prior_weights.copy_(as_t(gmm.weights_ / gmm.weights_.sum()))
        self.prior_means.copy_(as_t(gmm.means_))
        self.prior_tril.copy_(torch.linalg.cholesky(torch.as_tensor(gmm.covariances_)).float())
        self.prior_fitted.fill_(True)
        return {"prior_loglik": float(gmm.score(z))}

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x)[0])[0]

    def visuals(self, batch):
        x = batch[0][:32]
        pairs = torch.stack([x, self.reconstruct(x)], 1).flatten(0, 1)  # original, reconstruction, ...
        out = {"reconstructions": Grid(pairs, 8)}  # an even row: no pair split across two rows
        for prior in self.priors:  # a fixed noise: the grids of successive epochs are comparable
            name = "samples" if prior == "standard" else f"samples_{prior}"
            out[name] = self.sample(64, torch.Generator().manual_seed(0), prior=prior)
        return out

    @torch.no_grad()
    def evaluate(self, data, ctx):
        """Test ELBO and the importance-weighted bound (``iw_samples`` draws, IWAE) on the same dequantised
        images, in nats/image and bits/dim, beside two Gaussian baselines."""
        self.eval()
        gen = torch.Generator().manual_seed(ctx.seed)
        torch.manual_seed(ctx.seed)
        k = int((getattr(ctx, "options", None) or {}).get("iw_samples") or 0)
        iw_gen = torch.Generator(self.device).manual_seed(ctx.seed + 1)  # its own draws: the ELBO's stay the same
        elbo = iw = 0.0
        test = []
        for x, _ in data.batches("test", 1000, generator=gen):
            elbo += self.terms(x)["nelbo"].double().sum().item()
            if k:
                chunk = max(1, 4000 // k)  # k decodes per image: bound the memory
                for i in range(0, len(x), chunk):
                    logw = self.log_importance_weights(x[i:i + chunk], k, iw_gen).double()
                    iw -= (torch.logsumexp(logw, 1) - math.log(k)).sum().item()
            test.append(x.flatten(1).double().cpu())
        n = sum(map(len, test))
        out = {"test_nelbo_nats": elbo / n, "test_bpd": bits_per_dim(elbo / n, self.dims), "test_images": n,
               "covariance": self.covariance}
        if k:
            out.update({"test_iw_nll_nats": iw / n, "test_iw_bpd": bits_per_dim(iw / n, self.dims), "iw_samples": k})
        if ctx.baselines:
            train = torch.cat([x.flatten(1).double().cpu() for x, _ in data.batches("train", 5000, generator=gen)])
            out.update(gaussian_baselines(train, torch.cat(test)))
        if not getattr(data, "dequantize", False):  # bits/dim are of (k + U)/256 pixels: of other data, nats only
            out = {k: v for k, v in out.items() if not k.endswith("_bpd")}
            out["bits_per_dim"] = "only for data.dequantize: true (pixels (k + U)/256)"
        return out

    def artifacts(self, data, run_dir):
        """A latent traversal (the 8 most used code dimensions, -3..3 around a test code) and a 2-D t-SNE map of
        2,000 test codes coloured by digit."""
        import matplotlib.pyplot as plt
        from sklearn.manifold import TSNE

        z, y = self.codes(data, "test", 2000)
        dims = z.var(0).argsort(descending=True)[:8]
        steps = torch.linspace(-3, 3, 11, dtype=z.dtype)
        grid = z[:1].repeat(len(dims) * len(steps), 1)
        for row, d in enumerate(dims):
            grid[row * len(steps):(row + 1) * len(steps), d] = steps * z[:, d].std()
        traversal = self.decode(grid.float().to(self.device))[0].cpu()
        perplexity = max(1.0, min(30.0, (len(z) - 1) / 3))  # small test splits: t-SNE needs perplexity < n
        xy = TSNE(2, init="pca", random_state=0, perplexity=perplexity).fit_transform(z.numpy())
        fig, ax = plt.subplots(figsize=(6, 6))
        points = ax.scatter(xy[:, 0], xy[:, 1], c=y.numpy(), cmap="tab10", s=4)
        ax.legend(*points.legend_elements(), title="digit", loc="best", fontsize=7)
        ax.set(title="t-SNE of 2,000 test codes g(x)", xticks=[], yticks=[])
        return {"latent_traversal": Grid(traversal, len(steps)), "latent_map": fig}  # a row per dimension


def lower_whitening(precision: torch.Tensor) -> torch.Tensor:
    """The lower-triangular M with positive diagonal and M^T M = precision (a Cholesky factor read backwards)."""
    return torch.linalg.cholesky(precision.flip(0, 1)).flip(0, 1).T


def gaussian_baselines(train: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """Negative log-likelihood on ``test`` (nats per item, and bits/dim) of a per-pixel diagonal Gaussian and one
    full-covariance Gaussian fitted to ``train``."""
    d = train.shape[1]
    mean = train.mean(0)
    var = train.var(0, unbiased=False)
    nll_diag = 0.5 * (((test - mean) ** 2 / var) + var.log() + math.log(2 * math.pi)).sum(1).mean().item()
    cov = torch.cov(train.T, correction=0) + 1e-9 * torch.eye(d, dtype=train.dtype)
    full = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    nll_full = -full.log_prob(test).mean().item()
    return {"baseline_diag_gaussian_nats": nll_diag, "baseline_full_gaussian_nats": nll_full,
            "baseline_diag_gaussian_bpd": bits_per_dim(nll_diag, d),
            "baseline_full_gaussian_bpd": bits_per_dim(nll_full, d)}
