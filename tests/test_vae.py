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


@pytest.mark.parametrize("encoder", ["fixed", "learned"])
@pytest.mark.parametrize("covariance", ["identity", "scalar", "diagonal", "full", "predicted"])
def test_reported_bpd_matches_an_independent_computation(covariance, encoder):
    """On a fixed batch with fixed noise, the training step's nelbo and bpd equal -log N(x; f(z), Sigma) plus
    KL(q(z|x) || N(0, I)) computed with torch.distributions, converted to bits by hand."""
    torch.manual_seed(0)
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance=covariance, encoder=encoder).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a generic M, not the identity-like init
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(1)
    step = m.training_step((x, None))
    torch.manual_seed(1)
    g, mean, log_var, z_log_var = m(x)
    if covariance == "predicted":
        dist = torch.distributions.Normal(mean.flatten(1), torch.exp(0.5 * log_var.flatten(1)))
        nll = -dist.log_prob(x.flatten(1)).sum(1)
    else:
        sigma = m.covariance_matrix().float()
        nll = -torch.distributions.MultivariateNormal(mean.flatten(1), covariance_matrix=sigma).log_prob(x.flatten(1))
    std = torch.ones_like(g) if z_log_var is None else torch.exp(0.5 * z_log_var)
    q, p = torch.distributions.Normal(g, std), torch.distributions.Normal(torch.zeros_like(g), torch.ones_like(g))
    kl = torch.distributions.kl_divergence(q, p).sum(1)
    nelbo = (nll + kl).mean()
    # the 0..255 image's probability is the density on [0, 1] times (1/256)^64: 8 more bits a pixel
    bits = (nelbo / math.log(2) + 64 * 8) / 64
    assert step["nelbo"].item() == pytest.approx(nelbo.item(), rel=1e-4, abs=1e-2)
    assert step["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert step["bpd"].item() == pytest.approx(bits.item(), abs=1e-4)


def test_importance_weighted_bound_converges_to_the_exact_likelihood():
    """With a 1-D code, log p(x) is an integral done on a grid: the IWAE bound lies between the ELBO and it, and
    closes the gap as k grows."""
    torch.manual_seed(0)
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), latent_dim=1, covariance="predicted",
                     encoder="learned").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        m.decoder.fc[0].weight.mul_(30)  # images that depend sharply on z: a peaked posterior, a real ELBO gap
    x = torch.rand(3, 1, 8, 8)
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    with torch.no_grad():
        mean, log_var = m.decode(z[:, None].float())
        lik = torch.distributions.Normal(mean.flatten(1).double(), torch.exp(0.5 * log_var.flatten(1).double()))
        for i in range(len(x)):
            log_joint = lik.log_prob(x[i].flatten().double()).sum(1) + torch.distributions.Normal(0.0, 1.0).log_prob(z)
            exact = (torch.logsumexp(log_joint, 0) + math.log(z[1] - z[0])).item()
            torch.manual_seed(1)
            elbo = -m.terms(x[i:i + 1])["nelbo"].item()
            lw = m.log_importance_weights(x[i:i + 1], 20000).double()
            iw = (torch.logsumexp(lw, 1) - math.log(20000)).item()
            assert exact - elbo > 0.3  # the check below would be empty without a gap
            assert abs(iw - exact) < 0.05 < iw - elbo


