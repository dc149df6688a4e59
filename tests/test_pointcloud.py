"""Point clouds (issue 12): MNIST digits as point sets, the exam's network (Midterm Q7) and set abstraction.

Permutation invariance of both networks (part a), which of the exam's four grouping schemes are invariant
(part b), FPS against a brute-force Algorithm 1 (part c), kNN equivariance, train-only augmentation through the
trainer, and a short `zoo train` + `zoo eval` run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.config import load_config
from zoo.data import build_data
from zoo.models.pointnet import (EXAM_GROUPINGS, PointNet, SetAbstraction, canonical_order, exam_global_feature,
                                 farthest_point_sample, gather_points, knn_group, square_distances)
from zoo.registry import create_model
from zoo.trainer import fit

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest.py


@pytest.fixture(scope="module")
def digits(mnist_root):
    """300 training digits as clouds (all augmentations off), built once for the module."""
    return build_data("mnist_points", root=mnist_root, limit=300, val_size=100, rotate=0.0, scale=0.0,
                      jitter=0.0, dropout=0.0).setup()


def permuted(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each cloud of x [B, N, C] with its points in its own random order."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([c[torch.randperm(len(c), generator=g)] for c in x])


def random_clouds(b=4, n=60, seed=0) -> torch.Tensor:
    return torch.rand(b, n, 2, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- data --------------------------------------------------------------------------------------------------
def test_clouds_are_the_bright_pixels_centred_and_scaled_on_mnists_own_splits(digits, mnist_root):
    mnist = build_data("mnist", root=mnist_root, limit=300, val_size=100).setup()
    for split in ("train", "val", "test"):
        assert torch.equal(digits.tensors(split)[1], mnist.tensors(split)[1])  # same images, same order
    x = digits.tensors("train")[0]
    assert x.shape == (300, 256, 2) and digits.info["input_shape"] == (256, 2)
    for i in range(0, 300, 37):  # a slow reference for a few digits: the candidate pixels in (x right, y up)
        img = mnist.tensors("train")[0][i, 0]
        rows, cols = torch.nonzero(img * 255 > 0.5 * 255 + 1e-3, as_tuple=True)  # stored as k/255
        pix = torch.stack([cols.float(), 27 - rows.float()], 1)
        centre = pix.mean(0)
        radius = (pix - centre).norm(dim=1).max()
        back = torch.round(x[i] * radius + centre)
        assert (back - x[i] * radius - centre).abs().max() < 1e-3  # on the pixel grid after undoing the scaling
        chosen = {tuple(p) for p in back.tolist()}
        assert chosen <= {tuple(p) for p in pix.tolist()}
        assert len(chosen) == min(len(pix), 256)  # without replacement; every pixel when there are fewer
    again = build_data("mnist_points", root=mnist_root, limit=300, val_size=100).setup()
    assert torch.equal(again.tensors("train")[0], x)  # seeded: the same clouds every time


def test_weighted_sampling_prefers_bright_pixels_and_intensity_is_a_feature(mnist_root):
    kw = dict(root=mnist_root, limit=200, val_size=10, threshold=0.05, num_points=32, intensity=True)
    plain = build_data("mnist_points", **kw).setup().tensors("train")[0]
    weighted = build_data("mnist_points", weighted=True, **kw).setup().tensors("train")[0]
    assert plain.shape == (200, 32, 3) and (plain[..., 2] > 0.05).all()
    assert weighted[..., 2].mean() > plain[..., 2].mean() + 0.03


# ---- augmentation: the training split only, through the trainer ------------------------------------------------
def test_rotation_augmentation_reaches_the_training_split_only(mnist_root, tmp_path, monkeypatch):
    seen = []
    real_step = PointNet.training_step

    def recording(self, batch, optimizer="main"):
        seen.append((self.training, batch[0].clone()))
        return real_step(self, batch, optimizer)

    monkeypatch.setattr(PointNet, "training_step", recording)  # validation_step calls it too, in eval mode
    cfg = load_config({"name": "rot", "model": {"name": "pointnet", "widths": [8], "head": []},
                       "data": {"name": "mnist_points", "root": mnist_root, "limit": 128, "val_size": 100,
                                "rotate": 90.0, "scale": 0.0, "jitter": 0.0, "dropout": 0.0},
                       "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "seed": 5}})
    tr = fit(cfg, tmp_path / "run")
    stored = tr.data.tensors("train")[0][tr.data.epoch_order(5, 0)]
    train = torch.cat([x for training, x in seen if training])
    val = [x for training, x in seen if not training]
    assert len(train) == 128 and val
    for v in val:  # validation sees the stored clouds: the val split in order, then probe batches of it
        assert torch.equal(v, tr.data.tensors("val")[0][:len(v)])
    rot = torch.linalg.lstsq(stored, train).solution  # per cloud: train = stored @ R
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(2).expand_as(rot), atol=1e-4)  # rotations
    angles = torch.rad2deg(torch.atan2(rot[:, 0, 1], rot[:, 0, 0]))
    assert angles.abs().max() <= 90.01 and angles.std() > 20  # spread over ±90°, not one fixed angle
    with pytest.raises(ValueError, match="training split only"):
        next(tr.data.batches("val", 8, augment=True))


def test_augmentation_draws_only_from_the_generator_it_is_given(digits):
    d = build_data("mnist_points", limit=10, rotate=30.0, scale=0.2, jitter=0.02, dropout=0.3)
    d.splits = digits.splits
    batch = next(digits.batches("train", 32))
    a, b = (d.augment(batch, torch.Generator().manual_seed(1))[0] for _ in range(2))
    torch.manual_seed(123)  # the global stream plays no part
    c = d.augment(batch, torch.Generator().manual_seed(1))[0]
    other = d.augment(batch, torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, other)
    assert not torch.equal(a, batch[0])


def test_rotation_and_scale_go_both_ways(digits):
    """rotate 30: angles uniform in [-30°, 30°]; scale 0.2: factors uniform in [0.8, 1.2]. Of 300 clouds about 75
    fall in each outer quarter (below -15° or above 15°, below 0.9 or above 1.1): both ways, not one."""
    batch = next(digits.batches("train", 300))
    x = batch[0]
    rotating = build_data("mnist_points", limit=10, rotate=30.0, scale=0.0, jitter=0.0, dropout=0.0)
    rot = torch.linalg.lstsq(x, rotating.augment(batch, torch.Generator().manual_seed(0))[0]).solution
    angles = torch.rad2deg(torch.atan2(rot[:, 0, 1], rot[:, 0, 0]))
    assert angles.abs().max() <= 30.01 and angles.min() < -15 and angles.max() > 15
    scaling = build_data("mnist_points", limit=10, rotate=0.0, scale=0.2, jitter=0.0, dropout=0.0)
    factor = scaling.augment(batch, torch.Generator().manual_seed(0))[0].norm(dim=(1, 2)) / x.norm(dim=(1, 2))
    assert factor.min() >= 0.8 - 1e-5 and factor.max() <= 1.2 + 1e-5 and factor.min() < 0.9 and factor.max() > 1.1


# ---- the exam's part (a): the global feature is a symmetric function of the points ----------------------------
@pytest.mark.parametrize("pool", ["avg", "max", "both"])
def test_pointnet_feature_and_prediction_are_permutation_invariant(digits, pool):
    torch.manual_seed(0)
    model = create_model("pointnet", digits.info, widths=[16, 32], pool=pool, head=[16]).eval()
    x = digits.tensors("val")[0][:20]
    xp = permuted(x)
    assert not torch.equal(x, xp)
    with torch.no_grad():
        assert torch.allclose(model.features(xp), model.features(x), atol=1e-5)
        assert torch.allclose(model(xp), model(x), atol=1e-5)
        assert torch.equal(model(xp).argmax(1), model(x).argmax(1))
        swapped = x.clone()
        swapped[:, [0, 1]] = x[:, [1, 0]]  # the exam's swap of the first two points
        assert torch.allclose(model.features(swapped), model.features(x), atol=1e-5)


def test_set_abstraction_is_permutation_invariant(digits):
    torch.manual_seed(0)
    model = create_model("pointnet_sa", digits.info, centroids=[32, 8], k=8, widths=[[16], [16]],
                         global_widths=[32], head=[16]).eval()
    x = digits.tensors("val")[0][:12]
    with torch.no_grad():
        # digits sit on a pixel grid (distance ties everywhere): canonical order makes the result exact
        assert torch.equal(model.features(permuted(x)), model.features(x))
        assert torch.equal(model(permuted(x, 1)).argmax(1), model(x).argmax(1))
        # continuous clouds have no ties: FPS from the point farthest from the mean and k-NN groups are
        # invariant without the canonical order too
        c = random_clouds(6, 64)
        assert torch.allclose(model.features(permuted(c), canonical=False), model.features(c, canonical=False),
                              atol=1e-5)
    # the exam's random start (here: index 0) would not be: the centroids depend on the order
    first = lambda z: torch.zeros(len(z), dtype=torch.long)  # noqa: E731
    pick = lambda z, start: {tuple(p) for p in z[0, farthest_point_sample(z, 16, start)[0]].tolist()}  # noqa: E731
    c = random_clouds(1, 64, seed=3)
    cp = permuted(c)
    assert pick(cp, None) == pick(c, None)
    assert pick(cp, first(cp)) != pick(c, first(c))


@pytest.mark.parametrize("name,kw", [("pointnet", {"widths": [16, 32], "head": [16]}),
                                     ("pointnet_sa", {"centroids": [32, 8], "k": 8, "widths": [[16], [16]],
                                                      "global_widths": [32], "head": [16]})])
def test_the_grey_level_feature_keeps_both_networks_permutation_invariant(mnist_root, name, kw):
    """Both shipped configs feed (x, y, grey level): the grey level travels with its point."""
    grey = build_data("mnist_points", root=mnist_root, limit=300, val_size=100, intensity=True, rotate=0.0,
                      scale=0.0, jitter=0.0, dropout=0.0).setup()
    torch.manual_seed(0)
    model = create_model(name, grey.info, **kw).eval()
    x = grey.tensors("val")[0][:12]
    assert x.shape[-1] == 3 and x[..., 2].std() > 0.05  # grey levels vary inside a cloud
    with torch.no_grad():
        assert torch.allclose(model.features(permuted(x)), model.features(x), atol=1e-5)
        assert torch.equal(model(permuted(x, 1)).argmax(1), model(x).argmax(1))
        shifted = x.clone()
        shifted[..., 2] = 1 - shifted[..., 2]  # the feature is read: other grey levels, other output
        assert not torch.allclose(model.features(shifted), model.features(x), atol=1e-3)


def exam_pointnet(pool: str) -> PointNet:
    """The exam's Figure 4 with W1 = ones [2, 3], no bias, no batch norm, a linear head: F is hand-checkable."""
    model = PointNet((4, 2), 10, widths=(3,), pool=pool, head=(), batch_norm=False).eval()
    with torch.no_grad():
        model.point_mlp.net[0].weight.fill_(1.0)
        model.point_mlp.net[0].bias.zero_()
    return model


