"""GANs (issue 4): the analytic 1-D GAN, the two generator losses, FID-LeNet and the sampling contract."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from torch import nn

from zoo import fid, visuals
from zoo.checkpoint import load_run
from zoo.cli import main
from zoo.config import load_config
from zoo.data import create_data
from zoo.errors import ConfigError
from zoo.models.gan import GAN, GAN1D, d_star_identity, g_star, generator_loss, ks_statistic, w1_to_triangle
from zoo.registry import create_model
from zoo.trainer import Trainer, fit


class Ctx:
    def __init__(self, seed=0, options=None):
        self.seed, self.options, self.config, self.messages = seed, options or {}, {}, []
        self.baselines = True
        self.device = torch.device("cpu")

    def log(self, msg):
        self.messages.append(msg)


def _fit_1d(tmp_path, *overrides):
    """Train configs/gan1d.yaml; returns the trainer and a copy of the model as training found it."""
    cfg = load_config("configs/gan1d.yaml", ["train.device=cpu", *overrides])
    tr = Trainer(cfg, tmp_path / "run", quiet=True, log=lambda s: None)
    start = copy.deepcopy(tr.model)
    tr.metrics = tr.fit()
    return tr, start


# ---- 1-D GAN: analytic optima ---------------------------------------------------------------------------------
def test_closed_forms_of_q5():
    z = torch.linspace(0, 1, 1001)
    x = g_star(z)
    assert torch.allclose(2 * x - x * x, z, atol=1e-6)  # G* is the inverse of the CDF 2x - x^2
    assert torch.allclose(d_star_identity(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([2 / 3, 0.5, 0.0]))


def test_w1_and_ks_match_scipy_on_samples_of_another_law():
    """The metrics against independent references, on draws of another law (u^1.5): W1 against scipy's between
    the sample and a fine quantile grid of the triangle law, KS against scipy's kstest with the triangle CDF."""
    from scipy import stats

    x = torch.rand(3000, generator=torch.Generator().manual_seed(2)).pow(1.5)
    quantiles = g_star((torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000)
    ref = stats.wasserstein_distance(x.double().numpy(), quantiles.numpy())
    assert w1_to_triangle(x) == pytest.approx(ref, abs=1e-6) and ref > 0.01  # measured 0.069, 3e-10 apart
    ks = stats.kstest(x.numpy(), lambda t: 2 * t - t * t).statistic
    assert ks_statistic(x) == pytest.approx(ks, abs=1e-6) and ks > 0.05  # measured 0.122


def test_w1_counts_samples_outside_the_support():
    """Mass outside [0, 1] is not moved onto it first: all of it at c gives E|X - c| = |E X - c| (E X = 1/3)."""
    for c, exact in ((-0.5, 1 / 3 + 0.5), (1.5, 1.5 - 1 / 3)):
        assert w1_to_triangle(torch.full((50,), c)) == pytest.approx(exact, abs=1e-12)
    from scipy import stats

    x = torch.rand(3000, generator=torch.Generator().manual_seed(3)) * 1.4 - 0.2  # 2/7 of it outside
    quantiles = g_star((torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000)
    ref = stats.wasserstein_distance(x.double().numpy(), quantiles.numpy())
    assert w1_to_triangle(x) == pytest.approx(ref, abs=1e-6)


def test_w1_of_a_non_monotone_generator_sorts_its_values():
    """G(z) = (z + 1/2) mod 1 draws the uniform law, as the identity does, but is not increasing: its W1 to the
    triangle law is the identity's 1/6, while the unsorted distance ∫|G - G*| is larger."""
    class HalfTurn(nn.Module):
        def forward(self, z):
            return (z + 0.5) % 1

    m = GAN1D()
    m.generator = HalfTurn()
    out = m.evaluate(create_data("triangle1d", n=100, n_test=2000), Ctx())
    assert not out["g_monotone"]
    # sorted, G is the identity: W1 = ∫ (z - G*(z)) dz = 1/2 - 1 + 2/3 = 1/6 (on the 10001-point grid: within 1e-4)
    assert out["w1"] == pytest.approx(1 / 6, abs=1e-3)
    # by hand, G* = 1 - sqrt(1 - z): ∫_0^1/2 (z + 1/2 - G*) dz + ∫_1/2^1 (G* - z + 1/2) dz = 11/12 - sqrt(2)/3
    assert out["l1_g_gstar"] == pytest.approx(11 / 12 - math.sqrt(2) / 3, abs=1e-3)  # 0.445


def test_sampling_floor_of_w1_and_ks_at_10k():
    g = torch.Generator().manual_seed(1)
    draws = [1 - torch.sqrt(1 - torch.rand(10_000, generator=g)) for _ in range(8)]
    w1 = np.mean([w1_to_triangle(x) for x in draws])
    assert 0.0015 < w1 < 0.004  # issue 4: "sampling floor at n = 10k about 0.0027"
    from scipy import stats

    ks = stats.kstest(draws[0].numpy(), lambda t: 2 * t - t * t).statistic
    assert ks_statistic(draws[0]) == pytest.approx(ks, abs=1e-6)


def test_d_converges_to_d_star_with_g_frozen_to_identity(tmp_path, one_thread):
    tr, start = _fit_1d(tmp_path, "model.freeze_g_identity=true", "model.r1=0", "train.epochs=30",
                        "train.optimizer.lr=3e-3")
    assert list(tr.optimizers) == ["d"]
    out, before = tr.model.evaluate(tr.data, Ctx()), start.evaluate(tr.data, Ctx())
    assert out["d_star_sup_error"] < 0.03, out
    # measured: 0.45 at the start (D ~ 0.45 everywhere, D* spans 2/3 .. 0) -> 0.018: training did the work
    assert before["d_star_sup_error"] > 10 * out["d_star_sup_error"], (before, out)
    d0, d1 = start.curves(101)["d"], tr.model.curves(101)["d"]
    assert (d1 - d0).abs().max() > 0.3  # D itself moved (measured by 0.43), not only its distance to D*
    assert (tmp_path / "run" / "gan1d_curves.png").is_file()


def test_g_converges_to_g_star(tmp_path, one_thread):
    tr, start = _fit_1d(tmp_path)
    out, before = tr.model.evaluate(tr.data, Ctx()), start.evaluate(tr.data, Ctx())
    assert out["g_monotone"]
    assert out["w1"] <= 0.01 and out["l1_g_gstar"] <= 0.01, out
    assert out["ks"] < 0.05 and out["max_abs_g_gstar_0_0.99"] < 0.1, out
    # what training changed, against the same model before it (G = identity; measured W1 0.167 -> 0.002, KS
    # 0.25 -> 0.008, max|G - G*| 0.25 -> 0.014): the generated law moved onto the data's
    assert out["w1"] < before["w1"] / 20 and out["ks"] < before["ks"] / 5, (before, out)
    assert out["max_abs_g_gstar_0_0.99"] < before["max_abs_g_gstar_0_0.99"] / 5, (before, out)
    last = lambda m: m.generator.mlp[-1].weight  # noqa: E731  # zero at the start: G = identity
    assert not last(start).any() and last(tr.model).abs().max() > 1e-3
    # at the equilibrium G(Z) ~ X, so the best D is 1/2 everywhere: measured max|D - 1/2| 0.024 -> 8e-5
    d0, d1 = start.curves(101)["d"], tr.model.curves(101)["d"]
    assert (d1 - 0.5).abs().max() < min(2e-3, (d0 - 0.5).abs().max() / 10), (d0, d1)


# ---- generator losses -------------------------------------------------------------------------------------------
def test_generator_losses_are_the_formulas():
    h = torch.linspace(-8, 8, 33)
    d = torch.sigmoid(h)
    assert torch.allclose(generator_loss(h, "minimax"), torch.log(1 - d).mean(), atol=1e-5)
    assert torch.allclose(generator_loss(h, "non_saturating"), -torch.log(d).mean(), atol=1e-5)
    with pytest.raises(ValueError):
        generator_loss(h, "wasserstein")


@pytest.mark.parametrize("bias, minimax_vanishes", [(-12.0, True), (0.0, False)])
def test_minimax_gradient_vanishes_when_d_rejects_the_fakes(bias, minimax_vanishes):
    """Problem 5: dL/dθ = -D(G(z)) dh/dθ for minimax, -(1 - D(G(z))) dh/dθ for non-saturating."""
    norms = {}
    for kind in ("minimax", "non_saturating"):
        torch.manual_seed(0)
        m = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, generator_loss=kind)
        with torch.no_grad():
            m.discriminator[-2].bias.fill_(bias)  # D(G(z)) = sigmoid(h + bias): ~6e-6 at -12
        terms = m.training_step((torch.rand(16, 1, 28, 28),), optimizer="g")
        terms["loss"].backward()
        norms[kind] = math.sqrt(sum(p.grad.pow(2).sum().item() for p in m.generator.parameters()))
        assert all(p.grad is not None for p in m.generator.parameters())
    ratio = norms["minimax"] / norms["non_saturating"]
    if minimax_vanishes:
        assert ratio < 1e-4, norms
    else:
        assert 0.2 < ratio < 5, norms  # D = 1/2: both losses push with comparable force


def test_schedule_and_groups():
    m = GAN((1, 28, 28), d_steps=3)
    assert m.update_schedule() == ["d", "d", "d", "g"]
    groups = m.param_groups()
    assert set(groups) == {"d", "g"}
    d_ids, g_ids = {id(p) for p in groups["d"]}, {id(p) for p in groups["g"]}
    assert not d_ids & g_ids and len(d_ids | g_ids) == len([p for p in m.parameters() if p.requires_grad])
    frozen = GAN1D(freeze_g_identity=True)
    assert frozen.update_schedule() == ["d"] and list(frozen.param_groups()) == ["d"]
    for bad in ({"generator_loss": "hinge"}, {"d_steps": 0}, {"r1": -1.0}, {"r1_every": 0}, {"depth": -1}):
        with pytest.raises(ConfigError, match=f"model.{next(iter(bad))}="):
            create_model("gan", input_shape=(1, 28, 28), **bad)


def test_d_step_leaves_g_alone_and_g_step_moves_g():
    torch.manual_seed(0)
    m = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, r1=1.0)
    x = torch.rand(8, 1, 28, 28)
    terms = m.training_step((x,), optimizer="d")
    terms["loss"].backward()
    assert all(p.grad is None for p in m.generator.parameters())
    assert all(p.grad is not None for p in m.discriminator.parameters())
    assert terms["r1"] > 0 and {"d_real", "d_fake"} <= set(terms)


