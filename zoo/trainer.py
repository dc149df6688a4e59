"""The one training loop. It knows no model by name: models speak through the ZooModel contract.

State is explicit (epoch, step, batch within the epoch, every RNG, the noise generator of the data): a run
stopped after any step and resumed from its checkpoint continues with the same numbers as an uninterrupted run.
Data order is a function of (seed, epoch), so a mid-epoch resume only skips the batches already seen.
Under torchrun each process trains on its shard of that order and gradients are averaged (zoo/distributed.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .config import dump
from .data import create_data
from .distributed import Dist
from .errors import ConfigError, ZooError, suggest
from .registry import create_model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ZooError("train.device is 'cuda' but no CUDA device is available; use train.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """runs/NAME, or runs/NAME-2, -3... if NAME already holds a run (never overwrite a run silently)."""
    path, i = root / name, 1
    while (path / "checkpoints").exists():
        i += 1
        path = root / f"{name}-{i}"
    return path


def _build_optimizer(params, o: dict) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
    cls = torch.optim.Adam if o["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])


def _build_scheduler(opt, s: dict, epochs: int):
    if s["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=s["min_lr"])
    if s["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s["step_size"], gamma=s["gamma"])
    if s["name"] == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s["gamma"])
    return None


def to_image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    return make_grid(images, nrow=nrow or max(1, int(math.sqrt(len(images)))), padding=2, pad_value=1.0)


def save_png(tensor_or_figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(tensor_or_figure, torch.Tensor):
        from torchvision.utils import save_image

        save_image(to_image_grid(tensor_or_figure), str(path))
    else:
        tensor_or_figure.savefig(path, dpi=100, bbox_inches="tight")


class StopRequests:
    """While training, SIGINT (Ctrl-C) and SIGTERM (kill, schedulers, torchrun) ask for a stop instead of raising
    mid-step: the loop finishes its batch, so every optimizer of the schedule has stepped, then saves a resumable
    last.pt. A second Ctrl-C stops at once, saving nothing."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class _NoWriter:
    """What ranks other than 0 log to: nothing (rank 0 alone writes the run dir)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Trainer:
    """Builds data, model, optimizers from a resolved config and runs (or resumes) training in ``run_dir``."""

    def __init__(self, cfg: dict, run_dir: str | Path | None = None, *, quiet: bool = False, resume: bool = False,
                 log=print):
        t = cfg["train"]
        self.dist = Dist.from_env(t["device"])
        if not self.dist.is_main:  # one progress bar and one set of messages, from rank 0
            quiet, log = True, (lambda s: None)
        self.cfg, self.quiet, self.log = cfg, quiet, log
        self.device = self.dist.device(pick_device(t["device"]))
        if t["precision"] == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
        chosen = (str(run_dir) if run_dir else str(new_run_dir(cfg["name"]))) if self.dist.is_main else None
        self.run_dir = Path(self.dist.broadcast_object(chosen))  # numbered once, by rank 0
        resume_ckpt = None
        if resume:
            resume_ckpt = ckpt_io.load(ckpt_io.find_checkpoint(self.run_dir, "last"))
            self._check_resumable(resume_ckpt)
        elif (self.run_dir / "checkpoints" / "last.pt").exists():
            raise ZooError(f"'{self.run_dir}' already holds a run; use --resume {self.run_dir} to continue it "
                           f"or pick another --run-dir")

        seed_everything(t["seed"])
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 fetches the data first: one download, not one per process
        self.data = create_data(**{k: v for k, v in cfg["data"].items()}).to(self.device)
        if self.dist.is_main:
            self.dist.barrier()
        margs = {k: v for k, v in cfg["model"].items() if k != "name"}
        self.model = create_model(cfg["model"]["name"], **{**self.data.info, **margs}).to(self.device)
        if self.dist.enabled and self.model.manual_update:
            raise ZooError(f"model '{cfg['model']['name']}' updates by a rule, not by gradients, so its processes "
                           f"cannot average their steps; train it with plain zoo train (one process)")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        if not self.model.manual_update:
            groups = self.model.param_groups()
            for g in t["optimizers"]:
                if g not in groups:
                    raise ConfigError(f"unknown key 'train.optimizers.{g}'{suggest(g, groups)}; this model's "
                                      f"optimizers are: {', '.join(groups)}")
            for name, params in groups.items():
                o = t["optimizers"].get(name, t["optimizer"])
                self.optimizers[name] = _build_optimizer(params, o)
                sched = _build_scheduler(self.optimizers[name], t["scheduler"], t["epochs"])
                if sched is not None:
                    self.schedulers[name] = sched
        self.scaler = torch.amp.GradScaler("cuda", enabled=t["precision"] == "fp16")
        self.noise = torch.Generator().manual_seed(t["seed"] + 1)  # the data's per-batch noise (dequantisation)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.best = math.inf
        self.history: list[dict] = []
        self.epochs_log: list[dict] = []
        self.model.setup(self.data)
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        else:
            self.model.on_fit_start(self.data)
            if self.dist.enabled:
                self._seed_rank()
        self.dist.broadcast_module(self.model)  # the replicas start identical, whatever each one drew
        self.writer = None

    def _seed_rank(self) -> None:
        """Each process its own random streams (dropout, GAN noise, dequantisation) after the shared init."""
        seed = self.cfg["train"]["seed"] + 100_003 * self.dist.rank
        seed_everything(seed)
        self.noise.manual_seed(seed + 1)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _check_resumable(self, ck: dict) -> None:
        old = ck["config"]
        for section in ("model", "data"):
            if old[section] != self.cfg[section]:
                diff = [k for k in set(old[section]) | set(self.cfg[section])
                        if old[section].get(k) != self.cfg[section].get(k)]
                raise ZooError(f"cannot resume '{self.run_dir}': its {section}.{sorted(diff)[0]} differs from this "
                               f"config ({old[section].get(sorted(diff)[0])!r} vs "
                               f"{self.cfg[section].get(sorted(diff)[0])!r}); use the run's config.yaml")

    def state(self, all_ranks: bool = True) -> dict[str, Any]:
        """The checkpoint payload. With several processes and ``all_ranks`` (a collective: every rank calls it)
        it carries each rank's RNG states, which an exact resume needs."""
        out = {
            "model_name": self.cfg["model"]["name"],
            "config": self.cfg,
            "data_info": self.data.info,
            "model": ckpt_io.unwrap(self.model).state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "rng": ckpt_io.rng_state(),
            "noise_rng": self.noise.get_state(),
        }
        if self.dist.enabled and all_ranks:
            out["rank_rng"] = self.dist.gather_object({"rng": out["rng"], "noise_rng": out["noise_rng"]})
        return out

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(ck["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(ck["schedulers"][k])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step, self.batch_in_epoch = ck["epoch"], ck["step"], ck["batch_in_epoch"]
        self.best = ck["best"]
        ranks = ck.get("rank_rng") or [{"rng": ck["rng"], "noise_rng": ck["noise_rng"]}]
        if len(ranks) == self.dist.world:
            ckpt_io.set_rng_state(ranks[self.dist.rank]["rng"])
            self.noise.set_state(ranks[self.dist.rank]["noise_rng"])
        else:
            self.log(f"note: {self.run_dir} was trained by {len(ranks)} process(es) and resumes with "
                     f"{self.dist.world}: it continues, but not with the numbers of an uninterrupted run")
            self._seed_rank()
        metrics = self.run_dir / "metrics.json"
        if metrics.exists():
            old = json.loads(metrics.read_text())
            self.history = [h for h in old.get("history", []) if h["step"] <= self.step]
            self.epochs_log = [e for e in old.get("epochs", []) if e["epoch"] < self.epoch]
        self.log(f"resuming {self.run_dir} at epoch {self.epoch}, step {self.step}")

    def save(self, which: str = "last") -> None:
        """Rank 0 writes. ``last`` is collective (all ranks call it at the same step); ``best`` is not."""
        state = self.state(all_ranks=which == "last")
        if self.dist.is_main:
            ckpt_io.save(self.run_dir / "checkpoints" / f"{which}.pt", state)

    def write_metrics(self, status: str) -> dict:
        out = {"name": self.cfg["name"], "model": self.cfg["model"]["name"], "status": status,
               "epoch": self.epoch, "step": self.step, "best": self.best if math.isfinite(self.best) else None,
               "epochs": self.epochs_log, "history": self.history}
        if self.dist.is_main:
            tmp = self.run_dir / "metrics.json.tmp"
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, self.run_dir / "metrics.json")
        return out

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _autocast(self):
        p = self.cfg["train"]["precision"]
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg["train"]["seed"] * 1_000_003 + epoch)
        return torch.randperm(self.data.size("train"), generator=g).to(self.device)

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One batch: every optimizer of the model's schedule in turn. Returns detached terms (no host sync)."""
        model, t = self.model, self.cfg["train"]
        logged: dict[str, torch.Tensor] = {}
        schedule = model.update_schedule()
        several = len(set(schedule)) > 1
        for name in schedule:
            prefix = f"{name}/" if several else ""
            if model.manual_update:
                with torch.no_grad():
                    terms = model.training_step(batch, optimizer=name)
            else:
                with self._autocast():
                    terms = model.training_step(batch, optimizer=name)
                opt = self.optimizers[name]
                opt.zero_grad(set_to_none=True)
                self.scaler.scale(terms["loss"]).backward()
                self.dist.average_grads(p for g in opt.param_groups for p in g["params"])
                if t["grad_clip"]:
                    self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], t["grad_clip"])
                self.scaler.step(opt)
                self.scaler.update()
            for k, v in terms.items():
                logged[prefix + k] = v.detach().float()
        return logged

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        split = "val" if "val" in self.data.splits else "test"
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        gen = torch.Generator().manual_seed(12345)  # same validation noise every epoch: comparable numbers
        for batch in self.data.batches(split, self.cfg["train"]["eval_batch_size"], generator=gen):
            b = len(batch[0])
            with self._autocast():
                terms = self.model.validation_step(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * b
            n += b
        self.model.train()
        return {f"val/{k}": (v / n).item() for k, v in sums.items()}

    def log_visuals(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        split = "val" if "val" in self.data.splits else "test"
        batch = next(self.data.batches(split, 64, generator=torch.Generator().manual_seed(0)))
        self.model.eval()
        with torch.no_grad():
            visuals = self.model.visuals(batch)
        self.model.train()
        for name, v in visuals.items():
            save_png(v, self.run_dir / "samples" / f"{name}_epoch{epoch:03d}.png")
            if isinstance(v, torch.Tensor):
                self.writer.add_image(name, to_image_grid(v), epoch)
            else:
                self.writer.add_figure(name, v, epoch)

    def fit(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump(self.cfg))
            self.writer = SummaryWriter(str(self.run_dir), purge_step=self.step if self.step else None)
        else:
            self.writer = _NoWriter()
        if self.step == 0:
            self.writer.add_text("config", "```\n" + dump(self.cfg) + "\n```", 0)
        self.model.train()
        stop = StopRequests()
        with stop:
            status = self._loop(stop)
        self.save()
        out = self.write_metrics(status)
        if status == "finished" and self.dist.is_main:
            self.finish()
        elif status == "interrupted":
            self.log(f"{stop.requested or 'stop request'}: saved {self.run_dir} at epoch {self.epoch}, "
                     f"step {self.step}")
        self.writer.close()
        self.dist.close()
        return out

    def _loop(self, stop: StopRequests) -> str:
        """Epochs until done, ``max_steps`` (status "stopped") or a stop request ("interrupted")."""
        t = self.cfg["train"]
        bs = t["batch_size"]
        status = "finished"
        try:
            from tqdm import tqdm
        except ImportError:  # progress is optional
            tqdm = None
        while self.epoch < t["epochs"]:
            if self.dist.any(stop.requested is not None):
                return "interrupted"
            order = self.dist.shard(self._order(self.epoch))
            n_batches = -(-len(order) // bs)
            bar = None
            if tqdm is not None and not self.quiet:
                bar = tqdm(total=n_batches, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/{t['epochs']}",
                           unit="batch", dynamic_ncols=True, leave=False)
            sums: dict[str, torch.Tensor] = {}
            count, seen, t0 = 0, 0, time.perf_counter()
            for batch in self.data.batches("train", bs, order=order, skip=self.batch_in_epoch, generator=self.noise):
                terms = self.train_step(batch)
                self.step += 1
                self.model.on_train_batch_end(self.step)
                self.batch_in_epoch += 1
                seen += len(batch[0])
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                count += 1
                if t["log_every"] and self.step % t["log_every"] == 0:
                    values = self.dist.mean({k: (v / count).item() for k, v in sums.items()})
                    for k, v in values.items():
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                    rate = seen * self.dist.world / (time.perf_counter() - t0)
                    self.writer.add_scalar("train/items_per_s", rate, self.step)
                    self.history.append({"step": self.step, "epoch": self.epoch, **values})
                    if bar is not None:
                        bar.set_postfix(loss=f"{values.get('loss', next(iter(values.values()))):.4g}",
                                        img_s=f"{rate:.0f}")
                    sums, count = {}, 0
                if bar is not None:
                    bar.update(1)
                if t["ckpt_every"] and self.step % t["ckpt_every"] == 0:
                    self.save()
                if t["max_steps"] and self.step >= t["max_steps"]:
                    status = "stopped"
                    break
                if self.dist.any(stop.requested is not None):
                    status = "interrupted"
                    break
            if bar is not None:
                bar.close()
            if status != "finished" and self.batch_in_epoch < n_batches:
                return status  # mid-epoch: last.pt resumes from the next batch
            self.end_epoch()
            if status != "finished":
                return status
        return status

    def end_epoch(self) -> None:
        """Epoch bookkeeping: model hook, validation, visuals, schedulers, checkpoints, metrics."""
        extra = self.model.on_epoch_end(self.epoch)
        self.dist.broadcast_module(self.model, buffers_only=True)  # batch-norm statistics follow rank 0
        val = self.validate()
        row = {"epoch": self.epoch, "step": self.step, **{f"train/{k}": v for k, v in extra.items()}, **val}
        for k, v in row.items():
            if k not in ("epoch", "step"):
                self.writer.add_scalar(k, v, self.step)
        for s in self.schedulers.values():
            s.step()
        for name, o in self.optimizers.items():
            self.writer.add_scalar(f"lr/{name}", o.param_groups[0]["lr"], self.step)
        self.log_visuals(self.epoch)
        self.epochs_log.append(row)
        self.epoch += 1
        self.batch_in_epoch = 0
        key = self.cfg["train"]["best_metric"]
        if key in row and row[key] < self.best:
            self.best = row[key]
            self.save("best")
        self.save()
        self.write_metrics("running")
        if not self.quiet:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("val/"))
            self.log(f"epoch {self.epoch}/{self.cfg['train']['epochs']}: {shown}")

    def finish(self) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.model.eval()
        with torch.no_grad():
            for name, v in (self.model.artifacts(self.data, self.run_dir) or {}).items():
                if isinstance(v, torch.Tensor):
                    self.writer.add_image(name, to_image_grid(v), self.step)
                elif hasattr(v, "savefig"):
                    save_png(v, self.run_dir / f"{name}.png")
                    self.writer.add_figure(name, v, self.step)
        flat = {"model": self.cfg["model"]["name"]}
        for section in ("model", "train"):
            for k, v in self.cfg[section].items():
                if isinstance(v, (int, float, str, bool)) and k != "name":
                    flat[f"{section}.{k}"] = v
            for k, v in (self.cfg[section].get("optimizer") or {}).items():
                if isinstance(v, (int, float, str)):
                    flat[f"{section}.optimizer.{k}"] = v
        last = self.epochs_log[-1] if self.epochs_log else {}
        metrics = {f"hparam/{k}": v for k, v in last.items() if k.startswith("val/")}
        for summary in hparams(flat, metrics):
            self.writer.file_writer.add_summary(summary)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, self.step)


def fit(cfg: dict, run_dir: str | Path | None = None, *, quiet: bool = True, resume: bool = False) -> Trainer:
    """Train (or resume) from a resolved config; returns the trainer with its model, data and metrics."""
    trainer = Trainer(cfg, run_dir, quiet=quiet, resume=resume, log=(lambda s: None) if quiet else print)
    trainer.metrics = trainer.fit()
    return trainer
