"""The one training loop. It knows no model or dataset by name: models speak through the ZooModel contract
(zoo/models/base.py), data through the DataModule contract (zoo/data/base.py); the run dir is RunLog's.

Build order, so a bad config costs nothing: config, the data's declared info (no tensors), model, tensors. State
is explicit (epoch, step, batch in epoch, every RNG), and data order is a function of (seed, epoch): a resumed run
continues with the numbers of an uninterrupted one; under torchrun each process trains on its shard of it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .data.base import build_data, num_items
from .distributed import Dist
from .errors import ConfigError, ZooError
from .optim import apply_update, build_optimizers, load_optimizer_state, restore_schedulers, step_schedulers
from .registry import build_model
from .runlog import Progress, RunLog, new_run_dir
from .runtime import StepWindow, StopRequests, autocast, compile_refusal, pick_device, prepare_model, seed_everything


class Trainer:
    """Builds data, model, optimizers from a resolved config and runs (or resumes) training in ``run_dir``."""

    def __init__(self, cfg: dict, run_dir: str | Path | None = None, *, quiet: bool = False, resume: bool = False,
                 allow_changes: bool = False, log=print, dry_run: int = 0):
        t = cfg["train"]
        self.dist = Dist.from_env(t["device"])
        if not self.dist.is_main:  # one progress bar and one set of messages, from rank 0
            quiet, log = True, (lambda s: None)
        self.cfg, self.quiet, self.log = cfg, quiet, log
        self.dry_run = dry_run  # > 0: each epoch trains this many batches and validates on this many (a smoke test)
        self.device = self.dist.device(pick_device(t["device"], t["precision"]))
        chosen = (str(run_dir) if run_dir else str(new_run_dir(cfg["name"]))) if self.dist.is_main else None
        self.run_dir = Path(self.dist.broadcast_object(chosen))  # numbered once, by rank 0
        resume_ckpt, self.changes = ckpt_io.start_or_resume(self.run_dir, cfg, resume, allow_changes, self.log)

        seed_everything(t["seed"])
        self.data = build_data(**cfg["data"])  # arguments checked, info declared, nothing loaded yet
        if resume_ckpt is not None:
            ckpt_io.check_data_info(resume_ckpt, self.data.info, self.run_dir)
        self.model = prepare_model(build_model(cfg["model"], self.data.info).to(self.device), t, self.device)
        if self.dist.enabled and self.model.manual_update:
            raise ZooError(f"model '{cfg['model']['name']}' updates by a rule, not by gradients, so its processes "
                           f"cannot average their steps; train it with plain zoo train (one process)")
        self.optimizers, self.schedulers = build_optimizers(self.model, t)  # checks train.optimizers' groups
        self.schedule = self.model.update_schedule()  # asked once: the default walks the parameters
        self.several, self.skipped = len(set(self.schedule)) > 1, 0
        self._load_data()

        self.scaler = torch.amp.GradScaler("cuda", enabled=t["precision"] == "fp16")
        self.autocast = autocast(self.device, t["precision"])  # one context, entered once per step
        self.noise = torch.Generator().manual_seed(t["seed"] + 1)  # the data's per-batch randomness
        self.epoch, self.step, self.batch_in_epoch, self.saved_step = 0, 0, 0, None
        self.best = ckpt_io.Best(t)
        self.window = StepWindow()  # no host sync inside a step; log points read together, <= 1 s later
        self.runlog = RunLog(self.run_dir, cfg, enabled=self.dist.is_main)
        self.model.setup(self.data)
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        else:
            self.model.on_fit_start(self.data)
            if self.dist.enabled:
                self._seed_rank()
        self.dist.broadcast_module(self.model)  # the replicas start identical, whatever each one drew
        self._probe_metrics()

    def _load_data(self) -> None:
        """The tensors, after config and model passed: rank 0 fetches first (one download, not one per process)."""
        try:
            if self.dist.is_main:
                self.data.prepare_data()
            self.dist.barrier()
            self.data = self.data.setup().to(self.device)
        except (MemoryError, RuntimeError) as e:  # sizes the config allowed but this machine cannot hold
            raise ZooError(f"data '{self.cfg['data']['name']}' could not be loaded: {str(e).splitlines()[0][:160]}; "
                           f"ask for less data") from None

    def _seed_rank(self) -> None:
        """Each process its own random streams (dropout, GAN noise, dequantisation) after the shared init."""
        seed = self.cfg["train"]["seed"] + 100_003 * self.dist.rank
        seed_everything(seed)
        self.noise.manual_seed(seed + 1)

    @torch.no_grad()
    def _probe_metrics(self) -> None:
        """A ``val/`` best_metric must be one the model reports: checked on two validation items before the run
        dir exists, with every RNG put back, so the run's numbers do not change."""
        if not self.best.metric.startswith("val/"):
            return  # none, or an epoch-end term: checked after the first epoch
        rng = ckpt_io.rng_state()
        self.model.eval()
        batch = next(self.data.batches(self.data.val_split, 2, generator=torch.Generator().manual_seed(0)))
        names = [f"val/{k}" for k in self.model.validation_step(batch)]
        self.model.train()
        ckpt_io.set_rng_state(rng)
        self.best.check(names)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def state(self, all_ranks: bool = True) -> dict[str, Any]:
        """The checkpoint payload. With several processes and ``all_ranks`` (a collective: every rank calls it)
        it carries each rank's RNG states, which an exact resume needs."""
        out = {
            "model_name": self.cfg["model"]["name"], "config": self.cfg, "data_info": self.data.info,
            "model": ckpt_io.unwrap(self.model).state_dict(), "scaler": self.scaler.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}, "window": self.window.held(),
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch, "best": self.best.value,
            "nonfinite_skips": self.skipped, "rng": ckpt_io.rng_state(), "noise_rng": self.noise.get_state(),
        }
        if self.dist.enabled and all_ranks:
            out["rank_rng"] = self.dist.gather_object({k: out[k] for k in ("rng", "noise_rng", "window")})
        return out

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        for k, o in self.optimizers.items():
            load_optimizer_state(o, ck["optimizers"][k])
        restore_schedulers(self.schedulers, ck["schedulers"], self.cfg["train"]["epochs"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step, self.batch_in_epoch = ck["epoch"], ck["step"], ck["batch_in_epoch"]
        self.skipped, self.saved_step = ck.get("nonfinite_skips", 0), ck["step"]
        self.best.restore(ck["best"], ck["config"], self.log)
        ranks = ck.get("rank_rng") or [{"rng": ck["rng"], "noise_rng": ck["noise_rng"], "window": ck.get("window")}]
        if len(ranks) == self.dist.world:
            ckpt_io.set_rng_state(ranks[self.dist.rank]["rng"])
            self.noise.set_state(ranks[self.dist.rank]["noise_rng"])
            self.window.restore(ranks[self.dist.rank].get("window") or [])  # none in checkpoints of older zoos
        else:
            self.log(f"note: {self.run_dir} was trained by {len(ranks)} process(es) and resumes with "
                     f"{self.dist.world}: it continues, but not with the numbers of an uninterrupted run")
            self._seed_rank()
        self.runlog.reload(self.step, self.epoch)
        self.log(f"resuming {self.run_dir} at epoch {self.epoch}, step {self.step}")

    def save(self, which: str = "last") -> None:
        """Rank 0 writes. ``last`` is collective (all ranks call it at the same step); ``best`` is not. Before
        ``last``, metrics.json and the events are written up to this step: a crash loses no logged step."""
        self.publish() if which == "last" else self.check_finite()  # publish: the NaN check, then the log points
        state = self.state(all_ranks=which == "last")
        if not self.dist.is_main:
            return
        directory = self.run_dir / "checkpoints"
        try:
            if which == "last":
                self.runlog.metrics("running", self.epoch, self.step, self.best.value, nonfinite_skips=self.skipped)
                self.runlog.flush()
                ckpt_io.save_rotating(directory, state, self.cfg["train"]["keep_last"])
                self.saved_step = self.step
            else:
                ckpt_io.save(directory / f"{which}.pt", state)
        except OSError as e:
            raise ZooError(f"could not write {which}.pt in {directory} ({e.strerror or e}); the last good "
                           f"checkpoint (step {self.saved_step}) is kept; free the disk and resume") from None

    def publish(self, bar: Progress | None = None) -> None:
        """The log points passed since the last read: NaN check, then their means to TensorBoard, the metrics
        history and the progress bar. A collective under torchrun (the ranks' means are averaged)."""
        self.check_finite()
        values, rate = None, 0.0
        for step, epoch, seen, seconds, values in self.window.take_logs():
            values, rate = self.dist.mean(values), float(seen) * self.dist.world / max(seconds, 1e-9)
            self.runlog.train_scalars(values, step, epoch, rate)
        if bar is not None and values is not None:
            bar.show(values, rate)

    def check_finite(self) -> None:
        """A NaN/inf loss since the last check stops the run before any checkpoint holds it."""
        if (found := self.window.first_nonfinite(self.dist, next(iter(self.optimizers), "main"))) is None:
            return
        step, optimizer, bad, value = found
        where = f"last.pt at step {self.saved_step}" if self.saved_step is not None else "no checkpoint yet"
        raise ZooError(f"step {step}: loss term '{bad}' is {value} (optimizer '{optimizer}'); training stopped, "
                       f"keeping {where} in {self.run_dir}; lower the learning rate, or set train.on_nonfinite=skip "
                       f"to skip such batches")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One batch: every optimizer of the model's schedule in turn. Returns detached terms. No host sync,
        except with ``on_nonfinite: skip``, which must read each loss before deciding to step."""
        model, t, logged = self.model, self.cfg["train"], {}
        for name in self.schedule:
            if model.manual_update:
                with torch.no_grad():
                    terms = model.training_step(batch, optimizer=name)
            else:
                with self.autocast:
                    terms = model.training_step(batch, optimizer=name)
                if t["on_nonfinite"] == "skip" and self.dist.any(not bool(torch.isfinite(terms["loss"].detach()))):
                    self.skipped += 1
                    continue
                apply_update(self.optimizers[name], terms["loss"], self.scaler, self.dist, t["grad_clip"])
            prefix = f"{name}/" if self.several else ""
            logged.update({prefix + k: v.detach() if v.requires_grad else v for k, v in terms.items()})
        return logged

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation metrics averaged over items, each batch weighted by its ``num_items``."""
        self.model.eval()
        sums, n = {}, 0
        gen = torch.Generator().manual_seed(12345)  # same validation noise every epoch: comparable numbers
        for i, batch in enumerate(self.data.batches(self.data.val_split, self.cfg["train"]["eval_batch_size"],
                                                    generator=gen)):
            if self.dry_run and i >= self.dry_run:
                break
            b = num_items(batch)
            with self.autocast:
                terms = self.model.validation_step(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * b
            n = n + b
        self.model.train()
        return {f"val/{k}": float(v / n) for k, v in sums.items()}

    def log_visuals(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        batch = next(self.data.batches(self.data.val_split, 64, generator=torch.Generator().manual_seed(0)))
        self.model.eval()
        with torch.no_grad():
            items = self.model.visuals(batch)
        self.model.train()
        self.runlog.visuals(items, epoch, self.step)

    def fit(self) -> dict:
        fresh = self.step == 0
        self.runlog.open(self.step, self.changes)
        self.model.train()
        try:
            with StopRequests() as stop:
                status = self._loop(stop)
        except ConfigError:  # found in the first epoch (a best_metric no step logs): no run dir is left
            if fresh and self.epoch == 0:
                self.runlog.discard()
            else:
                self.runlog.close()
            raise
        except ZooError:
            self.runlog.metrics("failed", self.epoch, self.step, self.best.value, nonfinite_skips=self.skipped)
            self.runlog.close()
            raise
        self.save()
        if status == "finished" and self.dist.is_main and not self.dry_run:  # a dry run stops at the epoch's end
            self.finish()  # before metrics.json says finished: a run killed in here resumes to finish again
        out = self.runlog.metrics(status, self.epoch, self.step, self.best.value, nonfinite_skips=self.skipped)
        if status == "interrupted":
            self.log(f"{stop.requested or 'stop'}: saved {self.run_dir} at epoch {self.epoch}, step {self.step}")
        self.runlog.close()
        self.dist.close()
        return out

    def _loop(self, stop: StopRequests) -> str:
        """Epochs until done, ``max_steps`` (status "stopped") or a stop request ("interrupted")."""
        t = self.cfg["train"]
        bs, log_every, ckpt_every, max_steps = t["batch_size"], t["log_every"], t["ckpt_every"], t["max_steps"]
        status, dist_on, window = "finished", self.dist.enabled, self.window
        while self.epoch < t["epochs"]:
            if self.dist.any(stop.requested is not None):
                return "interrupted"
            # the global batch: with data.bucket, each step's items across the ranks are one bucket
            order = self.dist.shard(self.data.epoch_order(t["seed"], self.epoch, bs * self.dist.world)
                                    .to(self.device))
            n_batches = self.data.num_batches("train", bs, order)
            bar = Progress(n_batches, self.batch_in_epoch, f"epoch {self.epoch + 1}/{t['epochs']}", not self.quiet)
            seen, t0 = 0, time.perf_counter()
            for batch in self.data.batches("train", bs, order=order, skip=self.batch_in_epoch, generator=self.noise,
                                           augment=True):
                try:
                    terms = self.train_step(batch)
                except RuntimeError as e:  # a model that fails on weights a NaN reached: report the NaN, not this
                    self.check_finite()
                    raise compile_refusal(e, t["compile"]) or e  # or a step torch.compile cannot run: say so
                self.step += 1
                self.model.on_train_batch_end(self.step)
                self.batch_in_epoch += 1
                seen = seen + num_items(batch)
                window.add(self.step, terms)
                if log_every and self.step % log_every == 0:
                    window.mark(self.step, self.epoch, seen, time.perf_counter() - t0)
                    if dist_on or window.due():
                        self.publish(bar)
                bar.tick()
                if ckpt_every and self.step % ckpt_every == 0:
                    self.save()
                if max_steps and self.step >= max_steps:
                    status = "stopped"
                    break
                if self.dry_run and self.batch_in_epoch >= self.dry_run:
                    break  # the epoch ends here, as if its data had run out
                requested = stop.requested is not None  # under torchrun every rank stops after the same step
                if self.dist.any(requested) if dist_on else requested:
                    status = "interrupted"
                    break
            bar.close()
            if status != "finished" and self.batch_in_epoch < n_batches:
                return status  # mid-epoch: last.pt resumes from the next batch
            self.end_epoch()
            if status != "finished":
                return status
        return status

    def end_epoch(self) -> None:
        """Epoch bookkeeping: model hook, validation, visuals, schedulers, checkpoints, metrics."""
        self.window.cut()  # here, not as the next epoch starts: a resume mid-epoch keeps the steps read before it
        try:
            extra = self.model.on_epoch_end(self.epoch)
            self.dist.broadcast_module(self.model, buffers_only=True)  # batch-norm statistics follow rank 0
            row = {"epoch": self.epoch, "step": self.step, **{f"train/{k}": v for k, v in extra.items()},
                   **self.validate()}
        except Exception:  # a hook or a validation step that fails on weights a NaN reached: report the NaN
            self.check_finite()
            raise
        self.check_finite()  # the epoch's last steps, before anything of this epoch is logged or saved
        self.best.check([k for k in row if k not in ("epoch", "step")])
        self.runlog.epoch_row(row)
        self.runlog.scalars({f"lr/{n}": o.param_groups[0]["lr"] for n, o in self.optimizers.items()}, self.step)
        step_schedulers(self.schedulers)  # after the lr/ point: it shows the rate this epoch's steps took
        self.log_visuals(self.epoch)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.best.improved(row):
            self.save("best")
        self.save()
        if not self.quiet:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("val/"))
            self.log(f"epoch {self.epoch}/{self.cfg['train']['epochs']}: {shown}")

    def finish(self) -> None:
        """End of a finished run: the model's artifacts and the hyper-parameter summary."""
        self.model.eval()
        with torch.no_grad():
            self.runlog.artifacts(self.model.artifacts(self.data, self.run_dir) or {}, self.step)
        self.runlog.hparams(self.step)


def fit(cfg: dict, run_dir: str | Path | None = None, *, quiet: bool = True, resume: bool = False,
        allow_changes: bool = False) -> Trainer:
    """Train (or resume) from a resolved config; returns the trainer with its model, data and metrics."""
    trainer = Trainer(cfg, run_dir, quiet=quiet, resume=resume, allow_changes=allow_changes,
                      log=(lambda s: None) if quiet else print)
    trainer.metrics = trainer.fit()
    return trainer