@pytest.mark.parametrize("bias", [3.0, -3.0])
def test_validation_accuracy_of_a_constant_discriminator_is_one_half(bias):
    """D's accuracy averages its two halves: reals called real (logit > 0), fakes called fake (logit < 0). A D
    that says the same logit to everything is right on exactly one half: d_acc = (1 + 0) / 2 either way."""
    m = GAN1D(freeze_g_identity=True)
    with torch.no_grad():
        m.discriminator[-1].weight.zero_()
        m.discriminator[-1].bias.fill_(bias)
    out = m.validation_step((torch.rand(16, 1),))
    assert out["d_acc"].item() == 0.5
    assert out["d_real"].item() == out["d_fake"].item() == pytest.approx(1 / (1 + math.exp(-bias)), rel=1e-6)


def test_lazy_r1_penalises_every_kth_d_update_with_k_times_the_weight():
    torch.manual_seed(0)
    lazy = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, r1=2.0, r1_every=3, ema=0)
    plain = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, r1=0.0, ema=0)
    plain.load_state_dict(lazy.state_dict())
    x = torch.rand(8, 1, 28, 28)
    extra, logged = [], []
    for _ in range(6):
        torch.manual_seed(1)  # the same fakes for both models
        a = lazy.training_step((x,), optimizer="d")
        torch.manual_seed(1)
        b = plain.training_step((x,), optimizer="d")
        extra.append((a["loss"] - b["loss"]).item())
        logged.append(a["r1"].item())
    r1 = extra[0] / (0.5 * 2.0 * 3)
    assert r1 > 0 and lazy.d_updates == 6
    # the extra loss is 0.5 * r1 * r1_every * R1 with R1 the penalty the step logs (a difference of two float32
    # losses near 1.39: measured 0.2% off); without the factor r1_every it would be a third of that
    assert r1 == pytest.approx(logged[0], rel=0.02)
    assert extra[3] == pytest.approx(extra[0], rel=1e-5)  # updates 0 and 3 penalised, the same D and x
    assert extra[1:3] == [0.0, 0.0] and extra[4:] == [0.0, 0.0]
    state = lazy.state_dict()
    fresh = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, r1=2.0, r1_every=3, ema=0)
    fresh.load_state_dict(state)
    assert fresh.d_updates == 6  # the count travels with checkpoints: resume penalises the same updates


