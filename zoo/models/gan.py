"""GANs: a DCGAN-style MNIST generator/discriminator (``gan``) and the analytic 1-D GAN (``gan1d``).

Both use the idealised GAN loss E[-log D(X) - log(1 - D(G(Z)))] for the discriminator, written with
BCE-with-logits on D's logit h (D = sigmoid(h)). The generator minimises either

* ``minimax``: log(1 - D(G(z))). Its gradient is -D(G(z)) * dh/dθ, which vanishes when D rejects the fakes
  (D(G(z)) ≈ 0), exactly the situation at the start of training;
* ``non_saturating`` (default): -log D(G(z)), gradient -(1 - D(G(z))) * dh/dθ, which is largest there.

Both players step through the one trainer with their own optimizers: ``update_schedule()`` is
``["d"] * d_steps + ["g"]`` and ``param_groups()`` is ``{"d": ..., "g": ...}``.

1-D GAN (Mock Final Q5): X on [0, 1] with density 2 - 2x, Z ~ U[0, 1]. With G the identity the optimal
discriminator is D*(x) = p(x) / (p(x) + 1) = (2 - 2x) / (3 - 2x); the optimal monotone generator is the quantile
function G*(z) = 1 - sqrt(1 - z) (the inverse of the CDF 2x - x^2).
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import suggest
from ..registry import register_model
from .base import ZooModel

GENERATOR_LOSSES = ("non_saturating", "minimax")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), averaged over each batch (BCE with logits: stable for any logit)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """``non_saturating``: -log D(G(z)) = softplus(-h); ``minimax``: log(1 - D(G(z))) = -softplus(h)."""
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    raise ValueError(f"generator_loss must be one of {', '.join(GENERATOR_LOSSES)}, got {kind!r}")


class _TwoPlayer(ZooModel):
    """What both GANs share: the two optimizers, the schedule, the D and G steps, validation terms."""

    generator: nn.Module
    discriminator: nn.Module

    def __init__(self, generator_loss: str, d_steps: int, r1: float, r1_every: int = 1):
        super().__init__()
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"generator_loss must be one of {', '.join(GENERATOR_LOSSES)}, got {generator_loss!r}"
                             f"{suggest(generator_loss, GENERATOR_LOSSES)}")
        if not 1 <= d_steps <= 100:
            raise ValueError(f"d_steps must be in [1, 100], got {d_steps}")
        if r1 < 0:
            raise ValueError(f"r1 must be >= 0, got {r1}")
        if r1_every < 1:
            raise ValueError(f"r1_every must be >= 1, got {r1_every}")
        self.generator_loss, self.d_steps, self.r1, self.r1_every = generator_loss, d_steps, r1, r1_every
        # D updates so far (lazy R1 penalises every r1_every-th) and the last penalty measured (logged every
        # step). Kept on the host, saved as extra state: no device sync per step, and resume is exact.
        self.d_updates, self.last_r1 = 0, 0.0
        self.generator_ema = None

    def get_extra_state(self):
        return {"d_updates": self.d_updates, "last_r1": float(self.last_r1)}

    def set_extra_state(self, state):
        self.d_updates, self.last_r1 = int(state["d_updates"]), float(state["last_r1"])

    def _init_ema(self, decay: float) -> None:
        """A frozen copy of G whose weights follow an exponential moving average of G's (call after building G).

        Averaging the iterates of a two-player game cancels much of their rotation around the equilibrium
        (Yazıcı et al. 2019): samples come from the average, training still steps the raw G."""
        if not 0 <= decay < 1:
            raise ValueError(f"ema must be in [0, 1) (0 turns the average off), got {decay}")
        self.ema_decay = decay
        if decay:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    @property
    def sampler(self) -> nn.Module:
        """The generator that samples: the weight average when there is one, else G itself."""
        return self.generator_ema if self.generator_ema is not None else self.generator

    @torch.no_grad()
    def on_train_batch_end(self, step: int) -> None:
        if self.generator_ema is None:
            return
        decay = min(self.ema_decay, (1 + step) / (10 + step))  # short memory early: the start is forgotten fast
        for avg, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            avg.lerp_(p, 1 - decay)
        for avg, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            avg.copy_(b)  # batch-norm statistics are taken as they are, not averaged

    def param_groups(self):
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def update_schedule(self):
        return ["d"] * self.d_steps + ["g"]

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define noise()")

    def training_step(self, batch, optimizer="d"):
        x = batch[0]
        z = self.noise(len(x))
        if optimizer == "d":
            with torch.no_grad():  # D's step needs no gradient through G
                fake = self.generator(z)
            penalise = self.r1 > 0 and self.d_updates % self.r1_every == 0
            self.d_updates += 1
            if penalise:
                x = x.detach().requires_grad_(True)
            real_logits, fake_logits = self.discriminator(x), self.discriminator(fake)
            terms = {"loss": discriminator_loss(real_logits, fake_logits),
                     "d_real": torch.sigmoid(real_logits).mean().detach(),
                     "d_fake": torch.sigmoid(fake_logits).mean().detach()}
            if penalise:  # R1 (Mescheder et al. 2018): zero at the equilibrium, damps the rotation around it
                grad, = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
                r1 = grad.pow(2).flatten(1).sum(1).mean()
                # lazy (StyleGAN2): every r1_every-th step, weighted by r1_every, the same penalty on average
                terms["loss"] = terms["loss"] + 0.5 * self.r1 * self.r1_every * r1
                self.last_r1 = r1.detach()
            if self.r1:
                terms["r1"] = torch.as_tensor(self.last_r1, device=x.device).float()
            return terms
        if optimizer == "g":
            fake_logits = self.discriminator(self.generator(z))
            return {"loss": generator_loss(fake_logits, self.generator_loss),
                    "d_fake": torch.sigmoid(fake_logits).mean().detach()}
        raise ValueError(f"unknown optimizer {optimizer!r}; this model has: {', '.join(self.param_groups())}")

    @torch.no_grad()
    def validation_step(self, batch):
        x = batch[0]
        real_logits = self.discriminator(x)
        fake_logits = self.discriminator(self.generator(self.noise(len(x))))
        return {"d_loss": discriminator_loss(real_logits, fake_logits),
                "g_loss": generator_loss(fake_logits, self.generator_loss),
                "d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean(),
                "d_acc": 0.5 * ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean())}


# ----------------------------------------------------------------------------------------------------------------
# MNIST DCGAN
@register_model("gan", family="gan", config="configs/gan.yaml",
                description="DCGAN-style MNIST GAN: transpose-conv generator, strided-conv discriminator")
class GAN(_TwoPlayer):
    """G: z -> fc -> (2w, 7, 7) -> convT -> (w, 14, 14) -> convT -> sigmoid (1, 28, 28), BN + ReLU.
    D: conv(w, 4, s2) -> conv(2w, 4, s2) -> fc -> one logit, LeakyReLU(0.2), no batch norm (so real and fake
    batches never share statistics and evaluation needs no running averages in D).
    ``depth`` adds that many 3x3 convolutions at 7x7 and at 14x14 in each network (each about doubles the cost).
    """

    def __init__(self, input_shape, latent_dim: int = 64, g_width: int = 64, d_width: int = 64, depth: int = 0,
                 generator_loss: Literal["non_saturating", "minimax"] = "non_saturating", d_steps: int = 1,
                 r1: float = 1.0, r1_every: int = 1, ema: float = 0.999, num_visuals: int = 64):
        super().__init__(generator_loss, d_steps, r1, r1_every)
        c, h, w = input_shape
        if (h, w) != (28, 28):
            raise ValueError(f"this DCGAN is laid out for 28x28 images, got {h}x{w}")
        if not (1 <= min(latent_dim, g_width, d_width, num_visuals) and max(latent_dim, g_width, d_width) <= 8192
                and num_visuals <= 10000 and 0 <= depth <= 16):
            raise ValueError("latent_dim, g_width, d_width must be in [1, 8192], num_visuals in [1, 10000], "
                             "depth in [0, 16]")
        self.latent_dim = latent_dim

        def g_convs(ch):
            return [m for _ in range(depth) for m in (nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch),
                                                       nn.ReLU())]

        def d_convs(ch):
            return [m for _ in range(depth) for m in (nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2))]

        self.generator = nn.Sequential(
            nn.Linear(latent_dim, 2 * g_width * 7 * 7, bias=False), nn.Unflatten(1, (2 * g_width, 7, 7)),
            nn.BatchNorm2d(2 * g_width), nn.ReLU(), *g_convs(2 * g_width),
            nn.ConvTranspose2d(2 * g_width, g_width, 4, 2, 1, bias=False), nn.BatchNorm2d(g_width), nn.ReLU(),
            *g_convs(g_width),
            nn.ConvTranspose2d(g_width, c, 4, 2, 1), nn.Sigmoid())  # MNIST pixels are in [0, 1]
        self.discriminator = nn.Sequential(
            nn.Conv2d(c, d_width, 4, 2, 1), nn.LeakyReLU(0.2), *d_convs(d_width),
            nn.Conv2d(d_width, 2 * d_width, 4, 2, 1), nn.LeakyReLU(0.2), *d_convs(2 * d_width),
            nn.Flatten(), nn.Linear(2 * d_width * 7 * 7, 1), nn.Flatten(0))
        for m in self.modules():  # DCGAN initialisation: N(0, 0.02) weights
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # the same noise every epoch, saved with the model: the sample grids show progress, not luck
        self.register_buffer("fixed_z", torch.randn(num_visuals, latent_dim,
                                                    generator=torch.Generator().manual_seed(1234)))
        self._init_ema(ema)

    def noise(self, n, generator=None):
        z = torch.randn(n, self.latent_dim, generator=generator,
                        device=generator.device if generator is not None else self.device)
        return z.to(self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n images [n, 1, 28, 28] in [0, 1]; ``temperature`` scales the noise (truncation-like below 1)."""
        was = self.training
        self.eval()  # batch norm from running statistics: a sample does not depend on its batch-mates
        out = self.sampler(self.noise(n, generator) * temperature)
        self.train(was)
        return out

    def visuals(self, batch):
        was = self.training
        self.eval()
        with torch.no_grad():
            fixed = self.sampler(self.fixed_z)
            out = {"samples": fixed, "real": batch[0][: len(fixed)]}
            if self.generator_ema is not None:  # the raw iterate beside the average: what EMA buys
                out["samples_raw_generator"] = self.generator(self.fixed_z)
        self.train(was)
        return out

    @torch.no_grad()
    def evaluate(self, data, ctx):
        """Discriminator view of the test set; the image metrics (FID-LeNet...) come from zoo.fid in `zoo eval`."""
        x = data.tensors("test")[0]
        terms = [self.validation_step((x[i:i + 1000].to(self.device),)) for i in range(0, len(x), 1000)]
        return {f"test_{k}": sum(t[k].item() for t in terms) / len(terms) for k in terms[0]}