@pytest.mark.parametrize("pool,expected", [("avg", [1.5] * 3), ("max", [4.0] * 3), ("both", [1.5] * 3 + [4.0] * 3)])
def test_pointnet_pools_the_relu_features_by_their_average_or_max(pool, expected):
    # each of the 3 features of a point is relu(x + y): relu(1, 1, 4, -2) = (1, 1, 4, 0);
    # average 6 / 4 = 1.5 (the exam's F; a sum would give 6), max 4; "both" is [average, max]
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, -1.0]]])
    with torch.no_grad():
        assert exam_pointnet(pool).features(x)[0].tolist() == expected


# ---- the exam's part (b): which grouping schemes keep F invariant ----------------------------------------------
def test_exam_grouping_schemes_sorted_by_distance_are_invariant_input_order_is_not():
    x = random_clouds(1, 30, seed=4)[0]
    w1 = torch.randn(2 * 31, 16, generator=torch.Generator().manual_seed(1))  # wide enough for every scheme
    invariant = {}
    for name, scheme in EXAM_GROUPINGS.items():
        feats = [exam_global_feature(scheme(x[p], m=3, r=0.6), w1)
                 for p in [torch.arange(30)] + [torch.randperm(30, generator=torch.Generator().manual_seed(s))
                                               for s in range(5)]]
        invariant[name] = all(torch.allclose(f, feats[0], atol=1e-5) for f in feats)
    assert invariant == {"knn_by_distance": True, "knn_by_input_order": False, "radius_by_distance": True,
                         "radius_farthest_distance": True}
    assert EXAM_GROUPINGS["radius_by_distance"](x, r=0.6).shape == (30, 2 * 31)  # the exam's 2(n + 1)
    assert EXAM_GROUPINGS["radius_farthest_distance"](x, r=0.6).shape == (30, 3)


