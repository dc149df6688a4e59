"""The FID-LeNet evaluator's provenance: one recipe, a hash of its weights, others refused or flagged."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from zoo import fid
from zoo.config import load_config
from zoo.errors import ZooError
from zoo.trainer import fit


class Ctx:
    def __init__(self, evaluator=None):
        self.options, self.messages, self.device = {"evaluator": evaluator}, [], torch.device("cpu")

    def log(self, msg):
        self.messages.append(msg)


@pytest.fixture(scope="module")
def off_recipe_lenet(mnist_root, tmp_path_factory):
    """A LeNet trained on 500 images for one epoch: not the recipe's evaluator."""
    run = tmp_path_factory.mktemp("fid") / "lenet"
    fit(load_config("configs/lenet.yaml", [f"data.root={mnist_root}", "data.limit=500", "train.epochs=1",
                                           "train.device=cpu"]), run)
    return run


def test_recipe_id_follows_what_sets_the_weights_only():
    base = load_config("configs/lenet.yaml")
    same = load_config("configs/lenet.yaml", ["data.root=/elsewhere", "train.log_every=7", "name=other",
                                              "train.device=cpu"])
    assert fid.recipe_id(base) == fid.recipe_id(same)
    for change in ("train.epochs=1", "train.seed=5", "model.hidden=64", "data.limit=500", "train.optimizer.lr=0.1",
                   "train.optimizer.fused=true"):
        assert fid.recipe_id(load_config("configs/lenet.yaml", [change])) != fid.recipe_id(base), change
    older = json.loads(json.dumps(base))  # an evaluator trained before train.optimizer.fused existed
    del older["train"]["optimizer"]["fused"]
    assert fid.recipe_id(older) == fid.recipe_id(base)


def test_weights_hash_names_the_weights():
    from zoo.models.lenet import LeNet

    torch.manual_seed(0)
    a = LeNet((1, 28, 28), 10)
    b = LeNet((1, 28, 28), 10)
    b.load_state_dict(a.state_dict())
    assert fid.weights_sha256(a) == fid.weights_sha256(b)
    with torch.no_grad():
        b.head[1].bias[0] += 1e-6
    assert fid.weights_sha256(a) != fid.weights_sha256(b)