# ----------------------------------------------------------------------------------------------------------------
# 1-D GAN with known optimum
def g_star(z: torch.Tensor) -> torch.Tensor:
    """The optimal monotone generator for density 2 - 2x from U[0, 1]: the quantile function 1 - sqrt(1 - z)."""
    return 1 - torch.sqrt((1 - z).clamp_min(0))


def d_star_identity(x: torch.Tensor) -> torch.Tensor:
    """The optimal discriminator against G = identity (fakes uniform): p / (p + 1) = (2 - 2x) / (3 - 2x)."""
    return (2 - 2 * x) / (3 - 2 * x)


def triangle_cdf(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return 2 * x - x * x


class _Center(nn.Module):
    """[0, 1] -> [-1, 1]: puts the first layer's kinks where the data are."""

    def forward(self, t):
        return 2 * t - 1


ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU, "tanh": nn.Tanh}


def _mlp(width: int, depth: int, activation: str) -> nn.Sequential:
    layers, d_in = [_Center()], 1
    for _ in range(depth):
        layers += [nn.Linear(d_in, width), ACTIVATIONS[activation]()]
        d_in = width
    layers.append(nn.Linear(d_in, 1))
    return nn.Sequential(*layers)


class Identity1D(nn.Module):
    """G(z) = z, no parameters: the generator of Mock Final Q5(a)."""

    def forward(self, z):
        return z


