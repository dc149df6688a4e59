"""Linear models with closed forms (issue 13): the trainer reproduces PCA, ridge shrinkage, instance-noise
regularisation and a hand-computed backprop. Every expected value is recomputed here independently of the
model code (numpy / eigh where the model uses torch SVD) or by hand in the comments."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.cli import main
from zoo.config import load_config
from zoo.data import create_data
from zoo.errors import ConfigError, ZooError
from zoo.models.linear import LinearPurifier, pca, purifier_optimum
from zoo.registry import create_model
from zoo.trainer import fit

CONFIGS = Path(__file__).parents[1] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


class Ctx:
    seed = 0
    baselines = True

    def log(self, msg):
        pass


def train(config: str, tmp_path, *overrides: str, run: str = "run"):
    return fit(load_config(CONFIGS / config, ["train.device=cpu", "train.log_every=0", *overrides]), tmp_path / run)


def subspace_gap_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle between the column spaces, from the projectors: sin = ||P_a - P_b||_2."""
    pa, pb = (q @ q.T for q in (np.linalg.qr(a)[0], np.linalg.qr(b)[0]))
    return math.degrees(math.asin(min(1.0, np.linalg.norm(pa - pb, 2))))


# ---- PCA and the linear autoencoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_linear_ae_learns_the_pca_subspace_on_10k_mnist(mnist_root, tmp_path, tied):
    tr = train("linear_ae.yaml", tmp_path, f"data.root={mnist_root}", "data.limit=10000", "train.epochs=10",
               f"model.tied={str(tied).lower()}")
    x = tr.data.tensors("train")[0].flatten(1).double().numpy()
    assert len(x) == 10000
    # PCA independently: eigenvectors of the covariance (numpy eigh), not the model's SVD
    xc = x - x.mean(0)
    evals, evecs = np.linalg.eigh(xc.T @ xc / len(x))
    top = evecs[:, ::-1][:, :10]
    model = tr.model
    decoder = model.decoder_weight().detach().double().numpy()
    angle = subspace_gap_deg(decoder, top)
    assert angle < 5.0
    # reconstruction error per image: PCA's is the sum of the discarded eigenvalues
    pca_err = evals[::-1][10:].sum()
    with torch.no_grad():
        ae_err = (model.reconstruct(tr.data.tensors("train")[0]).flatten(1).double().numpy() - x) ** 2
    ae_err = ae_err.sum(1).mean()
    assert pca_err * (1 - 1e-6) <= ae_err < 1.01 * pca_err  # PCA is optimal on the training data
    # zoo eval's report agrees with the independent numbers
    with torch.no_grad():
        out = model.evaluate(tr.data, Ctx())
    assert out["max_principal_angle_deg"] == pytest.approx(angle, abs=0.05)
    assert out["pca"]["recon_error_train"] == pytest.approx(pca_err, rel=1e-4)
    assert out["recon_ratio_train"] == pytest.approx(ae_err / pca_err, rel=1e-4)
    assert out["lstsq_map"]["relative_residual"] < 0.05  # the encoder's output is a linear image of PCA's
    if tied:  # E has orthonormal rows at the optimum, so the map to the PCA coordinates is a rotation
        assert np.allclose(out["lstsq_map"]["singular_values"], 1.0, atol=0.02)
    assert (tr.run_dir / "basis.png").is_file()