def test_ema_generator_averages_the_iterates_and_samples():
    m = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, ema=0.5)
    assert all(not p.requires_grad for p in m.generator_ema.parameters())
    before = [p.clone() for p in m.generator_ema.parameters()]
    with torch.no_grad():
        for p in m.generator.parameters():
            p.add_(1.0)
        m.generator[2].running_mean.fill_(0.25)
    m.on_train_batch_end(1000)  # decay 0.5 once past the warm-up
    for avg, old, p in zip(m.generator_ema.parameters(), before, m.generator.parameters()):
        assert torch.allclose(avg, 0.5 * old + 0.5 * p)
    assert torch.equal(m.generator_ema[2].running_mean, m.generator[2].running_mean)
    z_gen = torch.Generator().manual_seed(0)
    m.eval()
    expected = m.generator_ema(m.noise(4, torch.Generator().manual_seed(0)))
    assert torch.allclose(m.sample(4, generator=z_gen), expected)
    assert not torch.allclose(expected, m.generator(m.noise(4, torch.Generator().manual_seed(0))))
    assert {"samples", "samples_raw_generator"} <= set(m.visuals((torch.rand(4, 1, 28, 28), None)))
    early = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, ema=0.999)
    with torch.no_grad():
        for p in early.generator.parameters():
            p.add_(1.0)
    early.on_train_batch_end(1)  # warm-up: decay (1 + 1) / (10 + 1), the average moves most of the way
    w_avg, w = early.generator_ema[0].weight, early.generator[0].weight
    assert torch.allclose(w - w_avg, torch.full_like(w, 2 / 11), atol=1e-6)
    assert GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, ema=0).sampler is not None
    with pytest.raises(ValueError, match="ema"):
        GAN((1, 28, 28), ema=1.0)


