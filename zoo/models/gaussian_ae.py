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

from ..losses import beta_nll, bits_per_dim, gaussian_elbo
from ..registry import register_model
from .base import ZooModel

DEQUANT_STD = 1 / (256 * math.sqrt(12))  # std of the uniform dequantisation noise U/256


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

    def __init__(self, input_shape, latent_dim: int, channels: int, out_channels: int, dropout: float):
        super().__init__()
        _, h, w = input_shape
        self.out_hw = (h, w)
        self.base = (max(1, -(-(h - 4) // 4)), max(1, -(-(w - 4) // 4)))
        flat = channels * self.base[0] * self.base[1]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, flat // 2), *_act(nn.BatchNorm1d(flat // 2), dropout),
            nn.Linear(flat // 2, flat), *_act(nn.BatchNorm1d(flat), dropout),
            nn.Unflatten(1, (channels, *self.base)))
        self.conv = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, output_padding=1), *_act(nn.BatchNorm2d(channels), dropout),
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

    ``nll_beta`` > 0 trains on the beta-NLL of Seitzer et al. (2022): each pixel's NLL weighted by a constant
    sigma^(2 beta). Its optimum is the ELBO's (same means and variances), but the gradient of the mean is no
    longer dominated by the near-certain background pixels, which otherwise leaves the strokes at mean 0
    with a huge variance. The reported nelbo/bpd are always the true ELBO.
    """

    def __init__(self, input_shape=(1, 28, 28), latent_dim: int = 10, channels: int = 10, decoder_channels: int = 20,
                 dropout: float = 0.1,
                 covariance: Literal["identity", "scalar", "diagonal", "full", "predicted"] = "diagonal",
                 init_std: float = 0.1,
                 min_std: float = DEQUANT_STD, nll_beta: float = 0.0,
                 covariance_init: Literal["data", "diagonal"] = "data"):
        super().__init__()
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
        self.encoder = Encoder(self.input_shape, latent_dim, channels, dropout)
        out_channels = self.input_shape[0] * (2 if covariance == "predicted" else 1)
        self.decoder = Decoder(self.input_shape, latent_dim, decoder_channels, out_channels, dropout)
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
        mean = x.mean(0).clamp(1e-3, 1 - 1e-3)
        std = x.std(0).clamp_min(math.exp(self.log_min_var / 2))
        c = self.input_shape[0]
        self.decoder.conv[-1].bias[:c] = torch.logit(mean.view(self.input_shape)).mean((1, 2)).float()
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
        mean = torch.sigmoid(out[:, :c])
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
    def forward(self, x, noise_scale: float = 1.0):
        g = self.encoder(x)
        mean, log_var = self.decode(g + noise_scale * torch.randn_like(g))
        return g, mean, log_var

    def terms(self, x) -> dict[str, torch.Tensor]:
        """Per-image ELBO terms in nats, plus the beta-NLL training objective when ``nll_beta`` > 0."""
        g, mean, log_var = self(x)
        white, log_det = self.whiten(x - mean, log_var)
        out = gaussian_elbo(g, white, log_det)
        if self.nll_beta and self.covariance in ("diagonal", "predicted"):
            lv = (log_var.flatten(1) if self.covariance == "predicted" else -2 * self.log_diag).expand_as(white)
            out["objective"] = out["kl"] + beta_nll(white, lv, self.nll_beta)
        return out

    def training_step(self, batch, optimizer="main"):
        t = {k: v.mean() for k, v in self.terms(batch[0]).items()}
        out = {"loss": t.get("objective", t["nelbo"]), "nelbo": t["nelbo"], "kl": t["kl"], "nll": t["nll"],
               "bpd": bits_per_dim(t["nelbo"], self.dims)}
        if self.covariance in ("scalar", "diagonal", "full"):  # geometric-mean std: collapse would show here
            _, log_det = self.whiten(batch[0][:1], None)
            out["sigma"] = torch.exp(-log_det.detach() / self.dims)
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0):
        """Decode z ~ N(0, temperature^2 I); the image is the decoder mean f(z)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device) * temperature
        return self.decode(z)[0]

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encoder(x))[0]

    def visuals(self, batch):
        x = batch[0][:32]
        pairs = torch.stack([x, self.reconstruct(x)], 1).flatten(0, 1)  # original, reconstruction, ...
        return {"reconstructions": pairs, "samples": self.sample(64, torch.Generator().manual_seed(0))}

    @torch.no_grad()
    def evaluate(self, data, ctx):
        """Test ELBO on dequantised pixels, in nats/image and bits/dim, beside two Gaussian baselines."""
        self.eval()
        gen = torch.Generator().manual_seed(ctx.seed)
        torch.manual_seed(ctx.seed)
        total, n = 0.0, 0
        test = []
        for x, _ in data.batches("test", 1000, generator=gen):
            total += self.terms(x)["nelbo"].double().sum().item()
            n += len(x)
            test.append(x.flatten(1).double().cpu())
        nelbo = total / n
        out = {"test_nelbo_nats": nelbo, "test_bpd": bits_per_dim(nelbo, self.dims), "test_images": n,
               "covariance": self.covariance}
        if ctx.baselines:
            train = torch.cat([x.flatten(1).double().cpu() for x, _ in data.batches("train", 5000, generator=gen)])
            out.update(gaussian_baselines(train, torch.cat(test)))
        return out


def lower_whitening(precision: torch.Tensor) -> torch.Tensor:
    """The lower-triangular M with positive diagonal and M^T M = precision (a Cholesky factor read backwards)."""
    return torch.linalg.cholesky(precision.flip(0, 1)).flip(0, 1).T


def gaussian_baselines(train: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    """bits/dim on ``test`` of a per-pixel diagonal Gaussian and one full-covariance Gaussian fitted to ``train``."""
    d = train.shape[1]
    mean = train.mean(0)
    var = train.var(0, unbiased=False)
    nll_diag = 0.5 * (((test - mean) ** 2 / var) + var.log() + math.log(2 * math.pi)).sum(1).mean().item()
    cov = torch.cov(train.T, correction=0) + 1e-9 * torch.eye(d, dtype=train.dtype)
    full = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    nll_full = -full.log_prob(test).mean().item()
    return {"baseline_diag_gaussian_bpd": bits_per_dim(nll_diag, d),
            "baseline_full_gaussian_bpd": bits_per_dim(nll_full, d)}