def test_hw6_q1a_svd_and_centring():
    # A = [[5, 1, 1], [1, 5, -1]]: A A^T = [[27, 9], [9, 27]], eigenvalues 27 +- 9 = 36, 18, so s = 6, 3 sqrt 2;
    # v_i = A^T u_i / s_i with u = (1, 1)/sqrt 2, (1, -1)/sqrt 2: v1 = (1, 1, 0)/sqrt 2, v2 = (2, -2, 1)/3
    x = create_data("homework", problem="hw6_q1a").tensors("train")[0]
    assert torch.linalg.svdvals(x).tolist() == pytest.approx([6.0, 3 * math.sqrt(2)], rel=1e-6)
    p = pca(x, 2, center=False)
    assert p.singular_values.tolist() == pytest.approx([6.0, 3 * math.sqrt(2)], rel=1e-6)
    v1, v2 = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2), torch.tensor([2.0, -2.0, 1.0]) / 3
    assert abs(p.components[0] @ v1) == pytest.approx(1.0, abs=1e-6)
    assert abs(p.components[1] @ v2) == pytest.approx(1.0, abs=1e-6)
    # Q1(b): centred, the rows are +-(2, -2, 1): one component, v2, singular value sqrt(2 * 9) = 3 sqrt 2; the
    # uncentred first component (1, 1, 0)/sqrt 2 was the direction of the mean (3, 3, 0)
    c = pca(x, 1, center=True)
    assert c.singular_values.tolist() == pytest.approx([3 * math.sqrt(2), 0.0], abs=1e-5)
    assert abs(c.components[0] @ v2) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("center,direction,loss", [
    (False, [1.0, 1.0, 0.0], 9.0),  # uncentred: the top right singular vector; residual s2^2 / 2 points = 18/2
    (True, [2.0, -2.0, 1.0], 0.0),  # centred: the data are rank 1 along (2, -2, 1)
])
def test_linear_ae_trained_on_hw6_q1a(tmp_path, center, direction, loss):
    cfg = {"name": "q1a", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": center},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 100, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.005}, "device": "cpu",
                     "log_every": 0}}
    tr = fit(load_config(cfg), tmp_path / "run")
    w = tr.model.encoder.weight.detach()[0]
    v = torch.tensor(direction) / torch.tensor(direction).norm()
    assert w.norm() == pytest.approx(1.0, abs=1e-3)  # tied optimum: an orthonormal row
    assert abs(w @ v) == pytest.approx(1.0, abs=1e-5)
    assert tr.metrics["epochs"][-1]["val/loss"] == pytest.approx(loss, abs=1e-3)