def test_gan_resume_mid_epoch_is_exact(mnist_root, tmp_path):
    """EMA weights, batch-norm statistics and the lazy-R1 count all come back: the same losses and weights."""
    over = [f"data.root={mnist_root}", "data.limit=320", "data.val_size=64", "train.epochs=2", "train.device=cpu",
            "train.batch_size=32", "train.log_every=1", "model.g_width=4", "model.d_width=4", "model.r1_every=2"]
    full = fit(load_config("configs/gan.yaml", over), tmp_path / "a")
    stopped = fit(load_config("configs/gan.yaml", [*over, "train.max_steps=7"]), tmp_path / "b")
    assert stopped.metrics["step"] == 7
    resumed = fit(load_config("configs/gan.yaml", over), tmp_path / "b", resume=True)
    losses = lambda t: [(h["step"], h["d/loss"], h["g/loss"]) for h in t.metrics["history"]]  # noqa: E731
    assert len(losses(full)) == full.metrics["step"] > 7 and losses(resumed) == losses(full)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert k == "_extra_state" or torch.equal(a, b), k
    assert resumed.model.d_updates == full.model.d_updates == full.metrics["step"]
    out = tmp_path / "gan.safetensors"  # the export keeps the extra state (not a tensor) as JSON metadata
    assert main(["export", str(tmp_path / "a"), "-o", str(out)]) == 0
    (shared, _, _), (saved, _, _) = load_run(out), load_run(tmp_path / "a")
    assert (shared.d_updates, shared.last_r1) == (saved.d_updates, saved.last_r1) and shared.d_updates > 0
    for (k, a), b in zip(saved.state_dict().items(), shared.state_dict().values()):
        assert k == "_extra_state" or torch.equal(a, b), k