# ---- part (c): farthest-point sampling, and the neighbour search --------------------------------------------
def brute_force_fps(points: list[list[float]], m: int, start: int) -> list[int]:
    """Algorithm 1 with explicit sets: move the remaining point whose nearest sampled point is farthest."""
    sampled, remaining = [start], set(range(len(points))) - {start}
    dist = lambda a, b: sum((p - q) ** 2 for p, q in zip(points[a], points[b]))  # noqa: E731
    while len(sampled) < m:
        best = max(remaining, key=lambda r: min(dist(r, s) for s in sampled))
        sampled.append(best)
        remaining.remove(best)
    return sampled


def test_fps_matches_a_brute_force_reference():
    x = random_clouds(5, 40, seed=7)
    idx = farthest_point_sample(x, 15)
    start = (x - x.mean(1, keepdim=True)).pow(2).sum(-1).argmax(1)
    for b in range(5):
        assert idx[b].tolist() == brute_force_fps(x[b].tolist(), 15, int(start[b]))
    given = torch.tensor([3, 0, 39, 7, 12])
    assert [farthest_point_sample(x, 10, given)[b].tolist() for b in range(5)] == \
        [brute_force_fps(x[b].tolist(), 10, int(given[b])) for b in range(5)]


@pytest.mark.parametrize("radius", [None, 0.3])
def test_knn_grouping_is_permutation_equivariant(radius):
    x = random_clouds(3, 50, seed=2)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    idx = knn_group(x, x, 8, radius)
    idx_p = knn_group(x[:, perm], x[:, perm], 8, radius)
    assert torch.equal(perm[idx_p], idx[:, perm])  # point i of the permuted cloud is point perm[i]
    d = square_distances(x, x)
    assert torch.equal(idx[..., 0], torch.arange(50).expand(3, 50))  # nearest first: the point itself
    if radius is None:
        assert (d.gather(2, idx).diff(dim=2) >= 0).all()
    else:  # neighbours beyond the radius are replaced by the nearest one, the point itself
        assert (d.gather(2, idx) <= radius ** 2).all() and (idx == idx[..., :1]).any()