def test_linear_ae_refuses_fewer_items_than_pca_needs_before_training(tmp_path):
    cfg = {"name": "q1a", "model": {"name": "linear_ae", "k": 2, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"}, "train": {"epochs": 1, "device": "cpu"}}
    with pytest.raises(ZooError, match="needs at least 3 training items .* has 2"):  # 2 points, centred: rank 1
        fit(load_config(cfg), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- self-supervised purification ------------------------------------------------------------------------------
def test_purifier_matches_the_closed_form(tmp_path):
    tr = train("purifier.yaml", tmp_path)  # lam = 2, the Q10(c) spectrum, 64 points
    data, lam = tr.data, 2.0
    u, s = data.U.double(), data.singular_values.double()  # what the data were built from, not an SVD
    exact = u @ torch.diag(s ** 2 / (s ** 2 + lam)) @ u.T
    w = tr.model.weight.detach().double()
    assert ((w - exact).norm() / exact.norm()).item() < 1e-3
    # sigma = 10, 8, 4, 1: gains 100/102, 64/66, 16/18, 1/3 by hand; inside lam in [1, 4] Q10(c) holds
    gains = torch.diagonal(u.T @ w @ u)
    assert gains[:4].tolist() == pytest.approx([100 / 102, 64 / 66, 16 / 18, 1 / 3], abs=1e-3)
    assert (gains[:3] >= 0.8).all() and (gains[3:] <= 0.5).all()
    with torch.no_grad():
        out = tr.model.evaluate(data, Ctx())
    assert out["rel_frobenius_error"] == pytest.approx(((w - exact).norm() / exact.norm()).item(), abs=1e-5)
    assert out["gains_exact"] == pytest.approx((s ** 2 / (s ** 2 + lam)).tolist(), abs=1e-5)
    assert out["gains_learned"] == pytest.approx(gains.tolist(), abs=1e-5)


def test_held_out_spectrum_points_have_the_second_moment_of_the_training_points():
    """Validation and test points are U diag(s) g / sqrt(n), g ~ N(0, I): E[x x^T] = U diag(s^2) U^T / n = X X^T / n,
    so every split's mean squared norm is sum s^2 / n (181.4 / 64 = 2.83 on the default spectrum)."""
    d = create_data("spectrum")
    expected = d.singular_values.double().pow(2).sum().item() / d.n  # ||X||_F^2 / n: exact on the training points
    msq = lambda split: d.tensors(split)[0].double().pow(2).sum(1).mean().item()  # noqa: E731
    assert msq("train") == pytest.approx(expected, rel=1e-5)
    for split in ("val", "test"):  # a mean of 64 draws: relative sd sqrt(2 sum s^4) / sum s^2 / 8 = 0.12
        assert msq(split) == pytest.approx(expected, rel=0.5), split  # without the 1/sqrt(n): 64 times more


def test_q10a_losses_and_the_lambda_where_beta_wins():
    x = create_data("homework", problem="final_q10a").tensors("train")[0]
    alpha, beta = LinearPurifier((2,), init="identity"), LinearPurifier((2,), init="zeros")
    with torch.no_grad():
        beta.weight[0, 0] = 1.0
    la, lb = alpha.losses(x), beta.losses(x)
    # alpha = I: nothing lost, ||I||^2 = 2. beta keeps row 1 only: loses 0.02^2 + 0.01^2 + 0.01^2 + 0.02^2 = 0.001
    assert (la["reconstruction"], la["regularization"]) == pytest.approx((0.0, 2.0), abs=1e-9)
    assert (lb["reconstruction"], lb["regularization"]) == pytest.approx((0.001, 1.0), rel=1e-5)
    # L2 = recon + lam reg: 2 lam vs 0.001 + lam, so beta is better exactly when lam > 0.001
    crossover = (lb["reconstruction"] - la["reconstruction"]) / (la["regularization"] - lb["regularization"])
    assert crossover == pytest.approx(0.001, rel=1e-5)
    for lam, beta_wins in ((0.0009, False), (0.0011, True), (1.0, True)):
        assert (lb["reconstruction"] + lam * lb["regularization"] <
                la["reconstruction"] + lam * la["regularization"]) == beta_wins


def test_q10c_lambda_range_is_1_to_4():
    # keep >= 80% of directions 1-3 and <= 50% of the rest: 16/(16 + lam) >= 0.8 <=> lam <= 4 (sigma_3 = 4),
    # 1/(1 + lam) <= 0.5 <=> lam >= 1 (sigma_4 = 1)
    data = create_data("spectrum")
    x = data.tensors("train")[0]
    assert torch.linalg.svdvals(x).tolist() == pytest.approx([10, 8, 4, 1, 0.5, 0.36, 0.16, 0.01], abs=1e-5)
    ok = []
    for lam in np.arange(0.0, 6.0001, 0.05):
        gains = purifier_optimum(x, float(lam))[2]  # by decreasing singular value
        if (gains[:3] >= 0.8 - 1e-6).all() and (gains[3:] <= 0.5 + 1e-6).all():
            ok.append(round(float(lam), 2))
    assert (min(ok), max(ok)) == (1.0, 4.0)
    assert len(ok) == round((4.0 - 1.0) / 0.05) + 1  # an interval: every grid point between is admissible


# ---- instance noise ------------------------------------------------------------------------------------------------
def test_input_noise_is_gaussian_on_training_batches_only():
    data = create_data("scalar_point", x=1.0, y=3.0, copies=20000, input_noise=0.5)

    def batch(split, seed, augment=True):
        return next(data.batches(split, 20000, generator=torch.Generator().manual_seed(seed), augment=augment))

    x, y = batch("train", 0)
    noise = x - 1.0
    assert abs(noise.mean().item()) < 4 * 0.5 / math.sqrt(20000)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert torch.equal(y, torch.full_like(y, 3.0))  # targets untouched
    assert torch.equal(batch("train", 0)[0], x)  # drawn from the generator it is given
    assert not torch.equal(batch("train", 1)[0], x)
    assert torch.equal(batch("train", 0, augment=False)[0], torch.ones_like(x))  # not an augmented batch
    assert torch.equal(batch("val", 0, augment=False)[0], torch.ones_like(x))
    assert torch.equal(data.tensors("train")[0], torch.ones_like(x))  # stored data never change
    with pytest.raises(ValueError):
        batch("val", 0)


def test_regression_data_have_the_configured_noise_and_feature_scales():
    d = create_data("synthetic_regression", n=4000, noise=0.1)
    x, y = d.tensors("train")
    # y - x w_true is the noise alone: sd 0.1, estimated from 4000 draws to about 1% (1 / sqrt(2 * 4000))
    assert (y - x @ d.w_true).std().item() == pytest.approx(0.1, rel=0.05)
    assert x.std(0).tolist() == pytest.approx(d.scales, rel=0.05)  # features N(0, scales^2)


def test_instance_noise_regression_is_ridge_with_lambda_sigma_squared(tmp_path):
    def ridge(x, y, lam):  # argmin (1/m)||Xw - y||^2 + lam ||w||^2, in numpy float64
        x, y = x.double().numpy(), y.double().numpy()
        return np.linalg.solve(x.T @ x / len(x) + lam * np.eye(x.shape[1]), x.T @ y / len(x))

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    tr = train("instance_noise.yaml", tmp_path)  # sigma = 0.3
    x, y = tr.data.tensors("train")
    w = tr.model.linear.weight.detach().double().numpy().T
    assert rel(w, ridge(x, y, 0.3 ** 2)) < 0.02
    assert rel(w, ridge(x, y, 0.0)) > 0.2  # and ridge is far from least squares here: the test can tell them apart
    with torch.no_grad():
        assert tr.model.evaluate(tr.data, Ctx())["rel_error_vs_ridge"] == pytest.approx(rel(w, ridge(x, y, 0.09)),
                                                                                          abs=1e-4)
    # without the noise the same training lands on least squares
    clean = train("instance_noise.yaml", tmp_path, "data.input_noise=0.0", run="clean")
    w0 = clean.model.linear.weight.detach().double().numpy().T
    assert rel(w0, ridge(x, y, 0.0)) < 0.02


def scalar_run(tmp_path, eta, epochs, sigma=0.5, run="run"):
    """One scalar point x = 1, y = 3, 65536 noisy copies per step: one SGD step per epoch, w_0 = 0."""
    cfg = {"name": "point", "model": {"name": "linear_regression"},
           "data": {"name": "scalar_point", "x": 1.0, "y": 3.0, "copies": 65536, "input_noise": sigma},
           "train": {"epochs": epochs, "batch_size": 65536, "eval_batch_size": 65536, "device": "cpu",
                     "optimizer": {"name": "sgd", "lr": eta}, "log_every": 0, "best_metric": "none"}}
    tr = fit(load_config(cfg), tmp_path / run)
    return np.array([row["train/w"] for row in tr.metrics["epochs"]])


def recurrence(eta, steps, x=1.0, y=3.0, sigma=0.5):
    """E[w_{t+1}] = E[w_t] (1 - eta (x^2 + sigma^2)) + eta y x from E[w_0] = 0 (the exercise's recurrence)."""
    w, out = 0.0, []
    for _ in range(steps):
        w = w * (1 - eta * (x * x + sigma * sigma)) + eta * y * x
        out.append(w)
    return np.array(out)


def test_scalar_instance_noise_follows_the_expected_recurrence(tmp_path):
    # x = 1, y = 3, sigma = 0.5: x^2 + sigma^2 = 1.25, limit yx/(x^2 + sigma^2) = 2.4 (not y/x = 3), and
    # E[w_t] converges for 0 < eta < 2/1.25 = 1.6
    w = scalar_run(tmp_path, 0.5, 30)
    assert np.abs(w - recurrence(0.5, 30)).max() < 0.02  # 1.5, 2.0625, 2.2734, ...: SGD noise std ~0.003
    assert w[-10:].mean() == pytest.approx(2.4, rel=0.01)
    assert np.array_equal(w, scalar_run(tmp_path, 0.5, 30, run="again"))  # same seed, same numbers
    # eta = 1.5 < 1.6: oscillates (factor -0.875) and converges; eta = 1.7 > 1.6 diverges (factor -1.125),
    # although without the noise 1.7 < 2/x^2 = 2 converges (to y/x = 3): the noise shrinks the stable range
    w = scalar_run(tmp_path, 1.5, 60, run="1.5")
    assert np.abs(w[:10] - recurrence(1.5, 10)).max() < 0.12  # 4.5, 0.5625, 3.9961, ...: noise std ~0.03
    assert w[-10:].mean() == pytest.approx(2.4, rel=0.02)
    w = scalar_run(tmp_path, 1.7, 30, run="1.7")
    assert abs(w[-1] - 2.4) > 20 and np.sign(w[-1] - 2.4) != np.sign(w[-2] - 2.4)
    w = scalar_run(tmp_path, 1.7, 30, sigma=0.0, run="1.7clean")
    assert w[-1] == pytest.approx(3.0, rel=1e-3)


# ---- two steps of backprop by hand -----------------------------------------------------------------------------
def test_hw6_q3a_two_backprop_steps(tmp_path):
    # step 1, x = (0, 1), y = 1: z = 1 + 0 + 1 = 2, y_hat = 1 + 2 = 3, L = 4, dL/dy_hat = 4;
    #   grads h = (4, 8), w = (4, 0, 4); after lr 0.05: w = (0.8, 1, 0.8), h = (0.8, 0.6)
    # step 2, x = (1, 0), y = 0: z = 0.8 + 1 = 1.8, y_hat = 0.8 + 0.6 * 1.8 = 1.88, L = 3.5344, dL/dy_hat = 3.76;
    #   grads h = (3.76, 6.768), dL/dz = 3.76 * 0.6 = 2.256, w = (2.256, 2.256, 0)
    #   after: w = (0.6872, 0.8872, 0.8), h = (0.612, 0.2616)
    tr = train("backprop.yaml", tmp_path, "train.log_every=1")
    first, second = tr.model.net[1], tr.model.net[3]
    w = [first.bias.item(), *first.weight.detach()[0].tolist()]
    h = [second.bias.item(), *second.weight.detach()[0].tolist()]
    assert w == pytest.approx([0.6872, 0.8872, 0.8000], abs=1e-4)
    assert h == pytest.approx([0.6120, 0.2616], abs=1e-4)
    assert [r["loss"] for r in tr.metrics["history"]] == pytest.approx([4.0, 3.5344], abs=1e-4)
    assert tr.metrics["step"] == 2


def test_the_mlp_output_layer_has_no_activation():
    """A regression output must be able to go negative: ReLU sits between the layers, never after the last."""
    net = create_model("mlp", {"input_shape": (2,), "target_dim": 1}, hidden=[1], init_constant=-1.0)
    # hidden: relu(-1 * 0 + -1 * 0 + -1) = relu(-1) = 0; output: -1 * 0 + -1 = -1
    # (a ReLU after the output would give 0; no ReLU on the hidden layer, -1 * -1 + -1 = 0)
    with torch.no_grad():
        assert net(torch.zeros(3, 2)).tolist() == [[-1.0]] * 3


def test_zoo_eval_prints_the_purifier_and_mlp_reports(tmp_path, capsys):
    import json

    train("backprop.yaml", tmp_path, run="bp")
    assert main(["eval", str(tmp_path / "bp"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"]["net.1.bias"] == pytest.approx([0.6872], abs=1e-4)
    train("purifier.yaml", tmp_path, "train.epochs=5", run="pur")
    assert main(["eval", str(tmp_path / "pur"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["gains_learned"]) == len(out["gains_exact"]) == 8
    assert (tmp_path / "pur" / "gains.txt").is_file()


# ---- configuration errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data,needle", [
    ({"name": "homework", "problem": "hw7"}, "data.problem"),
    ({"name": "synthetic_regression", "dim": 3, "scales": [1.0, 2.0]}, "data.scales"),
    ({"name": "spectrum", "n": 4}, "data.n"),
    ({"name": "scalar_point", "copies": 0}, "data.copies"),
    ({"name": "scalar_point", "input_noise": -1.0}, "data.input_noise"),
])
def test_bad_data_options_name_the_key(tmp_path, data, needle):
    cfg = {"model": {"name": "linear_regression"}, "data": data, "train": {"device": "cpu"}}
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        fit(load_config(cfg), tmp_path / "run")


def test_model_options_are_checked():
    with pytest.raises(ConfigError, match="model.k"):
        create_model("linear_ae", {"input_shape": (20,), "num_classes": 0}, k=21)
    with pytest.raises(ConfigError, match="model.lam"):
        create_model("linear_purifier", {"input_shape": (3,), "num_classes": 0}, lam=-1.0)
    with pytest.raises(ConfigError, match="target"):  # MNIST-like data without targets or classes
        create_model("mlp", {"input_shape": (3,), "num_classes": 0})
    net = create_model("mlp", {"input_shape": (1, 28, 28), "num_classes": 10}, hidden=[8, 8], activation="tanh")
    terms = net.training_step((torch.rand(5, 1, 28, 28), torch.arange(5)))
    assert terms["loss"].item() == pytest.approx(math.log(10), rel=0.2) and 0 <= terms["accuracy"] <= 1


def test_the_data_modules_declare_plain_info():
    import json

    from zoo.data import build_data

    for name, kwargs in (("homework", {"problem": "hw6_q3a"}), ("synthetic_regression", {}), ("scalar_point", {}),
                         ("spectrum", {})):
        d = build_data(name, **kwargs)
        assert set(d.info) <= set(d.info_keys) and d.info, name
        json.dumps(d.info)
        parts = d.setup().tensors("train")
        assert len({len(t) for t in parts}) == 1 and d.info["input_shape"] == tuple(parts[0].shape[1:]), name