class Residual1D(nn.Module):
    """G(z) = z + mlp(z) with the last layer zeroed: training starts from G = identity (Q5(a)), which is
    increasing, so G moves towards the increasing optimum G* rather than its mirror 1 - sqrt(z)."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.mlp = mlp
        nn.init.zeros_(mlp[-1].weight)
        nn.init.zeros_(mlp[-1].bias)

    def forward(self, z):
        return z + self.mlp(z)


@register_model("gan1d", family="gan", config="configs/gan1d.yaml",
                description="1-D GAN on density 2-2x with U[0,1] noise: checks D* and G* = 1 - sqrt(1 - z)")
class GAN1D(_TwoPlayer):
    """Small MLPs G: z -> z + mlp(z) (starting at the identity) and D: x -> logit. ``freeze_g_identity`` fixes
    G(z) = z and trains only D, whose optimum is then D*(x) = (2 - 2x) / (3 - 2x)."""

    def __init__(self, width: int = 32, depth: int = 3,
                 activation: Literal["leaky_relu", "silu", "tanh"] = "leaky_relu",
                 generator_loss: Literal["non_saturating", "minimax"] = "non_saturating", d_steps: int = 1,
                 r1: float = 3.0, freeze_g_identity: bool = False, grid: int = 10001):
        super().__init__(generator_loss, d_steps, r1)
        if not (1 <= width <= 8192 and 1 <= depth <= 64 and 101 <= grid <= 10**7):
            raise ValueError("width must be in [1, 8192], depth in [1, 64] and grid in [101, 10^7]")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
                             f"{suggest(activation, ACTIVATIONS)}")
        self.freeze_g_identity, self.grid = freeze_g_identity, grid
        self.generator = Identity1D() if freeze_g_identity else Residual1D(_mlp(width, depth, activation))
        self.discriminator = _mlp(width, depth, activation)

    def param_groups(self):
        groups = super().param_groups()
        return {"d": groups["d"]} if self.freeze_g_identity else groups

    def update_schedule(self):
        return ["d"] if self.freeze_g_identity else super().update_schedule()

    def noise(self, n, generator=None):
        z = torch.rand(n, 1, generator=generator, device=generator.device if generator is not None else self.device)
        return z.to(self.device)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of G(Z), [n, 1]. (Not ``sample``: that name promises images to `zoo sample` and FID.)"""
        return self.generator(self.noise(n, generator))

    @torch.no_grad()
    def curves(self, points: int | None = None) -> dict[str, torch.Tensor]:
        """G, G*, D, D* on a uniform grid of [0, 1] (midpoints, so integrals are midpoint sums)."""
        n = points or self.grid
        t = ((torch.arange(n, device=self.device) + 0.5) / n).unsqueeze(1)
        return {"t": t[:, 0], "g": self.generator(t)[:, 0], "g_star": g_star(t)[:, 0],
                "d": torch.sigmoid(self.discriminator(t))[:, 0], "d_star": d_star_identity(t)[:, 0]}

    @torch.no_grad()
    def evaluate(self, data, ctx):
        """The analytic checks of issue 4 with their baselines.

        ``w1``: W1(G(Z), X) = ∫|F_G^-1(u) - G*(u)| du, with F_G^-1 the sorted values of G on the grid: exact for
        any G, and equal to ``l1_g_gstar`` = ∫|G - G*| dz when G is increasing; no sampling noise, so it compares
        with the identity's 1/6, not with a floor. ``w1_samples_n`` and ``ks``: W1 and Kolmogorov-Smirnov
        statistic of n samples against the triangle law, beside the same figures for n true draws (the floor).
        ``d_star_sup_error``: sup |D - D*| (G = identity).
        """
        c = self.curves()
        t, g = c["t"], c["g"]
        n = 10_000
        gen = torch.Generator().manual_seed(getattr(ctx, "seed", 0))
        samples = self.draw(n, generator=gen)[:, 0]
        real = data.tensors("test")[0][:n, 0].to(self.device)  # n true draws: the sampling floor
        out = {
            "w1": (torch.sort(g).values - c["g_star"]).abs().mean().item(),
            "l1_g_gstar": (g - c["g_star"]).abs().mean().item(),
            "max_abs_g_gstar_0_0.99": (g - c["g_star"]).abs()[t <= 0.99].max().item(),
            "g_monotone": bool((g[1:] >= g[:-1]).all().item()),
            "ks": ks_statistic(samples),
            "w1_samples_n": w1_to_triangle(samples),  # the same quantity as the floor below: W1 of n draws
            "baseline_identity_w1": 1 / 6,
            "baseline_identity_ks": 0.25,
            "floor_w1_real_n": w1_to_triangle(real),
            "floor_ks_real_n": ks_statistic(real),
            "n_samples": n,
        }
        if self.freeze_g_identity:
            out["d_star_sup_error"] = (c["d"] - c["d_star"]).abs().max().item()
            out["baseline_d_half_sup_error"] = (0.5 - c["d_star"]).abs().max().item()  # D = 1/2 everywhere
        return out

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        c = {k: v.cpu() for k, v in self.curves(501).items()}
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
        ax[0].plot(c["t"], c["g"], label="G (learned)")
        ax[0].plot(c["t"], c["g_star"], "--", label="G*(z) = 1 - sqrt(1 - z)")
        ax[0].set(xlabel="z", ylabel="x", title="generator")
        ax[1].plot(c["t"], c["d"], label="D (learned)")
        ax[1].plot(c["t"], c["d_star"], "--", label="D* vs G = id: (2-2x)/(3-2x)")
        ax[1].axhline(0.5, color="gray", lw=0.5, label="1/2 (D at G = G*)")
        ax[1].set(xlabel="x", ylabel="D(x)", title="discriminator", ylim=(-0.02, 1.02))
        for a in ax:
            a.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def visuals(self, batch):
        return {"gan1d_curves": self.figure()}

    def artifacts(self, data, run_dir):
        return {"gan1d_curves": self.figure()}


