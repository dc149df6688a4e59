"""The trainer: exact resume, run-dir contents, TensorBoard events, checkpoints, no model-specific branches."""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
import struct
from pathlib import Path

import pytest
import torch

from conftest import small_vae_config
from zoo import checkpoint as ckpt_io
from zoo.config import load_config
from zoo.errors import ZooError
from zoo.optim import fit_horizon
from zoo.registry import list_models
from zoo.trainer import Trainer, fit


def _losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.metrics["history"]]


@pytest.fixture(scope="module")
def full(mnist_root, tmp_path_factory):
    """The small VAE trained start to finish without a stop: what every stopped-and-resumed run must equal."""
    return fit(load_config(small_vae_config(mnist_root)), tmp_path_factory.mktemp("full") / "a")


def test_resume_mid_epoch_gives_the_same_losses(mnist_root, tmp_path, full, capsys):
    stopped = fit(load_config(small_vae_config(mnist_root, max_steps=13)), tmp_path / "b")
    assert stopped.metrics["status"] == "stopped" and stopped.metrics["step"] == 13
    moved = tmp_path / "moved"  # the data moved meanwhile (another disk, another machine): it resumes there
    moved.symlink_to(Path(mnist_root).resolve(), target_is_directory=True)
    capsys.readouterr()
    resumed = fit(load_config(small_vae_config(moved)), tmp_path / "b", resume=True, quiet=False)
    assert f"data.root is now '{moved}'" in capsys.readouterr().out
    assert resumed.metrics["status"] == "finished"
    assert len(_losses(full)) == 20  # 2 epochs of 10 batches, one logged value each
    assert _losses(resumed) == _losses(full)
    assert [e["val/loss"] for e in resumed.metrics["epochs"]] == [e["val/loss"] for e in full.metrics["epochs"]]
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_after_the_batch_and_resume_continues_exactly(mnist_root, tmp_path, monkeypatch, sig, full):
    real_step, calls = Trainer.train_step, []

    def step_then_signal(self, batch):
        out = real_step(self, batch)
        calls.append(1)
        if len(calls) == 5:  # arrives mid-epoch, while the loop is busy
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    before = signal.getsignal(sig)
    stopped = fit(load_config(small_vae_config(mnist_root)), tmp_path / "b")
    assert signal.getsignal(sig) is before  # the handler is put back
    assert stopped.metrics["status"] == "interrupted" and stopped.metrics["step"] == 5
    ck = ckpt_io.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (ck["step"], ck["batch_in_epoch"]) == (5, 5)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = fit(load_config(small_vae_config(mnist_root)), tmp_path / "b", resume=True)
    assert resumed.metrics["status"] == "finished" and _losses(resumed) == _losses(full)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_cli_reports_an_interrupted_run_with_exit_130_and_the_resume_command(mnist_root, tmp_path, monkeypatch,
                                                                             capsys):
    from zoo.cli import main

    real_step = Trainer.train_step

    def interrupted(self, batch):
        os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    run = tmp_path / "run"
    code = main(["train", "configs/vae.yaml", "--run-dir", str(run), "--quiet", f"data.root={mnist_root}",
                 "data.limit=256", "data.val_size=64", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 130 and f"--resume {run}" in err
    assert json.loads((run / "metrics.json").read_text())["step"] == 1
    monkeypatch.setattr(Trainer, "train_step", real_step)
    again = err.split("continue with: zoo ")[1].split()  # the printed command works as printed (overrides too)
    assert main([*again, "--quiet", "train.max_steps=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["step"] == 3


def test_same_seed_same_numbers_other_seed_other_numbers(mnist_root, tmp_path):
    cfg = small_vae_config(mnist_root, epochs=1, max_steps=4)
    a = fit(load_config(cfg), tmp_path / "a")
    b = fit(load_config(cfg), tmp_path / "b")
    cfg["train"]["seed"] = 4
    c = fit(load_config(cfg), tmp_path / "c")
    assert _losses(a) == _losses(b)
    assert _losses(a) != _losses(c)


def test_run_dir_holds_config_checkpoints_events_and_samples(mnist_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    tr = fit(load_config(small_vae_config(mnist_root, epochs=1)), run)
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert load_config(str(run / "config.yaml")) == tr.cfg  # the saved config reproduces the run
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")  # weights_only=True inside
    for key in ("model_name", "config", "model", "optimizers", "schedulers", "epoch", "step", "rng",
                "zoo_version", "torch_version"):
        assert key in ck, key
    assert ck["model_name"] == "gaussian_ae" and ck["step"] == 10 and ck["epoch"] == 1
    assert (run / "checkpoints" / "best.pt").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))  # atomic writes leave no temp files
    pngs = {p.name for p in (run / "samples").glob("*.png")}
    assert {"reconstructions_epoch000.png", "samples_epoch000.png"} <= pngs

    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/kl", "train/nll", "val/loss", "val/bpd"} <= set(tags["scalars"])
    assert {"reconstructions", "samples"} <= set(tags["images"])
    assert len(acc.Scalars("train/loss")) == 10
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def test_existing_run_is_not_overwritten(mnist_root, tmp_path):
    fit(load_config(small_vae_config(mnist_root, max_steps=1)), tmp_path / "r")
    with pytest.raises(ZooError, match="--resume"):
        fit(load_config(small_vae_config(mnist_root, max_steps=1)), tmp_path / "r")


def test_resume_refuses_a_different_model(mnist_root, tmp_path):
    fit(load_config(small_vae_config(mnist_root, max_steps=2)), tmp_path / "r")
    other = small_vae_config(mnist_root)
    other["model"]["latent_dim"] = 4
    with pytest.raises(ZooError, match="latent_dim"):
        fit(load_config(other), tmp_path / "r", resume=True)


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ZooError, match="not a readable zoo checkpoint"):
        ckpt_io.load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ZooError, match="not a zoo checkpoint"):
        ckpt_io.load(foreign)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_io.save(path, {"model_name": "x", "config": {"model": {}}, "model": {"v": torch.ones(3)}})
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the Python version
        ckpt_io.save(path, {"model_name": "x", "config": {"model": {}}, "model": {"v": lambda: 0}})  # fails mid-write
    assert torch.equal(ckpt_io.load(path)["model"]["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_trainer_loop_has_no_model_specific_branches():
    source = Path(__file__).parents[1].joinpath("zoo", "trainer.py").read_text()
    for info in list_models():
        assert not re.search(rf"\b{re.escape(info.name)}\b", source), f"trainer mentions model '{info.name}'"
        assert not re.search(rf"\b{re.escape(info.family)}\b", source), f"trainer mentions '{info.family}'"


def test_more_epochs_on_resume_stretch_the_cosine_instead_of_training_at_its_end(tmp_path):
    cfg = {"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 2, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "device": "cpu",
                     "scheduler": {"name": "cosine"}}}
    fit(load_config(cfg), tmp_path / "run")
    cfg["train"]["epochs"] = 4
    losses = [e["val/loss"] for e in fit(load_config(cfg), tmp_path / "run", resume=True).metrics["epochs"]]
    assert len(losses) == 4 and losses[3] < losses[2] < losses[1]  # the added epochs train (lr was 0 there)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.8)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    for _ in range(2):  # the end of a 2-epoch run: lr 0
        opt.step(), cosine.step()
    fit_horizon(cosine, 4)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(2):
        opt.step(), cosine.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.8 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (2, 3, 4)], abs=1e-12)