def test_set_abstraction_features_are_translation_invariant():
    """Each group is seen in its centroid's coordinates, so moving the whole cloud changes no feature."""
    torch.manual_seed(0)
    level = SetAbstraction(centroids=8, k=6, in_features=0, widths=[16, 16], radius=None).eval()
    c = random_clouds(3, 40, seed=8)
    shift = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        centres, feats, groups = level(c, None)
        centres2, feats2, groups2 = level(c + shift, None)
    assert torch.equal(groups2, groups)  # FPS and k-NN use differences only: the same centroids and groups
    assert torch.allclose(centres2, centres + shift, atol=1e-6)
    assert torch.allclose(feats2, feats, atol=1e-5)
    assert (feats != 0).any()  # all-zero features would make the comparison vacuous


def test_radius_grouping_feeds_offsets_divided_by_the_radius():
    """``group: radius``: the mini-PointNet sees (neighbour - centroid) / r, inside the unit disk."""
    torch.manual_seed(0)
    r = 0.3
    level = SetAbstraction(centroids=8, k=16, in_features=0, widths=[8], radius=r).eval()
    seen = []
    level.mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    c = random_clouds(2, 64, seed=9)
    with torch.no_grad():
        centres, _, groups = level(c, None)
    offsets = gather_points(c, groups) - centres[:, :, None]  # [B, M, k, 2]; beyond r: the centroid itself, 0
    assert torch.allclose(seen[0], offsets / r, atol=1e-6)
    assert (seen[0].norm(dim=-1) <= 1 + 1e-6).all()


def test_distances_stay_fp32_under_bf16_autocast():
    x = random_clouds(2, 200, seed=5) * 1.001  # bf16 would round these 3-digit differences
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = square_distances(x, x)
        idx = knn_group(x, x, 16)
        fps = farthest_point_sample(x, 32)
    assert d.dtype == torch.float32
    assert torch.equal(idx, knn_group(x, x, 16)) and torch.equal(fps, farthest_point_sample(x, 32))


def test_canonical_order_is_the_same_for_every_ordering():
    x = torch.randint(0, 5, (3, 40, 2)).float()  # grid points with duplicates, like digits
    assert torch.equal(canonical_order(permuted(x)), canonical_order(x))
    assert torch.equal(canonical_order(x).sort(1).values, x.sort(1).values)  # a reordering, nothing else


