"""The data contract: ragged batches through the unchanged trainer, num_items-weighted validation, train-only
augmentation with exact resume, data-declared model arguments, validation before data, capability-keyed CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from zoo import checkpoint as ckpt_io
from zoo.cli import main
from zoo.config import load_config
from zoo.data.base import Batch, DataModule, build_data, data_names, register_data, split_off
from zoo.data.cache import cached
from zoo.errors import ConfigError
from zoo.models.base import ZooModel
from zoo.registry import list_models, register_model
from zoo.trainer import fit

ROOT = Path(__file__).parents[1]


# ---- a ragged toy dataset: integer sequences of different lengths, written by the test -------------------------
def write_sequences(path: Path, n: int, vocab: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        length = int(torch.randint(1, 12, (1,), generator=g))
        lines.append(" ".join(str(int(t)) for t in torch.randint(1, vocab, (length,), generator=g)))
    path.write_text("\n".join(lines) + "\n")


@register_data("toy_sequences")
class ToySequences(DataModule):
    """Each line of ``path`` is a sequence of token ids (targets: see ``targets``). Stored padded
    with 0 plus lengths; ``collate`` trims a batch to its longest item and counts real tokens."""

    info_keys = ("vocab_size",)

    def __init__(self, path: str = "", val_size: int = 40):
        self.path, self.val_size = Path(path), val_size
        if not self.path.is_file():
            raise ConfigError(f"data.path={path!r} does not exist")
        rows = [[int(t) for t in ln.split()] for ln in self.path.read_text().splitlines() if ln.strip()]
        self.rows = rows
        self.info = {"vocab_size": max(max(r) for r in rows) + 1}  # cheap: what the model builder needs

    def setup(self):
        longest = max(map(len, self.rows))
        tokens = torch.zeros(len(self.rows), longest, dtype=torch.long)
        for i, r in enumerate(self.rows):
            tokens[i, :len(r)] = torch.tensor(r)
        lengths = torch.tensor([len(r) for r in self.rows])
        train, val = split_off((tokens, lengths), self.val_size, 0)
        order = val[1].argsort()  # short sequences first: batches of very different token counts
        self.splits = {"train": train, "val": tuple(t[order] for t in val)}
        return self

    def collate(self, split, parts, generator):
        tokens, lengths = parts
        width = int(lengths.max())
        tokens = tokens[:, :width]
        mask = torch.arange(width) < lengths[:, None]
        return Batch((tokens, mask), num_items=mask.sum())


def targets(tokens):
    """A token's parity up to position 5; from position 6 on, parity of token + position, which a tagger that
    sees no positions cannot predict: long sequences keep a higher loss per token than short ones."""
    pos = torch.arange(tokens.shape[1])
    return (tokens + pos * (pos >= 6)) % 2


@register_model("toy_tagger", family="toy_tagging", description="per-token parity tagger (tests only)")
class ToyTagger(ZooModel):
    def __init__(self, vocab_size: int, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.out = nn.Linear(dim, 2)
        self.shapes: list[tuple] = []

    def token_losses(self, batch):
        tokens, mask = batch
        self.shapes.append(tuple(tokens.shape))
        ce = F.cross_entropy(self.out(self.embed(tokens)).transpose(1, 2), targets(tokens), reduction="none")
        return ce, mask

    def training_step(self, batch, optimizer="main"):
        ce, mask = self.token_losses(batch)
        return {"loss": (ce * mask).sum() / mask.sum()}


def seq_config(path, **train):
    return {"name": "seq", "model": {"name": "toy_tagger"}, "data": {"name": "toy_sequences", "path": str(path)},
            "train": {"epochs": 3, "batch_size": 16, "eval_batch_size": 8, "log_every": 1, "device": "cpu",
                      "optimizer": {"name": "adam", "lr": 0.05}, **train}}


def test_ragged_sequences_train_with_masks_and_token_weighted_validation(tmp_path):
    path = tmp_path / "seqs.txt"
    write_sequences(path, 200, vocab=30)
    tr = fit(load_config(seq_config(path)), tmp_path / "run")
    losses = [h["loss"] for h in tr.metrics["history"]]
    assert losses[-1] < 0.6 * losses[0]  # it learns parity from the embeddings
    tokens, lengths = tr.data.tensors("train")
    assert all(w <= tokens.shape[1] for _, w in tr.model.shapes)
    assert any(w < tokens.shape[1] for _, w in tr.model.shapes)  # batches trimmed to their longest item

    # validation = total masked cross-entropy / total real tokens, computed here without the trainer
    vt, vl = tr.data.tensors("val")
    tr.model.eval()
    with torch.no_grad():
        ce = F.cross_entropy(tr.model.out(tr.model.embed(vt)).transpose(1, 2), targets(vt), reduction="none")
        mask = torch.arange(vt.shape[1]) < vl[:, None]
        per_token = float((ce * mask).sum() / mask.sum())
        per_batch = [float((ce[i:i + 8] * mask[i:i + 8]).sum() / mask[i:i + 8].sum()) for i in range(0, 40, 8)]
    reported = tr.metrics["epochs"][-1]["val/loss"]
    assert reported == pytest.approx(per_token, rel=1e-5)
    assert abs(sum(per_batch) / len(per_batch) - per_token) > 0.02  # a batch-size-weighted mean would differ


def test_changed_data_info_refuses_to_resume(tmp_path, capsys):
    path = tmp_path / "seqs.txt"
    write_sequences(path, 120, vocab=20)
    cfg = tmp_path / "seq.yaml"
    cfg.write_text(yaml.safe_dump(seq_config(path, max_steps=2)))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 0
    write_sequences(path, 120, vocab=40)  # the corpus changed, and with it the vocabulary
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", str(run), "--quiet", "train.max_steps=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocab_size" in err and "Traceback" not in err
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["step"] == 2  # nothing was overwritten


# ---- augmentation: training batches only, from the trainer's generator -----------------------------------------
@register_data("toy_regression")
class ToyRegression(DataModule):
    """y = x·w + noise with an index column, so a model can compare what it sees with the stored rows."""

    def __init__(self, n: int = 240, jitter: float = 0.5):
        self.n, self.jitter = n, jitter
        self.info = {"input_shape": (4,), "num_classes": 0}

    def setup(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.n, 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(self.n, generator=g)
        idx = torch.arange(self.n)
        train, val = split_off((x, y, idx), self.n // 4, 0)
        self.splits = {"train": train, "val": val, "test": val}
        return self

    def augment(self, batch, generator):
        x, y, idx = batch
        return Batch((x + self.jitter * torch.randn(x.shape, generator=generator), y, idx), batch.num_items)


@register_model("toy_linear", family="toy_regressors", description="linear regression that records its inputs")
class ToyLinear(ZooModel):
    def __init__(self, input_shape):
        super().__init__()
        self.lin = nn.Linear(input_shape[0], 1)
        self.seen = {"train": [], "val": [], "init": []}
        self.data = None

    def on_fit_start(self, data):
        self.data = data
        x, _, idx = next(data.batches("train", 32))
        self.seen["init"].append(x - data.tensors("train")[0][:32])

    def setup(self, data):
        self.data = data

    def training_step(self, batch, optimizer="main"):
        x, y, idx = batch
        stored = self.data.tensors("train")
        rows = (stored[2][:, None] == idx[None]).float().argmax(0)
        self.seen["train"].append(x - stored[0][rows])
        return {"loss": F.mse_loss(self.lin(x).squeeze(1), y)}

    def validation_step(self, batch):
        x, y, idx = batch
        self.seen["val"].append(x - self.data.tensors("val")[0][:len(x)])
        return {"loss": F.mse_loss(self.lin(x).squeeze(1), y)}

    def visuals(self, batch):
        self.seen["val"].append(batch[0] - self.data.tensors("val")[0][:len(batch[0])])
        return {}


def aug_config(**train):
    return {"name": "aug", "model": {"name": "toy_linear"}, "data": {"name": "toy_regression"},
            "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 1000, "log_every": 1, "device": "cpu",
                      "optimizer": {"name": "sgd", "lr": 0.05}, **train}}


def test_augmentation_reaches_training_batches_only(tmp_path):
    tr = fit(load_config(aug_config()), tmp_path / "run")
    seen = tr.model.seen
    assert seen["train"] and all(d.abs().mean() > 0.2 for d in seen["train"])  # jittered by ~0.5
    assert seen["val"] and all(torch.equal(d, torch.zeros_like(d)) for d in seen["val"])
    assert all(torch.equal(d, torch.zeros_like(d)) for d in seen["init"])
    with pytest.raises(ValueError, match="training split only"):
        next(tr.data.batches("val", 8, augment=True))


def test_mid_epoch_resume_with_augmentation_gives_the_same_losses(tmp_path):
    full = fit(load_config(aug_config()), tmp_path / "a")
    fit(load_config(aug_config(max_steps=8)), tmp_path / "b")  # 6 batches per epoch: stops inside epoch 2
    resumed = fit(load_config(aug_config()), tmp_path / "b", resume=True)
    history = lambda t: [(h["step"], h["loss"]) for h in t.metrics["history"]]  # noqa: E731
    assert history(resumed) == history(full) and len(history(full)) == 18
    assert torch.equal(full.model.lin.weight, resumed.model.lin.weight)
    other = fit(load_config({**aug_config(), "train": {**aug_config()["train"], "seed": 1}}), tmp_path / "c")
    assert history(other) != history(full)  # the augmentation noise follows the seed


def test_input_noise_and_shuffle_are_common_data_options(tmp_path):
    d = build_data("toy_regression", input_noise=0.3, shuffle=False).setup()
    assert torch.equal(d.epoch_order(0, 0), torch.arange(d.size("train")))
    x, _, _ = next(d.batches("train", 1000, generator=torch.Generator().manual_seed(0), augment=True))
    noise = x - d.tensors("train")[0]
    assert float(noise.std()) == pytest.approx((0.5**2 + 0.3**2) ** 0.5, rel=0.1)  # the jitter, then the noise
    plain = build_data("toy_regression", jitter=0.0, input_noise=0.3).setup()
    x, _, _ = next(plain.batches("train", 1000, generator=torch.Generator().manual_seed(0), augment=True))
    assert float((x - plain.tensors("train")[0]).std()) == pytest.approx(0.3, rel=0.1)
    x, _, _ = next(plain.batches("val", 1000))
    assert torch.equal(x, plain.tensors("val")[0])
    with pytest.raises(ConfigError, match="data.input_noise"):
        load_config({**aug_config(), "data": {"name": "toy_regression", "input_noise": "lots"}})


# ---- validation before data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [("model.latent_dim=-3", "model.latent_dim"),
                                          ("model.dropout=2", "model.dropout")])
def test_bad_model_values_fail_before_any_data_is_read(override, key, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("zoo.data.mnist.ensure_mnist", lambda *a, **k: pytest.fail("MNIST was touched"))
    code = main(["train", str(ROOT / "configs" / "vae.yaml"), override, f"data.root={empty}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {key}=")
    assert not (tmp_path / "runs").exists() and list(empty.iterdir()) == []


def test_a_best_metric_the_model_does_not_log_is_an_error_before_training(tmp_path, capsys):
    path = tmp_path / "seqs.txt"
    write_sequences(path, 80, vocab=10)
    cfg = tmp_path / "seq.yaml"
    cfg.write_text(yaml.safe_dump(seq_config(path)))
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet", "train.best_metric=val/los"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "did you mean 'val/loss'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet", "train.best_metric=train/eta"])
    assert code == 2 and "train.best_metric" in capsys.readouterr().err  # an epoch-end term: after epoch 1
    assert not (tmp_path / "run").exists()


def test_a_refused_start_removes_only_what_it_wrote_and_never_takes_a_folder_of_other_files(tmp_path, capsys):
    path = tmp_path / "seqs.txt"
    write_sequences(path, 80, vocab=10)
    cfg = tmp_path / "seq.yaml"
    cfg.write_text(yaml.safe_dump(seq_config(path)))
    late = ["train.best_metric=train/eta", "--quiet"]  # refused after epoch 1, when the run dir has files
    empty, dead = tmp_path / "empty", tmp_path / "dead"
    empty.mkdir()
    dead.mkdir()
    (dead / "config.yaml").write_text("name: dead\n")  # what a start killed before its first checkpoint leaves
    (dead / "samples").mkdir()
    for given in (empty, dead):
        before = sorted(p.name for p in given.iterdir())
        assert main(["train", str(cfg), "--run-dir", str(given), *late]) == 2
        assert "train.best_metric" in capsys.readouterr().err
        assert sorted(p.name for p in given.iterdir()) == before, given
    project = tmp_path / "project"  # a config.yaml among other files is a project, not a run dir
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("name: mine\n")
    (project / "notes.txt").write_text("keep me")
    assert main(["train", str(cfg), "--run-dir", str(project), *late]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a run dir" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.txt", "src"]
    run = tmp_path / "run"  # a run whose last.pt is gone still holds one: --resume falls back to step-N.pt
    fit(load_config(seq_config(path, max_steps=2)), run)
    (run / "checkpoints" / "last.pt").unlink()
    kept = sorted(p.name for p in run.rglob("*"))
    assert list((run / "checkpoints").glob("step-*.pt"))
    assert main(["train", str(cfg), "--run-dir", str(run), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err and sorted(p.name for p in run.rglob("*")) == kept


# ---- the CLI is keyed by capability --------------------------------------------------------------------------
def test_commands_check_the_capability_they_need(tmp_path, capsys):
    path = tmp_path / "seqs.txt"
    write_sequences(path, 80, vocab=10)
    fit(load_config(seq_config(path, max_steps=1)), tmp_path / "run")
    capsys.readouterr()
    for argv in (["sample", str(tmp_path / "run"), "-o", str(tmp_path / "s.png")],
                 ["reconstruct", str(tmp_path / "run"), "-o", str(tmp_path / "r.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"cannot {argv[0]}" in err
    assert not (tmp_path / "s.png").exists()
    for flags, needle in ((["--iw-samples", "5"], "no importance-weighted bound"),  # flags read by other models
                          (["--evaluator", str(tmp_path / "run")], "no FID-LeNet here"),
                          (["--views", "3"], "does not vote"), (["--data", str(path)], "not on a file")):
        assert main(["eval", str(tmp_path / "run"), "--no-baselines", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and flags[0] in err, err
    assert main(["eval", str(tmp_path / "run"), "--no-baselines", "--json"]) == 0  # none of them given: it runs


def test_reconstruct_writes_originals_above_their_reconstructions(mnist_root, tmp_path, capsys):
    from conftest import small_vae_config

    fit(load_config(small_vae_config(mnist_root, max_steps=2)), tmp_path / "vae")
    out = tmp_path / "rec.png"
    assert main(["reconstruct", str(tmp_path / "vae"), "-n", "8", "-o", str(out), "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(out).size == (4 * 30 + 2, 4 * 30 + 2)  # 16 images in a 4x4 grid of 28 px + 2 px padding


@register_model("toy_point_ae", family="toy_autoencoders", description="autoencoder of feature rows (tests only)")
class ToyPointAE(ZooModel):
    """A reconstruct-capable model on data whose items are feature rows, not images."""

    def __init__(self, input_shape):
        super().__init__()
        self.lin = nn.Linear(input_shape[0], input_shape[0])

    def training_step(self, batch, optimizer="main"):
        return {"loss": F.mse_loss(self.lin(batch[0]), batch[0])}

    def reconstruct(self, x):
        return self.lin(x)

    def sample(self, n, generator=None, temperature=1.0):
        return self.lin(temperature * torch.randn(n, self.lin.in_features, generator=generator))


def test_sample_and_reconstruct_of_items_that_are_not_images_is_one_line_not_a_png(tmp_path, capsys):
    cfg = {"name": "pts", "model": {"name": "toy_point_ae"}, "data": {"name": "toy_regression"},
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "max_steps": 1}}
    fit(load_config(cfg), tmp_path / "run")
    capsys.readouterr()
    for argv in (["sample", str(tmp_path / "run"), "-o", str(tmp_path / "s.png")],
                 ["reconstruct", str(tmp_path / "run"), "-o", str(tmp_path / "r.png")]):
        assert main(argv) == 2  # make_grid drew [N, 4] rows as one N x 4 picture
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not images" in err and "(shape (" in err, err
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "r.png").exists()
    from zoo.visuals import write

    with pytest.raises(TypeError, match=r"visual 'points' is a tensor of shape \(5, 2\)"):
        write({"points": torch.zeros(5, 2)}, None, 0, None)  # a model's visuals(): named, not a silent picture


# ---- the house rules ------------------------------------------------------------------------------------------
def test_trainer_cli_and_data_base_name_no_model_or_dataset():
    words = {i.name for i in list_models()} | {i.family for i in list_models()} | set(data_names())
    for rel in ("zoo/trainer.py", "zoo/cli.py", "zoo/data/base.py", "zoo/runlog.py"):
        source = (ROOT / rel).read_text()
        for w in words:
            assert not re.search(rf"\b{re.escape(w)}\b", source), f"{rel} names '{w}'"
    assert len((ROOT / "zoo" / "trainer.py").read_text().splitlines()) < 350


def test_every_data_module_declares_the_info_it_hands_to_models():
    for name in ("mnist", "triangle1d", "gaussian"):
        d = build_data(name)
        assert set(d.info) <= set(d.info_keys) and d.info, name
        json.dumps(d.info)  # plain values: a weights_only checkpoint carries them


def test_a_model_argument_the_config_sets_wins_over_the_datas_declaration():
    """The data declares num_classes 10; a config that sets model.num_classes: 3 gets 3 logits."""
    from zoo.registry import create_model

    info = {"input_shape": (1, 28, 28), "num_classes": 10}
    net = create_model("lenet", info, num_classes=3, conv1=2, conv2=2, hidden=4)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    assert create_model("lenet", info, conv1=2, conv2=2, hidden=4)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_model_module_that_fails_to_import_is_an_error_every_time(monkeypatch):
    import importlib.metadata

    import zoo.registry as registry

    class BrokenPlugin:
        def load(self):
            raise ImportError("a family failed")

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [BrokenPlugin()])
    for _ in range(2):  # not marked loaded after the failure: the second call fails the same way
        with pytest.raises(ImportError, match="a family failed"):
            registry.list_models()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    assert registry.list_models("gaussian_ae")


def test_disk_cache_builds_once_rebuilds_when_corrupt_and_keys_by_parameters(tmp_path):
    calls = []

    def build(scale):
        def make():
            calls.append(scale)
            return {"x": torch.arange(6.0) * scale}
        return make

    a = cached(tmp_path, "toy", {"scale": 2}, build(2), log=lambda s: None)
    b = cached(tmp_path, "toy", {"scale": 2}, build(2), log=lambda s: None)
    assert torch.equal(a["x"], b["x"]) and calls == [2]
    c = cached(tmp_path, "toy", {"scale": 3}, build(3), log=lambda s: None)
    assert torch.equal(c["x"], torch.arange(6.0) * 3) and calls == [2, 3]
    entry = next(p for p in (tmp_path / "cache").iterdir() if p.stat().st_size and "toy" in p.name)
    for damage in (lambda raw: raw[: len(raw) // 2], lambda raw: raw.replace(b"\x00\x00\x80@", b"\x00\x00\x80A")):
        for p in (tmp_path / "cache").iterdir():
            p.write_bytes(damage(p.read_bytes()))
        messages = []
        again = cached(tmp_path, "toy", {"scale": 2}, build(2), log=messages.append)
        assert torch.equal(again["x"], torch.arange(6.0) * 2) and "corrupt" in messages[0]
    assert entry.exists() and not list((tmp_path / "cache").glob("*.tmp"))