def test_optimizer_and_schedule_settings_reach_torch():
    """A setting lost on its way to torch would train silently with torch's default instead."""
    from zoo.config import OPTIMIZER, SCHEDULER
    from zoo.optim import build_optimizer, build_scheduler

    def params():
        return [torch.nn.Parameter(torch.zeros(2))]

    sgd = build_optimizer(params(), {**OPTIMIZER, "name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01})
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.1, 0.9, 0.01)
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        opt = build_optimizer(params(), {**OPTIMIZER, "name": name, "weight_decay": 0.05, "betas": [0.5, 0.9]})
        assert type(opt) is cls and opt.defaults["weight_decay"] == 0.05 and opt.defaults["betas"] == (0.5, 0.9)
    cosine = build_scheduler(sgd, {**SCHEDULER, "name": "cosine", "min_lr": 0.02}, 4)
    assert (cosine.T_max, cosine.eta_min) == (4, 0.02)
    for _ in range(4):
        sgd.step(), cosine.step()
    # at T_max the cosine reaches its floor: eta_min + (0.1 - eta_min) * (1 + cos(pi)) / 2 = eta_min
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.02)
    step = build_scheduler(build_optimizer(params(), {**OPTIMIZER, "lr": 0.8}),
                           {**SCHEDULER, "name": "step", "step_size": 3, "gamma": 0.5}, 4)
    assert (step.step_size, step.gamma) == (3, 0.5)
    assert build_scheduler(sgd, SCHEDULER, 4) is None  # name none: a constant rate