# ---- configs: sizes are bounded, errors name the key --------------------------------------------------------
@pytest.mark.parametrize("config,override,needle", [
    ("pointcloud", "model.widths=[64,100000000]", "widths[1]"),
    ("pointcloud", "model.head=[0]", "head[0]"),
    ("pointcloud", "data.num_points=100000", "data.num_points"),
    ("pointcloud_sa", "model.centroids=[128,64,32,16]", "centroids"),
    ("pointcloud_sa", "model.centroids=[64,128]", "centroids[1]"),
    ("pointcloud_sa", "data.num_points=32", "data.num_points"),
    ("pointcloud_sa", "model.k=100000", "model.k"),
    ("pointcloud_sa", "model.widths=[[32]]", "widths"),
    ("pointcloud_sa", "model.group=ball", "model.group"),
])
def test_huge_or_inconsistent_sizes_are_refused_before_any_data(config, override, needle, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", str(ROOT / "configs" / f"{config}.yaml"), override, f"data.root={tmp_path / 'none'}",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "none").exists()


# ---- end to end -----------------------------------------------------------------------------------------------
def test_zoo_train_and_eval_beat_chance(mnist_root, tmp_path, capsys):
    run = tmp_path / "pc"
    overrides = [f"data.root={mnist_root}", "data.limit=640", "data.val_size=2000", "data.num_points=96",
                 "model.widths=[32,64]", "model.head=[32]", "train.epochs=3", "train.batch_size=32",
                 "train.optimizer.lr=3e-3", "train.device=cpu"]
    assert main(["train", str(ROOT / "configs" / "pointcloud.yaml"), *overrides, "--run-dir", str(run), "--quiet"]) == 0
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert epochs[-1]["val/acc"] > 0.5 and epochs[-1]["val/acc"] > epochs[0]["val/acc"] - 0.05  # chance: 0.1
    assert (run / "samples" / "point_clouds_epoch002.png").stat().st_size > 1000  # the per-epoch figure
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--device", "cpu", "--views", "3", "--no-baselines"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_test"] == 10000 and out["test_accuracy"] > 0.5 and out["num_parameters"] > 1000
    assert out["views"] == 3 and out["test_accuracy_voted"] > 0.5 and out["test_accuracy_voted"] != out["test_accuracy"]
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "test_accuracy_voted" not in out  # no voting unless asked
    assert 0.1 < out["baseline_nearest_centroid_histogram"] < 1 and 0.1 < out["baseline_logistic_histogram"] < 1


def test_voting_averages_the_log_probabilities_of_rotated_copies(digits):
    """predict(views=V) is the mean log-softmax over copies rotated by -θ..θ; one view is the cloud itself."""
    torch.manual_seed(0)
    model = PointNet((256, 2), 10, widths=(16, 32), head=(16,)).eval()
    x = digits.tensors("test")[0][:8]
    assert torch.allclose(model.predict(x), model(x).log_softmax(-1), atol=1e-6)
    expected = 0
    for deg in (-15.0, -5.0, 5.0, 15.0):
        a = torch.deg2rad(torch.tensor(deg))
        rot = torch.stack([torch.stack([a.cos(), a.sin()]), torch.stack([-a.sin(), a.cos()])])
        expected = expected + model(x @ rot).log_softmax(-1) / 4
    assert torch.allclose(model.predict(x, views=4, max_degrees=15.0), expected, atol=1e-5)
    assert not torch.allclose(expected, model(x).log_softmax(-1), atol=1e-3)  # the copies really differ


def test_views_on_a_model_that_does_not_vote_is_one_line_exit_2(tmp_path, capsys, mnist_root):
    run = tmp_path / "lin"
    assert main(["train", str(ROOT / "configs" / "instance_noise.yaml"), "train.epochs=1", "--run-dir", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--views", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--views" in err[0] and "drop --views" in err[0]


def test_set_abstraction_trains(mnist_root, tmp_path):
    cfg = load_config({"name": "sa", "model": {"name": "pointnet_sa", "centroids": [24, 8], "k": 8,
                                               "widths": [[16], [32]], "global_widths": [64], "head": [32],
                                               "group": "radius", "radius": [0.3, 0.6]},
                       "data": {"name": "mnist_points", "root": mnist_root, "limit": 640, "num_points": 64},
                       "train": {"epochs": 4, "batch_size": 16, "device": "cpu", "log_every": 5,
                                 "optimizer": {"name": "adam", "lr": 3e-3}}})
    tr = fit(cfg, tmp_path / "sa")
    x, y = tr.data.tensors("test")
    assert tr.model.accuracy(x[:500], y[:500]) > 0.4  # chance: 0.1; about 0.7 after these 160 steps
