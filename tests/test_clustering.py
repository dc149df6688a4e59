"""Clustering models (issue 3): k-means network step, Lloyd's worked example, competitive learning replay,
EM monotonicity, image compression, shared metrics. Expected values are computed by hand in the comments."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from zoo import checkpoint as ckpt_io
from zoo.cli import main
from zoo.clustering import (contingency, hungarian_accuracy, inertia, kmeans_plus_plus, label_metrics,
                            lloyd, partition_inertia, sq_distances)
from zoo.compress import compress, compress_file, load_rgb, save_rgb
from zoo.config import load_config
from zoo.errors import ConfigError
from zoo.registry import create_model
from zoo.trainer import Trainer, fit
from zoo.visuals import table, write


class TinyData:
    """Just enough of a data module for on_fit_start / evaluate / artifacts."""

    def __init__(self, x, y, test=None):
        self.x, self.y = x, y
        self.test = test if test is not None else (x, y)

    def tensors(self, split):
        return (self.x, self.y) if split == "train" else self.test

    def full_train(self):
        return self.x, self.y


class Ctx:
    seed = 0
    baselines = True

    def log(self, msg):
        pass


def blobs(k=10, per=8, d=20, spread=3.0, noise=0.1, seed=0):
    """k well-separated clusters: centre i = spread * e_i, points at most a few `noise` away from it."""
    g = torch.Generator().manual_seed(seed)
    centers = spread * torch.eye(k, d)
    y = torch.arange(k).repeat_interleave(per)
    return centers[y] + noise * torch.randn(len(y), d, generator=g), y, centers


# ---- k-means network -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("assign_grad", [True, False])
def test_one_sgd_step_is_the_homework_formula(assign_grad):
    # 80 images, 8 per cell: |V_i|/B = 1/10 exactly, so SGD(eta=4.5) must give C <- (1 - 0.9) C + 0.9 m
    x, y, true_centers = blobs(per=8)
    net = create_model("kmeans_net", input_shape=(20,), k=10, beta=20.0, assign_grad=assign_grad)
    start = true_centers + 0.3 * torch.randn(10, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.centers.copy_(start)
    opt = torch.optim.SGD(net.parameters(), lr=4.5)
    terms = net.training_step((x, y))
    m = torch.stack([x[y == i].mean(0) for i in range(10)])
    # the loss is the squared error summed over pixels, averaged over the batch
    assert terms["loss"].item() == pytest.approx((start[y] - x).pow(2).sum(1).mean().item(), rel=1e-5)
    opt.zero_grad()
    terms["loss"].backward()
    opt.step()
    expected = (1 - 4.5 / 5) * start + (4.5 / 5) * m
    torch.testing.assert_close(net.centers.detach(), expected, atol=1e-5, rtol=0)


def test_step_with_unequal_cells_moves_each_centre_by_its_share():
    # batch of 64 with cells of 1..10 images: C_i <- C_i - 2 eta (n_i / B)(C_i - m_i)
    sizes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 9, 10, 17])
    assert sizes.sum() == 64
    y = torch.arange(10).repeat_interleave(sizes)
    x = 3.0 * torch.eye(10, 20)[y] + 0.1 * torch.randn(64, 20, generator=torch.Generator().manual_seed(2))
    net = create_model("kmeans_net", input_shape=(20,), k=10)
    start = 3.0 * torch.eye(10, 20) + 0.2
    with torch.no_grad():
        net.centers.copy_(start)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.training_step((x, y))["loss"].backward()
    opt.step()
    m = torch.stack([x[y == i].mean(0) for i in range(10)])
    expected = start - 2 * 0.5 * (sizes[:, None] / 64) * (start - m)
    torch.testing.assert_close(net.centers.detach(), expected, atol=1e-5, rtol=0)


def test_cluster_normalised_full_batch_sgd_step_is_one_lloyd_iteration_for_every_restart():
    # unequal cells and centres started off the blobs: lr 1 must land each centre on its cell's mean, and
    # each of the 3 restarts independently (Lloyd's algorithm from each start, one iteration)
    x, y, true_centers = blobs(per=7, noise=0.8, seed=3)
    g = torch.Generator().manual_seed(4)
    starts = [true_centers + 0.9 * torch.randn(10, 20, generator=g) for _ in range(3)]
    net = create_model("kmeans_net", input_shape=(20,), k=10, normalize="cluster", restarts=3,
                       assign_grad=False)
    with torch.no_grad():
        net.centers.copy_(torch.cat(starts))
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    terms = net.training_step((x, y))
    terms["loss"].backward()
    opt.step()
    got = net.centers.detach().view(3, 10, 20)
    for r, start in enumerate(starts):
        lloyd_one = lloyd(x, start, max_iter=1).centers
        torch.testing.assert_close(got[r], lloyd_one, atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], got[1])  # the restarts really are separate
    # the logged cost is restart 0's (the best by default) before the step
    assert terms["inertia_per_image"].item() == pytest.approx(inertia(x, starts[0]) / len(x), rel=1e-4)


def test_restarts_cluster_with_the_set_of_lowest_cost():
    x, y, true_centers = blobs(per=6, noise=0.3, seed=5)
    bad = true_centers.clone()
    bad[1] = bad[0] + 0.01  # two centres on one blob: one blob left without a centre
    net = create_model("kmeans_net", input_shape=(20,), k=10, restarts=2)
    net.setup(TinyData(x, y))
    with torch.no_grad():
        net.centers.copy_(torch.cat([bad, true_centers]))
    net.on_epoch_end(0)
    assert int(net.best) == 1
    torch.testing.assert_close(net.prototypes(), true_centers)
    assert (net.assign(x) == y).all()


def test_forward_returns_centre_minus_input():
    x, y, centers = blobs(per=3)
    net = create_model("kmeans_net", input_shape=(20,), k=10)
    with torch.no_grad():
        net.centers.copy_(centers)
    torch.testing.assert_close(net(x) + x, centers[y], atol=1e-5, rtol=0)
    # centres of unequal norms, 0 and 4: the score is x.c - ||c||^2 / 2, [0, 2] for x = 2.5 (nearer 4) and
    # [0, -2] for x = 1.5 (nearer 0); x.c alone, or x.c - ||c||^2, would send one of them to the wrong centre
    net = create_model("kmeans_net", input_shape=(1,), k=2, beta=20.0)
    with torch.no_grad():
        net.centers.copy_(torch.tensor([[0.0], [4.0]]))
    x = torch.tensor([[2.5], [1.5]])
    torch.testing.assert_close(net(x) + x, torch.tensor([[4.0], [0.0]]), atol=1e-4, rtol=0)


def test_inits_draw_from_the_training_split_and_labels_uses_each_digit():
    x, y, _ = blobs(per=5, noise=0.5)
    data = TinyData(x, y)
    for init in ("labels", "samples", "kmeans++", "uniform"):
        torch.manual_seed(0)
        net = create_model("kmeans_net", input_shape=(20,), k=10, init=init)
        net.on_fit_start(data)
        c = net.centers.detach()
        torch.testing.assert_close(net.init_centers, c)
        if init == "uniform":
            assert 0 <= c.min() and c.max() <= 1
            continue
        rows = [int(((x - ci).abs().sum(1) == 0).nonzero()[0]) for ci in c]  # every centre is a training row
        assert len(set(rows)) == 10
        if init == "labels":
            assert [int(y[r]) for r in rows] == list(range(10))
    with pytest.raises(ConfigError, match="init=labels"):
        create_model("kmeans_net", input_shape=(20,), k=5, init="labels").on_fit_start(data)
    with pytest.raises(ConfigError, match="init"):
        create_model("kmeans_net", input_shape=(20,), init="random")


# ---- Lloyd's algorithm -----------------------------------------------------------------------------------------
def test_lloyd_worked_example_mock_final_q1():
    x = torch.tensor([[-0.01, 1.0], [1.0, 1.0], [0.01, -1.0], [-1.0, -1.0]])
    res = lloyd(x, x[[1, 2]])
    # cells {x1, x2} and {x3, x4}: means (0.495, 1) and (-0.495, -1); the next assignment is the same
    torch.testing.assert_close(res.centers, torch.tensor([[0.495, 1.0], [-0.495, -1.0]]))
    assert res.labels.tolist() == [0, 0, 1, 1] and res.iterations == 1 and res.converged
    assert res.inertia == pytest.approx(4 * 0.505 ** 2)  # each point is (0.505, 0) from its centre
    # (b) starting at the means of {x1, x4} and {x2, x3}, (-0.505, 0) and (0.505, 0), nothing moves: a worse fixed point
    other = lloyd(x, torch.tensor([[-0.505, 0.0], [0.505, 0.0]]))
    torch.testing.assert_close(other.centers, torch.tensor([[-0.505, 0.0], [0.505, 0.0]]))
    assert other.labels.tolist() == [0, 1, 1, 0]
    assert other.inertia == pytest.approx(4 * (0.495 ** 2 + 1))


def test_lloyd_matches_sklearn_from_the_same_init():
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 5, generator=g) + 4 * torch.randn(1, 5, generator=g) for _ in range(6)])
    init = kmeans_plus_plus(x, 6, g)
    ours = lloyd(x, init)
    ref = KMeans(n_clusters=6, init=init.numpy(), n_init=1, tol=0, max_iter=300).fit(x.numpy())
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-5)
    assert ours.inertia == pytest.approx(inertia(x, ours.centers), rel=1e-6)
    assert ours.inertia == pytest.approx(partition_inertia(x, ours.labels, 6), rel=1e-6)  # a fixed point


def test_empty_cell_keeps_its_centre():
    x = torch.tensor([[0.0], [1.0]])
    res = lloyd(x, torch.tensor([[0.0], [1.0], [100.0]]))
    assert res.centers[2].item() == 100.0 and res.converged


# ---- competitive learning --------------------------------------------------------------------------------------
def test_competitive_exam_replay_by_hand():
    """Mock Final Q2(b): eta = 1/2, w1 = [-1, 2], w2 = [2, -1], rounding after each update, two epochs.

    Rule: i = argmax w.x (first on ties), y = w_i.x, w_i <- w_i + y/2 (x - w_i), then round (half to even).
     1. x=[0,1]:   scores 2, -1  -> w1 = [-1,2] + 1*([0,1]-[-1,2]) = [0,1]
     2. x=[1,1]:   scores 1, 1 (tie, w1) y=1 -> w1 = [0,1] + 1/2*[1,0] = [0.5,1] -> [0,1]
     3. x=[0,-1]:  scores -1, 1  -> w2 = [2,-1] + 1/2*[-2,0] = [1,-1]
     4. x=[-1,-1]: scores -1, 0  -> winner w2 with y=0: no change (the exam's table misprints x as [-1,1])
     5. x=[0,1]:   scores 1, -1  -> w1 = [0,1] + 1/2*[0,0] = [0,1]
     6. x=[1,1]:   scores 1, 0   -> w1 = [0.5,1] -> [0,1]  (the exam writes [1/2,1/2])
     7. x=[0,-1]:  scores -1, 1  -> w2 = [1,-1] + 1/2*[-1,0] = [0.5,-1] -> [0,-1]
     8. x=[-1,-1]: scores -1, 1  -> w2 = [0,-1] + 1/2*[-1,0] = [-0.5,-1] -> [0,-1]
    """
    points = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, -1.0], [-1.0, -1.0]])
    expected = [  # (winner, y, w1, w2) after each update
        (0, 2.0, [0, 1], [2, -1]), (0, 1.0, [0, 1], [2, -1]), (1, 1.0, [0, 1], [1, -1]), (1, 0.0, [0, 1], [1, -1]),
        (0, 1.0, [0, 1], [1, -1]), (0, 1.0, [0, 1], [1, -1]), (1, 1.0, [0, 1], [0, -1]), (1, 1.0, [0, 1], [0, -1]),
    ]
    net = create_model("competitive", input_shape=(2,), k=2, eta=0.5, normalize=False, rounding=True)
    net.weight.data = torch.tensor([[-1.0, 2.0], [2.0, -1.0]])
    got = []
    for _ in range(2):
        for x in points:
            i, y = net.step(x)
            got.append((i, y, *(w.tolist() for w in net.weight.data)))
    assert got == [(i, y, [float(v) for v in w1], [float(v) for v in w2]) for i, y, w1, w2 in expected]
    # clustering interpretation: w1 = [0, 1] takes the upper points, w2 = [0, -1] the lower ones
    assert net.assign(points).tolist() == [0, 0, 1, 1]

    # the trainer's path (training_step on a batch, image by image in order) gives the same weights
    again = create_model("competitive", input_shape=(2,), k=2, eta=0.5, normalize=False, rounding=True)
    again.weight.data = torch.tensor([[-1.0, 2.0], [2.0, -1.0]])
    with torch.no_grad():
        for _ in range(2):
            again.training_step((points, torch.zeros(4)))
    assert again.weight.data.tolist() == [[0.0, 1.0], [0.0, -1.0]]


def test_competitive_only_the_winner_moves_and_normalize_keeps_unit_weights():
    net = create_model("competitive", input_shape=(3,), k=3, eta=0.3, normalize=True)
    net.weight.data = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=1)
    before = net.weight.data.clone()
    i, y = net.step(net.inputs(torch.tensor([[2.0, 0.5, 0.0]]))[0])
    assert i == 0 and y == pytest.approx(2 / math.sqrt(4.25))
    torch.testing.assert_close(net.weight.data[1:], before[1:])
    assert net.weight.data[0, 1] > 0 and net.weight.data[0].norm().item() == pytest.approx(1.0)


def test_competitive_loss_is_the_batch_error_before_its_updates():
    net = create_model("competitive", input_shape=(2,), k=2, eta=0.5, normalize=False)
    net.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    batch = (torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.zeros(2))
    # winners 0 and 1: squared errors |(2, 0) - (1, 0)|^2 = 1 and |(0, 3) - (0, 1)|^2 = 4, mean 2.5
    assert float(net.validation_step(batch)["loss"]) == pytest.approx(2.5)
    assert float(net.training_step(batch)["loss"]) == pytest.approx(2.5)
    assert float(net.validation_step(batch)["loss"]) < 2.5  # the updates came after


def test_competitive_learning_fixes_a_wrong_start():
    """All ten units start on one point away from every blob, so only the updates can pull each unit onto a blob
    of its own. Inputs and units are unit length (normalize), so a unit's target is its blob centre's direction."""
    x, y, centers = blobs(per=40)
    net = create_model("competitive", input_shape=(20,), k=10, eta=0.2)
    # the all-ones direction: 1.25 from every blob's direction and no nearer to one than another. (Farther, with
    # w.x < 0, the rule pushes a unit away; all units inside one blob leave nine blobs to one unit for good.)
    start = torch.ones(10, 20) + 1e-4 * torch.randn(10, 20, generator=torch.Generator().manual_seed(0))  # ties
    net.weight.data.copy_(torch.nn.functional.normalize(start, dim=1))
    targets = torch.nn.functional.normalize(centers, dim=1)

    def gaps():
        """Distance from each unit to its blob, units matched one-to-one to blobs (a unit serves one blob)."""
        from scipy.optimize import linear_sum_assignment

        d = torch.cdist(net.weight.data, targets)
        rows, cols = linear_sum_assignment(d.numpy())
        return d[rows, cols]

    assert gaps().min() > 1.2 and label_metrics(y, net.assign(x), 10)["acc"] < 0.7  # measured 1.25 and 0.56
    order = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            net.training_step((x[torch.randperm(len(x), generator=order)], y))
    # measured: every unit within 0.054 of its own blob's direction (eta 0.2 keeps it a short average of the
    # noisy inputs it wins); 0.15 leaves margin and is still 8x nearer than the start
    assert gaps().max() < 0.15, gaps()
    assert label_metrics(y, net.assign(x), 10)["acc"] == 1.0


# ---- Bernoulli mixture EM --------------------------------------------------------------------------------------
def binary_mixture(n=3000, d=40, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, d, generator=g).pow(3)  # mostly small pixel probabilities, a few large: MNIST-like
    z = torch.multinomial(torch.tensor([0.4, 0.3, 0.2, 0.1]), n, replacement=True, generator=g)
    return (torch.rand(n, d, generator=g) < w[z]).float(), z


def test_e_step_log_space_matches_the_direct_formula():
    x, _ = binary_mixture(n=20, d=6)
    net = create_model("bernoulli_mixture", input_shape=(6,), k=4)
    g = torch.Generator().manual_seed(1)
    net.W.copy_(torch.rand(4, 6, generator=g) * 0.9 + 0.05)
    net.log_pi.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]).log())
    r, ll = net.e_step(x)
    w, pi = net.W.double(), net.log_pi.double().exp()
    lik = (w[None] ** x.double()[:, None] * (1 - w[None]) ** (1 - x.double()[:, None])).prod(2) * pi  # [n, k]
    torch.testing.assert_close(r.double(), lik / lik.sum(1, keepdim=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(ll.double(), lik.sum(1).log(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_em_never_decreases_its_objective_and_recovers_the_clusters(smoothing):
    x, z = binary_mixture()
    torch.manual_seed(0)
    net = create_model("bernoulli_mixture", input_shape=(40,), k=4, smoothing=smoothing)
    net.on_fit_start(TinyData(x, z))
    # EM climbs log-likelihood + log prior (the prior is 0 without smoothing); each epoch reports the
    # log-likelihood of the parameters it started with, so pair it with their prior, taken before the M step
    objective, prior = [], net.log_prior()
    for epoch in range(25):
        with torch.no_grad():
            for batch in x.split(700):  # uneven batches: the statistics must still add up to full-batch EM
                net.training_step((batch, None))
            ll = net.on_epoch_end(epoch)["log_likelihood_per_image"]
        objective.append(ll * len(x) + prior)
        prior = net.log_prior()
    diffs = [b - a for a, b in zip(objective, objective[1:])]
    assert min(diffs) > -1e-5 * len(x), diffs  # float32 terms: allow 1e-5 nats per image of rounding
    assert objective[-1] > objective[0] + 1.0
    assert label_metrics(z, net.assign(x), 4)["acc"] > 0.9


def test_log_prior_is_the_beta_and_dirichlet_log_density():
    # at the start, W = 0.5 and pi = 1/2; smoothing a = 1: a (log w + log(1 - w)) = 2 log 0.5 per pixel and
    # component (two of them), plus a sum_k log pi_k = 2 log 0.5: 6 log 0.5 in all
    assert create_model("bernoulli_mixture", input_shape=(1,), k=2, smoothing=1.0).log_prior() == \
        pytest.approx(6 * math.log(0.5))
    assert create_model("bernoulli_mixture", input_shape=(1,), k=2, smoothing=0.0).log_prior() == 0.0


def test_em_m_step_is_the_formula_with_smoothing():
    x, _ = binary_mixture(n=50, d=5)
    net = create_model("bernoulli_mixture", input_shape=(5,), k=4, smoothing=0.3)
    net.W.uniform_(0.2, 0.8)
    r, _ = net.e_step(x)
    net.accumulate(x[:20])
    net.accumulate(x[20:])
    net.m_step()
    rs = r.double().sum(0)
    torch.testing.assert_close(net.W.double(), ((r.double().T @ x.double()) + 0.3) / (rs[:, None] + 0.6),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(net.log_pi.double().exp(), (rs + 0.3) / (50 + 4 * 0.3), atol=1e-6, rtol=0)
    assert net.stat_n.item() == 0


def test_mixture_refuses_grey_images():
    with pytest.raises(ConfigError, match="binarize"):
        create_model("bernoulli_mixture", input_shape=(3,)).on_fit_start(TinyData(torch.rand(10, 3), None))


# ---- shared metrics --------------------------------------------------------------------------------------------
def test_metrics_of_a_relabelled_partition_are_perfect():
    y = torch.arange(5).repeat(20)
    pred = (y + 2) % 5  # same partition, other names
    m = label_metrics(y, pred, 7)  # 7 clusters, two of them empty
    assert m["acc"] == 1.0 and m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["empty_clusters"] == 2
    table = contingency(y, pred, 5, 7)
    assert table.sum() == 100 and table[0, 2] == 20


def test_hungarian_accuracy_beats_majority_vote_only_when_one_to_one():
    # two clusters both mostly digit 0: majority vote would count both; one-to-one matching cannot
    table = torch.tensor([[40, 30], [10, 20]])
    assert hungarian_accuracy(table) == pytest.approx((40 + 20) / 100)
    # three labels, two clusters: the third label's 5 items have no cluster left and count wrong, 10 of 15
    assert hungarian_accuracy(torch.tensor([[5, 0], [0, 5], [3, 2]])) == pytest.approx(10 / 15)
    # ||(0, 0) - (1, 0)||^2 = ||(1, 1) - (1, 0)||^2 = 1, with ||x||^2 given or not
    x, c = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert sq_distances(x, c).tolist() == [[1.0], [1.0]]
    assert sq_distances(x, c, x.pow(2).sum(1, keepdim=True)).tolist() == [[1.0], [1.0]]


def test_evaluate_reports_inertia_metrics_and_sklearn_on_the_same_images():
    x, y, centers = blobs(per=30, noise=0.2)
    torch.manual_seed(0)
    net = create_model("kmeans_net", input_shape=(20,), init="kmeans++")
    net.on_fit_start(TinyData(x, y))
    out = net.evaluate(TinyData(x, y), Ctx())
    assert out["n_images"] == 300 and out["empty_clusters"] == 0
    assert out["inertia"] == pytest.approx(inertia(x, net.centers.detach()))
    assert out["lloyd_from_init"]["inertia"] <= inertia(x, net.init_centers) + 1e-6
    assert out["sklearn_kmeans"]["inertia"] == pytest.approx(out["lloyd_from_init"]["inertia"], rel=1e-4)
    assert out["inertia_vs_sklearn"] == pytest.approx(out["inertia"] / out["sklearn_kmeans"]["inertia"] - 1)
    ctx = Ctx()
    ctx.baselines = False  # zoo eval --no-baselines: the model's own numbers, no reference runs
    own = net.evaluate(TinyData(x, y), ctx)
    assert own["inertia"] == out["inertia"] and own["acc"] == out["acc"]
    assert not {"sklearn_kmeans", "inertia_vs_sklearn", "lloyd_from_init"} & set(own)


def test_artifacts_write_the_table_and_the_centres(tmp_path):
    x, y, _ = blobs(per=6, d=16)
    net = create_model("kmeans_net", input_shape=(1, 4, 4), init="labels")
    data = TinyData(x.reshape(-1, 1, 4, 4), y)
    net.on_fit_start(data)
    out = net.artifacts(data, tmp_path)
    rows = list(csv.reader(open(tmp_path / "cluster_table.csv")))
    assert rows[0][0] == "digit" and sum(int(v) for r in rows[1:] for v in r[1:]) == 60
    assert out["centers"].images.shape == (10, 1, 4, 4)
    assert hasattr(out["cluster_table"], "savefig")
    shown = {}

    class Writer:  # what TensorBoard receives
        def add_image(self, tag, image, step):
            shown[tag] = image.shape

        def add_figure(self, tag, figure, step):
            shown[tag] = "figure"

    write({"epoch_centers": net.visuals(None)["centers"], **out}, Writer(), 0, tmp_path)  # as RunLog.artifacts
    # the 10 centres in one row, cluster 0 to 9 as the table's columns, as centers.png (a 4 x 3 grid before)
    assert shown["centers"] == shown["epoch_centers"] == (3, 4 + 2 * 2, 10 * (4 + 2) + 2)
    assert Image.open(tmp_path / "centers.png").size == (10 * (4 + 2) + 2, 4 + 2 * 2)


def test_markdown_table_has_one_rule_per_column_and_escapes_pipes():
    # Markdown needs the rule row to have as many cells as the header (here 2); a | inside a cell would split it
    assert table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |"


# ---- through the real trainer on real MNIST ---------------------------------------------------------------------
def test_kmeans_config_trains_with_the_trainer(mnist_root, tmp_path):
    cfg = load_config("configs/kmeans.yaml", [f"data.root={mnist_root}", "data.limit=3000", "train.epochs=3",
                                              "train.device=cpu"])
    trainer = fit(cfg, tmp_path / "km")
    epochs = trainer.metrics["epochs"]
    assert epochs[-1]["train/inertia_per_image_full"] < epochs[0]["train/inertia_per_image_full"]
    assert epochs[-1]["train/empty_clusters"] == 0
    rows = list(csv.reader(open(tmp_path / "km" / "cluster_table.csv")))
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 60000  # the table covers all 60k training images
    assert (tmp_path / "km" / "centers.png").exists()
    assert sorted(p.name for p in (tmp_path / "km" / "samples").iterdir())[0] == "centers_epoch000.png"


def resume_mid_epoch(config, over, tmp_path, monkeypatch):
    """An uninterrupted run, and the same run stopped halfway through its second epoch (``train.max_steps``) then
    resumed: asserts the stop fell inside the epoch, that the resumed run trained only the batches left, and that
    it ends with every parameter and buffer of the uninterrupted one and logged the same numbers on the way.
    Returns (full, resumed, the stopped run's checkpoint)."""
    # every step logged, so the logs compare step by step (a log window's running mean is not checkpointed: a
    # resume inside a window would log the mean of the steps after it only)
    over = [*over, "train.log_every=1"]
    full = fit(load_config(config, over), tmp_path / "full")
    per_epoch = full.metrics["epochs"][0]["step"]
    stop = per_epoch + per_epoch // 2
    assert per_epoch >= 2 and full.metrics["step"] > stop
    fit(load_config(config, [*over, f"train.max_steps={stop}"]), tmp_path / "part")
    ck = ckpt_io.load(tmp_path / "part" / "checkpoints" / "last.pt")
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (stop, 1, per_epoch // 2)  # saved mid-epoch
    steps, real_step = [], Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, batch: steps.append(1) or real_step(self, batch))
    resumed = fit(load_config(config, over), tmp_path / "part", resume=True)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    # replaying the epoch from its first batch (or the run from scratch) could end on the same numbers: count
    assert len(steps) == full.metrics["step"] - stop
    assert_same_state(resumed.model, full.model)
    assert resumed.metrics["history"] == full.metrics["history"] and resumed.metrics["epochs"] == full.metrics["epochs"]
    assert any(not torch.equal(v, full.model.state_dict()[k]) for k, v in ck["model"].items())  # work was left
    return full, resumed, ck


def test_mixture_resumes_mid_epoch_exactly(mnist_root, tmp_path, monkeypatch, one_thread):
    over = [f"data.root={mnist_root}", "data.limit=2000", "train.epochs=2", "train.batch_size=500",
            "train.device=cpu"]
    full, _, ck = resume_mid_epoch("configs/bernoulli_mixture.yaml", over, tmp_path, monkeypatch)
    assert ck["model"]["stat_n"] == 1000  # half an EM iteration's E-step statistics travel in the checkpoint
    lls = [e["train/log_likelihood_per_image"] for e in full.metrics["epochs"]]
    assert lls[1] > lls[0]


def test_kmeans_resumed_run_keeps_logging_its_full_data_cost(mnist_root, tmp_path, monkeypatch, one_thread):
    over = [f"data.root={mnist_root}", "data.limit=2000", "train.epochs=2", "train.device=cpu"]
    full, resumed, _ = resume_mid_epoch("configs/kmeans.yaml", over, tmp_path, monkeypatch)
    # the stop came after the first epoch's full-data cost was logged: the resumed run logs the second one
    cost = lambda t: [e.get("train/inertia_per_image_full") for e in t.metrics["epochs"]]  # noqa: E731
    assert None not in cost(resumed) and cost(resumed) == cost(full)


def test_kmeans_restarts_resume_mid_epoch_exactly(mnist_root, tmp_path, monkeypatch, one_thread):
    """The Lloyd-form config (normalize: cluster, 8 restarts side by side, the best one kept in a buffer) on
    batches smaller than the data, so that an epoch has an inside to stop in."""
    over = [f"data.root={mnist_root}", "data.limit=2000", "train.epochs=2", "train.batch_size=500",
            "train.device=cpu"]
    resume_mid_epoch("configs/kmeans_lloyd.yaml", over, tmp_path, monkeypatch)


def test_competitive_resumes_mid_epoch_exactly(mnist_root, tmp_path, monkeypatch, one_thread):
    """The rule updates image by image in the trainer's order, and eta decays after each epoch (a buffer)."""
    over = [f"data.root={mnist_root}", "data.limit=1000", "train.epochs=2", "train.device=cpu"]
    _, _, ck = resume_mid_epoch("configs/competitive.yaml", over, tmp_path, monkeypatch)
    assert ck["model"]["eta"] == pytest.approx(0.05 * 0.5)  # the first epoch's decay is in the checkpoint


def assert_same_state(a, b):
    """Every parameter and buffer (persistent or not), bit for bit."""
    def tensors(m):
        return {**m.state_dict(), **dict(m.named_parameters()), **dict(m.named_buffers())}

    sa, sb = tensors(a), tensors(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---- image compression -----------------------------------------------------------------------------------------
def test_image(h=512, w=512, seed=0) -> torch.Tensor:
    """A smooth colour field with a disc and a little noise: many distinct colours, no two alike."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).float()
    img = torch.stack([0.5 + 0.5 * torch.sin(6 * xx + 2 * yy), yy, 0.1 + 0.8 * disc], -1)
    img = img + 0.02 * torch.randn(h, w, 3, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


test_image.__test__ = False  # a helper, not a test


def test_compress_generated_image(tmp_path):
    src = tmp_path / "in.png"
    save_rgb(test_image(), src)
    mses = []
    for k in (2, 4, 8, 16):
        out = tmp_path / f"k{k}.png"
        r = compress_file(src, k, out)
        img = load_rgb(out)
        assert img.shape == (512, 512, 3)
        assert torch.unique(img.reshape(-1, 3), dim=0).shape[0] <= k
        assert r["compression_factor"] == 24 / math.log2(k)
        assert r["mse"] == pytest.approx(((img.float() - test_image().float()) / 255).pow(2).mean().item(), rel=1e-6)
        assert r["seconds"] < 30  # "a few seconds" with margin for a loaded 2-core machine
        mses.append(r["mse"])
    assert mses == sorted(mses, reverse=True) and mses[-1] < mses[0] / 4
    lloyd16 = compress(test_image(), 16, method="lloyd")
    assert r["mse"] < 1.2 * lloyd16["mse"]  # the network's SGD gets close to Lloyd's fixed point


def test_compress_command(tmp_path, capsys):
    src = tmp_path / "in.png"
    save_rgb(test_image(64, 64), src)
    assert main(["compress", str(src), "-k", "4", "-o", str(tmp_path / "o.png"), "--method", "lloyd"]) == 0
    printed = capsys.readouterr().out
    assert "12" in printed and "mse" in printed.lower() and (tmp_path / "o.png").exists()
    assert main(["compress", str(tmp_path / "missing.png"), "-k", "4", "-o", str(tmp_path / "o.png")]) == 2
    assert main(["compress", str(src), "-k", "1", "-o", str(tmp_path / "o.png")]) == 2


def test_compress_images_of_few_colours_and_of_16_bits(tmp_path):
    from PIL import Image

    two = tmp_path / "two.png"  # 2 distinct colours, k 4: k-means++ runs out of distinct points
    save_rgb(torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8).repeat(8, 1).reshape(4, 4, 3), two)
    for method in ("net", "lloyd"):
        r = compress_file(two, 4, tmp_path / "o.png", method)
        assert r["mse"] == 0 and r["colours_used"] == 2, method
    deep = (np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)  # 16-bit grey: 0 .. 65520
    Image.fromarray(deep).save(tmp_path / "g16.png")
    grey = load_rgb(tmp_path / "g16.png")[..., 0].numpy().astype(float)
    assert np.abs(grey - deep / 257).max() <= 0.5  # scaled to 8 bits, not clipped at 255


@pytest.mark.parametrize("method", ["lloyd", "net"])
def test_palette_rounds_the_centres_to_the_nearest_level(method):
    """Two colours, k 2: the centres are the two colours, level v as v/255. Computed, they come back a few ulps
    off (Lloyd's gives 97 as 96.99998 here): truncating would repaint that channel a level darker."""
    a, b = torch.tensor([9, 17, 34], dtype=torch.uint8), torch.tensor([68, 97, 113], dtype=torch.uint8)
    img = torch.stack([a] * 32 + [b] * 32).reshape(8, 8, 3)
    r = compress(img, 2, method)
    assert r["mse"] == 0 and torch.equal(r["image"], img)


def test_psnr_is_ten_log10_of_peak_squared_over_mse():
    img = (torch.arange(16 * 16 * 3) % 251).to(torch.uint8).reshape(16, 16, 3)
    r = compress(img, 4, "lloyd")
    mse_levels = (r["image"].double() - img.double()).pow(2).mean().item()  # in 8-bit levels: peak 255
    assert r["psnr_db"] == pytest.approx(10 * math.log10(255 ** 2 / mse_levels), rel=1e-6)
    assert r["mse"] == pytest.approx(mse_levels / 255 ** 2, rel=1e-6)


def test_float_images_in_0_1_are_scaled_to_8_bits(tmp_path):
    grey = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)  # a float TIFF ("F" mode) in [0, 1]
    Image.fromarray(grey, "F").save(tmp_path / "f.tiff")
    got = load_rgb(tmp_path / "f.tiff")[..., 0].numpy().astype(float)
    assert np.abs(got - grey * 255).max() <= 0.5  # x 255 and rounded, not clipped to 0 and 1
