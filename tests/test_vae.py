"""The Gaussian autoencoder: ELBO terms, learned covariance, sampling and evaluation through the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from conftest import small_vae_config
from zoo import cli
from zoo.checkpoint import load_run
from zoo.config import load_config
from zoo.losses import bits_per_dim
from zoo.models.gaussian_ae import gaussian_baselines
from zoo.registry import create_model
from zoo.trainer import fit


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("covariance", ["identity", "scalar", "diagonal", "full", "predicted"])
def test_nelbo_matches_a_direct_gaussian_log_density(covariance):
    """The loss equals -log N(x; f, Sigma) + |g|^2/2 computed independently with torch.distributions."""
    torch.manual_seed(0)
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance=covariance).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a generic M, not the identity-like init
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(1)
    terms = m.terms(x)
    torch.manual_seed(1)
    g, mean, log_var = m(x)
    if covariance == "predicted":
        dist = torch.distributions.Normal(mean.flatten(1), torch.exp(0.5 * log_var.flatten(1)))
        nll = -dist.log_prob(x.flatten(1)).sum(1)
    else:
        sigma = m.covariance_matrix().float()
        nll = -torch.distributions.MultivariateNormal(mean.flatten(1), covariance_matrix=sigma).log_prob(x.flatten(1))
    assert torch.allclose(terms["nll"], nll, rtol=1e-4, atol=1e-2)
    assert torch.allclose(terms["kl"], 0.5 * g.pow(2).sum(1))


def test_learned_full_covariance_matches_the_residual_covariance(tmp_path):
    """Data = mean + N(0, C) with C known and correlated; the ELBO's M must learn Sigma = C (not collapse)."""
    cfg = load_config({
        "name": "cov", "model": {"name": "gaussian_ae", "covariance": "full", "dropout": 0.0,
                                 "covariance_init": "diagonal"},  # off-diagonals start at 0: they must be learned
        "data": {"name": "gaussian", "size": 6, "n": 30000, "std": 0.15},
        "train": {"epochs": 10, "batch_size": 500, "device": "cpu", "log_every": 0,
                  "optimizer": {"name": "adam", "lr": 1e-2}, "scheduler": {"name": "cosine"}}})
    tr = fit(cfg, tmp_path / "cov")
    sigma = tr.model.covariance_matrix()
    true = tr.data.cov.double()
    x = tr.data.tensors("train")[0]
    with torch.no_grad():
        residual = (x - tr.model(x)[1]).flatten(1).double()
    off = lambda a: a - torch.diag(torch.diag(a))  # noqa: E731
    assert rel_err(sigma, residual.T @ residual / len(residual)) < 0.10
    assert rel_err(sigma, true) < 0.10
    assert rel_err(off(sigma), off(true)) < 0.3  # the correlations are learned too, not only the variances


def test_shared_diagonal_sigma_does_not_collapse_on_mnist(mnist_root, tmp_path):
    """With -log|det M| in the loss, each pixel's sigma settles at its residual RMS instead of going to 0."""
    cfg = small_vae_config(mnist_root, epochs=3)
    cfg["data"]["limit"] = 2000
    tr = fit(load_config(cfg), tmp_path / "r")
    m = tr.model
    std = torch.exp(-m.log_diag.detach())
    x = tr.data.tensors("train")[0]
    with torch.no_grad():
        m.train()
        rms = (x - m(x)[1]).flatten(1).pow(2).mean(0).sqrt()
    assert torch.isfinite(std).all() and std.min() > 1e-4
    ratio = (std / rms).median().item()
    assert 0.5 < ratio < 2.0, ratio
    assert tr.metrics["epochs"][-1]["val/sigma"] > 0.01
    losses = [h["loss"] for h in tr.metrics["history"]]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_lower_whitening_factor():
    from zoo.models.gaussian_ae import lower_whitening

    a = torch.randn(6, 6, dtype=torch.float64)
    p = a @ a.T + torch.eye(6, dtype=torch.float64)
    m = lower_whitening(p)
    assert torch.allclose(m.T @ m, p) and torch.equal(m, torch.tril(m)) and (torch.diag(m) > 0).all()