# ---- sampling ---------------------------------------------------------------------------------------------------
def test_sample_shapes_range_and_seeds():
    m = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4)
    m.train()
    a = m.sample(5, generator=torch.Generator().manual_seed(0))
    b = m.sample(5, generator=torch.Generator().manual_seed(0))
    c = m.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.training  # sample() restores the mode it found
    cold = m.sample(3, generator=torch.Generator().manual_seed(0), temperature=0.0)
    assert torch.allclose(cold[0], cold[1]) and torch.allclose(cold[1], cold[2])
    assert m.visuals((torch.rand(4, 1, 28, 28), None))["samples"].shape == (64, 1, 28, 28)
    deep = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, depth=2)
    assert deep.sample(3).shape == (3, 1, 28, 28) and deep.discriminator(torch.rand(3, 1, 28, 28)).shape == (3,)
    convs = lambda net: sum(isinstance(x, nn.Conv2d) for x in net.modules())  # noqa: E731
    assert convs(deep.generator) - convs(m.generator) == 4 and convs(deep.discriminator) - convs(m.discriminator) == 4
    s1 = GAN1D().draw(7, generator=torch.Generator().manual_seed(0))
    assert s1.shape == (7, 1) and not hasattr(GAN1D, "sample")  # not an image model for `zoo sample`


def test_sample_in_training_mode_uses_the_running_statistics_and_keeps_them():
    """A sample does not depend on its batch-mates: batch norm normalises with the running statistics even when
    the model is training, and sampling leaves those statistics as they were."""
    torch.manual_seed(0)
    m = GAN((1, 28, 28), latent_dim=8, g_width=4, d_width=4, ema=0)
    bn = m.generator[2]
    with torch.no_grad():
        bn.running_mean.fill_(0.3)  # far from the batch's own statistics
        bn.running_var.fill_(2.0)
    m.eval()
    expected = m.generator(m.noise(4, torch.Generator().manual_seed(0)))
    m.train()
    before = bn.running_mean.clone()
    got = m.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(bn.running_mean, before) and m.training


@pytest.fixture(scope="module")
def gan_run(mnist_root, tmp_path_factory, one_thread):
    """A small GAN trained by `zoo train` for 800 steps (~8 s), once for the CLI tests below."""
    run = tmp_path_factory.mktemp("gan") / "gan"
    # 800 steps (~8 s): lr 2e-3 and batch 32 get furthest in that time; lr 5e-4 at batch 64 gave confidence 0.37
    argv = ["train", "configs/gan.yaml", "--run-dir", str(run), "--quiet", f"data.root={mnist_root}",
            "data.limit=6400", "data.val_size=64", "train.epochs=4", "train.batch_size=32", "train.device=cpu",
            "model.g_width=16", "model.d_width=16", "model.depth=0", "train.optimizers.d.lr=2e-3",
            "train.optimizers.g.lr=2e-3"]
    assert main(argv) == 0
    return run