def test_learned_full_covariance_matches_the_residual_covariance(tmp_path):
    """Data = mean + N(0, C) with C known and correlated; the ELBO's M must learn Sigma = C (not collapse)."""
    cfg = load_config({
        "name": "cov", "model": {"name": "gaussian_ae", "covariance": "full", "dropout": 0.0,
                                 "covariance_init": "diagonal"},  # off-diagonals start at 0: they must be learned
        "data": {"name": "gaussian", "size": 6, "n": 12000, "std": 0.15},  # 720 steps of 200: what M needs
        "train": {"epochs": 12, "batch_size": 200, "device": "cpu", "log_every": 0,
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
    # the diagonal one: the entropy of independent coordinates of the same variances
    diagonal = 0.5 * torch.log(2 * math.pi * math.e * cov.diagonal()).sum().item()
    assert out["baseline_diag_gaussian_bpd"] == pytest.approx(bits_per_dim(diagonal, d), abs=0.01)
    assert out["baseline_diag_gaussian_nats"] == pytest.approx(diagonal, abs=0.02)


def test_samples_are_digits_not_blanks_and_seeds_and_temperature_matter(prior_run, tmp_path):
    """From the checkpoint alone: samples have ink in digit-like amounts, two seeds differ, the same seed repeats,
    and the temperature sets the spread of the latent draws."""
    out_png = tmp_path / "digits.png"
    assert cli.main(["sample", str(prior_run), "-n", "16", "-o", str(out_png), "--seed", "3"]) == 0
    assert Image.open(out_png).size == (4 * 28 + 5 * 2, 4 * 28 + 5 * 2)  # a 4 x 4 grid with 2-pixel padding
    first = out_png.read_bytes()
    assert cli.main(["sample", str(prior_run), "-n", "16", "-o", str(out_png), "--seed", "3"]) == 0
    assert out_png.read_bytes() == first  # same seed, same picture
    model, _, _ = load_run(prior_run)
    for prior in model.priors:
        draw = lambda seed, t: model.sample(256, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                            temperature=t, prior=prior)
        a, b = draw(3, 1.0), draw(4, 1.0)
        # MNIST digits: 13% mean intensity, a stroke pixel near 1 in every image, most pixels background
        ink = a.flatten(1)
        assert 0.05 < ink.mean() < 0.3, prior
        assert (ink.max(1).values > 0.6).float().mean() > 0.9, prior
        assert ((ink < 0.1).float().mean(1) > 0.6).float().mean() > 0.75, prior  # not noise, not a grey fog
        assert (a - b).abs().mean() > 0.05, prior  # another seed, other images
        cold, hot = draw(3, 0.1), draw(3, 2.0)
        assert cold.std(0).mean() < a.std(0).mean() < hot.std(0).mean(), prior  # spread across samples grows


def test_eval_reports_both_bounds_and_baselines(prior_run, capsys):
    capsys.readouterr()
    assert cli.main(["eval", str(prior_run), "--json", "--no-fid", "--iw-samples", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "gaussian_ae" and res["test_images"] == 10000 and res["iw_samples"] == 2
    assert res["test_bpd"] == pytest.approx(bits_per_dim(res["test_nelbo_nats"], 784))
    assert res["test_iw_bpd"] == pytest.approx(bits_per_dim(res["test_iw_nll_nats"], 784))
    assert res["test_iw_bpd"] < res["test_bpd"]  # the importance-weighted bound is tighter on the same images
    assert math.isfinite(res["baseline_diag_gaussian_bpd"]) and math.isfinite(res["baseline_full_gaussian_bpd"])
    assert cli.main(["eval", str(prior_run), "--json", "--no-fid", "--no-baselines", "--iw-samples", "0"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["test_bpd"] == res["test_bpd"]  # the model's number does not depend on the baselines or the IW bound
    assert not any(k.startswith("baseline") or k.startswith("test_iw") for k in own)


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


def test_outlier_mixture_caps_the_cost_of_a_confident_wrong_pixel():
    """outlier_prob p: each pixel's density is (1 - p) N(x; f, sigma^2) + p on [0, 1], checked against a direct
    float64 computation; a pixel predicted as sure background but inked costs about -log p, not (x - f)^2/2 sigma^2."""
    x = torch.zeros(2, 1, 8, 8)
    x[1, 0, 3, 3] = 0.8  # one stroke pixel where the decoder is certain there is none
    mu, lv = torch.full_like(x, 0.002), torch.full_like(x, 2 * math.log(0.002))
    nll = {}
    for p in (0.0, 1e-3):
        m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="predicted", outlier_prob=p).eval()
        m.decode = lambda z: (mu, lv)  # noqa: E731  a decoder with known outputs
        nll[p] = m.terms(x)["nll"].double()
        log_gauss = torch.distributions.Normal(mu.double(), torch.exp(0.5 * lv.double())).log_prob(x.double())
        direct = -(torch.log((1 - p) * log_gauss.exp() + p) if p else log_gauss).flatten(1).sum(1)
        assert torch.allclose(nll[p], direct, rtol=1e-6), (p, nll[p], direct)
    assert nll[0.0][1] - nll[0.0][0] > 50_000  # one pixel outweighs the image
    assert nll[1e-3][1] - nll[1e-3][0] == pytest.approx(-math.log(1e-3) - (nll[1e-3][0] / 64).item() - 0.001, abs=0.5)
    assert 0 < (nll[1e-3][0] - nll[0.0][0]).item() < 64 * 2e-3  # sure pixels pay only -log(1 - p) each


def test_tensorboard_grids_keep_the_traversal_rows_and_the_reconstruction_pairs(tmp_path):
    """The traversal is a row of 11 steps per code dimension and reconstructions come in (original, copy) pairs:
    TensorBoard's grids must keep those rows (the default sqrt(N) columns wrapped 88 traversal images at 9)."""
    from zoo.visuals import write

    class Test:  # 40 test images with labels: what artifacts() reads
        def batches(self, split, size, generator=None):
            yield torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 10

    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal").eval()
    shown = {}

    class Writer:  # what TensorBoard receives
        def add_image(self, tag, image, step):
            shown[tag] = tuple(image.shape)

        def add_figure(self, tag, figure, step):
            shown[tag] = "figure"

    with torch.no_grad():
        write({**m.artifacts(Test(), tmp_path), **m.visuals((torch.rand(5, 1, 8, 8), None))}, Writer(), 0, tmp_path)
    cell = 8 + 2
    assert shown["latent_traversal"] == (3, 8 * cell + 2, 11 * cell + 2)  # 8 dimensions x 11 steps
    assert Image.open(tmp_path / "latent_traversal.png").size == (11 * cell + 2, 8 * cell + 2)  # as the file
    assert shown["reconstructions"][2] == 8 * cell + 2  # 5 pairs: 4 to a row, not 3 (a pair split in two)


def test_bits_per_dim_only_for_dequantised_pixels():
    """bits/dim add log2(256) for (k + U)/256 pixels; of other data (not dequantised) only nats are reported."""
    from types import SimpleNamespace

    class Data:
        def __init__(self, dequantize):
            self.dequantize = dequantize

        def batches(self, split, size, generator=None):
            yield torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(len(split))), torch.zeros(20)

    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal")
    ctx = SimpleNamespace(seed=0, options={"iw_samples": 2}, baselines=True)
    on, off = m.evaluate(Data(True), ctx), m.evaluate(Data(False), ctx)
    assert on["test_bpd"] == pytest.approx(bits_per_dim(on["test_nelbo_nats"], 64))
    assert on["baseline_diag_gaussian_bpd"] == pytest.approx(bits_per_dim(on["baseline_diag_gaussian_nats"], 64))
    assert not [k for k in off if k.endswith("_bpd")] and "dequantize" in off["bits_per_dim"]
    assert off["test_nelbo_nats"] == on["test_nelbo_nats"] and "test_iw_nll_nats" in off


def test_kl_warmup_weights_only_the_training_objective():
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal", kl_warmup=10)
    x = torch.rand(4, 1, 8, 8)
    m.on_train_batch_end(5)
    torch.manual_seed(0)
    t = m.terms(x)
    assert torch.allclose(t["objective"], 0.5 * t["kl"] + t["nll"])
    m.on_train_batch_end(30)
    torch.manual_seed(0)
    assert "objective" not in m.terms(x)  # past the warm-up: the ELBO itself
    m.on_train_batch_end(5)
    m.eval()
    assert "objective" not in m.terms(x)  # validation and evaluation always report the true ELBO
    assert m.state_dict()["kl_step"] == 5  # the position travels in the checkpoint: resume continues the ramp


@pytest.fixture(scope="module")
def prior_run(mnist_root, tmp_path_factory):
    """configs/vae.yaml's model, smaller (4-d codes, 4-component fitted prior), 3 epochs on 2,000 real digits:
    about 20 s on one core, enough for samples with digit-like ink."""
    cfg = small_vae_config(mnist_root, epochs=3)
    cfg["model"].update(covariance="predicted", encoder="learned", latent_dim=4, prior_components=4,
                        sample_prior="fitted", dropout=0.0, nll_beta=0.5, mean_margin=1 / 512)
    cfg["data"]["limit"] = 2000
    cfg["train"]["log_every"] = 0
    run = tmp_path_factory.mktemp("vae") / "prior"
    fit(load_config(cfg), run)
    return run


def test_fitted_prior_matches_the_training_codes_and_travels_in_the_checkpoint(prior_run, mnist_root):
    model, cfg, _ = load_run(prior_run)
    assert model.priors == ("fitted", "standard") and bool(model.prior_fitted)
    from zoo.data import create_data

    z, _ = model.codes(create_data(**cfg["data"]), "train")
    fitted = model.draw_codes(20000, torch.Generator().manual_seed(0), 1.0, "fitted").double()
    standard = model.draw_codes(20000, torch.Generator().manual_seed(0), 1.0, "standard").double()
    cov = torch.cov(z.T)
    assert rel_err(torch.cov(fitted.T), cov) < 0.1 < rel_err(torch.cov(standard.T), cov)
    assert (fitted.mean(0) - z.mean(0)).norm() < 0.1 * z.std(0).norm()
    # temperature scales each component's spread, not the mixture's centres
    cold = model.draw_codes(20000, torch.Generator().manual_seed(0), 0.0, "fitted")
    assert set(map(tuple, cold.unique(dim=0).tolist())) <= set(map(tuple, model.prior_means.tolist()))


def test_sample_prior_choice_through_the_cli(prior_run, tmp_path, capsys):
    pngs = {}
    for prior in ("fitted", "standard"):
        out = tmp_path / f"{prior}.png"
        assert cli.main(["sample", str(prior_run), "-n", "16", "-o", str(out), "--prior", prior]) == 0
        pngs[prior] = out.read_bytes()
    assert cli.main(["sample", str(prior_run), "-n", "16", "-o", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").read_bytes() == pngs["fitted"] != pngs["standard"]  # the run's default: fitted
    capsys.readouterr()
    assert cli.main(["sample", str(prior_run), "-o", str(tmp_path / "x.png"), "--prior", "vampprior"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vampprior" in err and "fitted or standard" in err


def test_prior_option_on_a_model_with_one_prior_is_one_line(mnist_root, tmp_path, capsys):
    """A GAN's sample() takes no prior: --prior must be refused in one line, not reach sample() as a TypeError."""
    cfg = load_config("configs/gan.yaml", [f"data.root={mnist_root}", "data.limit=64", "data.val_size=16",
                                           "train.epochs=1", "train.device=cpu", "model.g_width=8", "model.d_width=8",
                                           "train.max_steps=1"])
    fit(cfg, tmp_path / "g")
    capsys.readouterr()
    assert cli.main(["sample", str(tmp_path / "g"), "-o", str(tmp_path / "x.png"), "--prior", "standard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "single prior" in err and not (tmp_path / "x.png").exists()


def test_training_step_backpropagates_the_training_objective_and_reports_sigma():
    """The loss is the objective when it differs from the ELBO (KL warm-up, beta-NLL), the ELBO otherwise; sigma
    is the geometric-mean std exp(-log|det M| / D) of the shared covariance."""
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal", kl_warmup=4)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.log_diag.fill_(-math.log(0.2))  # every pixel's std 0.2: M = 5 I, so sigma = exp(-64 log 5 / 64) = 0.2
    m.on_train_batch_end(1)  # a quarter into the warm-up: loss = kl / 4 + nll, the reported nelbo kl + nll
    torch.manual_seed(0)
    step = m.training_step((x, None))
    assert step["loss"].item() == pytest.approx((0.25 * step["kl"] + step["nll"]).item(), rel=1e-6)
    assert step["nelbo"].item() == pytest.approx((step["kl"] + step["nll"]).item(), rel=1e-6)
    assert step["loss"].item() < step["nelbo"].item() - 1  # the KL of a random encoder is well above 1 nat
    assert step["sigma"].item() == pytest.approx(0.2, rel=1e-5)
    # beta-NLL without a warm-up: the objective (each pixel's NLL times sigma^(2 beta) = 0.04) is what trains
    b = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal", nll_beta=1.0)
    with torch.no_grad():
        b.log_diag.fill_(-math.log(0.2))
    torch.manual_seed(0)
    t = b.terms(x)
    assert "objective" in t and not torch.allclose(t["objective"], t["nelbo"])
    torch.manual_seed(0)
    assert b.training_step((x, None))["loss"].item() == pytest.approx(t["objective"].mean().item(), rel=1e-6)


def test_reconstruct_decodes_the_code_mean_without_noise():
    """reconstruct(x) = f(g(x)): no encoder noise, so the same image twice gives the same reconstruction."""
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), covariance="diagonal", encoder="learned").eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = m.decode(m.encode(x)[0])[0]
    assert torch.equal(m.reconstruct(x), want) and torch.equal(m.reconstruct(x), m.reconstruct(x))


def test_mixture_prior_refit_finds_unequal_clusters_of_codes(monkeypatch):
    """Codes in two clusters, 3/4 at +4 and 1/4 at -4, each with covariance C = L L^T, L = 0.5 [[1, 0], [0.8, 0.6]]
    (std 0.5, correlation 0.8): the 2-component fit must find both centres, the 0.75 / 0.25 weights and L, on the
    first fit (no last fit to start from) and on a warm-started refit; draws must follow them."""
    from zoo.errors import ZooError

    m = create_model("gaussian_ae", input_shape=(1, 8, 8), latent_dim=2, prior_components=2)
    with pytest.raises(ZooError, match="one finished epoch"):  # nothing fitted yet: only the standard prior
        m.sample(2, prior="fitted")
    gen = torch.Generator().manual_seed(0)
    chol = 0.5 * torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    noise = torch.randn(1000, 2, generator=gen, dtype=torch.float64) @ chol.T  # rows ~ N(0, L L^T)
    z = torch.cat([4 + noise[:750], -4 + noise[750:]])
    monkeypatch.setattr(m, "codes", lambda data, split, limit=None: (z, torch.zeros(len(z))))
    m.setup(None)
    for _ in range(2):
        out = m.on_epoch_end(0)
        assert bool(m.prior_fitted) and math.isfinite(out["prior_loglik"])
        order = m.prior_means[:, 0].argsort(descending=True)
        assert torch.allclose(m.prior_means[order], torch.tensor([[4.0, 4.0], [-4.0, -4.0]]), atol=0.15)
        assert torch.allclose(m.prior_weights[order], torch.tensor([0.75, 0.25]), atol=1e-3)
        assert torch.allclose(m.prior_tril[order], chol.float().expand(2, 2, 2), atol=0.05)  # each component's L
    # draws follow the fitted weights (a quarter near the smaller cluster) and covariance L L^T (not L^T L)
    draws = m.draw_codes(8000, torch.Generator().manual_seed(1), 1.0, "fitted").double()
    assert (draws[:, 0] < 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.allclose(torch.cov(draws[draws[:, 0] > 0].T), chol @ chol.T, atol=0.03)


def test_importance_weights_and_the_iw_bound_match_torch_distributions():
    """log w = log p(x|z) + log N(z; 0, I) - log N(z; g, diag(exp lv)) for the same draws z = g + std eps (B = 3
    images, d = 2: the constants count code dimensions, not images), and evaluate's IW bound is the mean over
    images of -(logsumexp_k log w - log k)."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    m = create_model("gaussian_ae", input_shape=(1, 8, 8), latent_dim=2, covariance="predicted",
                     encoder="learned").eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    k = 5
    lw = m.log_importance_weights(x, k, torch.Generator().manual_seed(7))
    with torch.no_grad():
        g, lv = m.encode(x)
        eps = torch.randn(k, 3, 2, generator=torch.Generator().manual_seed(7))  # the same draws, [k, B, d]
        z = g + torch.exp(0.5 * lv) * eps
        mean, log_var = m.decode(z.flatten(0, 1))
        px = torch.distributions.Normal(mean.flatten(1), torch.exp(0.5 * log_var.flatten(1)))
        log_px = px.log_prob(x.repeat(k, 1, 1, 1).flatten(1)).sum(1).view(k, 3)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(g, torch.exp(0.5 * lv)).log_prob(z).sum(-1)
    assert lw.shape == (3, k)
    assert torch.allclose(lw, (log_px + log_pz - log_qz).T, rtol=1e-5, atol=1e-3)

    class Data:  # the same three images as the test split, one batch
        dequantize = False

        def batches(self, split, size, generator=None):
            yield x, torch.zeros(3)

    out = m.evaluate(Data(), SimpleNamespace(seed=6, options={"iw_samples": k}, baselines=False))
    # evaluate draws its IW noise from a generator seeded seed + 1 = 7: the weights above
    want = -(torch.logsumexp(lw.double(), 1) - math.log(k)).mean().item()
    assert out["test_iw_nll_nats"] == pytest.approx(want, rel=1e-6) and out["iw_samples"] == k