def test_default_evaluator_from_another_recipe_is_refused(off_recipe_lenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    shutil.copytree(off_recipe_lenet, tmp_path / fid.DEFAULT_EVALUATOR)
    with pytest.raises(ZooError, match="not trained with the recipe configs/lenet.yaml.*--evaluator"):
        fid.load_evaluator(Ctx())


def test_explicit_evaluator_from_another_recipe_is_flagged(off_recipe_lenet):
    ctx, info = Ctx(str(off_recipe_lenet)), {}
    lenet = fid.load_evaluator(ctx, info=info)
    assert info["evaluator_matches_recipe"] is False
    assert info["evaluator_sha256"] == fid.weights_sha256(lenet)[:16]
    assert info["evaluator_recipe"] != fid.recipe_id(load_config("configs/lenet.yaml"))
    assert any("not from the recipe" in m for m in ctx.messages)


def test_the_default_path_named_with_evaluator_is_flagged_not_refused(off_recipe_lenet, tmp_path, monkeypatch):
    """The refusal says "name it with --evaluator to use it anyway": `--evaluator runs/lenet` must then work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    shutil.copytree(off_recipe_lenet, tmp_path / fid.DEFAULT_EVALUATOR)
    ctx, info = Ctx(fid.DEFAULT_EVALUATOR), {}
    fid.load_evaluator(ctx, info=info)
    assert info["evaluator_matches_recipe"] is False
    assert any("not from the recipe" in m for m in ctx.messages)


def test_evaluator_trained_by_the_recipe_is_accepted_and_named(off_recipe_lenet, tmp_path, monkeypatch):
    """Make the small evaluator's own config the recipe: the default path then takes it, flagged as matching."""
    recipe = tmp_path / "recipe.yaml"
    shutil.copy(off_recipe_lenet / "config.yaml", recipe)
    monkeypatch.setattr(fid, "_recipe_path", lambda: recipe)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    shutil.copytree(off_recipe_lenet, tmp_path / fid.DEFAULT_EVALUATOR)
    ctx, info = Ctx(), {}
    fid.load_evaluator(ctx, info=info)
    assert info["evaluator_matches_recipe"] is True and not ctx.messages


def test_an_unfinished_evaluator_is_refused_by_default_flagged_when_named(off_recipe_lenet, tmp_path, monkeypatch):
    half = tmp_path / "half"
    shutil.copytree(off_recipe_lenet, half)
    metrics = json.loads((half / "metrics.json").read_text())
    (half / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    ctx, info = Ctx(str(half)), {}
    fid.load_evaluator(ctx, info=info)
    assert info["evaluator_finished"] is False and any("did not finish" in m for m in ctx.messages)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    shutil.copytree(half, tmp_path / fid.DEFAULT_EVALUATOR)
    with pytest.raises(ZooError, match="did not finish training; resume it"):
        fid.load_evaluator(Ctx())


def test_stopping_the_on_demand_evaluator_training_stops_the_command(tmp_path, monkeypatch):
    class Stopped:
        metrics = {"status": "interrupted", "epochs": []}

    threads, before = [], torch.get_num_threads()
    monkeypatch.setattr("zoo.trainer.fit", lambda *a, **k: threads.append(torch.get_num_threads()) or Stopped())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    ctx = Ctx()
    torch.set_num_threads(1)  # a user's one-thread setting (OMP_NUM_THREADS=1): the evaluator must not follow it
    try:
        with pytest.raises(KeyboardInterrupt):  # zoo eval then exits 130, instead of using half-trained weights
            fid.load_evaluator(ctx)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert any("--resume" in m for m in ctx.messages)
    assert threads == [fid.TRAIN_THREADS] and after == 1  # its own count while it trains, the user's afterwards


def test_class_stats_measure_the_spread_over_classes_in_nats():
    # every sample in class 0 of 10: KL(one-hot || uniform) = 1 x log(1 / (1/10)) = log 10 nats
    one = fid.class_stats(torch.eye(10)[[0] * 20])
    assert one["kl_to_uniform"] == pytest.approx(math.log(10)) and one["min_class_share"] == 0.0
    even = fid.class_stats(torch.eye(10).repeat(3, 1), "test_")  # three of each class
    assert even["test_kl_to_uniform"] == pytest.approx(0.0) and even["test_class_shares"] == [0.1] * 10


def test_recipe_id_follows_every_training_key_of_the_recipe():
    """Each of RECIPE_KEYS' train and data keys sets the weights: changing any one gives another recipe id."""
    base = load_config("configs/lenet.yaml")
    for section, key, value in (("train", "precision", "changed"), ("train", "batch_size", 7),
                                ("train", "grad_clip", 0.5), ("train", "scheduler", {"name": "none"}),
                                ("data", "val_size", 123), ("data", "name", "other")):
        changed = json.loads(json.dumps(base))
        changed[section][key] = value
        assert fid.recipe_id(changed) != fid.recipe_id(base), key


def test_an_evaluator_named_by_zoo_evaluator_is_flagged_not_refused(off_recipe_lenet, monkeypatch):
    """$ZOO_EVALUATOR names the evaluator as --evaluator does: off the recipe it is used, flagged."""
    monkeypatch.setenv("ZOO_EVALUATOR", str(off_recipe_lenet))
    ctx, info = Ctx(), {}
    fid.load_evaluator(ctx, info=info)
    assert info["evaluator"] == str(off_recipe_lenet) and info["evaluator_matches_recipe"] is False
    assert any("not from the recipe" in m for m in ctx.messages)


def test_a_named_evaluator_that_does_not_exist_is_refused_without_training(tmp_path, monkeypatch):
    """A typo in --evaluator (or $ZOO_EVALUATOR) must not start a training run at the typo's path."""
    monkeypatch.setattr("zoo.trainer.fit", lambda *a, **k: pytest.fail("trained an evaluator at a typo's path"))
    monkeypatch.delenv("ZOO_EVALUATOR", raising=False)
    with pytest.raises(ZooError, match="neither a trained run dir nor a checkpoint"):
        fid.load_evaluator(Ctx(str(tmp_path / "lenett")))
    monkeypatch.setenv("ZOO_EVALUATOR", str(tmp_path / "lenett"))
    with pytest.raises(ZooError, match="neither a trained run dir nor a checkpoint"):
        fid.load_evaluator(Ctx())
    assert not (tmp_path / "lenett").exists()


def test_an_evaluator_without_metrics_json_counts_as_finished(off_recipe_lenet, tmp_path):
    """Only a metrics.json that says otherwise marks an evaluator unfinished (a copied run may have none)."""
    bare = tmp_path / "bare"
    shutil.copytree(off_recipe_lenet, bare)
    (bare / "metrics.json").unlink()
    ctx, info = Ctx(str(bare)), {}
    fid.load_evaluator(ctx, info=info)
    assert info["evaluator_finished"] is True and not any("did not finish" in m for m in ctx.messages)