def test_gan_trains_and_samples_digits_through_the_cli(gan_run, tmp_path, small_lenet_run, monkeypatch):
    """`zoo train` then `zoo sample`: the written images are read as digits by the LeNet evaluator, and with a
    confidence that uniform noise does not reach."""
    run = gan_run
    assert list((run / "samples").glob("samples_epoch000.png"))
    written, save_png = [], visuals.save_png

    def keep(images, path, *args, **kwargs):
        written.append((images, args, kwargs))
        save_png(images, path, *args, **kwargs)

    monkeypatch.setattr(visuals, "save_png", keep)
    out = tmp_path / "digits.png"
    assert main(["sample", str(run), "-n", "256", "-o", str(out), "--device", "cpu"]) == 0
    (images, args, kwargs), = written
    save_png(images, tmp_path / "again.png", *args, **kwargs)
    assert out.read_bytes() == (tmp_path / "again.png").read_bytes()  # the PNG holds the images judged below
    assert images.shape == (256, 1, 28, 28)

    lenet = fid.load_evaluator(evaluator=small_lenet_run)
    judged = fid.class_stats(fid.classify(lenet, images)[1])
    noise = fid.class_stats(fid.classify(lenet, torch.rand(256, 1, 28, 28,
                                                            generator=torch.Generator().manual_seed(0)))[1])
    # mean max-softmax confidence, measured with this evaluator: uniform noise 0.33, real test digits 0.90, these
    # samples 0.61-0.64 (train.seed 0-2), an untrained G 0.23. 0.5 sits clear of the noise and of the samples
    assert noise["mean_confidence"] < 0.5 < judged["mean_confidence"], (noise, judged)
    assert sum(s > 0 for s in judged["class_shares"]) >= 7, judged  # several digits, not one mode (measured 10)


def test_zoo_sample_seed_and_temperature_reach_the_noise_and_the_suffix_check_ignores_case(gan_run, tmp_path):
    def png(*flags, name="s.png"):
        out = tmp_path / name
        assert main(["sample", str(gan_run), "-n", "4", "-o", str(out), "--device", "cpu", *flags]) == 0
        return out.read_bytes()

    assert png("--seed", "1") != png("--seed", "2")  # other noise, other digits
    assert png("--seed", "1", "-t", "0") == png("--seed", "2", "-t", "0")  # -t 0 scales every z to 0: one image
    assert png("--seed", "1", name="S.PNG") == png("--seed", "1")  # .PNG is a PNG: the same file


def test_zoo_eval_seed_draws_the_fakes_and_one_seed_gives_one_report(gan_run, capsys):
    """The GAN's evaluation shows D fakes drawn from torch's generator, which `zoo eval --seed` seeds: the same
    seed gives the same report twice in one process (where the generator has moved on between the two), another
    seed other fakes."""
    def report(seed):
        capsys.readouterr()
        assert main(["eval", str(gan_run), "--json", "--no-fid", "--device", "cpu", "--seed", str(seed)]) == 0
        return json.loads(capsys.readouterr().out)

    a, b, c = report(1), report(1), report(2)
    assert a == b
    assert a["test_d_real"] == c["test_d_real"]  # the real half has no noise
    # the mean of D over the 10,000 fakes moves by its standard error between seeds (measured 6e-4), far above
    # the round-off of a sum in another order (1e-9)
    assert abs(a["test_d_fake"] - c["test_d_fake"]) > 1e-5


# ---- FID ----------------------------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=6)
    a = rng.normal(size=(6, 6))
    s = a @ a.T + 0.1 * np.eye(6)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-8)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2
    v1, v2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    expect = ((mu - 1) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert fid.frechet_distance(mu, np.diag(v1), np.ones(6), np.diag(v2)) == pytest.approx(expect, rel=1e-9)
    # general (non-commuting) covariances: the textbook formula with scipy's sqrtm
    b = rng.normal(size=(6, 6))
    s2 = b @ b.T + 0.1 * np.eye(6)
    ref = np.trace(s) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s @ s2).real)
    assert fid.frechet_distance(mu, s, mu, s2) == pytest.approx(ref, rel=1e-6)


