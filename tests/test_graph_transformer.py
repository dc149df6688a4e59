"""Graph self-attention transformer (issue 11): locality, symmetry, the two implementations against each other
and against PyTorch Geometric, the disturbance detectors, the superpixel builder, and a short training run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import skip_or_fail
from zoo.cli import main
from zoo.data import build_data, create_data
from zoo.data.graphs import adjacency_to_neighbours, collate_graphs
from zoo.registry import create_model

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
MODES = ("dense", "edges")


def disturbance(**kw):
    sizes = {"train_graphs": 600, "val_graphs": 50, "test_graphs": 50, "n_nodes": 30, "mean_degree": 4.0}
    return build_data("graph_disturbance", **{**sizes, **kw}).setup()


def ragged_batch(seed=0, sizes=(9, 14, 5, 12)):
    """Random geometric graphs of different sizes, padded: what a batch of superpixel graphs looks like."""
    g = torch.Generator().manual_seed(seed)
    n = max(sizes)
    x, pos = torch.randn(len(sizes), n, 3, generator=g), torch.rand(len(sizes), n, 2, generator=g)
    adj = (torch.cdist(pos, pos) < 0.45) & ~torch.eye(n, dtype=torch.bool)
    real = torch.arange(n) < torch.tensor(sizes)[:, None]
    adj &= real[:, :, None] & real[:, None, :]
    return collate_graphs(x * real[..., None], pos, adjacency_to_neighbours(adj), torch.tensor(sizes),
                          torch.tensor([0, 1, 0, 1]), torch.zeros(len(sizes), n, dtype=torch.bool))


def model(info=None, **kw):
    torch.manual_seed(0)
    info = info or {"node_features": 3, "coord_dim": 2, "num_classes": 2, "fixed_nodes": None}
    return create_model("graph_transformer", info, **{"dim": 16, "heads": 4, "layers": 2, **kw}).eval()


def adjacency(batch):
    x, _, edges, mask, *_ = batch
    b, n = mask.shape
    adj = torch.zeros(b * n, n, dtype=torch.bool)
    adj[edges[1], edges[0] % n] = True
    return adj.view(b, n, n)


def one_graph(adj: torch.Tensor):
    """A batch of the single graph with adjacency adj [n, n] (adj[i, j]: node i reads node j)."""
    n = len(adj)
    return collate_graphs(torch.randn(1, n, 3, generator=torch.Generator().manual_seed(0)), torch.rand(1, n, 2),
                          adjacency_to_neighbours(adj[None]), torch.tensor([n]), torch.tensor([0]),
                          torch.zeros(1, n, dtype=torch.bool))


def test_the_graph_layout_imports_first_without_an_import_cycle():
    """A user's own graph dataset may import the shared layout before anything else of zoo's. It used to live in
    zoo/graphs.py, whose import of zoo.data ran graph_disturbance, which imported the half-built zoo.graphs."""
    done = subprocess.run([sys.executable, "-c", "import zoo.data.graphs"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---- batches -----------------------------------------------------------------------------------------------------
def test_collate_masks_exactly_the_real_nodes_and_the_mean_readout_ignores_padding():
    sizes = (9, 14, 5, 12)
    x, pos, edges, mask, *_ = ragged_batch(sizes=sizes)
    assert mask.shape == (4, 14) and mask.sum(1).tolist() == list(sizes)
    for b, k in enumerate(sizes):
        assert mask[b, :k].all() and not mask[b, k:].any()
    m = model()
    with torch.no_grad():
        h, _ = m.node_states(x, pos, edges, mask)
        # the mean over each graph's own k nodes (padding states are not zero: the embedding has a bias)
        expected = m.head(torch.stack([h[b, :k].mean(0) for b, k in enumerate(sizes)]))
        assert torch.allclose(m.readout_logits(h, mask), expected, atol=1e-6)


# ---- locality ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_non_neighbour_leaves_the_first_layer_output_unchanged(mode):
    batch = ragged_batch()
    x, pos, edges, mask, *_ = batch
    m = model(layers=1, attention=mode, degree=True)
    adj = adjacency(batch)
    b, v = 1, 0
    far = [u for u in range(int(mask[b].sum())) if u != v and not adj[b, v, u]]
    near = [u for u in range(int(mask[b].sum())) if adj[b, v, u]]
    assert far and near
    with torch.no_grad():
        before = m.node_states(x, pos, edges, mask)[0][b, v]
        for u, changes in ((far[0], False), (near[0], True)):
            x2 = x.clone()
            x2[b, u] += 5.0
            after = m.node_states(x2, pos, edges, mask)[0][b, v]
            assert torch.equal(before, after) != changes, (u, changes)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layers,self_loops", [(1, True), (2, True), (3, False)])
def test_after_l_layers_a_node_depends_on_exactly_its_l_hop_neighbourhood(mode, layers, self_loops):
    batch = ragged_batch(seed=1)
    x, pos, edges, mask, *_ = batch
    m = model(layers=layers, attention=mode, self_loops=self_loops, coords=2).double()
    step = (adjacency(batch) | torch.eye(mask.shape[1], dtype=torch.bool)).long()
    ball = torch.linalg.matrix_power(step, layers) > 0  # walks of length <= layers
    x = x.double().requires_grad_()
    h = m.node_states(x, pos.double(), edges, mask)[0]
    probe = torch.randn(h.shape[-1], dtype=h.dtype)  # not h.sum(): a layer norm's outputs sum to a constant
    for b in range(len(x)):
        for v in range(int(mask[b].sum())):
            grad, = torch.autograd.grad(h[b, v] @ probe, x, retain_graph=True)
            depends = grad.abs().sum(-1) > 0
            assert torch.equal(depends[b], ball[b, v] & mask[b]), (b, v)
            assert not depends[torch.arange(len(x)) != b].any()  # nothing from the other graphs of the batch
    assert ball.sum() < (mask[:, :, None] & mask[:, None, :]).sum()  # not the whole graph: the test bites


# ---- symmetry ------------------------------------------------------------------------------------------------
def permute(batch, seed=0):
    """The same graphs with the real nodes of each graph renumbered by a random permutation."""
    x, pos, edges, mask, y, hl = batch
    b, n = mask.shape
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(b * n).view(b, n).clone()
    for i in range(b):
        k = int(mask[i].sum())
        perm[i, :k] = perm[i, :k][torch.randperm(k, generator=g)]  # new position j holds old node perm[j]
    new_of_old = torch.empty_like(perm.view(-1))
    new_of_old[perm.view(-1)] = torch.arange(b * n)
    flat = lambda t: t.reshape(b * n, *t.shape[2:])[perm.view(-1)].view(t.shape)  # noqa: E731
    return (flat(x), flat(pos), new_of_old[edges], mask, y, flat(hl)), perm


@pytest.mark.parametrize("readout", ["mean", "sum", "max", "attention"])
@pytest.mark.parametrize("mode", MODES)
def test_node_outputs_are_permutation_equivariant_and_graph_outputs_invariant(readout, mode):
    batch = ragged_batch(seed=2)
    m = model(readout=readout, attention=mode, degree=True, coords=2)
    moved, perm = permute(batch)
    with torch.no_grad():
        h, _ = m.node_states(*batch[:4])
        h2, _ = m.node_states(*moved[:4])
        b, n, d = h.shape
        assert torch.allclose(h.reshape(b * n, d)[perm.view(-1)].view(b, n, d)[batch[3]], h2[batch[3]], atol=1e-5)
        assert torch.allclose(m(*batch[:4]), m(*moved[:4]), atol=1e-5)
        assert not torch.allclose(h[batch[3]], h2[batch[3]], atol=1e-3)  # the nodes did move


def test_node_contributions_add_up_to_the_logit():
    batch = ragged_batch(seed=3)
    for readout in ("mean", "sum", "max", "attention"):
        m = model(readout=readout)
        with torch.no_grad():
            h, _ = m.node_states(*batch[:4])
            logit = m.readout_logits(h, batch[3])[:, 0]
            share = m.contributions(h, batch[3], torch.zeros(len(h), dtype=torch.long))
        assert torch.allclose(share.sum(1) + m.head.bias[0], logit, atol=1e-5), readout


def test_the_disturbance_figure_says_what_its_rings_and_probability_are():
    data = disturbance()
    with torch.no_grad():
        fig = model(info=data.info).figure(next(data.batches("val", 8)))
    # red rings and 'p=0.67' with nothing saying that they are the true disturbance and P(label 1)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert legend == ["marked by the data\n(the true disturbance)"]
    top_row = fig.axes[:4]
    assert all(ax.get_title().startswith("label ") and "P(label 1)=" in ax.get_title() for ax in top_row)
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---- the two implementations ---------------------------------------------------------------------------------
def test_attention_rows_sum_to_one_over_the_neighbours():
    batch = ragged_batch(seed=4)
    x, pos, edges, mask, *_ = batch
    m = model(layers=2)
    with torch.no_grad():
        _, dense = m.node_states(x, pos, edges, mask, attention="dense")
        _, per_edge = m.node_states(x, pos, edges, mask, attention="edges")
    adj = adjacency(batch) | (torch.eye(mask.shape[1], dtype=torch.bool) & mask[:, :, None])  # with self-loops
    for alpha in dense:  # [B, H, N, N]
        rows = alpha.sum(-1)
        assert torch.allclose(rows[mask[:, None].expand_as(rows)], torch.tensor(1.0), atol=1e-6)
        assert (rows[~mask[:, None].expand_as(rows)] == 0).all()  # padding attends to nothing
        assert (alpha[~adj[:, None].expand_as(alpha)] == 0).all() and (alpha[adj[:, None].expand_as(alpha)] > 0).all()
    from zoo.models.graph_transformer import edge_list

    dst = edge_list(edges, mask, True)[1]
    for alpha in per_edge:  # [E, H]
        sums = torch.zeros(mask.numel(), alpha.shape[1]).index_add(0, dst, alpha)
        assert torch.allclose(sums[mask.view(-1)], torch.tensor(1.0), atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"self_loops": False, "readout": "max"}, {"laplacian": 3, "degree": True},
                                {"readout": "attention", "coords": 3}])
def test_dense_and_edge_paths_agree(kw):
    for batch in (ragged_batch(seed=5), next(disturbance().batches("test", 16))):
        info = {"node_features": batch[0].shape[-1], "coord_dim": 2, "num_classes": 2, "fixed_nodes": None}
        m = model(info, layers=3, **kw)
        x, pos, edges, mask, y, _ = batch
        torch.manual_seed(1)
        h1, a1 = m.node_states(x, pos, edges, mask, attention="dense")
        torch.manual_seed(1)
        h2, a2 = m.node_states(x, pos, edges, mask, attention="edges")
        assert torch.allclose(h1[mask], h2[mask], atol=1e-5)
        assert torch.allclose(m(x, pos, edges, mask, "dense"), m(x, pos, edges, mask, "edges"), atol=1e-5)
        m.train()  # and the same gradients
        grads = []
        for mode in MODES:
            m.zero_grad()
            torch.manual_seed(2)
            m.loss_and_hits(m(x, pos, edges, mask, mode), y)[0].mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
        assert torch.allclose(*grads, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_attention_follows_the_edge_direction_on_a_directed_graph(mode):
    """Every other test graph is symmetric: here node 1 reads node 0 and node 2 reads node 1, nothing else."""
    adj = torch.zeros(3, 3, dtype=torch.bool)
    adj[1, 0] = adj[2, 1] = True
    batch = one_graph(adj)
    x, pos, edges, mask, *_ = batch
    assert edges.tolist() == [[0, 1], [1, 2]]  # (source, destination): 0 -> 1 and 1 -> 2
    m = model(layers=1, self_loops=False)
    with torch.no_grad():
        h, (alpha,) = m.node_states(x, pos, edges, mask, attention=mode)
        other, _ = m.node_states(x, pos, edges, mask, attention="edges" if mode == "dense" else "dense")
    assert torch.allclose(h, other, atol=1e-5)  # the two implementations agree
    if mode == "edges":  # [E, H]: each destination has one incoming edge, so its softmax is 1
        assert torch.equal(alpha, torch.ones(2, 4))
    else:  # [B, H, N, N], alpha[v, u]: v reads u; one neighbour each: weight 1 along the edge, 0 against it
        expected = torch.zeros(3, 3)
        expected[1, 0] = expected[2, 1] = 1.0
        assert torch.equal(alpha[0], expected.expand(4, 3, 3))
    # node 0 reads nobody (no self-loops) and node 1 reads node 0: changing node 2 changes neither
    x2 = x.clone()
    x2[0, 2] += 5.0
    with torch.no_grad():
        h2, _ = m.node_states(x2, pos, edges, mask, attention=mode)
    assert torch.equal(h2[0, :2], h[0, :2]) and not torch.allclose(h2[0, 2], h[0, 2])


def test_laplacian_encoding_of_a_path_is_its_normalised_laplacian_eigenvectors():
    # path 0 - 1 - 2, degrees (1, 2, 1): D^-1/2 A D^-1/2 has 1/sqrt(2) on both edges, so L = I - P / sqrt(2)
    # with P the path's adjacency, eigenvalues of P sqrt(2), 0, -sqrt(2) -> of L: 0, 1, 2.
    # lambda 0: D^1/2 1 = (1, sqrt2, 1) / 2, skipped (it holds only the degrees);
    # lambda 1: P v = 0, v = (1, 0, -1) / sqrt2; lambda 2: P v = -sqrt2 v, v = (1, -sqrt2, 1) / 2
    adj = torch.zeros(3, 3, dtype=torch.bool)
    adj[0, 1] = adj[1, 0] = adj[1, 2] = adj[2, 1] = True
    _, _, edges, mask, *_ = one_graph(adj)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[r, 0.5], [0.0, -r], [-r, 0.5]], dtype=torch.float64)
    enc = model(laplacian=2).laplacian_encoding(edges, mask)[0]  # eval mode: no random sign flips
    assert enc.shape == (3, 2)
    for j in range(2):  # an eigenvector's sign is arbitrary
        assert min((enc[:, j] - expected[:, j]).abs().max(), (enc[:, j] + expected[:, j]).abs().max()) < 1e-6, j


def test_the_attention_output_agrees_with_pytorch_geometric_transformer_conv():
    try:
        from torch_geometric.nn import TransformerConv
    except ImportError as e:
        skip_or_fail(f"torch_geometric is not installed (a test-only dependency): {e}")
    batch = ragged_batch(seed=6)
    x, pos, edges, mask, *_ = batch
    m = model(dim=24, heads=3)
    layer = m.layers[0]
    conv = TransformerConv(24, 8, heads=3, concat=True, root_weight=False, bias=False)
    conv.lin_query.weight.data.copy_(layer.query.weight)
    conv.lin_key.weight.data.copy_(layer.key.weight)
    conv.lin_value.weight.data.copy_(layer.value.weight)
    from zoo.models.graph_transformer import dense_adjacency, edge_list

    h = torch.randn(*mask.shape, 24) * mask[..., None]
    for loops in (True, False):
        e = edge_list(edges, mask, loops)  # PyG is given the edges as they are: it adds no self-loops
        with torch.no_grad():
            ref, (_, ref_alpha) = conv(h.view(-1, 24), e, return_attention_weights=True)
            ours, alpha = layer.attend_edges(h.view(-1, 24), e)
            dense, _ = layer.attend_dense(h, dense_adjacency(edges, mask, loops))
        has_edges = torch.zeros(mask.numel(), dtype=torch.bool)
        has_edges[e[1]] = True
        has_edges &= mask.view(-1)  # the edge path gives padding a self-loop; the dense path leaves it empty
        assert torch.allclose(ours, ref, atol=1e-5) and torch.allclose(alpha, ref_alpha, atol=1e-5)
        assert torch.allclose(dense.view(-1, 24)[has_edges], ref[has_edges], atol=1e-5)


def test_an_edge_list_forward_on_10k_nodes_and_100k_edges_stays_small():
    """In a fresh process, so the peak resident memory is this forward and backward pass's alone."""
    code = """
import resource, sys, time, torch
from zoo.registry import create_model
torch.set_num_threads(1)
m = create_model("graph_transformer", {"node_features": 4, "coord_dim": 2, "num_classes": 2}, dim=64, heads=4,
                 layers=3, degree=True)
n, e = 10_000, 100_000
g = torch.Generator().manual_seed(0)
src, dst = torch.randint(n, (e,), generator=g), torch.randint(n, (e,), generator=g)
edges = torch.stack([src, dst])[:, dst.argsort()]
x, pos, mask = torch.randn(1, n, 4, generator=g), torch.rand(1, n, 2, generator=g), torch.ones(1, n, dtype=torch.bool)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
m(x, pos, edges, mask).sum().backward()
took = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(m.mode(edges, mask), (peak - before) / 1024, took)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    mode, extra_mb, seconds = out.stdout.split()
    # dense scores alone would be 10k x 10k x 4 heads x 4 bytes = 1.6 GB per layer
    assert mode == "edges" and float(extra_mb) < 1500, (mode, extra_mb, seconds)  # measured: about 530 MB


# ---- disturbance data ------------------------------------------------------------------------------------------
def test_the_bayes_rule_beats_the_single_node_baseline_and_matches_its_formula():
    d = disturbance(n_nodes=40, hops=2, channels=3, disturbed_channels=2, amplitude=0.8, test_graphs=1500,
                    train_graphs=1500)
    x, pos, nbr, num, y, ball = d.tensors("test")
    deg = (nbr >= 0).sum(-1).float().mean()
    # mean degree as configured (4): (n - 1) times the chance that two uniform points lie within r, the disk's
    # area inside the square; a spread of about 0.4 per graph, 0.01 over these 1500 (pi r^2 alone: about 3.4)
    assert deg.item() == pytest.approx(4.0, abs=0.1)
    # the ball is exactly the hops-ball of a node when disturbed, empty otherwise
    assert torch.equal(ball.any(1), y.bool())
    # the log-likelihood ratio by brute force for a few graphs: one BFS and one sum per centre
    a = torch.tensor([0.8, 0.8, 0.0])
    lr = d.bayes_log_lr("test")
    for gi in range(5):
        lists = [[int(u) for u in row if u >= 0] for row in nbr[gi]]
        terms = []
        for c in range(40):
            seen, frontier = {c}, {c}
            for _ in range(2):
                frontier = {u for v in frontier for u in lists[v]} - seen
                seen |= frontier
            members = torch.tensor(sorted(seen))
            terms.append(float((x[gi, members] @ a).sum()) - len(members) * float(a @ a) / 2)
        brute = math.log(sum(math.exp(t) for t in terms) / 40)
        assert lr[gi].item() == pytest.approx(brute, abs=1e-4)
    acc = d.baselines("test")
    assert acc["bayes_optimal"] > acc["single_node_max"] + 0.05 and acc["single_node_max"] > 0.5, acc


def test_the_single_node_threshold_is_the_best_one_on_the_training_graphs():
    d = disturbance(n_nodes=40, hops=1, amplitude=0.8, train_graphs=1500, val_graphs=10, test_graphs=10)
    s, y = d.max_node_score("train"), d.tensors("train")[4]
    # every threshold the rule can pick (predict 1 above one of the scores), each scored on all 1500 graphs
    best = ((s[None, :] > s[:, None]).long() == y).float().mean(1).max().item()
    assert d.baselines("train")["single_node_max"] == pytest.approx(best, abs=1e-6)


def test_exam_readout_needs_a_fixed_node_set(tmp_path, capsys):
    cfg = ["train", str(ROOT / "configs" / "graph_disturbance.yaml"), "--run-dir", str(tmp_path / "r"), "--quiet",
           "model.readout=exam", "data.train_graphs=64", "data.val_graphs=16", "data.test_graphs=16",
           "train.max_steps=2", "train.batch_size=32"]
    assert main(cfg) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.readout=exam" in err and "fixed node set" in err
    assert not (tmp_path / "r").exists()
    assert main([*cfg, "data.fixed_layout=true"]) == 0  # one layout shared by every graph: allowed


# ---- superpixels ---------------------------------------------------------------------------------------------------
def test_superpixel_graphs_have_at_most_75_nodes_8_neighbours_and_features_in_range(mnist_root, tmp_path,
                                                                                      monkeypatch):
    (tmp_path / "MNIST").symlink_to(Path(mnist_root).resolve() / "MNIST")
    d = create_data("mnist_superpixels", root=str(tmp_path), limit=30, workers=1)
    x, pos, nbr, num, y, _ = d.tensors("train")
    assert len(x) == 30 and x.shape[1] == 75 and (num <= 75).all() and (num >= 20).all()
    for g in range(len(x)):
        k = int(num[g])
        real = nbr[g, :k].long()
        assert (real >= 0).all() and (real < k).all() and (nbr[g, k:] == -1).all()
        assert (real != torch.arange(k)[:, None]).all()
        assert all(len(set(r.tolist())) == 8 for r in real)
        d2 = torch.cdist(pos[g, :k], pos[g, :k]).fill_diagonal_(math.inf)
        # the 8 nearest: no other node is closer than the 8th neighbour
        assert (d2.gather(1, real).max(1).values <= d2.topk(8, largest=False).values[:, -1] + 1e-6).all()
        assert (x[g, :k] >= 0).all() and (x[g, :k] <= 1).all() and (x[g, k:] == 0).all()
    # the same split as the MNIST module: labels line up image for image
    mnist = create_data("mnist", root=str(tmp_path), limit=30)
    for split in ("train", "val"):
        assert torch.equal(d.tensors(split)[4], mnist.tensors(split)[1])
    # bright superpixels lie where the digit is: intensity-weighted centroid near the image's
    img = mnist.tensors("train")[0][0, 0]
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre = torch.stack([(img * cols).sum() / img.sum() / 27, 1 - (img * rows).sum() / img.sum() / 27])
    w = x[0, :int(num[0]), 0]
    assert torch.allclose((w[:, None] * pos[0, :int(num[0])]).sum(0) / w.sum(), centre, atol=0.08)
    # a second build is a cache read
    monkeypatch.setattr("zoo.data.mnist_superpixels.build_graphs", lambda *a, **k: pytest.fail("rebuilt"))
    again = create_data("mnist_superpixels", root=str(tmp_path), limit=30, workers=1)
    assert torch.equal(again.tensors("train")[0], x)


def test_superpixel_features_of_a_known_segmentation(monkeypatch):
    """SLIC replaced by the four 14 x 14 quadrants: the features are each quadrant's mean intensity and its centre
    in (x right, y up), both in [0, 1]: columns 0..13 average 6.5 -> 6.5 / 27, columns 14..27 20.5 -> 20.5 / 27,
    and the top rows (0..13) are the high y: 1 - 6.5 / 27 = 20.5 / 27."""
    import numpy as np
    import skimage.segmentation

    from zoo.data.mnist_superpixels import superpixel_graph

    rows, cols = np.indices((28, 28))
    monkeypatch.setattr(skimage.segmentation, "slic", lambda image, **kw: 2 * (rows >= 14) + (cols >= 14))
    img = np.zeros((28, 28))
    img[:14, :14] = 1.0  # the top-left quadrant is bright
    feats, nbr = superpixel_graph(img, 4, 0.25, 1)
    lo, hi = 6.5 / 27, 20.5 / 27
    assert np.allclose(feats, [[1, lo, hi], [0, hi, hi], [0, lo, lo], [0, hi, lo]], atol=1e-6)  # TL, TR, BL, BR
    # the nearest quadrant: the two side by side are equally near, the lower index wins (TL's: TR over BL)
    assert nbr[:, 0].tolist() == [1, 0, 0, 1]


# ---- end to end ----------------------------------------------------------------------------------------------------
def test_zoo_train_beats_chance_and_eval_reports_the_baselines(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["data.train_graphs=1600", "data.val_graphs=200", "data.test_graphs=1000", "train.epochs=2",
            "train.batch_size=64", "model.dim=32"]
    assert main(["train", str(ROOT / "configs" / "graph_disturbance.yaml"), "--run-dir", str(run), "--quiet",
                 *args]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    chance, bayes = out["baseline_majority_class"], out["baseline_bayes_optimal"]
    single = out["baseline_single_node_max"]
    assert out["test_accuracy"] > max(chance, single) + 0.02, out
    assert 0.8 < bayes < 0.95 and out["n_test"] == 1000
    assert (run / "test_graphs.png").is_file() and list((run / "samples").glob("graphs_epoch*.png"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["readout"] == "max" and cfg["data"]["amplitude"] == 1.4
