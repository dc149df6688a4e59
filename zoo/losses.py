"""Losses available by name. Each returns per-item values [B] so a model can sum terms before averaging."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over all but the batch dimension."""
    return (pred - target).pow(2).flatten(1).sum(1)


def gaussian_nll(residual_white: torch.Tensor, log_det_m: torch.Tensor) -> torch.Tensor:
    """-log N(x; f, Sigma) per item, given M(x - f) with Sigma^-1 = M^T M and log|det M| (scalar or [B])."""
    r = residual_white.flatten(1)
    return 0.5 * r.pow(2).sum(1) - log_det_m + 0.5 * r.shape[1] * LOG_2PI


def gaussian_kl(z_mean: torch.Tensor, z_log_var: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(g, diag(exp(z_log_var))) || N(0, I)) per item: (|g|^2 + sum(var - log var - 1)) / 2, which is
    |g|^2 / 2 for the unit variance of the seed's encoder (``None``)."""
    kl = 0.5 * z_mean.flatten(1).pow(2).sum(1)
    if z_log_var is not None:
        lv = z_log_var.flatten(1)
        kl = kl + 0.5 * (lv.exp() - lv - 1).sum(1)
    return kl


def gaussian_elbo(z_mean: torch.Tensor, residual_white: torch.Tensor, log_det_m: torch.Tensor,
                  z_log_var: torch.Tensor | None = None) -> dict:
    """Negative ELBO of the Gaussian encoder N(g(x), diag(exp(z_log_var))) with prior N(0, I), per item:
    the KL above plus the Gaussian NLL of the reconstruction."""
    kl = gaussian_kl(z_mean, z_log_var)
    nll = gaussian_nll(residual_white, log_det_m)
    return {"kl": kl, "nll": nll, "nelbo": kl + nll}


def pixel_nll(residual_white: torch.Tensor, log_var: torch.Tensor, outlier_prob: float = 0.0) -> torch.Tensor:
    """Per-dimension -log N(x; f, exp(log_var)) [B, D]; with ``outlier_prob`` p, of (1 - p) N + p U[0, 1] instead:
    a pixel the decoder is sure of and gets wrong then costs at most -log p nats, not (x - f)^2 / 2 sigma^2."""
    nll = 0.5 * (residual_white.flatten(1).pow(2) + log_var.flatten(1) + LOG_2PI)
    if outlier_prob:
        nll = -torch.logaddexp(math.log1p(-outlier_prob) - nll, torch.tensor(math.log(outlier_prob)))
    return nll


def beta_nll(residual_white: torch.Tensor, log_var: torch.Tensor, beta: float, outlier_prob: float = 0.0):
    """Per-item diagonal NLL (``pixel_nll``) with each dimension weighted by the constant sigma^(2 beta) (beta-NLL).

    beta = 0 is the plain NLL; beta = 1 gives the mean the gradient of MSE. The weights carry no gradient,
    so the optimum (means and variances) is the NLL's.
    """
    per_dim = pixel_nll(residual_white, log_var, outlier_prob)
    return (torch.exp(beta * log_var.flatten(1)).detach() * per_dim).sum(1)


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, summed over all but the batch dimension."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


LOSSES = {"mse": mse, "elbo": gaussian_elbo, "bce": bce, "ce": cross_entropy}


def bits_per_dim(nats_per_item: torch.Tensor | float, dims: int, levels: int = 256) -> torch.Tensor | float:
    """bpd of data in [0, 1] dequantised from ``levels`` values: nats/(D ln 2) + log2(levels)."""
    return nats_per_item / (dims * math.log(2)) + math.log2(levels)