def test_fid_of_gaussian_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200_000, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.0])
    b = torch.randn(200_000, 4, generator=g) + torch.tensor([1.0, 0.0, 0.0, 0.0])
    expect = 1.0 + (2 - 1) ** 2 + (0.5 - 1) ** 2  # mean shift + sum of (sigma_a - sigma_b)^2
    got = fid.frechet_distance(*fid.gaussian_stats(a), *fid.gaussian_stats(b))
    assert got == pytest.approx(expect, abs=0.02)
    same = fid.frechet_distance(*fid.gaussian_stats(a), *fid.gaussian_stats(a))
    assert abs(same) < 1e-8


def test_class_stats():
    probs = torch.eye(10)[torch.tensor([0] * 50 + list(range(10)) * 5)] * 0.9 + 0.01
    out = fid.class_stats(probs)
    assert out["class_shares"][0] == pytest.approx(0.55) and out["min_class_share"] == pytest.approx(0.05)
    assert out["kl_to_uniform"] > 0 and out["mean_confidence"] == pytest.approx(0.91)
    uniform = fid.class_stats(torch.eye(10).repeat(3, 1))
    assert uniform["kl_to_uniform"] == pytest.approx(0, abs=1e-12) and uniform["min_class_share"] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def small_lenet_run(mnist_root, tmp_path_factory, one_thread):
    """A LeNet trained for one short epoch (~3 s), not for the 99.2% goal: 6000 images make it 90% confident on
    real test digits and 33% on uniform noise (2000 images: 53% and 26%, too close to tell samples apart)."""
    run = tmp_path_factory.mktemp("lenet") / "lenet"
    cfg = load_config("configs/lenet.yaml", [f"data.root={mnist_root}", "data.limit=6000", "train.epochs=1",
                                             "train.device=cpu"])
    fit(cfg, run)
    return run


def test_generative_metrics_of_real_images_and_of_noise(small_lenet_run, monkeypatch):
    class Replay(torch.nn.Module):
        """A 'model' whose samples are given images: FID against the test set is then known."""

        def __init__(self, images):
            super().__init__()
            self.images, self.i = images, 0

        device = torch.device("cpu")

        def sample(self, n, generator=None, temperature=1.0):
            out = self.images[self.i:self.i + n]
            self.i += n
            return out

    test = create_data("mnist", val_size=0).tensors("test")[0]
    ctx = Ctx(options={"evaluator": str(small_lenet_run)})
    real = fid.generative_metrics(Replay(test), None, ctx)
    assert abs(real["fid_lenet"]) < 1e-3  # identical sets (trace ~ 1e3: round-off only)
    assert real["fid_lenet_floor_real_vs_real"] > 0
    assert sum(real["class_shares"]) == pytest.approx(1, abs=1e-3)
    assert real["min_class_share"] == pytest.approx(real["test_min_class_share"])
    noise = fid.generative_metrics(Replay(torch.rand(2000, 1, 28, 28)), None, ctx, n=2000)
    assert noise["fid_lenet"] > 10 * noise["fid_lenet_floor_real_vs_real"]
    ratio = noise["fid_lenet"] / noise["fid_lenet_floor_real_vs_real"]  # how many floors the samples are away
    assert noise["fid_lenet_ratio_to_floor"] == pytest.approx(ratio)
    assert noise["kl_to_uniform"] > real["kl_to_uniform"]