def ks_statistic(samples: torch.Tensor) -> float:
    """sup_x |F_n(x) - F(x)| against F(x) = 2x - x^2 (both sides of each jump of the empirical CDF)."""
    x = torch.sort(samples.flatten().double()).values
    n = len(x)
    f = triangle_cdf(x)
    i = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    return max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


def w1_to_triangle(samples: torch.Tensor) -> float:
    """W1 between the empirical law of ``samples`` and the triangle law: ∫|F_n - F| dx, exactly, samples outside
    [0, 1] included (G(z) = z + mlp(z) can put some there; F is 0 below 0 and 1 above 1)."""
    x = torch.sort(samples.flatten().double()).values
    n = len(x)
    knots = torch.cat([x[:1].clamp(max=0), x, x[-1:].clamp(min=1)])
    level = torch.arange(0, n + 1, device=x.device, dtype=x.dtype) / n  # F_n on [knots[k], knots[k+1])
    a, b = knots[:-1], knots[1:]
    outside = (b.clamp(max=0) - a.clamp(max=0)) * level + (b.clamp(min=1) - a.clamp(min=1)) * (1 - level)
    a, b = a.clamp(0, 1), b.clamp(0, 1)

    def integral_abs(a, b, c):
        # ∫_a^b |c - F(x)| dx with F increasing: split at F^-1(c) = 1 - sqrt(1 - c)
        root = (1 - torch.sqrt((1 - c).clamp_min(0))).clamp(a, b)
        prim = lambda u: c * u - (u * u - u ** 3 / 3)  # ∫ (c - F)   # noqa: E731
        return (prim(root) - prim(a)) - (prim(b) - prim(root))

    return (integral_abs(a, b, level) + outside).sum().item()