def test_reload_keeps_only_what_metrics_json_recorded_up_to_the_checkpoint(tmp_path):
    """metrics.json was written at step 6 (three 2-step epochs); the resume starts from a checkpoint at step 4,
    after two epochs: the rows after it are trained again and must not appear twice."""
    from zoo.runlog import RunLog

    (tmp_path / "metrics.json").write_text(json.dumps({
        "history": [{"step": s, "epoch": (s - 1) // 2, "loss": float(s)} for s in range(1, 7)],
        "epochs": [{"epoch": e, "step": 2 * (e + 1), "val/loss": float(e)} for e in range(3)]}))
    log = RunLog(tmp_path, {"name": "n", "model": {"name": "m"}})
    log.reload(4, 2)  # step 4, 2 epochs finished
    assert [h["step"] for h in log.history] == [1, 2, 3, 4]
    assert [e["epoch"] for e in log.epochs] == [0, 1]


def test_a_fresh_start_clears_the_leftovers_of_a_start_that_died_before_its_first_checkpoint(tmp_path):
    cfg = {"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 1, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "device": "cpu"}}
    run = tmp_path / "run"
    run.mkdir()
    stale = run / "events.out.tfevents.1.dead.1.0"
    stale.write_bytes(b"")  # a dead start's curves would be drawn beside this run's
    (run / "metrics.json").write_text(json.dumps({"status": "running", "step": 99}))
    tr = fit(load_config(cfg), run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 1 and not stale.exists()
    assert json.loads((run / "metrics.json").read_text())["step"] == tr.step


def test_new_run_dirs_are_numbered_past_the_runs_already_there(tmp_path):
    from zoo.runlog import new_run_dir

    assert new_run_dir("n", tmp_path) == tmp_path / "n"
    for taken in ("n", "n-2"):
        (tmp_path / taken / "checkpoints").mkdir(parents=True)
    assert new_run_dir("n", tmp_path) == tmp_path / "n-3"  # n is the first, then n-2: never n-1


def _hparams(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in values.items()}


def test_hparams_name_the_schedule_and_each_groups_optimizer(tmp_path):
    cfg = {"name": "h", "model": {"name": "gan1d", "width": 8, "depth": 1}, "data": {"name": "triangle1d", "n": 2000},
           "train": {"epochs": 1, "batch_size": 1000, "device": "cpu", "best_metric": "none",
                     "optimizer": {"name": "adam", "lr": 1e-3}, "optimizers": {"d": {"name": "sgd", "lr": 0.25}},
                     "scheduler": {"name": "step", "step_size": 3, "gamma": 0.5}}}
    tr = fit(load_config(cfg), tmp_path / "run")
    # D really trained with its own section, G with train.optimizer (one epoch of step_size 3: no decay yet)
    d, g = tr.optimizers["d"], tr.optimizers["g"]
    assert type(d) is torch.optim.SGD and d.param_groups[0]["lr"] == 0.25
    assert type(g) is torch.optim.Adam and g.param_groups[0]["lr"] == pytest.approx(1e-3)
    hp = _hparams(tmp_path / "run")  # the GAN's D trained with sgd at 0.25: the summary must say so
    assert hp["train.optimizers.d.name"] == "sgd" and hp["train.optimizers.d.lr"] == 0.25
    assert hp["train.scheduler.name"] == "step" and hp["train.scheduler.gamma"] == 0.5
    assert hp["train.optimizer.lr"] == pytest.approx(1e-3) and hp["model.width"] == 8 and "model.name" not in hp
    # the data that trained it, lists and booleans as the config writes them (they were left out, or 0.0/1.0)
    assert hp["data"] == "triangle1d" and hp["data.n"] == 2000 and "data.name" not in hp
    assert hp["train.optimizer.betas"] == "[0.9, 0.999]" and hp["model.freeze_g_identity"] is False


def test_visuals_share_the_scalars_step_axis_and_an_artifact_does_not_repeat_the_last_epochs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # gan1d draws its curves every epoch and the same figure as its end-of-run artifact
    cfg = {"name": "v", "model": {"name": "gan1d", "width": 8, "depth": 1}, "data": {"name": "triangle1d", "n": 2000},
           "train": {"epochs": 2, "batch_size": 1000, "device": "cpu", "best_metric": "none"}}
    tr = fit(load_config(cfg), tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    acc.Reload()
    val_steps = [e.step for e in acc.Scalars("val/d_loss")]
    assert val_steps == [e["step"] for e in tr.metrics["epochs"]] == [2, 4]
    # an epoch's picture sits at the step of its validation point (it was at the epoch index: 0, 1 beside 2, 4),
    # once (the artifact, the same figure, was a second picture at the last step)
    assert [e.step for e in acc.Images("gan1d_curves")] == val_steps
    assert (tmp_path / "run" / "gan1d_curves.png").is_file()  # the artifact's file is still written
    assert {p.name for p in (tmp_path / "run" / "samples").iterdir()} == {"gan1d_curves_epoch000.png",
                                                                         "gan1d_curves_epoch001.png"}


def test_a_run_killed_during_its_end_of_run_work_resumes_to_do_it_once(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Killed(Exception):
        pass

    def killed(self):
        raise Killed

    cfg = {"name": "v", "model": {"name": "gan1d", "width": 8, "depth": 1}, "data": {"name": "triangle1d", "n": 2000},
           "train": {"epochs": 2, "batch_size": 1000, "device": "cpu", "best_metric": "none"}}
    with monkeypatch.context() as m:
        m.setattr(Trainer, "finish", killed)
        with pytest.raises(Killed):
            fit(load_config(cfg), tmp_path / "run")
    # metrics.json said "finished" before the artifacts were made, so the resume was refused and they never came
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "running"
    assert not (tmp_path / "run" / "gan1d_curves.png").exists()
    tr = fit(load_config(cfg), tmp_path / "run", resume=True)
    assert tr.metrics["status"] == "finished" and (tmp_path / "run" / "gan1d_curves.png").is_file()
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    acc.Reload()
    # the last epoch's picture, logged before the kill, is not logged a second time as the artifact
    assert [e.step for e in acc.Images("gan1d_curves")] == [e["step"] for e in tr.metrics["epochs"]] == [2, 4]


def _hparams_tab(logdir: Path) -> dict[str, dict]:
    """What TensorBoard's HPARAMS tab shows for ``tensorboard --logdir LOGDIR``: run -> {hparam or metric: value},
    from the hparams plugin itself."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from tensorboard.plugins.scalar import scalars_plugin
    from werkzeug import test as wtest
    from werkzeug import wrappers

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    ctx = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, plugin_name_to_instance={},
                                data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    ctx.plugin_name_to_instance["scalars"] = scalars_plugin.ScalarsPlugin(ctx)
    route = hparams_plugin.HParamsPlugin(ctx).get_plugin_apps()["/session_groups"]
    query = {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [], "startIndex": 0,
             "sliceSize": 100}
    answer = wtest.Client(route, wrappers.Response).post("/", data=json.dumps(query), content_type="application/json")
    return {g["name"]: {**g["hparams"], **{m["name"]["tag"]: m["value"] for m in g["metricValues"]}}
            for g in json.loads(answer.get_data())["sessionGroups"]}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TensorBoard's vendored html sanitizer, on import
def test_hparams_tab_of_a_logdir_of_several_models_shows_each_runs_metrics_and_hparams(tmp_path):
    fit(load_config({"name": "g", "model": {"name": "gan1d", "width": 8, "depth": 1},
                     "data": {"name": "triangle1d", "n": 2000},
                     "train": {"epochs": 1, "batch_size": 1000, "device": "cpu", "best_metric": "none"}}),
        tmp_path / "runs" / "g")
    tr = fit(load_config({"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
                          "data": {"name": "homework", "problem": "hw6_q1a"},
                          "train": {"epochs": 2, "batch_size": 2, "device": "cpu"}}), tmp_path / "runs" / "q")
    tab = _hparams_tab(tmp_path / "runs")
    # each run wrote an 'experiment' naming its own metrics and TensorBoard takes one for the whole logdir: the
    # GAN's d_loss column (or the autoencoder's loss) was empty, and so were the other model's hparam columns
    assert tab["g"]["model.width"] == 8 and "val/d_loss" in tab["g"] and "val/g_loss" in tab["g"]
    assert tab["q"]["model.k"] == 1 and tab["q"]["val/loss"] == pytest.approx(tr.metrics["epochs"][-1]["val/loss"])


def test_a_run_finished_again_after_a_resume_has_one_hparams_entry_with_the_config_in_force(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg = {"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 2, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "device": "cpu"}}
    resumed_at = fit(load_config(cfg), tmp_path / "run").metrics["step"]
    cfg["train"]["epochs"] = 3
    fit(load_config(cfg), tmp_path / "run", resume=True)
    files = sorted((tmp_path / "run").glob("events.out.tfevents.*"))
    starts = [f.name for f in files for e in EventFileLoader(str(f)).Load()
              for v in e.summary.value if v.tag == "_hparams_/session_start_info"]
    # TensorBoard keeps a run's first summary: the first finish's epochs 2 stood in the HPARAMS tab, beside a second
    assert len(files) == 2 and starts == [files[1].name]
    assert _hparams(tmp_path / "run")["train.epochs"] == 3
    # the TEXT tab's config: the one the resume trained with, from the step after the checkpoint (it kept epochs: 2)
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("config/text_summary")]
    assert [step for step, _ in texts] == [0, resumed_at + 1]
    assert "epochs: 2" in texts[0][1] and "epochs: 3" in texts[1][1]
    with open(files[0], "ab") as f:  # garbage after the old file's records: the next finish still ends cleanly
        f.write(struct.pack("<Q", 3) + b"\0" * 4 + b"\xff\xff\xff" + b"\0" * 4)
    cfg["train"]["epochs"] = 4
    assert fit(load_config(cfg), tmp_path / "run", resume=True).metrics["status"] == "finished"


def test_lr_curve_shows_the_rate_each_epoch_trained_at(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = {"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 3, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.8}, "device": "cpu",
                     "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}}
    tr = fit(load_config(cfg), tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    steps = [e["step"] for e in tr.metrics["epochs"]]
    # epoch e (ending at steps[e]) trained at 0.8 * 0.5^e; the rate set for after the last epoch is never used
    assert [e.step for e in acc.Scalars("lr/main")] == steps
    assert [e.value for e in acc.Scalars("lr/main")] == pytest.approx([0.8 * 0.5 ** e for e in range(3)])


def test_best_mode_max_keeps_the_highest_value_and_a_changed_mode_restarts_the_best(tmp_path):
    cfg = {"name": "q", "model": {"name": "linear_ae", "k": 1, "tied": True, "center": True},
           "data": {"name": "homework", "problem": "hw6_q1a"},
           "train": {"epochs": 3, "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.01}, "device": "cpu",
                     "best_metric": "val/loss"}}
    best = tmp_path / "max" / "checkpoints" / "best.pt"
    for mode in ("min", "max"):
        cfg["train"]["best_mode"] = mode
        tr = fit(load_config(cfg), tmp_path / mode)
        losses = [e["val/loss"] for e in tr.metrics["epochs"]]
        assert losses[0] > losses[1] > losses[2]  # training lowers the loss: min and max pick different epochs
        kept = ckpt_io.load(tmp_path / mode / "checkpoints" / "best.pt")
        assert (kept["epoch"], tr.metrics["best"]) == ((3, min(losses)) if mode == "min" else (1, max(losses)))
    # resumed under the other mode, the saved best (a maximum) must not block the minimum from being kept
    cfg["train"].update(best_mode="min", epochs=4)
    said = []
    metrics = Trainer(load_config(cfg), tmp_path / "max", resume=True, quiet=True, log=said.append).fit()
    assert any("val/loss (min), was val/loss (max)" in s for s in said)
    assert ckpt_io.load(best)["epoch"] == 4 and metrics["best"] == metrics["epochs"][-1]["val/loss"]


def test_default_validation_step_gathers_the_terms_of_every_optimizer_in_the_schedule():
    """ZooModel's default validation_step calls training_step once per scheduled optimizer, in order."""
    from zoo.models.base import ZooModel

    class TwoSteps(ZooModel):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
            self.calls = []

        def param_groups(self):
            return {"a": [self.a], "b": [self.b]}

        def training_step(self, batch, optimizer="main"):
            self.calls.append(optimizer)
            return {f"{optimizer}_loss": torch.tensor(1.0)}

    m = TwoSteps()
    assert m.update_schedule() == ["a", "b"]  # the default schedule: the groups, in order
    assert set(m.validation_step(None)) == {"a_loss", "b_loss"} and m.calls == ["a", "b"]
    assert m.on_epoch_end(0) == {} and m.visuals(None) == {} and m.device == torch.device("cpu")

    class BufferOnly(ZooModel):  # rule-based models may hold buffers only: their device is the buffers'
        def __init__(self):
            super().__init__()
            self.register_buffer("centres", torch.zeros(2, device="meta"))

    assert BufferOnly().device == torch.device("meta")


def test_metrics_json_holds_status_best_epochs_and_history(tmp_path):
    from zoo.runlog import RunLog

    log = RunLog(tmp_path, {"name": "n", "model": {"name": "m"}})
    log.train_scalars({"loss": 2.0}, 1, 0, 10.0)
    log.epochs.append({"epoch": 0, "step": 1, "val/loss": 1.5})
    log.metrics("finished", 1, 1, 1.5, seconds=3)
    out = json.loads((tmp_path / "metrics.json").read_text())
    assert out["status"] == "finished" and out["best"] == 1.5 and out["seconds"] == 3 and out["model"] == "m"
    assert out["history"] == [{"step": 1, "epoch": 0, "loss": 2.0}] and out["epochs"][0]["val/loss"] == 1.5
    assert not list(tmp_path.glob("*.tmp"))  # written through a temp file renamed over it


def test_forget_hparams_takes_the_whole_earlier_summary_out_of_older_event_files(tmp_path):
    """Both the session start and its end (tags _hparams_/...) leave the older file; its other events stay."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from zoo.runlog import RunLog

    cfg = {"name": "n", "model": {"name": "m", "k": 1}, "data": {"name": "d"}, "train": {"epochs": 1}}
    first = RunLog(tmp_path, cfg)
    first.open(0)
    first.scalars({"loss": 1.0}, 1)
    first.hparams(1)
    first.close()
    old = next(tmp_path.glob("events.out.tfevents.*"))
    tags = lambda: [v.tag for e in EventFileLoader(str(old)).Load() for v in e.summary.value]  # noqa: E731
    assert "_hparams_/session_end_info" in tags()
    second = RunLog(tmp_path, cfg)
    second.open(1)
    second.hparams(2)
    second.close()
    assert "loss" in tags() and not [t for t in tags() if t.startswith("_hparams_/")]


def test_visuals_and_artifacts_reach_tensorboard_and_files_once_per_step(tmp_path):
    """A visual goes to TensorBoard at its step and to samples/NAME_epochEEE.txt; an artifact of the same name is
    skipped in TensorBoard only at that same step (the same picture), logged at a later one."""
    from zoo.runlog import RunLog

    logged = []

    class Writer:
        def add_text(self, tag, text, step):
            logged.append((tag, text, step))

    log = RunLog(tmp_path, {"name": "n", "model": {"name": "m"}})
    log.writer = Writer()
    log.visuals({"table": "| a |"}, epoch=2, step=4)
    assert logged == [("table", "| a |", 4)] and (tmp_path / "samples" / "table_epoch002.txt").read_text() == "| a |\n"
    log.artifacts({"table": "| a |"}, step=4)  # the last epoch's visual again: file only
    log.artifacts({"table": "| b |"}, step=6)  # a later step: logged
    assert logged == [("table", "| a |", 4), ("table", "| b |", 6)]
    assert (tmp_path / "table.txt").read_text() == "| b |\n"


def test_a_runlog_of_another_rank_writes_nothing(tmp_path):
    """Under torchrun ranks other than 0 keep the bookkeeping but touch no file, hyper-parameters included."""
    from zoo.runlog import RunLog

    cfg = {"name": "n", "model": {"name": "m"}, "data": {"name": "d"}, "train": {"epochs": 1}}
    log = RunLog(tmp_path / "run", cfg, enabled=False)
    log.open(0)
    log.train_scalars({"loss": 1.0}, 1, 0, 5.0)
    log.visuals({"t": "x"}, 0, 1)
    log.hparams(1)
    out = log.metrics("finished", 1, 1, 1.0)
    log.close()
    assert out["history"] == [{"step": 1, "epoch": 0, "loss": 1.0}] and not (tmp_path / "run").exists()
    # beside rank 0's run dir (events with a hyper-parameter summary): left exactly as rank 0 wrote it
    first = RunLog(tmp_path / "run", cfg)
    first.open(0)
    first.hparams(1)
    first.close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    other = RunLog(tmp_path / "run", cfg, enabled=False)
    other.hparams(2)
    other.metrics("finished", 1, 2, 1.0)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