def test_gaussian_baselines_on_known_data():
    """The baselines' bpd equal the closed-form entropy of the Gaussian they are evaluated on."""
    torch.manual_seed(0)
    d, n = 4, 200000
    a = torch.randn(d, d, dtype=torch.float64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    data = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64), cov).sample((n,))
    out = gaussian_baselines(data[: n // 2], data[n // 2:])
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * cov).item()
    assert out["baseline_full_gaussian_bpd"] == pytest.approx(bits_per_dim(entropy, d), abs=0.01)
    assert out["baseline_diag_gaussian_bpd"] > out["baseline_full_gaussian_bpd"] + 0.05


def test_sample_and_eval_from_the_checkpoint_alone(mnist_root, tmp_path, capsys, monkeypatch):
    run = tmp_path / "vae"
    fit(load_config(small_vae_config(mnist_root, epochs=1)), run)
    out_png = tmp_path / "digits.png"
    assert cli.main(["sample", str(run), "-n", "16", "-o", str(out_png), "--seed", "3"]) == 0
    img = Image.open(out_png)
    assert img.size == (4 * 28 + 5 * 2, 4 * 28 + 5 * 2)  # a 4 x 4 grid with 2-pixel padding
    first = out_png.read_bytes()
    assert cli.main(["sample", str(run), "-n", "16", "-o", str(out_png), "--seed", "3"]) == 0
    assert out_png.read_bytes() == first  # same seed, same picture
    # another seed gives other images, and the temperature sets the spread of the latent draws
    model, _, _ = load_run(run)
    draw = lambda seed, t: model.sample(256, generator=torch.Generator().manual_seed(seed), temperature=t)  # noqa: E731
    a, b = draw(3, 1.0), draw(4, 1.0)
    assert not torch.equal(a, b)
    cold, hot = draw(3, 0.1), draw(3, 2.0)
    assert cold.std(0).mean() < a.std(0).mean() < hot.std(0).mean()  # spread across samples grows with t
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json", "--no-fid"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "gaussian_ae" and res["test_images"] == 10000
    assert res["test_bpd"] == pytest.approx(bits_per_dim(res["test_nelbo_nats"], 784))
    assert math.isfinite(res["baseline_diag_gaussian_bpd"]) and math.isfinite(res["baseline_full_gaussian_bpd"])
    assert cli.main(["eval", str(run), "--json", "--no-fid", "--no-baselines"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["test_bpd"] == res["test_bpd"]  # the model's number does not depend on the baselines
    assert not any(k.startswith("baseline") for k in own)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_rescales_the_mean_gradient_and_keeps_the_optimum(beta):
    """d/dmu = sigma^(2 beta) (mu - x) / sigma^2; at the optimum (mu = E x, sigma^2 = Var x) both gradients vanish."""
    from zoo.losses import beta_nll

    x = torch.tensor([[0.2, 0.9, 0.5]])
    mu = torch.tensor([[0.1, 0.5, 0.5]], requires_grad=True)
    log_var = torch.tensor([[-4.0, -1.0, 0.0]], requires_grad=True)
    beta_nll((x - mu) * torch.exp(-0.5 * log_var), log_var, beta).sum().backward()
    var = log_var.detach().exp()
    assert torch.allclose(mu.grad, var ** beta * (mu.detach() - x) / var)
    # samples of a Gaussian: the NLL's optimum has zero beta-NLL gradient too
    torch.manual_seed(0)
    xs = 0.3 + 0.2 * torch.randn(20000, 1)
    m = xs.mean().reshape(1, 1).requires_grad_()
    lv = xs.var(unbiased=False).log().reshape(1, 1).requires_grad_()
    beta_nll((xs - m) * torch.exp(-0.5 * lv), lv.expand_as(xs), beta).mean().backward()
    assert abs(m.grad.item()) < 1e-4 and abs(lv.grad.item()) < 1e-4