def test_missing_evaluator_is_trained_on_demand_with_a_message(mnist_root, tmp_path, monkeypatch):
    from zoo.errors import ZooError

    recipe = tmp_path / "lenet.yaml"  # the recipe, shrunk: what the on-demand training reads
    recipe.write_text(yaml.safe_dump(load_config("configs/lenet.yaml", [
        f"data.root={mnist_root}", "data.limit=500", "train.epochs=1", "train.device=cpu"])))
    monkeypatch.setattr(fid, "_recipe_path", lambda: recipe)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    with pytest.raises(ZooError, match="neither a trained run dir nor a checkpoint"):  # a named one must exist
        fid.load_evaluator(Ctx(options={"evaluator": str(tmp_path / "lenett")}))
    assert not (tmp_path / "lenett").exists()
    ctx, info = Ctx(), {}  # the default, runs/lenet, is trained on demand
    lenet = fid.load_evaluator(ctx, info=info)
    assert (tmp_path / fid.DEFAULT_EVALUATOR / "checkpoints" / "last.pt").is_file()
    assert any("training one now" in m for m in ctx.messages) and info["evaluator_matches_recipe"]
    assert lenet.features(torch.zeros(2, 1, 28, 28)).shape == (2, 128)
    ctx.messages.clear()
    fid.load_evaluator(ctx)  # the second time it is found, not retrained
    assert not any("training one now" in m for m in ctx.messages)


def test_evaluator_must_be_a_lenet(tmp_path, mnist_root):
    from zoo.errors import ZooError

    cfg = load_config("configs/gan1d.yaml", ["train.epochs=1", "train.device=cpu", "data.n=2000"])
    fit(cfg, tmp_path / "g")
    with pytest.raises(ZooError, match="must be a `lenet` run"):
        fid.load_evaluator(Ctx(options={"evaluator": str(tmp_path / "g")}))


def test_lenet_features_and_shift_augmentation():
    from zoo.models.lenet import LeNet, random_shift

    m = LeNet((1, 28, 28), 10)
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    assert m.features(x).shape == (2, 128) and m(x).shape == (2, 10)
    y = random_shift(x, 2)
    assert y.shape == x.shape and y.sum() == x.sum()  # a translation: nothing falls off a centred blob
    assert torch.equal(random_shift(x, 0), x)
    # every image is exactly one translation of the original by at most 2 px, and most of them really moved
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 9:19, 11:16] = 1  # a tall bar: each shift gives another image
    y = random_shift(x, 2)
    moved = 0
    for i in range(len(x)):
        fits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(y[i], torch.roll(x[i], (dy, dx), (1, 2)))]
        assert len(fits) == 1, i
        moved += fits[0] != (0, 0)
    assert moved >= 48  # 24 of the 25 shifts move the image


def test_random_shift_draws_every_one_of_the_25_shifts():
    """Shifts by -2..2 pixels in y and in x: 5 x 5 = 25 translations, each drawn with chance 1/25, so 256 images
    miss one of them with chance below 25 (24/25)^256 = 7e-4 (seeded here)."""
    from zoo.models.lenet import random_shift

    torch.manual_seed(0)
    x = torch.zeros(256, 1, 28, 28)
    x[:, :, 9:19, 11:16] = 1  # a tall bar: each shift gives another image
    y = random_shift(x, 2)
    every = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = {(dy, dx) for i in range(len(x)) for dy, dx in every
            if torch.equal(y[i], torch.roll(x[i], (dy, dx), (1, 2)))}
    assert seen == every


def test_lenet_step_in_eval_mode_sees_the_images_unshifted():
    """Shifts augment training only: in eval mode (validation) the loss is the cross-entropy of the images as
    they are."""
    from zoo.models.lenet import LeNet

    torch.manual_seed(0)
    m = LeNet((1, 28, 28), 10).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    with torch.no_grad():
        loss, plain = m.training_step((x, y))["loss"], nn.functional.cross_entropy(m(x), y)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_lenet_evaluate_reports_the_majority_class_baseline():
    from zoo.models.lenet import LeNet

    class FourImages:  # the test split: labels 0, 0, 0, 1
        def tensors(self, split):
            return torch.zeros(4, 1, 28, 28), torch.tensor([0, 0, 0, 1])

    out = LeNet((1, 28, 28), 10).evaluate(FourImages(), Ctx())
    assert out["baseline_majority_class"] == 3 / 4 and out["n_test"] == 4  # always "0": right on 3 of 4
    assert out["test_error"] == pytest.approx(1 - out["test_accuracy"])
